//! The coordinator's control connection and what happens when it is
//! lost: it holds the runner lock and reads the pause switch, so while it
//! is down the job is paused. Reconnecting re-takes the runner lock (and
//! ends this runner's own lingering session on a half-open path), takes a
//! new epoch, and tells the runner which server incarnation it is on.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;

use super::job::Stored;
use super::locks::{HOLDER_UNKNOWN, try_runner_lock, try_table_lock};
use crate::controller::fmt_dur;
use crate::store::{Fail, Store};

/// Deadline of one coordinator query or connection attempt: a half-open
/// connection must not stall the tick, since the tick is what enforces a
/// pause.
pub(super) const CTL_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest wait between two reconnection attempts during an outage.
pub(super) const RECONNECT_CAP: Duration = Duration::from_secs(2);

/// How long the coordinator lets its own previous control session keep
/// the runner lock before ending it (see `Link::reconnect`).
pub(super) const OWN_SESSION_GRACE: Duration = Duration::from_secs(5);

/// The coordinator's connection: it holds the runner lock and reads the
/// pause switch, so while it is down the job is paused.
pub(super) struct Link {
    pub(super) conn: Option<PgConnection>,
    /// Backend PID of the last connection, to tell our own lingering
    /// session from another runner holding the lock.
    pub(super) pid: i32,
    /// The server incarnation that PID belongs to: a PID of an earlier
    /// incarnation is never waited on or ended.
    pub(super) incarnation: i64,
    pub(super) down: Option<Down>,
    /// The target table whose lock the run holds with the runner lock
    /// (`None` with `[job] share_table = true`).
    pub(super) table: Option<String>,
    /// The job epoch taken with the runner lock (fencing): the job's row
    /// is written only while it still carries it.
    pub(super) epoch: i64,
    /// `[job] lease`: renewed with every new connection too.
    pub(super) lease: Duration,
}

pub(super) struct Down {
    pub(super) since: Instant,
    /// Plain words for the user: `database unreachable: ...`.
    pub(super) cause: String,
    pub(super) tries: u32,
    pub(super) next_try: Instant,
}

impl Down {
    fn unreachable(&mut self, e: &anyhow::Error) {
        self.set_cause(format!("database unreachable: {}", plain_any(e)));
    }

    /// The value of a control-session step (see `bounded`), or `None` with
    /// the cause (an error, or no answer) recorded.
    fn answered<T>(&mut self, r: anyhow::Result<T>) -> Option<T> {
        r.map_err(|e| self.unreachable(&e)).ok()
    }

    /// A new cause is logged once, not once per attempt.
    pub(super) fn set_cause(&mut self, cause: String) {
        if cause != self.cause {
            tracing::warn!(cause = %cause, tries = self.tries, "still paused: the database cannot be used");
            self.cause = cause;
        }
    }
}

pub(super) enum Reconnect {
    StillDown,
    Up { incarnation: i64 },
    StandDown(String),
}

impl Link {
    pub(super) fn lose(&mut self, cause: String) {
        if let Some(c) = self.conn.take() {
            // Dropped, not closed: a close could hang on a half-open socket.
            drop(c);
        }
        match &mut self.down {
            Some(d) => d.set_cause(cause),
            None => {
                tracing::warn!(cause = %cause, "pausing: pacer cannot read its pause switch; no new batches until it can");
                let now = Instant::now();
                self.down = Some(Down {
                    since: now,
                    cause,
                    tries: 0,
                    next_try: now,
                });
            }
        }
    }

