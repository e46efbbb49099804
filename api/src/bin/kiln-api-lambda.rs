//! Lambda main of the API function.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    kiln_api::lambda::run().await
}
