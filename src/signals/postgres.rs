//! Postgres built-in signals, read on the primary through pacer's own small
//! signal pool. `replication_lag_seconds` lives in `heartbeat`.
//!
//! Conventions: a query error is a missing reading naming the built-in and
//! the error; "nothing there" is a real zero only where zero is the truth
//! (no session waits, no logical slot, no open transaction), and missing
//! where it hides a problem (no standby connected at all).

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use super::{Reading, Source, chain, worker_application_name};
use crate::policy::Policy;

/// Lock modes that block pacer's writes (and are blocked by them): a
/// session waiting for one of these on the target table is a migration or
/// index build that wants pacer out of the way.
pub const STRONG_LOCK_MODES: &[&str] = &[
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// Health checks need few connections and must never hang on a lock
/// themselves: short statement and lock timeouts on every session.
pub fn small_pool(opts: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts.options([("statement_timeout", "5s"), ("lock_timeout", "1s")]))
}

#[derive(Debug, Clone)]
enum Kind {
    ReplicationLagBytes,
    LogicalSlotLagBytes,
    LockWaiters,
    BlockedByPacer { app: String },
    DdlWaiting { table: String },
    DeadlocksPerSecond,
    WalBytesPerSecond,
    DeadTuples { table: String },
    ConnectionsUsedRatio,
    OldestTransactionSeconds,
}

impl Kind {
    fn is_rate(&self) -> bool {
        matches!(self, Kind::DeadlocksPerSecond | Kind::WalBytesPerSecond)
    }
}

/// One built-in signal on the primary.
pub struct Builtin {
    name: String,
    builtin: String,
    kind: Kind,
    pool: PgPool,
    /// Previous counter sample for the per-second built-ins.
    last: Mutex<Option<(f64, Instant)>>,
}

impl Builtin {
    pub fn new(
        name: String,
        builtin: &str,
        pool: PgPool,
        policy: &Policy,
    ) -> Result<Builtin, String> {
        let table = policy.job.table.clone();
        let kind = match builtin {
            "replication_lag_bytes" => Kind::ReplicationLagBytes,
            "logical_slot_lag_bytes" => Kind::LogicalSlotLagBytes,
            "lock_waiters" => Kind::LockWaiters,
            "blocked_by_pacer" => Kind::BlockedByPacer {
                app: worker_application_name(&policy.job.name),
            },
            "ddl_waiting" => Kind::DdlWaiting { table },
            "deadlocks_per_second" => Kind::DeadlocksPerSecond,
            "wal_bytes_per_second" => Kind::WalBytesPerSecond,
            "dead_tuples" => Kind::DeadTuples { table },
            "connections_used_ratio" => Kind::ConnectionsUsedRatio,
            "oldest_transaction_seconds" => Kind::OldestTransactionSeconds,
            "replication_lag_seconds" => {
                return Err(
                    "replication_lag_seconds is read from the heartbeat, not a query".into(),
                );
            }
            other => return Err(format!("unknown postgres built-in {other:?}")),
        };
        Ok(Builtin {
            name,
            builtin: builtin.to_string(),
            kind,
            pool,
            last: Mutex::new(None),
        })
    }

    /// Per-second built-ins need two samples; take the first one now so
    /// the first tick already has a rate.
    pub async fn prime(&self) {
        if self.kind.is_rate() {
            let _ = self.read_value().await;
        }
    }

    async fn read_value(&self) -> Result<f64, String> {
        let pool = &self.pool;
        let q = |e: sqlx::Error| chain(&e);
        match &self.kind {
            Kind::ReplicationLagBytes => {
                let (n, worst): (i64, Option<f64>) = sqlx::query_as(
                    "SELECT count(*), max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8 FROM pg_stat_replication",
                )
                .fetch_one(pool)
                .await
                .map_err(q)?;
                match (n, worst) {
                    (0, _) => Err("no standby is connected (pg_stat_replication is empty)".into()),
                    (_, None) => Err("no standby has reported a replay position yet".into()),
                    (_, Some(v)) => Ok(v),
                }
            }
            Kind::LogicalSlotLagBytes => {
                let worst: Option<f64> = sqlx::query_scalar(
                    "SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))::float8 \
                     FROM pg_replication_slots WHERE slot_type = 'logical'",
                )
                .fetch_one(pool)
                .await
                .map_err(q)?;
                // No logical slot: no CDC consumer is holding WAL back.
                Ok(worst.unwrap_or(0.0))
            }
            Kind::LockWaiters => {
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND datname = current_database() AND NOT {OWN_SESSION}"
                )))
                .fetch_one(pool)
                .await
                .map_err(q)?;
                Ok(n as f64)
            }
            Kind::BlockedByPacer { app } => {
                Ok(blocked_by_pacer_pids(pool, app).await.map_err(q)?.len() as f64)
            }
            Kind::DdlWaiting { table } => Ok(ddl_waiting(pool, table).await.map_err(q)? as f64),
            Kind::DeadlocksPerSecond => {
                let c: i64 = sqlx::query_scalar(
                    "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                )
                .fetch_one(pool)
                .await
                .map_err(q)?;
                self.rate(c as f64)
            }
            Kind::WalBytesPerSecond => {
                let c: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
                    .fetch_one(pool)
                    .await
                    .map_err(q)?;
                self.rate(c)
            }
            Kind::DeadTuples { table } => {
                let n: Option<i64> = sqlx::query_scalar(
                    "SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = $1::regclass",
                )
                .bind(table)
                .fetch_optional(pool)
                .await
                .map_err(q)?
                .flatten();
                n.map(|n| n as f64)
                    .ok_or_else(|| format!("no statistics for table {table}"))
            }
            Kind::ConnectionsUsedRatio => sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::float8 \
                 / current_setting('max_connections')::float8",
            )
            .fetch_one(pool)
            .await
            .map_err(q),
            Kind::OldestTransactionSeconds => sqlx::query_scalar(
                // Client transactions in pacer's database are what hold the
                // vacuum horizon of its tables back; vacuum's own do not.
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 \
                 FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend' AND datname = current_database()",
            )
            .fetch_one(pool)
            .await
            .map_err(q),
        }
    }

    /// Counter → per-second rate since the previous sample.
    fn rate(&self, counter: f64) -> Result<f64, String> {
        let now = Instant::now();
        let mut last = self.last.lock().expect("rate state poisoned");
        let prev = last.replace((counter, now));
        match prev {
            None => Err("first sample; a rate needs two".into()),
            Some((c0, _)) if counter < c0 => {
                Err("counter went backwards (statistics reset); rate resumes next sample".into())
            }
            Some((c0, t0)) => {
                let dt = now.duration_since(t0).as_secs_f64();
                if dt <= 0.0 {
                    Err("two samples at the same instant".into())
                } else {
                    Ok((counter - c0) / dt)
                }
            }
        }
    }
}

