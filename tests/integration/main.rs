//! Kiln's integration and end-to-end tests: one binary, one module per area.

mod contract_local;
