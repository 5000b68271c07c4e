//! One module per CLI command: wiring only, no logic of its own.

pub mod check;
pub mod simulate;
