//! Replication lag in seconds, measured with pacer's own heartbeat.
//!
//! A background task writes an increasing sequence number to
//! `<schema>.heartbeat` on the primary every `interval` and remembers, on
//! pacer's monotonic clock, when each number committed. Reading a replica
//! means asking which number it has replayed: the lag is now minus the
//! commit time of the first number it has *not* replayed yet, or 0 when it
//! has the newest one. Both instants come from pacer's clock, so skew
//! between hosts never enters, and an idle primary reads an exact 0 rather
//! than the growing age of its last transaction
//! (`pg_last_xact_replay_timestamp`'s weakness).
//!
//! The task runs for as long as the `Heartbeat` lives, independent of the
//! job's state: a paused job must keep measuring, or it could never see the
//! lag fall and resume.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
// Identifiers in dynamic SQL are quoted with `quote_ident`.
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;

use super::{Reading, Source, chain, postgres::small_pool, worker_application_name};

/// Beat period: the resolution of the lag reading. Four tiny commits a
/// second are negligible on any primary.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// Beats remembered; a replica further behind reads as at least this old.
const MAX_REMEMBERED: usize = 20_000;

/// What the writer task knows: committed beats and the last failure.
#[derive(Debug, Default)]
pub struct BeatLog {
    /// `(seq, committed at)`, oldest first, seq strictly increasing.
    pub written: VecDeque<(i64, Instant)>,
    pub last_error: Option<String>,
    pub last_ok: Option<Instant>,
}

impl BeatLog {
    /// Lag of a replica that has replayed `seen` (None: no heartbeat row
    /// yet), as of `now`. `None` when nothing has been written yet.
    pub fn lag(&self, seen: Option<i64>, now: Instant) -> Option<Duration> {
        let &(newest, _) = self.written.back()?;
        if seen.is_some_and(|s| s >= newest) {
            return Some(Duration::ZERO);
        }
        let first_unseen = self
            .written
            .iter()
            .find(|(seq, _)| seen.is_none_or(|s| *seq > s))
            .map(|(_, at)| *at)?;
        Some(now.saturating_duration_since(first_unseen))
    }

    fn record(&mut self, seq: i64, at: Instant) {
        self.written.push_back((seq, at));
        while self.written.len() > MAX_REMEMBERED {
            self.written.pop_front();
        }
        self.last_ok = Some(at);
        self.last_error = None;
    }
}

struct Replica {
    /// The URL without its password, for messages.
    label: String,
    pool: PgPool,
}

/// The heartbeat writer and the replicas it is read on.
pub struct Heartbeat {
    log: Arc<Mutex<BeatLog>>,
    replicas: Vec<Replica>,
    table: String,
    job: String,
    interval: Duration,
    task: JoinHandle<()>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Heartbeat {
    /// Create the heartbeat table if needed and start beating. `primary`
    /// supplies the connection options; the writer uses its own connection
    /// so it never waits behind the job's workers.
    pub async fn start(
        primary: &PgPool,
        schema: &str,
        job: &str,
        replicas: &[String],
        interval: Duration,
    ) -> anyhow::Result<Heartbeat> {
        let app = format!("{}:heartbeat", worker_application_name(job));
        let opts = (*primary.connect_options()).clone().application_name(&app);
        let writer = small_pool(opts);
        let table = format!("{}.heartbeat", quote_ident(schema));
        ensure_table(&writer, schema, &table).await?;
        let start: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce((SELECT seq FROM {table} WHERE job = $1), 0)"
        )))
        .bind(job)
        .fetch_one(&writer)
        .await
        .map_err(|e| anyhow::anyhow!("reading {table} on the primary: {}", chain(&e)))?;

        let mut reps = Vec::new();
        for url in replicas {
            let label = crate::telemetry::redact::url(url);
            let opts: PgConnectOptions = crate::store::parse_url(url)
                .map_err(|e| anyhow::anyhow!("database.replicas {label}: {e:#}"))?;
            let opts = opts.application_name(&format!("{}:lag", worker_application_name(job)));
            reps.push(Replica {
                label,
                pool: small_pool(opts),
            });
        }

        let log = Arc::new(Mutex::new(BeatLog::default()));
        let task = tokio::spawn(beat(
            writer,
            table.clone(),
            job.to_string(),
            start,
            interval,
            log.clone(),
        ));
        Ok(Heartbeat {
            log,
            replicas: reps,
            table,
            job: job.to_string(),
            interval,
            task,
        })
    }

    /// Worst lag over all replicas, in seconds.
    pub async fn worst_lag(&self) -> Result<f64, String> {
        let reads = self.replicas.iter().map(|r| async move {
            let seen: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(
                format!("SELECT seq FROM {} WHERE job = $1", self.table),
            ))
            .bind(&self.job)
            .fetch_optional(&r.pool)
            .await;
            (r, seen, Instant::now())
        });
        let results = futures::future::join_all(reads).await;
        let log = self.log.lock().expect("heartbeat log poisoned");
        if log.written.is_empty() {
            return Err(match &log.last_error {
                Some(e) => format!("no heartbeat written on the primary yet: {e}"),
                None => "no heartbeat written on the primary yet".into(),
            });
        }
        // A writer that stopped succeeding makes every replica look caught
        // up; say so instead.
        let stale_after = (self.interval * 8).max(Duration::from_secs(3));
        if let Some(ok) = log.last_ok
            && ok.elapsed() > stale_after
        {
            return Err(format!(
                "heartbeat writes on the primary failing for {:.1}s: {}",
                ok.elapsed().as_secs_f64(),
                log.last_error.as_deref().unwrap_or("no error recorded")
            ));
        }
        let mut worst = 0.0f64;
        for (r, seen, at) in results {
            let seen = seen.map_err(|e| format!("replica {}: {}", r.label, chain(&e)))?;
            let lag = log
                .lag(seen, at)
                .ok_or_else(|| "no heartbeat written on the primary yet".to_string())?;
            worst = worst.max(lag.as_secs_f64());
        }
        Ok(worst)
    }
}

