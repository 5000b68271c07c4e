//! The `Job` as the Postgres driver shares it: one `Job` behind one async
//! mutex, with the reader's connection beside it.
//!
//! Why a mutex shared by the worker tasks rather than one driver task that
//! owns the Job and hands attempts to workers over channels: each worker
//! already owns its own connection and runs one attempt at a time, so
//! "lock, poll, unlock, apply, lock, report" keeps the worker loop a
//! straight line; the Job is only ever touched for microseconds. A chunk
//! of keys is read without the lock, in a task of its own beside the
//! batches (the Job asks for it ahead of need, see `Walk::read_ahead`),
//! and its result handed back under the lock (`read_done`). The coordinator
//! (`runner`) takes the same lock once a tick to feed the pause switch,
//! the link state and the controller's knobs, and to serve `poll_store`.

use std::time::Instant;

use sqlx::postgres::PgConnection;

use super::Shared;
use super::job::{Chunk, End, Event, Job};
use super::keys::Keys;

pub struct Engine {
    pub job: Job,
    /// The reader's own connection; `None` after it broke.
    pub reader: Option<PgConnection>,
    /// Why the job ended has been logged (by whichever task saw it first).
    pub end_logged: bool,
}

/// What reading a chunk came to: `Err((lost, message))` on failure.
pub type ReadResult = Result<(Option<String>, usize, Keys), (bool, String)>;

/// How long the whole-table check at a sweep's start may hold its one
/// snapshot: about 10–20M rows scanned on a modest server. A table too big
/// for that is swept by the keyset walk, as before; the check's cost then
/// is this bound, once per sweep, against a walk of many times as long.
const SWEEP_CHECK_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Answer `Io::ReadChunk` on the reader's connection (connecting it if it
/// broke), without the lock: the connection comes back with the result.
pub async fn read(
    sh: &Shared,
    reader: Option<PgConnection>,
    after: Option<String>,
    limit: u32,
    whole_table_first: bool,
) -> (Option<PgConnection>, ReadResult) {
    // Every await has a deadline: a half-open connection must not leave
    // the walk waiting forever (it is dropped and reconnected instead).
    let deadline = super::batch::client_deadline(&sh.limits);
    let mut conn = match reader {
        Some(c) => c,
        None => match tokio::time::timeout(deadline, crate::store::connect(&sh.url, &sh.app_name))
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (None, Err((true, format!("{e:#}")))),
            Err(_) => {
                return (
                    None,
                    Err((true, "connecting the reader: no answer in time".into())),
                );
            }
        },
    };
    if whole_table_first {
        sh.trips.trip();
        let bound = SWEEP_CHECK_BOUND.min(sh.limits.statement_timeout);
        match super::batch::within(
            deadline,
            "checking the whole table for pending rows",
            sh.target.nothing_pending(&mut conn, bound),
        )
        .await
        {
            Ok(Some(true)) => {
                tracing::info!("sweep: no row of the table is pending (one whole-table check)");
                return (Some(conn), Ok((None, 0, sh.target.key_type.empty())));
            }
            Ok(Some(false)) => {}
            Ok(None) => tracing::info!(
                bound = ?bound,
                "sweep: the whole-table check did not finish within its bound; walking the keys"
            ),
            Err(e) if super::batch::classify(&e).is_lost() => return read_failed(conn, &e),
            // It only ever saves work: the walk decides instead.
            Err(e) => tracing::warn!(
                error = %super::target::db_message(&e),
                "sweep: the whole-table check failed; walking the keys"
            ),
        }
    }
    sh.trips.trip();
    match super::batch::within(
        deadline,
        "reading keys",
        sh.target.read_chunk(&mut conn, after.as_deref(), limit),
    )
    .await
    {
        Ok(r) => (Some(conn), Ok(r)),
        Err(e) => read_failed(conn, &e),
    }
}

/// A failed read: a lost connection is dropped (and reconnected on the
/// next read), any other error keeps it.
fn read_failed(conn: PgConnection, e: &sqlx::Error) -> (Option<PgConnection>, ReadResult) {
    let lost = super::batch::classify(e).is_lost();
    let msg = if lost {
        super::batch::plain_error(e)
    } else {
        super::target::db_message(e)
    };
    (if lost { None } else { Some(conn) }, Err((lost, msg)))
}

impl Engine {
    /// Hand the result of `read` to the Job.
    pub fn read_done(&mut self, reader: Option<PgConnection>, r: ReadResult) {
        if self.reader.is_none() {
            self.reader = reader;
        }
        match r {
            Ok((last, read, pending)) => {
                self.job.handle_chunk(
                    Instant::now(),
                    Chunk {
                        last,
                        read,
                        pending,
                    },
                );
            }
            Err((lost, msg)) => {
                let n = self.job.handle_read_error(Instant::now(), lost, &msg);
                tracing::warn!(error = %msg, attempt = n, "reading keys failed; retrying");
            }
        }
        self.log_events();
    }

    /// Log what the Job has to say.
    /// Whether the Job has ended; the first call that sees it logs why a
    /// failed or fenced run ended, so the cause reaches the log whichever
    /// task (a worker, the tick) noticed first.
    pub fn ended(&mut self) -> bool {
        let Some(end) = self.job.end() else {
            return false;
        };
        if !self.end_logged {
            self.end_logged = true;
            match end {
                End::Failed(msg) => tracing::error!(error = %msg, "stopping the job"),
                End::StoodDown(msg) => tracing::error!(error = %msg, "standing down"),
                _ => {}
            }
        }
        true
    }

    pub fn log_events(&mut self) {
        while let Some(e) = self.job.poll_event() {
            match e {
                Event::SetAside {
                    keys,
                    first,
                    retry_in,
                } => tracing::info!(
                    keys,
                    first = %first,
                    retry_in = ?retry_in,
                    "rows locked by another session: set aside, will retry"
                ),
                Event::Sweep {
                    pass,
                    found,
                    changed,
                } => tracing::info!(
                    pass,
                    pending_found = found,
                    rows_changed = changed,
                    "pass complete; sweeping again from the start for rows inserted behind the cursor or set aside"
                ),
                Event::Restarted => tracing::warn!(
                    "the database server restarted (pg_postmaster_start_time changed): dropping the batches in hand; \
                     waiting for in-flight batches before resuming from the stored progress"
                ),
                Event::Reloaded { pass, cursor } => tracing::info!(
                    pass,
                    cursor = ?cursor,
                    "dispatch state rebuilt from the stored cursor and progress"
                ),
            }
        }
    }
}
