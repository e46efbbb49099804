//! Process metrics kept in memory: counters and histograms, rendered as Prometheus text
//! (`GET /metrics` of `kiln serve`) or as CloudWatch Embedded Metric Format log lines (Lambda,
//! one document per invocation). Recording is one call ([`job_ended`], [`queue_wait`],
//! [`provider_call`], [`fallback`]) and costs a short mutex hold, nothing more.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Most values one EMF metric carries (the format's limit per metric).
const EMF_MAX_VALUES: usize = 100;
/// The CloudWatch namespace of Kiln's metrics.
pub const NAMESPACE: &str = "Kiln";

/// A job's run ended this way: `success`, `failed`, `released` (given back for a later try) or
/// `canceled`.
pub fn job_ended(outcome: &str) {
    registry().count("kiln_jobs_total", &[("outcome", outcome)], 1.0);
}

/// A job was claimed for its first run `created_at` after being submitted.
pub fn queue_wait(created_at: DateTime<Utc>, started_at: DateTime<Utc>) {
    let wait = (started_at - created_at).to_std().unwrap_or(Duration::ZERO);
    registry().observe("kiln_queue_wait_seconds", &[], wait);
}

/// One provider call ended with `outcome` (`success` or an error code) after `latency`,
/// costing `cost_usd`.
pub fn provider_call(provider: &str, outcome: &str, latency: Duration, cost_usd: f64) {
    let r = registry();
    let mut inner = r.lock();
    inner.add(
        "kiln_provider_calls_total",
        &[("provider", provider), ("outcome", outcome)],
        1.0,
    );
    if outcome != "circuit_open" {
        inner.record(
            "kiln_provider_latency_seconds",
            &[("provider", provider)],
            latency,
        );
    }
    if cost_usd > 0.0 {
        inner.add("kiln_cost_usd_total", &[("provider", provider)], cost_usd);
    }
}

/// A job moved on to its next provider after the previous one failed.
pub fn fallback() {
    registry().count("kiln_fallbacks_total", &[], 1.0);
}

/// Everything recorded since the process started, as Prometheus text exposition format 0.0.4.
pub fn render_prometheus() -> String {
    registry().lock().prometheus()
}

/// What was recorded since the last call, as CloudWatch EMF JSON documents (one per set of
/// dimension values: the invocation's totals, then one per provider called), each to be
/// written as one log line. Empty when nothing was recorded. `function` becomes the
/// `FunctionName` dimension.
pub fn take_emf(function: &str, now: DateTime<Utc>) -> Vec<String> {
    let delta = std::mem::take(&mut registry().lock().since_emf);
    delta.emf(function, now.timestamp_millis())
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

#[derive(Default)]
struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        self.lock().add(name, labels, v);
    }

    fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], d: Duration) {
        self.lock().record(name, labels, d);
    }
}

/// A series: metric name and label pairs, ordered so that rendering is stable.
type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Default)]
struct Inner {
    counters: BTreeMap<Key, f64>,
    histograms: BTreeMap<Key, Histogram>,
    since_emf: Delta,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// What was recorded since the last EMF flush.
#[derive(Default)]
struct Delta {
    counters: BTreeMap<Key, f64>,
    samples: BTreeMap<Key, Vec<f64>>,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

impl Inner {
    fn add(&mut self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        let k = key(name, labels);
        *self.since_emf.counters.entry(k.clone()).or_default() += v;
        *self.counters.entry(k).or_default() += v;
    }

    fn record(&mut self, name: &'static str, labels: &[(&'static str, &str)], d: Duration) {
        let secs = d.as_secs_f64();
        let k = key(name, labels);
        let samples = self.since_emf.samples.entry(k.clone()).or_default();
        // Bounded: a process that never flushes (kiln serve) keeps at most this many.
        if samples.len() < EMF_MAX_VALUES {
            samples.push(secs * 1000.0);
        }
        let h = self.histograms.entry(k).or_insert_with(|| Histogram {
            buckets: vec![0; BUCKETS.len()],
            ..Histogram::default()
        });
        h.count += 1;
        h.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i] += 1;
        }
    }

    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in &self.counters {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", help(name));
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {}", label_set(labels, None), number(*v));
        }
        for ((name, labels), h) in &self.histograms {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", help(name));
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += n;
                let le = number(*bound);
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    label_set(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                label_set(labels, Some("+Inf")),
                h.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                label_set(labels, None),
                number(h.sum)
            );
            let _ = writeln!(out, "{name}_count{} {}", label_set(labels, None), h.count);
        }
        out
    }
}

fn help(name: &str) -> &'static str {
    match name {
        "kiln_jobs_total" => "Job runs ended, by outcome.",
        "kiln_queue_wait_seconds" => "Time from submit to the start of a job's first run.",
        "kiln_provider_calls_total" => "Provider calls, by provider and outcome.",
        "kiln_provider_latency_seconds" => "Provider call latency, by provider.",
        "kiln_cost_usd_total" => "Provider cost in US dollars, by provider.",
        "kiln_fallbacks_total" => "Jobs moved on to the next provider after a failure.",
        _ => "Kiln metric.",
    }
}