    /// One reconnection attempt if its backoff has passed: connect, check
    /// the server is a primary, re-take the runner lock and take a new
    /// epoch (the Job learns it from `handle_link_up`).
    pub(super) async fn reconnect(
        &mut self,
        url: &str,
        app: &str,
        store: &Store,
        job: &str,
    ) -> Reconnect {
        let Some(d) = &mut self.down else {
            return Reconnect::StillDown;
        };
        if Instant::now() < d.next_try {
            return Reconnect::StillDown;
        }
        d.tries += 1;
        d.next_try = Instant::now() + crate::store::backoff(d.tries, RECONNECT_CAP);
        let attempt = async {
            let mut c = crate::store::connect(url, &format!("{app}:control")).await?;
            let (pid, inc): (i32, i64) = sqlx::query_as(super::batch::INCARNATION_SQL)
                .fetch_one(&mut c)
                .await?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await?;
            anyhow::Ok((c, pid, inc, standby))
        };
        let Some((mut c, pid, inc, standby)) = d.answered(bounded(attempt).await) else {
            return Reconnect::StillDown;
        };
        if standby {
            d.set_cause("database unreachable: the server is a standby (in recovery); waiting for a primary".into());
            return Reconnect::StillDown;
        }
        match bounded(try_runner_lock(&mut c, store, job)).await {
            Ok(None) => {
                if let Some(table) = &self.table {
                    match bounded(try_table_lock(&mut c, table)).await {
                        Ok(None) => {}
                        Ok(Some(holder)) => {
                            return Reconnect::StandDown(format!(
                                "while the database was unreachable another pacer job took table {table} ({holder}); \
                                 standing down: one job per table"
                            ));
                        }
                        Err(e) => {
                            d.unreachable(&e);
                            return Reconnect::StillDown;
                        }
                    }
                }
            }
            Ok(Some(holder))
                if holder.contains(&format!("pid {} ", self.pid)) || holder == HOLDER_UNKNOWN =>
            {
                // Our previous session has not ended yet (or ended between
                // the two queries: no holder found; a genuine other runner
                // is named on the next attempt). It ends by itself when
                // pacer dropped a working socket, but not when the network
                // half-opened: the server keeps it, and the runner lock with
                // it. After a grace it is ended, like an ambiguous commit's
                // backend; only on the same server incarnation.
                if holder != HOLDER_UNKNOWN
                    && inc == self.incarnation
                    && d.since.elapsed() > OWN_SESSION_GRACE
                {
                    let _ = tokio::time::timeout(
                        CTL_TIMEOUT,
                        sqlx::query("SELECT pg_terminate_backend($1)")
                            .bind(self.pid)
                            .execute(&mut c),
                    )
                    .await;
                    d.set_cause(format!(
                        "control connection lost: ending the previous control session (pid {}), which still holds the runner lock",
                        self.pid
                    ));
                } else {
                    d.set_cause("control connection lost: waiting for the previous session to release the runner lock".into());
                }
                return Reconnect::StillDown;
            }
            Ok(Some(holder)) => {
                return Reconnect::StandDown(format!(
                    "while the database was unreachable another pacer took over job {job:?} ({holder}); \
                     standing down: one runner per job"
                ));
            }
            Err(e) => {
                d.unreachable(&e);
                return Reconnect::StillDown;
            }
        }
        // The lock was free, but a standby may have taken the job over and
        // finished or stopped while this runner was frozen or cut off: the
        // lease names the last runner. Not this one: stand down.
        let Some(lease) = d.answered(bounded(store.lease(&mut c, job)).await) else {
            return Reconnect::StillDown;
        };
        if let Some(h) = lease
            .and_then(|l| l.holder)
            .filter(|h| h != crate::store::lease::runner_id())
        {
            return Reconnect::StandDown(format!(
                "while this runner was unreachable another pacer took over job {job:?} ({h}); \
                 standing down: one runner per job"
            ));
        }
        // Every acquisition of the runner lock takes a new epoch: a runner
        // that held the job before, this one included, commits nothing
        // more under the old one. Attempts fenced by this very bump come
        // back while the link is still down: the Job applies them again
        // under the new epoch.
        let bumped =
            tokio::time::timeout(2 * CTL_TIMEOUT, store.bump_epoch(&mut c, job, CTL_TIMEOUT)).await;
        let new_epoch = match bumped {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                d.set_cause(format!(
                    "control connection lost: taking a new job epoch failed: {}",
                    plain_any(&e)
                ));
                return Reconnect::StillDown;
            }
            Err(_) => {
                d.set_cause(format!(
                    "control connection lost: taking a new job epoch took longer than {}",
                    fmt_dur(2 * CTL_TIMEOUT)
                ));
                return Reconnect::StillDown;
            }
        };
        // Alive again: renew the lease at once (a standby may be counting
        // down), and the new session ends by itself if this runner freezes.
        if let Err(e) = bounded(store.renew_lease(&mut c, job, new_epoch, self.lease)).await {
            d.set_cause(format!(
                "control connection lost: renewing the lease failed: {}",
                plain_any(&e)
            ));
            return Reconnect::StillDown;
        }
        let _ = tokio::time::timeout(
            CTL_TIMEOUT,
            crate::store::lease::arm_idle_timeout(&mut c, self.lease),
        )
        .await;
        let outage = d.since.elapsed();
        tracing::info!(
            outage = %fmt_dur(Duration::from_millis(outage.as_millis() as u64)),
            epoch = new_epoch,
            "database reachable again; runner lock re-taken"
        );
        self.conn = Some(c);
        self.pid = pid;
        self.incarnation = inc;
        self.epoch = new_epoch;
        self.down = None;
        Reconnect::Up { incarnation: inc }
    }

    /// At the end of a run: a plain connection to record the outcome,
    /// trying until `limit` since the outage began.
    pub(super) async fn wait_until_up(
        &mut self,
        url: &str,
        app: &str,
        limit: Duration,
    ) -> Option<PgConnection> {
        let since = self.down.as_ref().map_or_else(Instant::now, |d| d.since);
        let mut n = 0;
        loop {
            let c = tokio::time::timeout(
                CTL_TIMEOUT,
                crate::store::connect(url, &format!("{app}:control")),
            )
            .await;
            if let Ok(Ok(c)) = c {
                return Some(c);
            }
            if since.elapsed() > limit {
                return None;
            }
            n += 1;
            tokio::time::sleep(crate::store::backoff(n, RECONNECT_CAP)).await;
        }
    }
}