impl Source for Builtin {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> BoxFuture<'_, Reading> {
        async move {
            match self.read_value().await {
                Ok(v) => Reading::value(v, Utc::now()),
                Err(why) => {
                    Reading::missing(format!("postgres {}: {why}", self.builtin), Utc::now())
                }
            }
        }
        .boxed()
    }
}

/// A `pg_stat_activity` row that is one of pacer's own sessions (workers
/// `pacer:<job>`, `pacer:<job>:control`, a standby, `pacer-signals:…`,
/// `pacer-cli`): pacer waiting on a lock, or a standby polling for the
/// runner lock, is not live traffic suffering, and counting it would keep a
/// job slowed down or paused by itself.
const OWN_SESSION: &str = "(application_name LIKE 'pacer:%' OR application_name LIKE 'pacer-%')";

/// Sessions blocked by pacer's backends (`application_name = app`),
/// directly or through other blocked sessions, e.g. an application query
/// queued behind an `ALTER TABLE` that itself waits for pacer. Pacer's own
/// backends are not counted. `pg_blocking_pids` takes the lock manager's
/// locks, so it is only called for sessions that are actually waiting on a
/// lock, as its documentation advises.
pub async fn blocked_by_pacer_pids(pool: &PgPool, app: &str) -> Result<BTreeSet<i32>, sqlx::Error> {
    let rows: Vec<(i32, bool, Vec<i32>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT pid, application_name = $1, \
                CASE WHEN wait_event_type = 'Lock' AND NOT {OWN_SESSION} THEN pg_blocking_pids(pid) ELSE '{{}}'::int[] END \
         FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (wait_event_type = 'Lock' OR application_name = $1)"
    )))
    .bind(app)
    .fetch_all(pool)
    .await?;
    let pacer: HashSet<i32> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
    let waiting: Vec<(i32, Vec<i32>)> = rows
        .into_iter()
        .filter(|r| !r.2.is_empty())
        .map(|r| (r.0, r.2))
        .collect();
    Ok(blocked_closure(&pacer, &waiting))
}

/// Transitive closure of "blocked by pacer" over a wait-for graph:
/// `waiting` lists each waiting session with the sessions it waits for.
pub fn blocked_closure(pacer: &HashSet<i32>, waiting: &[(i32, Vec<i32>)]) -> BTreeSet<i32> {
    let mut blocked = BTreeSet::new();
    loop {
        let mut grew = false;
        for (pid, blockers) in waiting {
            if pacer.contains(pid) || blocked.contains(pid) {
                continue;
            }
            if blockers
                .iter()
                .any(|b| pacer.contains(b) || blocked.contains(b))
            {
                blocked.insert(*pid);
                grew = true;
            }
        }
        if !grew {
            return blocked;
        }
    }
}

/// Sessions waiting for a strong lock (see `STRONG_LOCK_MODES`) on `table`.
/// `pg_locks` is only consulted when some session waits on a lock at all.
pub async fn ddl_waiting(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database())",
    )
    .fetch_one(pool)
    .await?;
    if !any {
        // Still resolve the name, so a wrong table is an error, not a calm 0.
        sqlx::query("SELECT $1::regclass")
            .bind(table)
            .execute(pool)
            .await?;
        return Ok(0);
    }
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND l.locktype = 'relation' \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.relation = $1::regclass AND l.mode = ANY($2) AND NOT {OWN_SESSION}"
    )))
    .bind(table)
    .bind(STRONG_LOCK_MODES)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_chains_through_waiting_ddl() {
        let pacer: HashSet<i32> = [10].into();
        // 20 (ALTER) waits for pacer 10; 30 (SELECT) waits for 20; 40 waits
        // for 99 which is not pacer; 50 waits for 30.
        let waiting = vec![
            (30, vec![20]),
            (50, vec![30]),
            (20, vec![10]),
            (40, vec![99]),
        ];
        let got = blocked_closure(&pacer, &waiting);
        assert_eq!(got, [20, 30, 50].into());
    }

    #[test]
    fn pacer_workers_waiting_on_each_other_are_not_counted() {
        let pacer: HashSet<i32> = [10, 11].into();
        let waiting = vec![(11, vec![10]), (12, vec![11])];
        assert_eq!(blocked_closure(&pacer, &waiting), [12].into());
    }
}