async fn ensure_table(pool: &PgPool, schema: &str, table: &str) -> anyhow::Result<()> {
    // `CREATE ... IF NOT EXISTS` checks privileges before existence: a
    // least-privilege role that owns its schema but may not create schemas
    // in the database would fail on a schema that is already there.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(|e| anyhow::anyhow!("heartbeat: looking up {table}: {}", chain(&e)))?;
    if exists {
        return Ok(());
    }
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await
            .map_err(|e| {
                anyhow::anyhow!("heartbeat: looking up schema {schema:?}: {}", chain(&e))
            })?;
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| anyhow::anyhow!("heartbeat: connecting to the primary: {}", chain(&e)))?;
    // Serialise concurrent creators: IF NOT EXISTS alone still races on the
    // catalog's unique indexes.
    let ddl = [
        "SELECT pg_advisory_xact_lock(hashtext('pacer heartbeat ddl'))".to_string(),
        // "already exists, skipping" notices are noise in pacer's log.
        "SET LOCAL client_min_messages = warning".to_string(),
        if schema_exists {
            "SELECT 1".to_string()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))
        },
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               job text PRIMARY KEY, \
               seq bigint NOT NULL, \
               written_at timestamptz NOT NULL DEFAULT now())"
        ),
    ];
    for sql in &ddl {
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(|e| anyhow::anyhow!("heartbeat: creating {table}: {}", chain(&e)))?;
    }
    tx.commit()
        .await
        .map_err(|e| anyhow::anyhow!("heartbeat: creating {table}: {}", chain(&e)))?;
    Ok(())
}

async fn beat(
    pool: PgPool,
    table: String,
    job: String,
    start: i64,
    interval: Duration,
    log: Arc<Mutex<BeatLog>>,
) {
    let sql = format!(
        "INSERT INTO {table} (job, seq, written_at) VALUES ($1, $2, now()) \
         ON CONFLICT (job) DO UPDATE SET seq = excluded.seq, written_at = excluded.written_at"
    );
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = start;
    loop {
        tick.tick().await;
        seq += 1;
        let res = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(&job)
            .bind(seq)
            .execute(&pool)
            .await;
        // The commit instant: the replica cannot have this number earlier.
        let at = Instant::now();
        let mut l = log.lock().expect("heartbeat log poisoned");
        match res {
            Ok(_) => l.record(seq, at),
            // The number may or may not have committed; the next beat uses a
            // higher one either way, so the log stays truthful.
            Err(e) => l.last_error = Some(chain(&e)),
        }
    }
}

/// `replication_lag_seconds`: worst replica wins; a replica that cannot be
/// read makes the whole reading missing (fail safe).
pub struct LagSource {
    name: String,
    hb: Arc<Heartbeat>,
}

impl LagSource {
    pub fn new(name: String, hb: Arc<Heartbeat>) -> LagSource {
        LagSource { name, hb }
    }
}

impl Source for LagSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> BoxFuture<'_, Reading> {
        async move {
            match self.hb.worst_lag().await {
                Ok(v) => Reading::value(v, Utc::now()),
                Err(why) => Reading::missing(format!("replication_lag_seconds: {why}"), Utc::now()),
            }
        }
        .boxed()
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[(i64, Instant)]) -> BeatLog {
        let mut l = BeatLog::default();
        for &(s, t) in entries {
            l.record(s, t);
        }
        l
    }

    #[test]
    fn caught_up_replica_reads_zero_even_when_the_last_beat_is_old() {
        let t0 = Instant::now();
        let l = log(&[(5, t0), (6, t0 + Duration::from_secs(1))]);
        assert_eq!(
            l.lag(Some(6), t0 + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn lag_counts_from_the_first_beat_the_replica_has_not_seen() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let l = log(&[(5, t0), (6, t0 + s), (7, t0 + 2 * s)]);
        assert_eq!(l.lag(Some(5), t0 + 10 * s), Some(9 * s));
        assert_eq!(l.lag(Some(6), t0 + 10 * s), Some(8 * s));
        // Older than everything remembered (or no row yet): at least as old
        // as the oldest remembered beat.
        assert_eq!(l.lag(Some(1), t0 + 10 * s), Some(10 * s));
        assert_eq!(l.lag(None, t0 + 10 * s), Some(10 * s));
    }

    #[test]
    fn nothing_written_is_unknown_not_zero() {
        assert_eq!(BeatLog::default().lag(Some(3), Instant::now()), None);
    }
}