/// `{k="v",...}` with Prometheus escaping; `le` appended for histogram buckets.
fn label_set(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// A float as Prometheus and JSON both read it (integers without a fraction).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The EMF metric name and unit of a series, and the provider it is about, if any.
fn emf_metric(k: &Key) -> (String, &'static str, Option<&str>) {
    let label = |name: &str| {
        k.1.iter()
            .find(|(l, _)| *l == name)
            .map(|(_, v)| v.as_str())
    };
    let provider = label("provider");
    match k.0 {
        "kiln_jobs_total" => (
            format!("Jobs_{}", label("outcome").unwrap_or("unknown")),
            "Count",
            None,
        ),
        "kiln_queue_wait_seconds" => ("QueueWait".into(), "Milliseconds", None),
        "kiln_fallbacks_total" => ("Fallbacks".into(), "Count", None),
        "kiln_provider_calls_total" => (
            format!("ProviderCalls_{}", label("outcome").unwrap_or("unknown")),
            "Count",
            provider,
        ),
        "kiln_provider_latency_seconds" => ("ProviderLatency".into(), "Milliseconds", provider),
        "kiln_cost_usd_total" => ("CostUSD".into(), "None", provider),
        other => (other.to_owned(), "None", provider),
    }
}

impl Delta {
    fn emf(&self, function: &str, timestamp_ms: i64) -> Vec<String> {
        // One document per provider value (a dimension has one value per document), the
        // invocation's own metrics under the empty provider.
        let mut docs: BTreeMap<Option<&str>, Vec<(String, &'static str, Value)>> = BTreeMap::new();
        for (k, v) in &self.counters {
            let (name, unit, provider) = emf_metric(k);
            docs.entry(provider)
                .or_default()
                .push((name, unit, json!(v)));
        }
        for (k, values) in &self.samples {
            let (name, unit, provider) = emf_metric(k);
            docs.entry(provider)
                .or_default()
                .push((name, unit, json!(values)));
        }
        docs.into_iter()
            .map(|(provider, metrics)| {
                let mut dims = vec!["FunctionName"];
                if provider.is_some() {
                    dims.push("Provider");
                }
                let definitions: Vec<Value> = metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect();
                let mut root = Map::new();
                root.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": NAMESPACE,
                            "Dimensions": [dims],
                            "Metrics": definitions,
                        }],
                    }),
                );
                root.insert("FunctionName".into(), json!(function));
                if let Some(p) = provider {
                    root.insert("Provider".into(), json!(p));
                }
                for (name, _, value) in metrics {
                    root.insert(name, value);
                }
                Value::Object(root).to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner_with_samples() -> Inner {
        let mut m = Inner::default();
        m.add("kiln_jobs_total", &[("outcome", "success")], 1.0);
        m.add("kiln_jobs_total", &[("outcome", "success")], 1.0);
        m.add("kiln_fallbacks_total", &[], 1.0);
        m.add(
            "kiln_cost_usd_total",
            &[("provider", "cheap \"one\"")],
            0.002,
        );
        m.record("kiln_queue_wait_seconds", &[], Duration::from_millis(3));
        m.record(
            "kiln_provider_latency_seconds",
            &[("provider", "cheap \"one\"")],
            Duration::from_millis(120),
        );
        m
    }

    #[test]
    fn prometheus_text_has_types_cumulative_buckets_and_escaped_labels() {
        let text = inner_with_samples().prometheus();
        assert!(text.contains("# TYPE kiln_jobs_total counter\n"));
        assert!(text.contains("kiln_jobs_total{outcome=\"success\"} 2\n"));
        assert!(text.contains("kiln_fallbacks_total 1\n"));
        assert!(text.contains("kiln_cost_usd_total{provider=\"cheap \\\"one\\\"\"} 0.002\n"));
        assert!(text.contains("# TYPE kiln_queue_wait_seconds histogram\n"));
        assert!(text.contains("kiln_queue_wait_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("kiln_queue_wait_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("kiln_queue_wait_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("kiln_queue_wait_seconds_count 1\n"));
        assert!(text.contains(
            "kiln_provider_latency_seconds_bucket{provider=\"cheap \\\"one\\\"\",le=\"0.25\"} 1\n"
        ));
        // Each family's TYPE line comes once, before its samples.
        assert_eq!(text.matches("# TYPE kiln_jobs_total").count(), 1);
    }

    #[test]
    fn emf_documents_follow_the_specification() {
        let docs = inner_with_samples()
            .since_emf
            .emf("kiln-worker", 1_700_000_000_000);
        assert_eq!(docs.len(), 2, "the totals, then one for the provider");
        for doc in &docs {
            let v: Value = serde_json::from_str(doc).unwrap();
            let aws = &v["_aws"];
            assert_eq!(aws["Timestamp"], 1_700_000_000_000i64);
            let directive = &aws["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], "Kiln");
            // Every dimension and every metric named in the directive is a root member.
            for dim in directive["Dimensions"][0].as_array().unwrap() {
                assert!(v[dim.as_str().unwrap()].is_string(), "{doc}");
            }
            for m in directive["Metrics"].as_array().unwrap() {
                let value = &v[m["Name"].as_str().unwrap()];
                assert!(value.is_number() || value.is_array(), "{doc}");
                assert!(m["Unit"].is_string());
            }
        }
        let totals: Value = serde_json::from_str(&docs[0]).unwrap();
        assert_eq!(totals["Jobs_success"], 2.0);
        assert_eq!(totals["QueueWait"], json!([3.0]));
        let provider: Value = serde_json::from_str(&docs[1]).unwrap();
        assert_eq!(provider["Provider"], "cheap \"one\"");
        assert_eq!(provider["ProviderLatency"], json!([120.0]));
    }

    #[test]
    fn take_emf_drains_what_it_reported_but_prometheus_keeps_totals() {
        job_ended("canceled");
        assert!(take_emf("f", Utc::now())
            .iter()
            .any(|d| d.contains("Jobs_canceled")));
        assert!(!take_emf("f", Utc::now())
            .iter()
            .any(|d| d.contains("Jobs_canceled")));
        assert!(render_prometheus().contains("kiln_jobs_total{outcome=\"canceled\"}"));
    }
}
