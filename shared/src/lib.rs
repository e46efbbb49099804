//! Kiln's core: the domain (jobs, states, validated requests), the ports the domain talks through,
//! their adapters, the image providers and the configuration.
//!
//! The domain and the ports know nothing of SQLite, AWS or HTTP; adapters are the only code that
//! names a storage SDK, and each sits behind a feature.

pub mod adapters;
pub mod clock;
pub mod config;
pub mod domain;
pub mod images;
pub mod logging;
pub mod metrics;
pub mod ports;
pub mod providers;
pub mod url_signing;
pub mod view;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
