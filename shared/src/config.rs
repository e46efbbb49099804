//! Configuration: one [`Settings`] built from `KILN_*` environment variables. This is the only
//! module that reads the environment; every error names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::domain::{RateLimit, Tier, TierLimits};

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

/// The AWS resources the `aws` backend runs on, each from a `KILN_*` variable that is required
/// when `KILN_BACKEND=aws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsResources {
    /// `KILN_TABLE`: the DynamoDB table of jobs and API keys.
    pub table: String,
    /// `KILN_JOBS_QUEUE_URL`: the SQS jobs queue.
    pub jobs_queue_url: String,
    /// `KILN_JOBS_DLQ_URL`: the jobs queue's dead-letter queue.
    pub jobs_dlq_url: String,
    /// `KILN_WEBHOOKS_QUEUE_URL`: the SQS queue of webhook events.
    pub webhooks_queue_url: String,
    /// `KILN_WEBHOOKS_DLQ_URL`: the webhook queue's dead-letter queue.
    pub webhooks_dlq_url: String,
    /// `KILN_BUCKET`: the S3 bucket of images.
    pub bucket: String,
}

impl AwsResources {
    fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<'_, F>) -> Result<Self, ConfigError> {
        let url = |var: &str| {
            let u = env.required(var, "KILN_BACKEND=aws")?;
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(u)
            } else {
                Err(ConfigError::new(
                    var,
                    format!("must be an SQS queue URL starting with https:// (got {u:?})"),
                ))
            }
        };
        Ok(Self {
            table: env.required("KILN_TABLE", "KILN_BACKEND=aws")?,
            jobs_queue_url: url("KILN_JOBS_QUEUE_URL")?,
            jobs_dlq_url: url("KILN_JOBS_DLQ_URL")?,
            webhooks_queue_url: url("KILN_WEBHOOKS_QUEUE_URL")?,
            webhooks_dlq_url: url("KILN_WEBHOOKS_DLQ_URL")?,
            bucket: env.required("KILN_BUCKET", "KILN_BACKEND=aws")?,
        })
    }
}

/// JWT bearer tokens, accepted beside API keys when `KILN_JWT_SECRET` or `KILN_JWT_JWKS_URL` is
/// set; issuer and audience are then required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// `KILN_JWT_SECRET`: the HS256 shared secret.
    pub hs256_secret: Option<Secret>,
    /// `KILN_JWT_JWKS_URL`: where the RS256 public keys are published (a JWKS, as Cognito's).
    pub jwks_url: Option<String>,
    /// `KILN_JWT_ISSUER`: the `iss` every token must carry.
    pub issuer: String,
    /// `KILN_JWT_AUDIENCE`: an `aud` every token must carry.
    pub audience: String,
    /// `KILN_JWT_TIER_CLAIM`: the claim holding the tier (`standard` or `vip`); default `tier`.
    /// A token without it is `standard`.
    pub tier_claim: String,
    /// `KILN_JWT_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf`; default 30.
    pub leeway: Duration,
}

impl JwtSettings {
    fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<'_, F>,
    ) -> Result<Option<Self>, ConfigError> {
        let hs256_secret = env.text("KILN_JWT_SECRET").map(Secret::new);
        let jwks_url = env.text("KILN_JWT_JWKS_URL");
        if hs256_secret.is_none() && jwks_url.is_none() {
            return Ok(None);
        }
        if let Some(secret) = &hs256_secret {
            if secret.expose().len() < 32 {
                return Err(ConfigError::new(
                    "KILN_JWT_SECRET",
                    "must be at least 32 bytes for HS256",
                ));
            }
        }
        if let Some(u) = &jwks_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(ConfigError::new(
                    "KILN_JWT_JWKS_URL",
                    format!("must be an http(s) URL (got {u:?})"),
                ));
            }
        }
        let because = "KILN_JWT_SECRET or KILN_JWT_JWKS_URL is set";
        Ok(Some(Self {
            hs256_secret,
            jwks_url,
            issuer: env.required("KILN_JWT_ISSUER", because)?,
            audience: env.required("KILN_JWT_AUDIENCE", because)?,
            tier_claim: env
                .text("KILN_JWT_TIER_CLAIM")
                .unwrap_or_else(|| "tier".to_owned()),
            leeway: env.secs("KILN_JWT_LEEWAY_SECS", 30)?,
        }))
    }
}

