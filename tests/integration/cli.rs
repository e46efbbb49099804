//! The `kiln` command as a user runs it: keys, submit --wait, list, get, cancel, and bad input.

use std::path::Path;

use kiln_tests::process::{kiln_command, KilnProcess};

const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn kiln(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let out = kiln_command(Path::new(BIN), dir, env)
        .args(args)
        .output()
        .await
        .expect("kiln runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn help_names_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let help = kiln(dir.path(), &[], &["--help"]).await;
    assert!(help.ok);
    for cmd in [
        "serve",
        "keys",
        "submit",
        "get",
        "list",
        "cancel",
        "KILN_URL",
        "KILN_API_KEY",
    ] {
        assert!(
            help.stdout.contains(cmd),
            "--help mentions {cmd}:\n{}",
            help.stdout
        );
    }
    let sub = kiln(dir.path(), &[], &["submit", "--help"]).await;
    assert!(sub.ok && sub.stdout.contains("--wait") && sub.stdout.contains("--size"));
}

#[tokio::test]
async fn keys_create_list_revoke_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let created = kiln(
        dir.path(),
        &[],
        &["keys", "create", "--user", "erin", "--tier", "vip"],
    )
    .await;
    assert!(created.ok, "{}", created.stderr);
    let key = created.stdout.lines().last().unwrap();
    assert!(
        key.starts_with("kiln_") && !key.contains(' '),
        "key alone on the last line: {key:?}"
    );

    let listed = kiln(dir.path(), &[], &["keys", "list", "--json"]).await;
    assert!(listed.ok);
    let keys: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(keys[0]["user_id"], "erin");
    assert_eq!(keys[0]["tier"], "vip");
    assert!(
        !listed.stdout.contains(key),
        "the key itself is never listed"
    );
    let id = keys[0]["id"].as_str().unwrap();

    let revoked = kiln(dir.path(), &[], &["keys", "revoke", id]).await;
    assert!(revoked.ok, "{}", revoked.stderr);
    let unknown = kiln(dir.path(), &[], &["keys", "revoke", "ffffffffffff"]).await;
    assert!(
        !unknown.ok && unknown.stderr.contains("no key"),
        "{}",
        unknown.stderr
    );

    for (args, names) in [
        (&["keys", "create", "--user", "a b"][..], "--user"),
        (&["keys", "create", "--user", ""][..], "--user"),
        (
            &["keys", "create", "--user", "x", "--tier", "gold"][..],
            "--tier",
        ),
        (&["keys", "create"][..], "--user"),
    ] {
        let r = kiln(dir.path(), &[], args).await;
        assert!(!r.ok, "{args:?} must fail");
        assert!(r.stderr.contains(names), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[tokio::test]
async fn bad_environment_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("KILN_BACKEND", "mainframe"),
        ("KILN_MAX_RECEIVE_COUNT", "many"),
        ("KILN_JOB_TIMEOUT_SECS", "-3"),
    ] {
        let r = kiln(dir.path(), &[(var, value.to_owned())], &["serve"]).await;
        assert!(!r.ok, "{var}={value} must be refused");
        assert!(r.stderr.contains(var), "{var}: {}", r.stderr);
    }
    let no_key = kiln(dir.path(), &[], &["submit", "hello"]).await;
    assert!(
        !no_key.ok && no_key.stderr.contains("KILN_API_KEY"),
        "{}",
        no_key.stderr
    );
}

#[tokio::test]
async fn submit_wait_saves_pngs_then_list_get_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let created = kiln(dir.path(), &[], &["keys", "create", "--user", "frank"]).await;
    let key = created.stdout.lines().last().unwrap().to_owned();
    let server = KilnProcess::start(Path::new(BIN), dir.path(), &[]).await;
    let env = [("KILN_URL", server.base_url.clone()), ("KILN_API_KEY", key)];
    let out = dir.path().join("out");
    let out_s = out.display().to_string();

    let submitted = kiln(
        dir.path(),
        &env,
        &[
            "submit",
            "a red kite",
            "--size",
            "256x256",
            "--n",
            "2",
            "--wait",
            "--out",
            &out_s,
        ],
    )
    .await;
    assert!(submitted.ok, "{}", submitted.stderr);
    let paths: Vec<&str> = submitted
        .stdout
        .lines()
        .filter(|l| l.ends_with(".png"))
        .collect();
    assert_eq!(paths.len(), 2, "{}", submitted.stdout);
    for p in paths {
        let img = image::open(p).expect("a saved PNG");
        assert_eq!((img.width(), img.height()), (256, 256));
    }

    let listed = kiln(dir.path(), &env, &["list"]).await;
    assert!(
        listed.ok && listed.stdout.contains("success") && listed.stdout.contains("a red kite"),
        "{}",
        listed.stdout
    );
    let id = listed
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let got = kiln(dir.path(), &env, &["get", &id]).await;
    assert!(
        got.ok && got.stdout.contains("\"status\": \"success\""),
        "{}",
        got.stdout
    );
    let cancel = kiln(dir.path(), &env, &["cancel", &id]).await;
    assert!(
        !cancel.ok && cancel.stderr.contains("409"),
        "a finished job cannot be canceled: {}",
        cancel.stderr
    );

    let bad = kiln(dir.path(), &env, &["submit", "x", "--size", "3x3"]).await;
    assert!(!bad.ok && bad.stderr.contains("size"), "{}", bad.stderr);
    let bad_meta = kiln(dir.path(), &env, &["submit", "x", "--metadata", "{oops"]).await;
    assert!(
        !bad_meta.ok && bad_meta.stderr.contains("--metadata"),
        "{}",
        bad_meta.stderr
    );
    let bad_id = kiln(dir.path(), &env, &["get", "not/an/id"]).await;
    assert!(
        !bad_id.ok && bad_id.stderr.contains("ID"),
        "{}",
        bad_id.stderr
    );
    server.kill9().await;
}
