//! The API on AWS Lambda: the same router as `kiln serve`, behind API Gateway (HTTP API, payload
//! v2) through `lambda_http`. Settings and adapters are built once per cold start.

use std::sync::Arc;

use kiln_shared::adapters::aws::{parameter, AwsClients, AwsOverrides};
use kiln_shared::adapters::Services;
use kiln_shared::config::{process_env, Settings};
use kiln_shared::{logging, SystemClock};

use crate::{router, ApiConfig, AppState};

/// Runs the API function until the Lambda runtime stops it.
pub async fn run() -> Result<(), lambda_http::Error> {
    let settings = with_jwt_secret_from_ssm(Settings::from_env()?).await?;
    logging::init(settings.log_format);
    let services = Services::on_aws(&settings, Arc::new(SystemClock)).await?;
    let state = AppState {
        store: services.store,
        intake: services.intake,
        blobs: services.blobs,
        url_signer: services.url_signer,
        clock: services.clock,
        config: ApiConfig::from_settings(&settings),
    };
    lambda_http::run(router(state)).await
}

/// On AWS the HS256 secret lives in SSM (`KILN_JWT_SECRET_SSM` names the parameter): read it
/// once per cold start and build the settings as if it were `KILN_JWT_SECRET`.
async fn with_jwt_secret_from_ssm(settings: Settings) -> Result<Settings, lambda_http::Error> {
    let Some(name) = process_env("KILN_JWT_SECRET_SSM").filter(|n| !n.trim().is_empty()) else {
        return Ok(settings);
    };
    let clients = AwsClients::load(&AwsOverrides::default()).await?;
    let secret = parameter(&clients, name.trim(), "KILN_JWT_SECRET_SSM").await?;
    Ok(Settings::from_lookup(|k| match k {
        "KILN_JWT_SECRET" => Some(secret.expose().to_owned()),
        _ => process_env(k),
    })?)
}
