//! pacer: run long PostgreSQL backfills during business hours without
//! hurting live traffic. A pure AIMD controller (`controller`) reads
//! production health (`signals`) and steers an executor against Postgres;
//! `sim` runs the same controller against a simulated database.

pub mod cli;
pub mod commands;
pub mod controller;
pub mod executor;
pub mod fleet;
pub mod history;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod signals;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod traffic;
