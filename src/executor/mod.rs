//! The executor: runs a policy's backfill against PostgreSQL under the
//! controller's command.
//!
//! Two pure state machines decide; a thin async shell does the I/O. The
//! `Controller` turns signals into knobs; the `Job` (`job`) owns every
//! decision of the run itself: which keys, retries, set-aside keys,
//! sweeps, pauses and outages, restarts, fencing, the end. `run`
//! (`runner`) samples the signals every tick, reads the pause switch,
//! steps the controller, feeds the Job, and saves the Job's position; the
//! workers (`worker`) ask the Job (shared with them through `engine`) for
//! reads and attempts and run them (`batch`), each batch with its progress
//! record in the same transaction.
//! See docs/EXECUTOR.md for the guarantees.

pub mod batch;
pub mod control;
pub mod engine;
pub mod failpoint;
mod identity;
pub mod job;
pub mod keys;
mod link;
mod locks;
mod probe;
pub mod runner;
mod standby;
pub mod tally;
pub mod target;
pub mod vacuum;
pub mod worker;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch};

use crate::controller::{BatchOutcome, Knobs, ManualPause};
use crate::policy::Limits;
use crate::store::Store;
pub use runner::{RunOptions, RunOutcome, run};

/// A rate shared with other jobs (a fleet's targets on one cluster): the
/// job's workers take their rows from it, its pause pauses the job, and
/// it learns from the job's batches. The executor knows nothing of what
/// shares it.
pub trait Budget: Send + Sync {
    /// How long to wait before writing `rows` more rows, and whether the
    /// rows are granted after that wait. A wait longer than a slice is
    /// not granted: the caller waits, then asks again, so a rate that
    /// changes meanwhile (a pause lifted, a cut undone) applies at once.
    fn acquire(&self, rows: u64) -> (Duration, bool);
    /// A pause the budget imposes (a cluster signal in stop), shown as a
    /// pause by whoever holds the budget.
    fn pause(&self) -> Option<ManualPause>;
    /// One of the job's batches completed.
    fn observe(&self, batch: &BatchOutcome);
    /// Whether the job runs (is not paused), each tick: a paused job's
    /// share goes to the others.
    fn set_running(&self, running: bool);
}

/// What the coordinator tells the workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command {
    pub knobs: Knobs,
    pub paused: bool,
}

/// State shared by the coordinator and the workers.
pub struct Shared {
    pub url: String,
    pub app_name: String,
    pub store: Store,
    pub job: String,
    pub target: std::sync::Arc<target::Target>,
    pub limits: Limits,
    /// Set by workers that waited on the rate cap or the reader or had no
    /// work since the last tick; the coordinator takes it each tick.
    pub app_limited: AtomicBool,
    pub governor: Option<DefaultDirectRateLimiter>,
    /// The shared budget of a fleet target (`RunOptions::budget`).
    pub budget: Option<std::sync::Arc<dyn Budget>>,
    pub outcomes: mpsc::UnboundedSender<BatchOutcome>,
    /// Batch lines at INFO (`--log-batches`) instead of DEBUG.
    pub log_batches: bool,
    /// A pause asked for over HTTP, honoured here at once even when the
    /// store cannot be written; the coordinator stores it when it can.
    pub local_pause: std::sync::Arc<LocalPause>,
    /// `pg_postmaster_start_time()` (µs) of the server the Job's state
    /// belongs to (a copy of `Job::incarnation` the writers can read): after a restart or a failover, batches
    /// acknowledged before may be gone, so that state is worthless.
    pub incarnation: AtomicI64,
    /// Set by a writer that met another server incarnation (the Job
    /// learns of it from the attempt's `NewIncarnation` outcome).
    pub restart_seen: AtomicBool,
    /// A batch as one self-committing statement (`Store::batch_sql`);
    /// `None` when the policy's update cannot be wrapped so.
    pub batch_sql: Option<String>,
    /// Whether the server accepted `batch_sql` (decided by the first
    /// writer to connect); else batches are explicit transactions.
    pub one_statement: std::sync::OnceLock<bool>,
    /// Round trips of the workers and the reader (`batch::Trips`).
    pub trips: batch::Trips,
    /// Wakes workers waiting for work when a read of keys lands.
    pub wake: tokio::sync::Notify,
    stop: watch::Sender<bool>,
}

/// The in-process half of the pause switch (see `Shared::local_pause`).
#[derive(Default)]
pub struct LocalPause(Mutex<Option<ManualPause>>);

impl LocalPause {
    pub fn set(&self, p: Option<ManualPause>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
    pub fn get(&self) -> Option<ManualPause> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Clear it only if it is still `p` (a newer request wins).
    pub fn clear_if(&self, p: &ManualPause) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref() == Some(p) {
            *g = None;
        }
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: String,
        app_name: String,
        store: Store,
        job: String,
        target: std::sync::Arc<target::Target>,
        limits: Limits,
        outcomes: mpsc::UnboundedSender<BatchOutcome>,
    ) -> Shared {
        let governor = limits
            .max_rows_per_second
            .and_then(std::num::NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        let batch_sql = store.batch_sql(&target.update);
        Shared {
            url,
            app_name,
            batch_sql,
            one_statement: std::sync::OnceLock::new(),
            trips: Default::default(),
            wake: tokio::sync::Notify::new(),
            store,
            job,
            target,
            limits,
            app_limited: AtomicBool::new(false),
            governor,
            budget: None,
            outcomes,
            log_batches: false,
            local_pause: Default::default(),
            incarnation: AtomicI64::new(0),
            restart_seen: AtomicBool::new(false),
            stop: watch::channel(false).0,
        }
    }

    /// Interrupt waits (rate cap, knob sleep): the Job has ended.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn max_outage(&self) -> Duration {
        self.limits.max_outage
    }
}
