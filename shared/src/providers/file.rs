//! The providers file (`KILN_PROVIDERS`, TOML): one `[[provider]]` table per provider. A bad file
//! is refused at start with a message naming the entry and the field.
//!
//! ```toml
//! [[provider]]
//! name = "deepseek"              # unique
//! protocol = "openai"            # openai | stability | local
//! endpoint = "https://api.example.com/v1"
//! model = "image-1"
//! api_key_env = "DEEPSEEK_API_KEY"
//! cost_per_image_usd = 0.002
//! priority = 1                   # fallback order, lowest first
//! tiers = ["standard", "vip"]
//! timeout = "30s"                # or seconds as a number
//! max_concurrency = 8
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::limited::Limited;
use super::openai::OpenAiProvider;
use super::stability::StabilityProvider;
use super::{LocalProvider, ProviderEntry, Providers};
use crate::config::{ConfigError, Secret};
use crate::domain::Tier;
use crate::ports::ImageProvider;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Option<String>,
    protocol: Option<String>,
    endpoint: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    #[serde(default)]
    cost_per_image_usd: f64,
    priority: Option<u32>,
    tiers: Option<Vec<String>>,
    timeout: Option<toml::Value>,
    max_concurrency: Option<usize>,
    latency_ms: Option<u64>,
    extra: Option<toml::Table>,
}

/// Default time one provider call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default calls in flight per provider and process.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;

fn parse_timeout(v: &toml::Value) -> Result<Duration, String> {
    let d = match v {
        toml::Value::Integer(s) if *s > 0 => Duration::from_secs(*s as u64),
        toml::Value::Float(s) if *s > 0.0 && s.is_finite() => Duration::from_secs_f64(*s),
        toml::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s
                .find(|c: char| c.is_ascii_alphabetic())
                .map(|i| s.split_at(i))
                .unwrap_or((s, "s"));
            let n: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a duration like \"30s\" or \"500ms\""))?;
            let secs = match unit {
                "ms" => n / 1000.0,
                "s" => n,
                "m" => n * 60.0,
                other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
            };
            if !(secs.is_finite() && secs > 0.0) {
                return Err(format!("{s:?} must be above zero"));
            }
            Duration::from_secs_f64(secs)
        }
        other => {
            return Err(format!(
                "expected seconds or a string like \"30s\" (got {other:?})"
            ))
        }
    };
    if d > Duration::from_secs(900) {
        return Err("must be at most 15 minutes".into());
    }
    Ok(d)
}

/// The routing table a process runs with: the providers file if settings name one (or
/// `providers.toml` exists), else the built-in renderer alone. Keys come from the environment.
pub fn from_settings(settings: &crate::config::Settings) -> Result<Providers, ConfigError> {
    from_settings_with(settings, &std::collections::HashMap::new())
}

/// Like [`from_settings`], with `secrets` (e.g. read from SSM) looked up before the environment.
pub fn from_settings_with(
    settings: &crate::config::Settings,
    secrets: &std::collections::HashMap<String, Secret>,
) -> Result<Providers, ConfigError> {
    let Some(path) = &settings.providers_file else {
        return Ok(Providers::local_only(settings.local_latency));
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| {
            ConfigError::new(
                "KILN_PROVIDERS",
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
    let lookup = |k: &str| {
        secrets
            .get(k)
            .map(|s| s.expose().to_owned())
            .or_else(|| crate::config::process_env(k))
    };
    let providers = load(path, &lookup, http)?;
    for e in providers.entries() {
        tracing::info!(
            provider = e.provider.name(),
            cost = e.cost_per_image_usd,
            priority = e.priority,
            "provider configured"
        );
    }
    Ok(providers)
}

/// Reads and checks the providers file at `path`; `env` resolves `api_key_env` names.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    http: reqwest::Client,
) -> Result<Providers, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("KILN_PROVIDERS", format!("cannot read {source}: {e}")))?;
    parse(&text, &source, env, http)
}

