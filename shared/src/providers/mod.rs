//! Image providers and the routing between them.

pub mod local;
