//! Secrets kept in SSM Parameter Store: every parameter under a path, decrypted, by the last
//! segment of its name (`/kiln/providers/DEEPSEEK_API_KEY` -> `DEEPSEEK_API_KEY`). Read once at
//! start, so a provider's `api_key_env` finds its key without it ever being in the function's
//! environment.

use std::collections::HashMap;

use super::AwsClients;
use crate::config::{ConfigError, Secret};

/// Most pages read under one path (10 parameters a page).
const MAX_PAGES: usize = 20;

/// Every parameter under `path`, decrypted, keyed by the last segment of its name.
pub async fn parameters_by_path(
    clients: &AwsClients,
    path: &str,
) -> Result<HashMap<String, Secret>, ConfigError> {
    let var = "KILN_PROVIDER_KEYS_SSM_PATH";
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            var,
            format!("must be a path starting with '/' (got {path:?})"),
        ));
    }
    let mut out = HashMap::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = clients
            .ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                ConfigError::new(
                    var,
                    format!(
                        "cannot read parameters under {path}: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(&e)
                    ),
                )
            })?;
        for p in page.parameters() {
            if let (Some(name), Some(value)) = (p.name(), p.value()) {
                let key = name.rsplit('/').next().unwrap_or(name).to_owned();
                out.insert(key, Secret::new(value));
            }
        }
        match page.next_token() {
            Some(t) => next = Some(t.to_owned()),
            None => return Ok(out),
        }
    }
    Err(ConfigError::new(
        var,
        format!("more than {} parameters under {path}", MAX_PAGES * 10),
    ))
}

/// One SecureString parameter, decrypted; `var` names the setting that named it.
pub async fn parameter(clients: &AwsClients, name: &str, var: &str) -> Result<Secret, ConfigError> {
    let out = clients
        .ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            ConfigError::new(
                var,
                format!(
                    "cannot read parameter {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                ),
            )
        })?;
    out.parameter()
        .and_then(|p| p.value())
        .map(Secret::new)
        .ok_or_else(|| ConfigError::new(var, format!("parameter {name} has no value")))
}
