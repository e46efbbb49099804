//! The built-in `local` renderer.
