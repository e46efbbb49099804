//! JWTs beside API keys, each attack refused; and no user reaches another's jobs or images.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use kiln_shared::domain::Tier;
use kiln_tests::app::{TestApp, TestOptions};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const ISSUER: &str = "https://issuer.kiln.test";
const AUDIENCE: &str = "kiln-api";
const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt-test-rsa.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/jwt-test-rsa.pub.pem");
const JWKS: &str = include_str!("../fixtures/jwt-test-jwks.json");

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "nbf": now() - 5, "tier": "vip"})
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("signs")
}

fn rs256(claims: &Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("test key"),
    )
    .expect("signs")
}

/// An unsigned token (`alg: none`), built by hand: no library makes one.
fn unsigned(claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

async fn status_of(app: &TestApp, token: &str) -> u16 {
    app.http
        .get(app.url("/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Serves `JWKS` on 127.0.0.1; counts the fetches.
async fn jwks_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { ([("content-type", "application/json")], JWKS) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks.json"), hits)
}

#[tokio::test]
async fn hs256_tokens_authenticate_and_every_forgery_is_refused() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![
            ("KILN_JWT_SECRET", SECRET.into()),
            ("KILN_JWT_ISSUER", ISSUER.into()),
            ("KILN_JWT_AUDIENCE", AUDIENCE.into()),
        ],
        ..Default::default()
    })
    .await;
    let good = hs256(&claims("jwt-user"), SECRET.as_bytes());
    assert_eq!(status_of(&app, &good).await, 200);
    // The job belongs to `sub`, with the tier from the claim.
    let resp = app.submit_as(&good, json!({"prompt": "a kiln"})).await;
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["user_id"], "jwt-user");
    // API keys keep working beside JWTs.
    assert_eq!(status_of(&app, &app.api_key).await, 200);

    let mut expired = claims("u");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("u");
    early["nbf"] = json!(now() + 600);
    let mut wrong_iss = claims("u");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("u");
    wrong_aud["aud"] = json!("someone-else");
    let mut no_sub = claims("u");
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut bad_tier = claims("u");
    bad_tier["tier"] = json!("platinum");
    let attacks = [
        ("expired", hs256(&expired, SECRET.as_bytes())),
        ("not yet valid", hs256(&early, SECRET.as_bytes())),
        ("wrong issuer", hs256(&wrong_iss, SECRET.as_bytes())),
        ("wrong audience", hs256(&wrong_aud, SECRET.as_bytes())),
        ("no subject", hs256(&no_sub, SECRET.as_bytes())),
        ("unknown tier", hs256(&bad_tier, SECRET.as_bytes())),
        ("alg none", unsigned(&claims("u"))),
        (
            "bad signature",
            hs256(&claims("u"), b"another-secret-of-32-bytes-or-more!!"),
        ),
        ("tampered", {
            let t = good.clone();
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            let other = hs256(&claims("someone-else"), b"x");
            parts[1] = other.split('.').nth(1).unwrap().to_owned();
            parts.join(".")
        }),
        // RS256 is not configured here: a perfectly signed RS256 token is still refused.
        ("rs256 without jwks", rs256(&claims("u"), "test-key-1")),
    ];
    for (what, token) in attacks {
        assert_eq!(status_of(&app, &token).await, 401, "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn rs256_tokens_use_the_jwks_and_hs_rs_confusion_is_refused() {
    let (jwks_url, fetches) = jwks_server().await;
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![
            ("KILN_JWT_JWKS_URL", jwks_url),
            ("KILN_JWT_ISSUER", ISSUER.into()),
            ("KILN_JWT_AUDIENCE", AUDIENCE.into()),
            ("KILN_JWT_TIER_CLAIM", "custom:tier".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut c = claims("cognito-user");
    c["custom:tier"] = json!("vip");
    assert_eq!(status_of(&app, &rs256(&c, "test-key-1")).await, 200);
    assert_eq!(status_of(&app, &rs256(&c, "test-key-1")).await, 200);
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "keys are cached"
    );

    // The classic confusion: HMAC over the RSA public key, which is public.
    assert_eq!(
        status_of(&app, &hs256(&c, RSA_PUBLIC)).await,
        401,
        "HS/RS confusion"
    );
    assert_eq!(status_of(&app, &unsigned(&c)).await, 401, "alg none");
    let mut expired = c.clone();
    expired["exp"] = json!(now() - 120);
    assert_eq!(status_of(&app, &rs256(&expired, "test-key-1")).await, 401);
    // An unknown key id fetches the set again, but not more than once per interval.
    for _ in 0..5 {
        assert_eq!(status_of(&app, &rs256(&c, "rotated-away")).await, 401);
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    app.stop().await;
}

#[tokio::test]
async fn no_user_can_reach_another_users_jobs_or_images() {
    let app = TestApp::spawn().await;
    let bob = app.new_key("bob", Tier::Standard).await;
    let id = app
        .submit_ok(json!({"prompt": "alice's secret", "size": "256x256"}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");

    let get = |path: String, key: String| {
        let http = app.http.clone();
        let url = app.url(&path);
        async move { http.get(url).bearer_auth(key).send().await.unwrap() }
    };
    assert_eq!(
        get(format!("/v1/jobs/{id}"), bob.clone()).await.status(),
        404
    );
    let cancel = app
        .http
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    let list: Value = get("/v1/jobs".into(), bob.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // The image URL is a capability: it works for whoever holds it, until it expires, and
    // a key with a signature made up by another user does not.
    let image = &job["images"][0];
    let key = image["key"].as_str().unwrap();
    assert!(key.contains("alice"), "{key}");
    let url = image["url"].as_str().unwrap();
    assert_eq!(app.http.get(url).send().await.unwrap().status(), 200);
    let expires = now() + 3600;
    for sig in [
        "",
        "AAAA",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let forged = app.url(&format!("/v1/images/{key}?expires={expires}&sig={sig}"));
        let resp = app.http.get(forged).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(resp.status(), 403, "sig {sig:?}");
    }
    // A valid signature does not carry over to another key (Bob's, at the same path).
    let moved = url.replace("/alice/", "/bob/");
    assert_ne!(moved, url);
    assert_eq!(app.http.get(moved).send().await.unwrap().status(), 403);
    app.stop().await;
}
