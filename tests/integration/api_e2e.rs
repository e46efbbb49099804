//! The API end to end: the real server on a free port, over HTTP.

use std::time::Duration;

use kiln_shared::domain::Tier;
use kiln_tests::app::{TestApp, TestOptions};
use serde_json::{json, Value};

#[tokio::test]
async fn submit_poll_success_download_and_decode() {
    let app = TestApp::spawn().await;
    let resp = app
        .submit(json!({"prompt": "a lighthouse at dusk", "size": "512x512", "n": 2, "seed": 7}))
        .await;
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("location").is_some(), "Location header");
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "pending");
    assert_eq!(job["request"]["size"], "512x512");
    let id = job["id"].as_str().unwrap();

    let job = app.wait_for(id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["provider"], "local");
    let images = job["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        let url = image["url"].as_str().unwrap();
        assert!(url.starts_with(&app.base_url), "absolute url: {url}");
        let resp = app.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "image/png");
        let bytes = resp.bytes().await.unwrap();
        let decoded =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("a PNG");
        assert_eq!((decoded.width(), decoded.height()), (512, 512));
        assert_eq!(image["width"], 512);
        assert_eq!(image["bytes"], bytes.len());
    }
    // A tampered signature is refused.
    let url = images[0]["url"].as_str().unwrap();
    let tampered = format!("{}0", &url[..url.len() - 1]);
    let tampered = if tampered == url {
        format!("{}1", &url[..url.len() - 1])
    } else {
        tampered
    };
    assert_eq!(app.http.get(&tampered).send().await.unwrap().status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_answers_with_the_finished_job() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .header("Prefer", "wait=20")
        .json(&json!({"prompt": "wait for me", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["images"].as_array().unwrap().len(), 1);

    // Without a worker the wait runs out and the job is still pending.
    let idle = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let started = std::time::Instant::now();
    let resp = idle
        .http
        .post(idle.url("/v1/jobs"))
        .bearer_auth(&idle.api_key)
        .header("Prefer", "wait=1")
        .json(&json!({"prompt": "nobody works here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "pending");
    app.stop().await;
    idle.stop().await;
}

#[tokio::test]
async fn cancel_a_pending_job() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let id = app.submit_ok(json!({"prompt": "never mind"})).await;
    let cancel = |id: String| {
        let app = &app;
        async move {
            app.http
                .post(app.url(&format!("/v1/jobs/{id}/cancel")))
                .bearer_auth(&app.api_key)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = cancel(id.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "canceled");
    assert_eq!(app.get_job(&id).await["status"], "canceled");
    let again = cancel(id.clone()).await;
    assert_eq!(again.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn list_pages_with_a_cursor_newest_first() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(app.submit_ok(json!({"prompt": format!("job {i}")})).await);
    }
    // Someone else's job never shows up.
    let bob = app.new_key("bob", Tier::Standard).await;
    assert_eq!(
        app.submit_as(&bob, json!({"prompt": "bob's"}))
            .await
            .status(),
        202
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = app
            .http
            .get(app.url("/v1/jobs"))
            .bearer_auth(&app.api_key)
            .query(&[("limit", "10")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let page: Value = req.send().await.unwrap().json().await.unwrap();
        pages += 1;
        for j in page["data"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "all 25, newest first, no duplicates");

    let pending: Value = app
        .http
        .get(app.url("/v1/jobs?status=success"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["data"].as_array().unwrap().len(), 0);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("status=done", "status"),
        ("cursor=%21%21", "cursor"),
    ] {
        let resp = app
            .http
            .get(app.url(&format!("/v1/jobs?{query}")))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn another_users_job_is_not_found() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let id = app.submit_ok(json!({"prompt": "mine"})).await;
    let bob = app.new_key("bob", Tier::Vip).await;
    let get = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let cancel = app
        .http
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    assert_eq!(
        app.get_job(&id).await["status"],
        "pending",
        "bob's cancel changed nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_are_401() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        // Every request looks its key up, so a revocation shows at once.
        env: vec![("KILN_API_KEY_CACHE_SECS", "0".into())],
        ..Default::default()
    })
    .await;
    let body = json!({"prompt": "p"});
    let none = app
        .http
        .post(app.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers().get("www-authenticate").is_some());
    let unknown = app.submit_as("kiln_not-a-real-key", body.clone()).await;
    assert_eq!(unknown.status(), 401);
    let malformed = app
        .http
        .post(app.url("/v1/jobs"))
        .header("Authorization", "Basic abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);

    let key = app.new_key("carol", Tier::Standard).await;
    assert_eq!(app.submit_as(&key, body.clone()).await.status(), 202);
    let keys = app.services.store.list_api_keys().await.unwrap();
    let carol = keys.iter().find(|k| k.user_id.as_str() == "carol").unwrap();
    app.services
        .store
        .revoke_api_key(&carol.id, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.submit_as(&key, body).await.status(), 401);
    let list = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn invalid_input_is_400_naming_the_field_and_stores_nothing() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let cases = [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({}), "prompt"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (json!({"prompt": "a", "n": 5}), "n"),
        (json!({"prompt": "a", "n": "two"}), "n"),
        (json!({"prompt": "a", "size": "1000x1000"}), "size"),
        (json!({"prompt": "a", "size": 512}), "size"),
        (json!({"prompt": 42}), "prompt"),
        (json!({"prompt": "a", "seed": -1}), "seed"),
        (json!({"prompt": "a", "colour": "red"}), "colour"),
        (json!({"prompt": "a", "metadata": "x"}), "metadata"),
        (json!(["prompt"]), ""),
    ];
    for (body, field) in cases {
        let resp = app.submit(body.clone()).await;
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_request", "{body}: {err}");
        if !field.is_empty() {
            let named = err["error"]["field"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let message = err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                named == field || message.contains(field),
                "{body}: expected field {field}, got {err}"
            );
        }
    }
    let malformed = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/json")
        .body("{\"prompt\": \"a\",")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_request"
    );

    let huge = json!({"prompt": "x".repeat(200_000)});
    let too_large = app.submit(huge).await;
    assert_eq!(too_large.status(), 413);
    assert_eq!(
        too_large.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    let text = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .body("prompt=a")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);

    let list: Value = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    assert_eq!(
        app.services.jobs_queue.depth().await.unwrap(),
        0,
        "nothing was enqueued"
    );
    app.stop().await;
}

#[tokio::test]
async fn seed_routes_run_over_the_same_pipeline() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .post(app.url("/api/generate/image"))
        .bearer_auth(&app.api_key)
        .json(&json!({"prompt": "a knight", "character": "knight", "style": "watercolor", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], true);
    let id = body["data"]["workId"].as_str().unwrap().to_owned();
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");
    assert_eq!(job["request"]["style"], "watercolor");

    let batch = app
        .http
        .post(app.url("/api/generate/batch"))
        .bearer_auth(&app.api_key)
        .json(&json!({"items": [{"prompt": "one", "size": "256x256"}, {"prompt": "two", "size": "256x256"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202);
    let body: Value = batch.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    let bad = app
        .http
        .post(app.url("/api/generate/batch"))
        .bearer_auth(&app.api_key)
        .json(&json!({"items": [{"prompt": "ok"}, {"prompt": ""}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["success"], false);
    app.stop().await;
}

#[tokio::test]
async fn healthz_and_unknown_routes() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let missing = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    app.stop().await;
}
