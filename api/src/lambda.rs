//! The API on AWS Lambda: the same router as `kiln serve`, behind API Gateway (HTTP API, payload
//! v2) through `lambda_http`. Settings and adapters are built once per cold start.

use std::sync::Arc;

use kiln_shared::adapters::Services;
use kiln_shared::config::Settings;
use kiln_shared::{logging, SystemClock};

use crate::{router, ApiConfig, AppState};

/// Runs the API function until the Lambda runtime stops it.
pub async fn run() -> Result<(), lambda_http::Error> {
    let settings = Settings::from_env()?;
    logging::init(settings.log_format);
    let services = Services::from_settings(&settings, Arc::new(SystemClock)).await?;
    let state = AppState {
        store: services.store,
        queue: services.jobs_queue,
        blobs: services.blobs,
        url_signer: services.url_signer,
        clock: services.clock,
        config: ApiConfig::from_settings(&settings),
    };
    lambda_http::run(router(state)).await
}
