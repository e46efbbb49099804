//! The API Lambda main, built inside the test crate so tests can run it as a process.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    kiln_api::lambda::run().await
}
