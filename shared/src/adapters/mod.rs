//! Adapters of the ports: `local` (SQLite and files) and, later, `aws`.

#[cfg(feature = "local")]
pub mod local;