/// Per-tier limits: `KILN_RATE_LIMIT_{STANDARD,VIP}` (`N/s`, `N/min`, `N/h` or `off`; default
/// 60/min and 600/min) and `KILN_MAX_IN_FLIGHT_{STANDARD,VIP}` (a count or `off`; default 20
/// and 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The `standard` tier's.
    pub standard: TierLimits,
    /// The `vip` tier's.
    pub vip: TierLimits,
}

impl Limits {
    /// The limits of `tier`.
    pub fn of(&self, tier: Tier) -> TierLimits {
        match tier {
            Tier::Standard => self.standard,
            Tier::Vip => self.vip,
        }
    }

    fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<'_, F>) -> Result<Self, ConfigError> {
        let rate = |var: &str, default: RateLimit| -> Result<Option<RateLimit>, ConfigError> {
            match env.text(var).as_deref() {
                None => Ok(Some(default)),
                Some("off") => Ok(None),
                Some(_) => env.parse(var, default).map(Some),
            }
        };
        let cap = |var: &str, default: u32| -> Result<Option<u32>, ConfigError> {
            match env.text(var).as_deref() {
                None => Ok(Some(default)),
                Some("off") => Ok(None),
                Some(_) => match env.parse(var, default)? {
                    0 => Err(ConfigError::new(var, "must be at least 1, or off")),
                    n => Ok(Some(n)),
                },
            }
        };
        let per_min = |requests| RateLimit {
            requests,
            window: Duration::from_secs(60),
        };
        Ok(Self {
            standard: TierLimits {
                rate: rate("KILN_RATE_LIMIT_STANDARD", per_min(60))?,
                max_in_flight: cap("KILN_MAX_IN_FLIGHT_STANDARD", 20)?,
            },
            vip: TierLimits {
                rate: rate("KILN_RATE_LIMIT_VIP", per_min(600))?,
                max_in_flight: cap("KILN_MAX_IN_FLIGHT_VIP", 200)?,
            },
        })
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
    /// `KILN_API_KEY_CACHE_SECS`: how long the API keeps an API key it found before looking it
    /// up again, which is also how long a revoked key may keep working; 0 looks up every
    /// request; default 5.
    pub api_key_cache: Duration,
    /// `KILN_LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `KILN_PROVIDER_KEYS_SSM_PATH`: on AWS, an SSM Parameter Store path whose parameters are
    /// the providers' keys, named like their `api_key_env` (read once at start).
    pub provider_keys_ssm_path: Option<String>,
    /// `KILN_WEBHOOK_ALLOW_HTTP`: accept plain `http` webhook URLs; default false.
    pub webhook_allow_http: bool,
    /// `KILN_WEBHOOK_ALLOW_PRIVATE`: let webhooks reach loopback and private addresses; for
    /// local development only, never on a shared server; default false.
    pub webhook_allow_private: bool,
    /// `KILN_WEBHOOK_RETRY_DELAYS`: comma-separated waits before each retry of a failed
    /// delivery, in seconds (`5,300,1800,7200,18000,36000,36000` by default).
    pub webhook_retry_delays: Vec<Duration>,
    /// The AWS resource names; `Some` exactly when `backend` is `aws`.
    pub aws: Option<AwsResources>,
    /// JWT validation; `None` unless `KILN_JWT_SECRET` or `KILN_JWT_JWKS_URL` is set.
    pub jwt: Option<JwtSettings>,
    /// Rate limits and caps on jobs in flight, per tier.
    pub limits: Limits,
    /// `KILN_CORS_ORIGINS`: comma-separated origins allowed to call the API from a browser, or
    /// `*` for any; none by default (no CORS headers at all).
    pub cors_origins: Vec<String>,
}

/// Waits before each retry of a failed webhook delivery: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// 10 h (about 28 hours in all), then the event goes to the dead-letter queue.
pub const DEFAULT_WEBHOOK_RETRY_DELAYS: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];

