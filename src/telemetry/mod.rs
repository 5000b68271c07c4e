//! What operators see of a running job: log lines (`logging`, `events`),
//! Prometheus metrics (`metrics`), the HTTP status and control API (`http`),
//! the terminal progress bar (`progress`), the long-pause alarm
//! (`pause_watch`), and credential masking for all of them (`redact`).

pub mod events;
pub mod fold;
pub mod http;
pub mod hub;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod pause_watch;
pub mod progress;
pub mod redact;

pub use events::{BatchLine, ProgressLine, log_batch, log_decision, log_long_pause, log_progress};
pub use job::{JobTelemetry, TelemetryOptions};
pub use logging::{init, job_span};
pub use metrics::Metrics;
