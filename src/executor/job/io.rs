//! The vocabulary between the `Job` and its drivers: what it is told
//! (`Config`, `Stored`, `Chunk`, `Outcome`), what it asks for (`Io`,
//! `StoreIo`), and what it reports (`Event`, `End`). Plain data, so a
//! driver, a simulator and a property test speak it alike.

use std::time::Duration;

use super::walk::Finish;
use crate::controller::BatchError;
use crate::executor::keys::{KeyType, Keys};

/// The limits the Job enforces (from the policy).
#[derive(Debug, Clone)]
pub struct Config {
    pub key_type: KeyType,
    pub read_chunk: u32,
    pub max_retries: u32,
    pub max_outage: Duration,
    pub max_pause: Option<Duration>,
    pub stop_after_max_pause: bool,
}

/// Where a run starts (or restarts, after a new server incarnation): what
/// the store has.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub pass: i32,
    pub cursor: Option<String>,
    /// The next unused progress record id.
    pub next_batch_id: i64,
    /// `pg_postmaster_start_time()` of the server this was read from.
    pub incarnation: i64,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Read up to `limit` keys after `after` (from the start if `None`),
    /// in key order; answer with `handle_chunk` or `handle_read_error`.
    ///
    /// With `whole_table_first` (the first read of a sweep) the driver may
    /// first ask the whole table, in one statement and so one snapshot,
    /// whether any row is pending, and when none is, answer an empty chunk:
    /// the same proof a keyset sweep that found nothing gives, for a
    /// fraction of its reads. A check that fails or cannot answer within
    /// its bound proves nothing: read as usual then.
    ReadChunk {
        after: Option<String>,
        limit: u32,
        whole_table_first: bool,
    },
    /// Apply one attempt; answer with `handle_outcome(batch_id, …)`.
    Apply(Apply),
}

/// One attempt at a batch: one transaction with progress record `batch_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub batch_id: i64,
    pub keys: Keys,
    pub pass: i32,
    /// Lock the rows that are free now and apply only those; the others
    /// come back as `deferred`.
    pub lock_free: bool,
    /// The runner's epoch: the transaction must refuse to commit if the
    /// job's epoch has moved on (`Outcome::Fenced`).
    pub epoch: i64,
    /// Failed attempts of this batch so far (for the log line).
    pub retries: u32,
}

/// What the driver must do on pacer's own tables.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreIo {
    /// The server restarted: read the stored position and progress and
    /// answer with `handle_position`. Nothing may be saved before that.
    LoadPosition,
}

/// A chunk of keys read after the cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The last key read (pending or not).
    pub last: Option<String>,
    /// How many keys were read, pending or not.
    pub read: usize,
    /// The keys that match `job.pending`, in key order.
    pub pending: Keys,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Committed (or nothing to do): rows changed, keys found locked.
    Committed { rows: u64, deferred: Keys },
    /// Rolled back by the server (lock timeout, deadlock, …).
    Failed(BatchError, String),
    /// The connection broke before COMMIT: not committed.
    Lost(String),
    /// The connection broke during COMMIT and the progress record says it
    /// committed.
    AmbiguousCommitted { rows: u64 },
    /// … or says it did not.
    AmbiguousNotCommitted,
    /// An error retrying cannot fix.
    Fatal(String),
    /// The transaction found the job's epoch moved past the attempt's.
    Fenced,
    /// The server is another incarnation than the one this state belongs to.
    NewIncarnation,
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Finished(Finish),
    Failed(String),
    /// SIGINT/SIGTERM.
    Stopped,
    /// Paused longer than `job.max_pause` with `stop_after_max_pause`.
    MaxPause,
    /// Another runner owns the job: nothing more is recorded.
    StoodDown(String),
}

/// Things worth telling the user about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    SetAside {
        keys: usize,
        first: String,
        retry_in: Duration,
    },
    Sweep {
        pass: i32,
        found: u64,
        changed: u64,
    },
    /// A new server incarnation: in-memory state is being discarded.
    Restarted,
    /// The state was rebuilt from the stored position.
    Reloaded {
        pass: i32,
        cursor: Option<String>,
    },
}
