//! Kiln's integration and end-to-end tests: one binary, one module per area.

mod api_e2e;
mod cli;
mod contract_aws;
mod contract_local;
mod durability;
mod lambda;
mod metrics;
mod providers;
