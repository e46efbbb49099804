//! Lambda main of the webhook sender function.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    kiln_worker::lambda::run_webhooks().await
}
