//! The fleet runner's connection to its coordination database: the
//! fleet's advisory lock (one fleet runner at a time), the targets'
//! record, the fleet-wide pause switch. Every call is bounded in time, and
//! a lost connection is taken up again, lock included, on the next tick:
//! the targets go on meanwhile (each holds its own runner lock in its own
//! database), the fleet only stops recording and holds its pause state.

use std::time::Duration;

use sqlx::postgres::PgConnection;

use crate::store::control::Switch;
use crate::store::{Fail, Store};

/// The advisory-lock key that makes one fleet runner the only one.
pub(super) const LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('pacer-fleet:' || $1, 0))";
/// Whether some session holds that lock: a bigint advisory key shows in
/// `pg_locks` as its high and low halves (`classid`, `objid`), with
/// `objsubid` 1.
pub(super) const HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 1 AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('pacer-fleet:' || $1, 0))";

/// Who a pause is by when a failure made the fleet pause itself.
pub(super) const FAILURE_BY: &str = "fleet";

/// Longest a coordination call may take before the connection counts as
/// lost (a half-open path would otherwise hold the fleet's loop).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Coord {
    url: String,
    fleet: String,
    store: Store,
    conn: Option<PgConnection>,
    /// Why the connection is down, once logged.
    down: Option<String>,
    /// Target states not yet recorded (the database was down): written,
    /// oldest first, once it is back.
    unrecorded: Vec<(String, String, Option<String>)>,
}

/// Another fleet runner took the lock while this one's connection was down.
#[derive(Debug)]
pub(super) struct LockLost;

impl Coord {
    /// Connect, migrate pacer's tables and take the fleet's lock, or fail
    /// saying which of them went wrong.
    pub async fn open(url: &str, store: &Store, fleet: &str) -> anyhow::Result<Coord> {
        let mut c = Coord {
            url: url.to_string(),
            fleet: fleet.to_string(),
            store: store.clone(),
            conn: None,
            down: None,
            unrecorded: Vec::new(),
        };
        let conn = c.connect().await?;
        c.conn = Some(conn);
        Ok(c)
    }

    async fn connect(&self) -> anyhow::Result<PgConnection> {
        let fleet = &self.fleet;
        let go = async {
            let mut conn = crate::store::connect(&self.url, &format!("pacer-fleet:{fleet}"))
                .await
                .map_err(|e| Fail::failed(format!("fleet.coordination_url: {e:#}")))?;
            self.store.migrate(&mut conn).await?;
            let mine: bool = sqlx::query_scalar(LOCK_SQL)
                .bind(fleet)
                .fetch_one(&mut conn)
                .await?;
            if !mine {
                return Err(Fail::failed(format!(
                    "fleet {fleet} is already running: another pacer holds its lock in the coordination database (fleet.coordination_url)"
                )));
            }
            anyhow::Ok(conn)
        };
        tokio::time::timeout(CALL_TIMEOUT * 2, go)
            .await
            .map_err(|_| Fail::failed("fleet.coordination_url: no answer within 10s"))?
    }

    /// Run `f` on the connection, bounded; `None` while it is down (and
    /// after a failure, which drops it: the next call reconnects).
    async fn call<T>(
        &mut self,
        what: &str,
        f: impl for<'c> FnOnce(
            &'c Store,
            &'c mut PgConnection,
        ) -> futures::future::BoxFuture<'c, anyhow::Result<T>>,
    ) -> Result<Option<T>, LockLost> {
        if self.conn.is_none() {
            match self.connect().await {
                Ok(c) => {
                    tracing::info!(target: "pacer::fleet", fleet = %self.fleet, "coordination database reachable again; fleet lock taken");
                    self.conn = Some(c);
                    self.down = None;
                }
                Err(e) if e.to_string().contains("already running") => {
                    tracing::error!(target: "pacer::fleet", fleet = %self.fleet, "{e}: this runner starts no more targets");
                    return Err(LockLost);
                }
                Err(e) => {
                    self.lost(format!("{e:#}"));
                    return Ok(None);
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match tokio::time::timeout(CALL_TIMEOUT, f(&self.store, conn)).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) => {
                self.conn = None;
                self.lost(format!("{what}: {}", crate::telemetry::redact::error(&e)));
                Ok(None)
            }
            Err(_) => {
                self.conn = None;
                self.lost(format!(
                    "{what}: no answer within {}s",
                    CALL_TIMEOUT.as_secs()
                ));
                Ok(None)
            }
        }
    }

    fn lost(&mut self, why: String) {
        if self.down.is_none() {
            tracing::warn!(target: "pacer::fleet", fleet = %self.fleet, "coordination database lost ({why}): targets go on; the fleet records nothing and keeps its pause state until it is back");
        }
        self.down = Some(why);
    }

    pub async fn register(
        &mut self,
        targets: &[(String, String)],
    ) -> anyhow::Result<Vec<crate::store::fleet::FleetRow>> {
        let fleet = self.fleet.clone();
        let conn = self.conn.as_mut().expect("open connects");
        self.store.fleet_register(conn, &fleet, targets).await?;
        // A pause an earlier run's failure left (`by = "fleet"`) belonged
        // to that run: running the fleet again is what retries its failed
        // target. An operator's pause stays.
        if let Some(s) = self.store.switch(conn, &fleet).await?
            && s.paused
            && s.by == FAILURE_BY
        {
            tracing::info!(target: "pacer::fleet", fleet = %fleet, "lifting the pause an earlier run set after a failure ({}): this run retries it", s.reason);
            self.store
                .set_paused(conn, &fleet, false, FAILURE_BY, "a new run of the fleet")
                .await?;
        }
        self.store.fleet_rows(conn, &fleet).await
    }

    /// Record a target's new state, and any the database missed.
    pub async fn set(
        &mut self,
        target: &str,
        state: &str,
        message: Option<&str>,
    ) -> Result<(), LockLost> {
        self.unrecorded.push((
            target.to_string(),
            state.to_string(),
            message.map(str::to_string),
        ));
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), LockLost> {
        while let Some((target, state, message)) = self.unrecorded.first().cloned() {
            let fleet = self.fleet.clone();
            let done = self
                .call("recording a target", move |s, c| {
                    Box::pin(async move {
                        s.fleet_set(c, &fleet, &target, &state, message.as_deref())
                            .await
                    })
                })
                .await?;
            if done.is_none() {
                break;
            }
            self.unrecorded.remove(0);
        }
        Ok(())
    }

    /// Set the fleet's pause switch (a failure pausing the fleet, so that
    /// `pacer status` shows it and `pacer resume` lifts it); `Ok(false)`
    /// while the database is down.
    pub async fn set_pause(&mut self, by: &str, reason: &str) -> Result<bool, LockLost> {
        let (fleet, by, reason) = (self.fleet.clone(), by.to_string(), reason.to_string());
        self.call("pausing the fleet", move |s, c| {
            Box::pin(async move { s.set_paused(c, &fleet, true, &by, &reason).await })
        })
        .await
        .map(|r| r.is_some())
    }

    /// The fleet's pause switch; `Ok(None)` while the database is down.
    pub async fn switch(&mut self) -> Result<Option<Option<Switch>>, LockLost> {
        self.flush().await?;
        let fleet = self.fleet.clone();
        self.call("reading the pause switch", move |s, c| {
            Box::pin(async move { s.switch(c, &fleet).await })
        })
        .await
    }

    pub async fn close(mut self) {
        if let Some(c) = self.conn.take() {
            let _ = tokio::time::timeout(CALL_TIMEOUT, sqlx::Connection::close(c)).await;
        }
    }
}