fn parse_delays(var: &str, v: &str) -> Result<Vec<Duration>, ConfigError> {
    let delays = v
        .split(',')
        .map(|p| p.trim().parse::<u64>().map(Duration::from_secs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(var, format!("invalid value {v:?}: {e}")))?;
    if delays.len() > 20 {
        return Err(ConfigError::new(var, "at most 20 retries"));
    }
    Ok(delays)
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
        let backend = env.parse("KILN_BACKEND", Backend::Local)?;
        let aws = match backend {
            Backend::Aws => Some(AwsResources::from_env(&env)?),
            Backend::Local => None,
        };
        Ok(Self {
            backend,
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
            api_key_cache: env.secs("KILN_API_KEY_CACHE_SECS", 5)?,
            log_format: env.parse("KILN_LOG_FORMAT", LogFormat::Pretty)?,
            provider_keys_ssm_path: env.text("KILN_PROVIDER_KEYS_SSM_PATH"),
            webhook_allow_http: env.parse("KILN_WEBHOOK_ALLOW_HTTP", false)?,
            webhook_allow_private: env.parse("KILN_WEBHOOK_ALLOW_PRIVATE", false)?,
            webhook_retry_delays: match env.text("KILN_WEBHOOK_RETRY_DELAYS") {
                Some(v) => parse_delays("KILN_WEBHOOK_RETRY_DELAYS", &v)?,
                None => DEFAULT_WEBHOOK_RETRY_DELAYS
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect(),
            },
            aws,
            jwt: JwtSettings::from_env(&env)?,
            limits: Limits::from_env(&env)?,
            cors_origins: cors_origins(&env)?,
        })
    }
}

