//! Kiln's integration and end-to-end tests: one binary, one module per area.

mod api_e2e;
mod auth;
mod chaos;
mod cli;
mod contract_aws;
mod contract_local;
mod dlq;
mod durability;
mod idempotency;
mod lambda;
mod limits;
mod metrics;
mod openapi;
mod providers;
mod templates;
mod webhooks;
