//! One module per CLI command: wiring only, no logic of its own.

pub mod check;
pub mod cleanup;
pub mod pause;
pub mod report;
pub mod resume;
pub mod run;
pub mod simulate;
pub mod status;
pub mod verify;
