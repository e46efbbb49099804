//! Prompt templates: CRUD per user, global ones, and expansion at submit.

use std::sync::Arc;

use kiln_shared::domain::{NewTemplate, Tier};
use kiln_tests::app::{TestApp, TestOptions};
use serde_json::{json, Value};

async fn create(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/templates"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn prompt_of(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn templates_expand_into_the_prompt_as_documented() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let made = create(
        &app,
        &app.api_key,
        json!({"name": "poster", "prompt_prefix": "a poster of", "prompt_suffix": "high detail",
               "character": "a red fox", "style": "woodcut"}),
    )
    .await;
    assert_eq!(made.status(), 201);
    assert!(made.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("/v1/templates/poster"));
    assert_eq!(
        create(
            &app,
            &app.api_key,
            json!({"name": "knight", "character": "a knight in silver armour"})
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        create(
            &app,
            &app.api_key,
            json!({"name": "ink", "style": "ink wash"})
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        create(&app, &app.api_key, json!({"name": "ink"}))
            .await
            .status(),
        409
    );
    let bad: Value = create(&app, &app.api_key, json!({"name": "no spaces"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error"]["field"], "name");

    // `template`: prefix, character, prompt, style, suffix.
    let (status, job) = prompt_of(
        &app,
        "/v1/jobs",
        json!({"prompt": "at dusk", "template": "poster"}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        job["request"]["prompt"],
        "a poster of, a red fox, at dusk, woodcut, high detail"
    );
    assert_eq!(job["request"]["template"], "poster");
    // `character` and `style` naming templates replace the template's own fragments.
    let (_, job) = prompt_of(
        &app,
        "/v1/jobs",
        json!({"prompt": "at dusk", "template": "poster", "character": "knight", "style": "ink"}),
    )
    .await;
    assert_eq!(
        job["request"]["prompt"],
        "a poster of, a knight in silver armour, at dusk, ink wash, high detail"
    );
    // Names that are no template stay labels.
    let (_, job) = prompt_of(
        &app,
        "/v1/jobs",
        json!({"prompt": "a cat", "character": "Tom", "style": "noir"}),
    )
    .await;
    assert_eq!(job["request"]["prompt"], "a cat");
    assert_eq!(job["request"]["character"], "Tom");
    // The seed route looks character and style up the same way.
    let (status, _) = prompt_of(
        &app,
        "/api/generate/image",
        json!({"prompt": "a castle", "character": "knight"}),
    )
    .await;
    assert_eq!(status, 202);
    let list: Value = app
        .http
        .get(app.url("/v1/jobs?limit=1"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"][0]["request"]["prompt"],
        "a knight in silver armour, a castle"
    );

    // An unknown template is a 400 naming it, in batches too.
    let (status, err) =
        prompt_of(&app, "/v1/jobs", json!({"prompt": "a", "template": "nope"})).await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("template"))
    );
    let (status, err) = prompt_of(
        &app,
        "/v1/jobs/batch",
        json!({"jobs": [{"prompt": "a"}, {"prompt": "b", "template": "nope"}]}),
    )
    .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("jobs[1].template"))
    );
    app.stop().await;
}

#[tokio::test]
async fn templates_are_per_user_and_global_ones_are_shared() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let bob = app.new_key("bob", Tier::Standard).await;
    assert_eq!(
        create(
            &app,
            &app.api_key,
            json!({"name": "mine", "style": "alice's"})
        )
        .await
        .status(),
        201
    );
    // An operator's global template, written through the store as `kiln` would.
    let global: NewTemplate =
        serde_json::from_value(json!({"name": "house", "prompt_suffix": "in the house style"}))
            .unwrap();
    let global = global.validate(None, chrono::Utc::now()).unwrap();
    let store = Arc::clone(&app.services.store);
    store.insert_template(&global).await.unwrap();

    let get = |key: &str, path: &str| {
        let req = app.http.get(app.url(path)).bearer_auth(key);
        async move {
            let resp = req.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(get(&bob, "/v1/templates/mine").await.0, 404);
    let (status, t) = get(&bob, "/v1/templates/house").await;
    assert_eq!((status, t["scope"].as_str()), (200, Some("global")));
    let (_, list) = get(&app.api_key, "/v1/templates").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine", "house"]);
    let (_, list) = get(&bob, "/v1/templates").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // Bob can neither use nor delete Alice's template, nor delete the global one.
    let resp = app
        .submit_as(&bob, json!({"prompt": "a", "template": "mine"}))
        .await;
    assert_eq!(resp.status(), 400);
    let del = |key: &str, name: &str| {
        app.http
            .delete(app.url(&format!("/v1/templates/{name}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(del(&bob, "mine").await.unwrap().status(), 404);
    assert_eq!(del(&bob, "house").await.unwrap().status(), 404);
    let resp = app
        .submit_as(&bob, json!({"prompt": "a room", "template": "house"}))
        .await;
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["request"]["prompt"], "a room, in the house style");
    assert_eq!(del(&app.api_key, "mine").await.unwrap().status(), 204);
    assert_eq!(get(&app.api_key, "/v1/templates/mine").await.0, 404);
    app.stop().await;
}

/// `kiln templates create --global` makes a template every user's requests may name.
#[tokio::test]
async fn operators_make_global_templates_with_the_cli() {
    use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
    use kiln_shared::ports::JobStore;
    const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = kiln_tests::process::kiln_command(BIN.as_ref(), dir.path(), &[]);
        cmd.args(args);
        async move { cmd.output().await.expect("kiln runs") }
    };
    let out = run(&[
        "templates",
        "create",
        "house",
        "--global",
        "--suffix",
        "in the house style",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = run(&["templates", "create", "house", "--global"]).await;
    assert!(!again.status.success());
    let neither = run(&["templates", "create", "x"]).await;
    assert!(!neither.status.success());
    let opts = LocalOptions {
        visibility_timeout: std::time::Duration::from_secs(30),
        max_receive_count: 5,
        url_signing_secret: None,
    };
    let local = LocalBackend::open(dir.path(), &opts, Arc::new(kiln_shared::SystemClock)).unwrap();
    let t = local
        .store
        .get_template(None, "house")
        .await
        .unwrap()
        .expect("global template");
    assert_eq!(t.prompt_suffix.as_deref(), Some("in the house style"));
    let out = run(&["templates", "delete", "house", "--global"]).await;
    assert!(out.status.success());
    assert!(local
        .store
        .get_template(None, "house")
        .await
        .unwrap()
        .is_none());
}