fn cors_origins<F: Fn(&str) -> Option<String>>(
    env: &Env<'_, F>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = env.text("KILN_CORS_ORIGINS") else {
        return Ok(Vec::new());
    };
    let origins: Vec<String> = list
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    for o in &origins {
        let ok = o == "*" || o.starts_with("http://") || o.starts_with("https://");
        if !ok || (o == "*" && origins.len() > 1) {
            return Err(ConfigError::new(
                "KILN_CORS_ORIGINS",
                format!("expected `*` alone or http(s) origins separated by commas (got {o:?})"),
            ));
        }
    }
    Ok(origins)
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn text(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, var: &str, because: &str) -> Result<String, ConfigError> {
        self.text(var)
            .ok_or_else(|| ConfigError::new(var, format!("is required when {because}")))
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

/// Looks a variable up in the process environment; for settings that name other variables
/// (a provider's `api_key_env`).
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
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

    const AWS_VARS: [(&str, &str); 7] = [
        ("KILN_BACKEND", "aws"),
        ("KILN_TABLE", "kiln"),
        ("KILN_JOBS_QUEUE_URL", "https://sqs.test/1/jobs"),
        ("KILN_JOBS_DLQ_URL", "https://sqs.test/1/jobs-dlq"),
        ("KILN_WEBHOOKS_QUEUE_URL", "https://sqs.test/1/hooks"),
        ("KILN_WEBHOOKS_DLQ_URL", "https://sqs.test/1/hooks-dlq"),
        ("KILN_BUCKET", "kiln-images"),
    ];

    #[test]
    fn aws_resources_are_read_only_for_the_aws_backend() {
        let s = settings(&AWS_VARS).unwrap();
        let aws = s.aws.unwrap();
        assert_eq!(aws.table, "kiln");
        assert_eq!(aws.webhooks_dlq_url, AWS_VARS[5].1);
        assert_eq!(aws.bucket, "kiln-images");
        // The local backend needs none of them and ignores them.
        assert!(settings(&AWS_VARS[1..]).unwrap().aws.is_none());
    }

    #[test]
    fn each_missing_aws_resource_is_named() {
        for (missing, (var, _)) in AWS_VARS.iter().enumerate().skip(1) {
            let vars: Vec<_> = AWS_VARS
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, v)| *v)
                .collect();
            let err = settings(&vars).expect_err(var);
            assert_eq!(err.var, *var, "{err}");
            assert!(err.message.contains("KILN_BACKEND=aws"), "{err}");
        }
        let mut vars = AWS_VARS.to_vec();
        vars[2] = ("KILN_JOBS_QUEUE_URL", "jobs");
        assert_eq!(settings(&vars).unwrap_err().var, "KILN_JOBS_QUEUE_URL");
    }

    #[test]
    fn webhook_settings_are_off_by_default_and_parsed_strictly() {
        let s = settings(&[]).unwrap();
        assert!(!s.webhook_allow_http && !s.webhook_allow_private);
        assert_eq!(s.webhook_retry_delays.len(), 7);
        assert_eq!(s.webhook_retry_delays[1], Duration::from_secs(300));
        let s = settings(&[
            ("KILN_WEBHOOK_ALLOW_HTTP", "true"),
            ("KILN_WEBHOOK_RETRY_DELAYS", "1, 2,3"),
        ])
        .unwrap();
        assert!(s.webhook_allow_http && !s.webhook_allow_private);
        assert_eq!(s.webhook_retry_delays, [1, 2, 3].map(Duration::from_secs));
        for (var, val) in [
            ("KILN_WEBHOOK_ALLOW_HTTP", "yes"),
            ("KILN_WEBHOOK_ALLOW_PRIVATE", "1"),
            ("KILN_WEBHOOK_RETRY_DELAYS", "5,x"),
        ] {
            assert_eq!(settings(&[(var, val)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn jwt_needs_issuer_and_audience_and_names_each_variable() {
        assert!(settings(&[]).unwrap().jwt.is_none());
        let secret = ("KILN_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let err = settings(&[secret]).unwrap_err();
        assert_eq!(err.var, "KILN_JWT_ISSUER");
        let err = settings(&[secret, ("KILN_JWT_ISSUER", "i")]).unwrap_err();
        assert_eq!(err.var, "KILN_JWT_AUDIENCE");
        let full = [
            secret,
            ("KILN_JWT_ISSUER", "https://issuer"),
            ("KILN_JWT_AUDIENCE", "kiln"),
            ("KILN_JWT_TIER_CLAIM", "custom:tier"),
        ];
        let jwt = settings(&full).unwrap().jwt.unwrap();
        assert_eq!(jwt.tier_claim, "custom:tier");
        assert_eq!(jwt.leeway, Duration::from_secs(30));
        assert!(!format!("{jwt:?}").contains("0123456789abcdef"));
        for (var, val) in [
            ("KILN_JWT_SECRET", "short"),
            ("KILN_JWT_JWKS_URL", "ftp://keys"),
            ("KILN_JWT_LEEWAY_SECS", "-3"),
        ] {
            let mut vars = full.to_vec();
            vars.push((var, val));
            assert_eq!(settings(&vars).unwrap_err().var, var);
        }
    }

    #[test]
    fn limits_default_per_tier_and_can_be_turned_off() {
        let l = settings(&[]).unwrap().limits;
        assert_eq!(l.standard.rate.unwrap().to_string(), "60/min");
        assert_eq!(l.vip.rate.unwrap().to_string(), "600/min");
        assert_eq!(l.of(Tier::Standard).max_in_flight, Some(20));
        assert_eq!(l.of(Tier::Vip).max_in_flight, Some(200));
        let l = settings(&[
            ("KILN_RATE_LIMIT_STANDARD", "5/s"),
            ("KILN_RATE_LIMIT_VIP", "off"),
            ("KILN_MAX_IN_FLIGHT_VIP", "off"),
        ])
        .unwrap()
        .limits;
        assert_eq!(l.standard.rate.unwrap().window, Duration::from_secs(1));
        assert_eq!(
            l.vip,
            TierLimits {
                rate: None,
                max_in_flight: None
            }
        );
        for (var, val) in [
            ("KILN_RATE_LIMIT_STANDARD", "60"),
            ("KILN_RATE_LIMIT_VIP", "0/min"),
            ("KILN_MAX_IN_FLIGHT_STANDARD", "0"),
            ("KILN_MAX_IN_FLIGHT_VIP", "many"),
        ] {
            assert_eq!(settings(&[(var, val)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn cors_origins_are_a_list_or_a_star() {
        assert!(settings(&[]).unwrap().cors_origins.is_empty());
        let s = settings(&[("KILN_CORS_ORIGINS", "https://a.test, http://b.test:8080/")]).unwrap();
        assert_eq!(s.cors_origins, ["https://a.test", "http://b.test:8080"]);
        for bad in ["a.test", "*,https://a.test"] {
            let err = settings(&[("KILN_CORS_ORIGINS", bad)]).unwrap_err();
            assert_eq!(err.var, "KILN_CORS_ORIGINS");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let s = settings(&[("KILN_URL_SIGNING_SECRET", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
