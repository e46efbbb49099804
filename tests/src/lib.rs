//! Test support for Kiln: the app spawned on a free port, port contract suites, fake servers.

pub mod app;
pub mod chaos;
pub mod contract;
pub mod fake_provider;
pub mod lambda_runtime;
pub mod moto;
pub mod process;
pub mod providers;
pub mod webhook_receiver;
