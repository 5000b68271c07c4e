//! Live traffic for the testbed: an open-loop, fixed-rate stream of
//! checkout-like requests against the demo `orders` table.
//!
//! Open loop means requests are sent on a schedule whatever the database's
//! speed, like real users; a closed loop would slow down exactly when the
//! database does and hide the harm a backfill causes. Latency is measured
//! from each request's *scheduled* start, so a stalled scheduler or pool
//! shows up as latency instead of silently disappearing (coordinated
//! omission).
//!
//! Routes: `checkout` (read an order, mark it paid, in one transaction:
//! the same rows the backfill writes, so row locks really contend) and
//! `browse` (a primary-key read). Exposes `traffic_request_duration_seconds`
//! on `/metrics` for Prometheus and accepts fault injection on `/control`.

pub mod control;
pub mod metrics;
pub mod workload;

pub use control::{Control, ControlUpdate};
