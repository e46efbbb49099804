//! Configuration: one [`Settings`] built from `KILN_*` environment variables. This is the only
//! module that reads the environment; every error names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration error, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable (or file entry) at fault.
    pub var: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            message: message.into(),
        }
    }
}

/// A secret value; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which adapters to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite and files under the data directory.
    Local,
    /// DynamoDB, SQS and S3.
    Aws,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "aws" => Ok(Self::Aws),
            other => Err(format!("expected local or aws (got {other:?})")),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object a line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!("expected pretty or json (got {other:?})")),
        }
    }
}

/// Every setting of a Kiln process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KILN_BACKEND`: `local` (default) or `aws`.
    pub backend: Backend,
    /// `KILN_ADDR`: where `kiln serve` listens; default `127.0.0.1:3000`.
    pub addr: SocketAddr,
    /// `KILN_DATA_DIR`: the local backend's SQLite file and images; default `./.kiln`.
    pub data_dir: PathBuf,
    /// `KILN_PUBLIC_URL`: base of the absolute URLs the API hands out; default from the request.
    pub public_url: Option<String>,
    /// `KILN_PROVIDERS`: providers file; default `providers.toml` if it exists, else the
    /// built-in `local` provider alone.
    pub providers_file: Option<PathBuf>,
    /// `KILN_LOCAL_LATENCY_MS`: artificial latency of the built-in renderer; default 0.
    pub local_latency: Duration,
    /// `KILN_WORKER_CONCURRENCY`: jobs run at once per worker process; default 8.
    pub worker_concurrency: usize,
    /// `KILN_JOB_TIMEOUT_SECS`: time one run of a job may take; default 30.
    pub job_timeout: Duration,
    /// `KILN_LEASE_SECS`: how long a claim holds before another worker may take over; default
    /// the job timeout plus 15 s.
    pub lease: Duration,
    /// `KILN_VISIBILITY_TIMEOUT_SECS`: local queue's visibility timeout; default 6 x job timeout.
    pub visibility_timeout: Duration,
    /// `KILN_MAX_RECEIVE_COUNT`: deliveries before a message goes to the DLQ; default 5.
    pub max_receive_count: u32,
    /// `KILN_URL_TTL_SECS`: lifetime of signed image URLs; default 3600.
    pub url_ttl: Duration,
    /// `KILN_RETENTION_DAYS`: how long jobs are kept; default 30.
    pub retention: Duration,
    /// `KILN_URL_SIGNING_SECRET`: HMAC key for local image URLs; default a random key kept in
    /// the data directory.
    pub url_signing_secret: Option<Secret>,
    /// `KILN_MAX_BODY_BYTES`: largest request body; default 65536.
    pub max_body_bytes: usize,
    /// `KILN_LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let job_timeout = env.secs("KILN_JOB_TIMEOUT_SECS", 30)?;
        let lease = env.secs_or("KILN_LEASE_SECS", job_timeout + Duration::from_secs(15))?;
        let visibility_timeout = env.secs_or("KILN_VISIBILITY_TIMEOUT_SECS", job_timeout * 6)?;
        if lease.is_zero() || job_timeout.is_zero() || visibility_timeout.is_zero() {
            return Err(ConfigError::new(
                "KILN_JOB_TIMEOUT_SECS",
                "job timeout, lease and visibility timeout must all be above zero",
            ));
        }
        let max_receive_count = env.parse("KILN_MAX_RECEIVE_COUNT", 5u32)?;
        if max_receive_count == 0 {
            return Err(ConfigError::new(
                "KILN_MAX_RECEIVE_COUNT",
                "must be at least 1",
            ));
        }
        let worker_concurrency = env.parse("KILN_WORKER_CONCURRENCY", 8usize)?;
        if !(1..=1024).contains(&worker_concurrency) {
            return Err(ConfigError::new(
                "KILN_WORKER_CONCURRENCY",
                "must be between 1 and 1024",
            ));
        }
        let retention_days = env.parse("KILN_RETENTION_DAYS", 30u64)?;
        if !(1..=3650).contains(&retention_days) {
            return Err(ConfigError::new(
                "KILN_RETENTION_DAYS",
                "must be between 1 and 3650",
            ));
        }
        let public_url = env
            .text("KILN_PUBLIC_URL")
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::new(
                    "KILN_PUBLIC_URL",
                    format!("must start with http:// or https:// (got {u:?})"),
                ));
            }
        }
        let providers_file = match env.text("KILN_PROVIDERS") {
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from("providers.toml")).filter(|p| p.exists()),
        };
        Ok(Self {
            backend: env.parse("KILN_BACKEND", Backend::Local)?,
            addr: env.parse("KILN_ADDR", SocketAddr::from(([127, 0, 0, 1], 3000)))?,
            data_dir: env
                .text("KILN_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".kiln")),
            public_url,
            providers_file,
            local_latency: Duration::from_millis(env.parse("KILN_LOCAL_LATENCY_MS", 0u64)?),
            worker_concurrency,
            job_timeout,
            lease,
            visibility_timeout,
            max_receive_count,
            url_ttl: env.secs("KILN_URL_TTL_SECS", 3600)?,
            retention: Duration::from_secs(retention_days * 86_400),
            url_signing_secret: env.text("KILN_URL_SIGNING_SECRET").map(Secret::new),
            max_body_bytes: env.parse("KILN_MAX_BODY_BYTES", 64 * 1024usize)?,
            log_format: env.parse("KILN_LOG_FORMAT", LogFormat::Pretty)?,
        })
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn text(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.text(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| ConfigError::new(var, format!("invalid value {v:?}: {e}"))),
        }
    }

    fn secs(&self, var: &str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(var, default).map(Duration::from_secs)
    }

    fn secs_or(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.text(var) {
            None => Ok(default),
            Some(_) => self.secs(var, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_sensible() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.backend, Backend::Local);
        assert_eq!(s.addr.to_string(), "127.0.0.1:3000");
        assert_eq!(s.visibility_timeout, Duration::from_secs(180));
        assert!(s.lease > s.job_timeout);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("KILN_BACKEND", "gcp"),
            ("KILN_ADDR", "nowhere"),
            ("KILN_JOB_TIMEOUT_SECS", "-1"),
            ("KILN_MAX_RECEIVE_COUNT", "0"),
            ("KILN_WORKER_CONCURRENCY", "0"),
            ("KILN_PUBLIC_URL", "ftp://x"),
            ("KILN_LOG_FORMAT", "xml"),
            ("KILN_RETENTION_DAYS", "lots"),
        ] {
            let err = settings(&[(var, val)]).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let s = settings(&[("KILN_URL_SIGNING_SECRET", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
