//! The executor: runs a policy's backfill against PostgreSQL under the
//! controller's command.
//!
//! `run` is a thin async shell around the pure `Controller`: every tick it
//! samples the signals, gathers the batch outcomes since the last tick,
//! reads the pause switch, steps the controller, records and logs changed
//! decisions, and hands the knobs to the workers. The workers
//! (`worker`) take batches from the dispatcher (`dispatch`) and apply them
//! (`batch`), each with its progress record in the same transaction.
//! See docs/EXECUTOR.md for the guarantees.

pub mod batch;
pub mod control;
pub mod dispatch;
pub mod failpoint;
pub mod keys;
pub mod runner;
pub mod target;
pub mod worker;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch};

use crate::controller::{BatchOutcome, Knobs, ManualPause};
use crate::policy::Limits;
use crate::store::Store;
pub use runner::{RunOptions, RunOutcome, run};

/// What the coordinator tells the workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command {
    pub knobs: Knobs,
    pub paused: bool,
}

/// How the workers ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Finished(dispatch::Finish),
    Failed(String),
}

/// State shared by the coordinator and the workers.
pub struct Shared {
    pub url: String,
    pub app_name: String,
    pub store: Store,
    pub job: String,
    pub target: std::sync::Arc<target::Target>,
    pub limits: Limits,
    pub next_batch_id: AtomicI64,
    pub rows_done: AtomicU64,
    /// Set by workers that waited on the rate cap or the reader or had no
    /// work since the last tick; the coordinator takes it each tick.
    pub app_limited: AtomicBool,
    pub read_errors: AtomicU32,
    pub governor: Option<DefaultDirectRateLimiter>,
    pub outcomes: mpsc::UnboundedSender<BatchOutcome>,
    /// Batch lines at INFO (`--log-batches`) instead of DEBUG.
    pub log_batches: bool,
    /// Workers take no new batch while set: the coordinator cannot read
    /// the pause switch (fail-safe), or the server restarted and the
    /// dispatch state is being rebuilt.
    pub hold: AtomicBool,
    /// A pause asked for over HTTP, honoured here at once even when the
    /// store cannot be written; the coordinator stores it when it can.
    pub local_pause: std::sync::Arc<LocalPause>,
    /// `pg_postmaster_start_time()` (µs) of the server the in-memory
    /// dispatch state belongs to: after a restart or a failover, batches
    /// acknowledged before may be gone, so that state is worthless.
    pub incarnation: AtomicI64,
    /// Set by a worker that met another server incarnation.
    pub restart_seen: AtomicBool,
    /// Bumped when the dispatch state is rebuilt; a batch taken under an
    /// older generation is dropped, never retried or completed.
    pub generation: AtomicU64,
    /// Batches taken and not yet completed or dropped.
    pub busy: AtomicUsize,
    /// The job epoch this runner took with the runner lock; every batch
    /// commits only while the job's row still carries it (fencing). 0
    /// while the coordinator is taking a new one after an outage, so a
    /// batch fenced meanwhile knows the new epoch is its own runner's.
    pub epoch: AtomicI64,
    /// Set when a batch found another runner's epoch on the job: this
    /// runner stands down and records nothing.
    fenced: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
    end: Mutex<Option<End>>,
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
        next_batch_id: i64,
        outcomes: mpsc::UnboundedSender<BatchOutcome>,
    ) -> Shared {
        let governor = limits
            .max_rows_per_second
            .and_then(std::num::NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        Shared {
            url,
            app_name,
            store,
            job,
            target,
            limits,
            next_batch_id: AtomicI64::new(next_batch_id),
            rows_done: AtomicU64::new(0),
            app_limited: AtomicBool::new(false),
            read_errors: AtomicU32::new(0),
            governor,
            outcomes,
            log_batches: false,
            hold: AtomicBool::new(false),
            local_pause: Default::default(),
            incarnation: AtomicI64::new(0),
            restart_seen: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            epoch: AtomicI64::new(0),
            fenced: Mutex::new(None),
            stop: watch::channel(false).0,
            end: Mutex::new(None),
        }
    }

    /// Stop taking new batches (graceful stop, failure, or the end).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn finish(&self, f: dispatch::Finish) {
        let mut e = self.end.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert(End::Finished(f));
        drop(e);
        self.request_stop();
    }

    pub fn fail(&self, msg: String) {
        tracing::error!(error = %msg, "stopping the job");
        let mut e = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*e, Some(End::Failed(_))) {
            *e = Some(End::Failed(msg));
        }
        drop(e);
        self.request_stop();
    }

    /// Another runner owns the job: drop the batches in hand (never retry
    /// them: their keys are the other runner's now) and stop.
    pub fn stand_down(&self, msg: String) {
        let mut f = self.fenced.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(error = %msg, "fenced off: standing down");
            *f = Some(msg);
        }
        drop(f);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.request_stop();
    }

    /// Why this runner stood down, if it did.
    pub fn fenced(&self) -> Option<String> {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn end(&self) -> Option<End> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether workers must not take a new batch, whatever the controller says.
    pub fn held(&self) -> bool {
        self.hold.load(Ordering::SeqCst) || self.local_pause.get().is_some()
    }

    pub fn max_outage(&self) -> Duration {
        self.limits.max_outage
    }

    pub fn rows(&self) -> u64 {
        self.rows_done.load(Ordering::Relaxed)
    }
}
