//! `GET /metrics` of `kiln serve`: Prometheus text that moves once a job has run.

use std::collections::HashMap;
use std::time::Duration;

use kiln_tests::app::TestApp;
use serde_json::json;

/// Parses Prometheus text exposition format: every sample line is `name{labels} value`, every
/// family has a `# TYPE` line before its samples. Returns the samples by name with labels.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "histogram", "gauge"].contains(&kind), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("number in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.iter().any(|t| t == f))
            .unwrap_or(name);
        assert!(typed.iter().any(|t| t == family), "no TYPE before {line}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn metrics(app: &TestApp) -> HashMap<String, f64> {
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_and_move_after_a_job() {
    let app = TestApp::spawn().await;
    let before = metrics(&app).await;
    let id = app
        .submit_ok(json!({"prompt": "counted", "size": "256x256"}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");
    let after = metrics(&app).await;
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    for key in [
        "kiln_jobs_total{outcome=\"success\"}",
        "kiln_queue_wait_seconds_count",
        "kiln_provider_calls_total{provider=\"local\",outcome=\"success\"}",
        "kiln_provider_latency_seconds_count{provider=\"local\"}",
    ] {
        assert!(
            get(&after, key) >= get(&before, key) + 1.0,
            "{key} did not move: {} -> {}",
            get(&before, key),
            get(&after, key)
        );
    }
    app.stop().await;
}