/// A control-session query that got no answer within `CTL_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0}")]
pub(super) struct NoAnswer(String);

/// A control-session step bounded by `CTL_TIMEOUT`. A half-open path (no
/// data, no reset) never errors on its own: unbounded, one write of the
/// tick's would hold the tick, and with it pauses, the lease and the end of
/// the run, forever. No answer is an error `is_lost` recognises, so the
/// caller drops the session as if it had broken.
pub(super) async fn bounded<T>(
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(CTL_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| Err(NoAnswer(fmt_dur(CTL_TIMEOUT)).into()))
}

pub(super) fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<NoAnswer>()
            || c.downcast_ref::<sqlx::Error>()
                .is_some_and(|e| super::batch::classify(e).is_lost())
    })
}

pub(super) fn plain(e: &anyhow::Error) -> String {
    plain_any(e)
}

/// An error in plain words (see `batch::plain_error`).
pub(super) fn plain_any(e: &anyhow::Error) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) {
        Some(s) => super::batch::plain_error(s),
        None => {
            let raw = format!("{e:#}");
            let lower = raw.to_lowercase();
            if lower.contains("connection refused") {
                format!("connection refused (the server is down or restarting): {raw}")
            } else if lower.contains("starting up") || lower.contains("shutting down") {
                format!("the server is restarting: {raw}")
            } else {
                raw
            }
        }
    }
}

/// What the (new) server has, for the Job to start again from: the stored
/// cursor and pass, the next progress record id, the server's incarnation;
/// with the rows done so far.
pub(super) async fn restart_from_store(
    c: &mut PgConnection,
    store: &Store,
    job: &str,
) -> anyhow::Result<(Stored, i64)> {
    let row = store.job(c, job).await?.ok_or_else(|| {
        Fail::failed(format!(
            "job {job:?} is missing from pacer's tables after the restart"
        ))
    })?;
    let (done, next_id) = store.progress_totals(c, job).await?;
    let (_, inc): (i32, i64) = sqlx::query_as(super::batch::INCARNATION_SQL)
        .fetch_one(&mut *c)
        .await?;
    let stored = Stored {
        pass: row.pass,
        cursor: row.cursor_key,
        next_batch_id: next_id,
        incarnation: inc,
    };
    Ok((stored, done))
}
