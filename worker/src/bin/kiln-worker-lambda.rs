//! Lambda main of the jobs worker function.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    kiln_worker::lambda::run_jobs().await
}
