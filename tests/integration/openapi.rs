//! The OpenAPI document lists every route the router serves, and `/docs` renders it offline.

use kiln_api::openapi::ROUTES;
use kiln_tests::app::{TestApp, TestOptions};
use serde_json::Value;

#[tokio::test]
async fn the_document_lists_every_route_and_every_route_exists() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let resp = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Every listed route is served: none answers the router's "no such route".
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "0190c0de-0000-7000-8000-000000000000")
            .replace("{key}", "images/u/j/0.png")
            .replace("{name}", "t");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = app
            .http
            .request(method.clone(), app.url(&concrete))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let unrouted = status == 404 && body["error"]["message"] == "route not found";
        assert!(
            !unrouted && status != 405,
            "{method} {concrete}: {status} {body}"
        );
    }
    // Every error answer has the documented shape, with the bearer scheme declared.
    assert!(doc["components"]["schemas"]["Error"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let docs = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("openapi.json"));
    assert!(
        !html.contains("<script src"),
        "the page loads nothing from elsewhere"
    );
    app.stop().await;
}