/// Parses and checks providers from TOML text; `source` names the file in errors.
pub fn parse(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    http: reqwest::Client,
) -> Result<Providers, ConfigError> {
    let file: File = toml::from_str(text)
        .map_err(|e| ConfigError::new(source, format!("not a valid providers file: {e}")))?;
    if file.provider.is_empty() {
        return Err(ConfigError::new(source, "no [[provider]] entries"));
    }
    let mut names = HashSet::new();
    let mut entries = Vec::with_capacity(file.provider.len());
    for (i, e) in file.provider.into_iter().enumerate() {
        let label = e.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let err = |field: &str, msg: String| {
            ConfigError::new(format!("{source}: provider {label:?}: {field}"), msg)
        };
        let name = e
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| err("name", "is required".into()))?;
        if !names.insert(name.clone()) {
            return Err(err(
                "name",
                "is used by another provider; names must be unique".into(),
            ));
        }
        if !(e.cost_per_image_usd.is_finite() && e.cost_per_image_usd >= 0.0) {
            return Err(err("cost_per_image_usd", "must be a number >= 0".into()));
        }
        let priority = e
            .priority
            .ok_or_else(|| err("priority", "is required (lower is tried first)".into()))?;
        let tiers = match &e.tiers {
            None => vec![Tier::Standard, Tier::Vip],
            Some(t) if t.is_empty() => {
                return Err(err(
                    "tiers",
                    "must list at least one of standard, vip".into(),
                ))
            }
            Some(t) => t
                .iter()
                .map(|s| s.parse::<Tier>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| err("tiers", m))?,
        };
        let timeout = e
            .timeout
            .as_ref()
            .map(parse_timeout)
            .transpose()
            .map_err(|m| err("timeout", m))?
            .unwrap_or(DEFAULT_TIMEOUT);
        let max_concurrency = e.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY);
        if !(1..=1024).contains(&max_concurrency) {
            return Err(err("max_concurrency", "must be between 1 and 1024".into()));
        }
        let protocol = e
            .protocol
            .clone()
            .ok_or_else(|| err("protocol", "is required: openai, stability or local".into()))?;
        let remote = |field: &str, v: &Option<String>| {
            v.clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| err(field, format!("is required for protocol {protocol}")))
        };
        let provider: Arc<dyn ImageProvider> = match protocol.as_str() {
            "local" => Arc::new(LocalProvider::named(
                name.clone(),
                Duration::from_millis(e.latency_ms.unwrap_or(0)),
            )),
            "openai" | "stability" => {
                let endpoint = remote("endpoint", &e.endpoint)?;
                let url = reqwest::Url::parse(&endpoint)
                    .map_err(|x| err("endpoint", format!("not a URL: {x}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(err("endpoint", "must be an http(s) URL".into()));
                }
                let model = remote("model", &e.model)?;
                let key_env = remote("api_key_env", &e.api_key_env)?;
                let key = env(&key_env)
                    .filter(|k| !k.trim().is_empty())
                    .map(Secret::new)
                    .ok_or_else(|| {
                        err(
                            "api_key_env",
                            format!("environment variable {key_env} is not set"),
                        )
                    })?;
                if protocol == "openai" {
                    let extra = match &e.extra {
                        None => serde_json::Map::new(),
                        Some(t) => match serde_json::to_value(t) {
                            Ok(serde_json::Value::Object(m)) => m,
                            _ => return Err(err("extra", "must be a table".into())),
                        },
                    };
                    Arc::new(OpenAiProvider::new(
                        name.clone(),
                        endpoint,
                        model,
                        key,
                        http.clone(),
                        timeout,
                        extra,
                    ))
                } else {
                    if e.extra.is_some() {
                        return Err(err("extra", "is only supported for protocol openai".into()));
                    }
                    Arc::new(StabilityProvider::new(
                        name.clone(),
                        endpoint,
                        model,
                        key,
                        http.clone(),
                        timeout,
                    ))
                }
            }
            other => {
                return Err(err(
                    "protocol",
                    format!("unknown protocol {other:?}: expected openai, stability or local"),
                ))
            }
        };
        if protocol != "local" && e.latency_ms.is_some() {
            return Err(err(
                "latency_ms",
                "is only supported for protocol local".into(),
            ));
        }
        entries.push(ProviderEntry {
            provider: Arc::new(Limited::new(provider, max_concurrency)),
            cost_per_image_usd: e.cost_per_image_usd,
            priority,
            tiers,
        });
    }
    for tier in [Tier::Standard, Tier::Vip] {
        if !entries.iter().any(|e| e.tiers.contains(&tier)) {
            return Err(ConfigError::new(
                source,
                format!("no provider serves tier {tier}: add it to some provider's tiers"),
            ));
        }
    }
    Ok(Providers::new(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "SET_KEY").then(|| "sk-test".to_owned())
    }

    fn try_parse(text: &str) -> Result<Providers, ConfigError> {
        parse(text, "providers.toml", &env, reqwest::Client::new())
    }

    const GOOD: &str = r#"
[[provider]]
name = "cheap"
protocol = "openai"
endpoint = "https://api.example.com/v1"
model = "m"
api_key_env = "SET_KEY"
cost_per_image_usd = 0.002
priority = 1
timeout = "20s"
max_concurrency = 4

[[provider]]
name = "good"
protocol = "stability"
endpoint = "https://api.stability.example"
model = "core"
api_key_env = "SET_KEY"
cost_per_image_usd = 0.008
priority = 2
tiers = ["vip"]
timeout = 45

[[provider]]
name = "fallback"
protocol = "local"
priority = 9
"#;

    #[test]
    fn a_good_file_routes_like_the_seed() {
        let p = try_parse(GOOD).unwrap();
        let names = |t| {
            p.route(t)
                .iter()
                .map(|e| e.provider.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Tier::Standard), ["fallback", "cheap"]);
        assert_eq!(names(Tier::Vip), ["good", "cheap", "fallback"]);
    }

    #[test]
    fn each_mistake_names_the_entry_and_field() {
        let cases: &[(&str, &str)] = &[
            ("[[provider]]\nname = \"a\"\nprotocol = \"dalle\"\npriority = 1", "\"a\": protocol"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"openai\"\nendpoint = \"https://x\"\nmodel = \"m\"\napi_key_env = \"UNSET\"\npriority = 1", "\"a\": api_key_env"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\n[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 2", "\"a\": name"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\ntiers = [\"standard\"]", "no provider serves tier vip"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\ntiers = [\"gold\"]", "\"a\": tiers"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"", "\"a\": priority"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\ntimeout = \"soon\"", "\"a\": timeout"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"openai\"\npriority = 1", "\"a\": endpoint"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\ncolour = 1", "colour"),
            ("[[provider]]\nname = \"a\"\nprotocol = \"local\"\npriority = 1\ncost_per_image_usd = -1.0", "cost_per_image_usd"),
            ("", "no [[provider]]"),
            ("[[provider", "not a valid providers file"),
        ];
        for (text, want) in cases {
            let e = try_parse(text).expect_err(text);
            assert!(
                e.to_string().contains(want),
                "{text}\n=> {e}\n(wanted {want})"
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_timeout(&toml::Value::String("500ms".into())).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_timeout(&toml::Value::Integer(3)).unwrap(),
            Duration::from_secs(3)
        );
        assert!(parse_timeout(&toml::Value::Integer(0)).is_err());
        assert!(parse_timeout(&toml::Value::String("2h".into())).is_err());
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn the_committed_example_loads_and_routes_as_documented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers.example.toml");
        let env = |k: &str| k.ends_with("_API_KEY").then(|| "k".to_owned());
        let p = load(&path, &env, reqwest::Client::new()).expect("the example file is valid");
        let names = |t| {
            p.route(t)
                .iter()
                .map(|e| e.provider.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Tier::Vip),
            ["stability", "deepseek", "doubao", "local"]
        );
        assert_eq!(names(Tier::Standard), ["local", "deepseek", "stability"]);
    }
}
