//! One batch transaction on a writer's own connection: local timeouts, the
//! policy's update, the progress record, COMMIT, all or nothing.

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::Shared;
use super::failpoint::{self, Point};
use super::keys::Keys;
use crate::controller::BatchError;

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// Committed (or nothing to do): rows changed, keys set aside as locked.
    Committed { rows: u64, deferred: Keys },
    /// Rolled back; worth retrying.
    Retry(BatchError, String),
    /// The connection broke before COMMIT was sent: not committed.
    Lost(String),
    /// The connection broke during COMMIT: committed or not, unknown.
    Ambiguous { pid: i32, msg: String },
    /// Not worth retrying (an error in the policy's SQL, a constraint...).
    Fatal(String),
}

/// How an error should be handled.
pub enum Class {
    Retry(BatchError),
    Lost,
    Fatal,
}

pub fn classify(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("55P03") => Class::Retry(BatchError::LockTimeout),
            Some("40P01") => Class::Retry(BatchError::Deadlock),
            Some("40001") => Class::Retry(BatchError::SerializationFailure),
            Some("57014") => Class::Retry(BatchError::StatementTimeout),
            Some(c) if c.starts_with("08") || c.starts_with("57P") => Class::Lost,
            _ => Class::Fatal,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Class::Lost,
        _ => Class::Fatal,
    }
}

/// A worker's connection, with its backend PID (for ambiguous commits and
/// so pacer knows its own backends).
#[derive(Default)]
pub struct Writer {
    conn: Option<(PgConnection, i32)>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { conn: None }
    }

    async fn ensure(&mut self, sh: &Shared) -> Result<(), sqlx::Error> {
        if self.conn.is_none() {
            let mut c = crate::store::connect(&sh.url, &sh.app_name)
                .await
                .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut c)
                .await?;
            tracing::debug!(pid, "writer connected");
            self.conn = Some((c, pid));
        }
        Ok(())
    }

    /// Apply `keys` in one transaction with progress record `batch_id`.
    /// With `lock_free`, first lock the rows that are free right now and
    /// apply only those; the others come back as `deferred`.
    pub async fn attempt(
        &mut self,
        sh: &Shared,
        keys: &Keys,
        batch_id: i64,
        pass: i32,
        lock_free: bool,
    ) -> Attempt {
        if let Err(e) = self.ensure(sh).await {
            return Attempt::Lost(format!("cannot connect: {e}"));
        }
        let (conn, pid) = self
            .conn
            .as_mut()
            .map(|(c, p)| (c, *p))
            .expect("connected above");
        match run_tx(sh, conn, pid, keys, batch_id, pass, lock_free).await {
            Ok(Ok(a)) => a,
            Ok(Err(commit_err)) => {
                self.conn = None;
                match classify(&commit_err) {
                    Class::Lost => Attempt::Ambiguous {
                        pid,
                        msg: commit_err.to_string(),
                    },
                    Class::Retry(k) => Attempt::Retry(k, commit_err.to_string()),
                    Class::Fatal => Attempt::Fatal(super::target::db_message(&commit_err)),
                }
            }
            Err(e) => {
                let class = classify(&e);
                let msg = super::target::db_message(&e);
                if matches!(class, Class::Lost) || conn.execute("ROLLBACK").await.is_err() {
                    self.conn = None;
                }
                match class {
                    Class::Retry(k) => Attempt::Retry(k, msg),
                    Class::Lost => Attempt::Lost(msg),
                    Class::Fatal => Attempt::Fatal(msg),
                }
            }
        }
    }

    /// Close the connection politely (graceful stop).
    pub async fn close(self) {
        if let Some((c, _)) = self.conn {
            let _ = c.close().await;
        }
    }
}

/// The transaction. Outer error: failed before COMMIT (rolled back or
/// connection gone). Inner error: COMMIT itself failed.
async fn run_tx(
    sh: &Shared,
    conn: &mut PgConnection,
    pid: i32,
    keys: &Keys,
    batch_id: i64,
    pass: i32,
    lock_free: bool,
) -> Result<Result<Attempt, sqlx::Error>, sqlx::Error> {
    // One round trip: the timeouts are numbers pacer formats itself.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        sh.limits.lock_timeout.as_millis(),
        sh.limits.statement_timeout.as_millis()
    )))
    .execute(&mut *conn)
    .await?;
    let (apply, deferred) = if lock_free {
        let rows = keys
            .bind(sqlx::query(AssertSqlSafe(sh.target.lock_free_sql())))
            .fetch_all(&mut *conn)
            .await?;
        let mut free = sh.target.key_type.empty();
        for r in &rows {
            free.push_from(r, 0)?;
        }
        let set = free.texts().into_iter().collect();
        keys.partition(&set)
    } else {
        (keys.clone(), sh.target.key_type.empty())
    };
    if apply.is_empty() {
        conn.execute("ROLLBACK").await?;
        return Ok(Ok(Attempt::Committed { rows: 0, deferred }));
    }
    let rows = apply
        .bind(sqlx::query(AssertSqlSafe(sh.target.update.clone())))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (job, batch_id, pass, first_key, last_key, keys, rows) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        sh.store.t("progress")
    )))
    .bind(&sh.job)
    .bind(batch_id)
    .bind(pass)
    .bind(apply.first_text().unwrap_or_default())
    .bind(apply.last_text().unwrap_or_default())
    .bind(apply.len() as i32)
    .bind(rows as i64)
    .execute(&mut *conn)
    .await?;

    let armed = failpoint::arm();
    if armed.contains(&Point::BeforeCommit) {
        failpoint::die("before_commit");
    }
    if armed.contains(&Point::InCommit) {
        let d = failpoint::delay();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            failpoint::die("in_commit");
        });
    }
    if armed.contains(&Point::TerminateInCommit) {
        let mut killer = crate::store::connect(&sh.url, "pacer-failpoint")
            .await
            .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))?;
        let d = failpoint::delay();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut killer)
                .await;
        });
    }
    let committed = conn.execute("COMMIT").await;
    if let Err(e) = committed {
        return Ok(Err(e));
    }
    if armed.contains(&Point::AfterCommit) {
        failpoint::die("after_commit");
    }
    if armed.contains(&Point::LoseCommit) {
        return Ok(Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "failpoint lose_commit: connection lost during COMMIT",
        ))));
    }
    Ok(Ok(Attempt::Committed { rows, deferred }))
}

/// After a connection broke during COMMIT: wait until the old backend is
/// gone (so its transaction has ended one way or the other), then look the
/// batch's progress record up. `Some(rows)`: it committed.
pub async fn resolve_ambiguous(
    sh: &Shared,
    old_pid: i32,
    batch_id: i64,
) -> anyhow::Result<Option<u64>> {
    let mut tries = 0u32;
    let mut conn = loop {
        match crate::store::connect(&sh.url, &sh.app_name).await {
            Ok(c) => break c,
            Err(e) => {
                tries += 1;
                if tries > sh.limits.max_retries.max(3) {
                    return Err(e);
                }
                tokio::time::sleep(crate::store::backoff(tries, Duration::from_secs(5))).await;
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(old_pid)
                .fetch_one(&mut conn)
                .await?;
        if !alive {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(old_pid)
                .execute(&mut conn)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = sh
        .store
        .batch_committed(&mut conn, &sh.job, batch_id)
        .await?;
    let _ = conn.close().await;
    Ok(rows.map(|r| r as u64))
}

impl Class {
    pub fn is_lost(&self) -> bool {
        matches!(self, Class::Lost)
    }
}
