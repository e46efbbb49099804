//! The webhook sender Lambda main, built inside the test crate so tests can run it as a process.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    kiln_worker::lambda::run_webhooks().await
}
