//! The port contracts against the local adapters.
