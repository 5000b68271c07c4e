//! One batch on a writer's own connection, all or nothing: the policy's
//! update and the batch's progress record in one transaction. Usually that
//! transaction is a single statement that commits on its own, one round
//! trip (`Store::batch_sql`); a retry of locked rows (lock-free) and an
//! update that cannot be wrapped in that statement use an explicit
//! BEGIN ... COMMIT instead.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The server is another incarnation than the one the run's dispatch
    /// state belongs to (restart, failover): the batch must be dropped and
    /// the run resumed from the stored cursor, as after a crash.
    NewIncarnation,
    /// Rolled back: the job's row no longer carries `epoch`, the one the
    /// batch ran under. Unless this runner re-took the lock meanwhile
    /// (the Job tells), another runner owns the job: never counted.
    Fenced { epoch: i64 },
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
            // 25P03: the server ended a transaction left idle (pacer was
            // stalled); the session is gone and the batch was not applied.
            // 25006: the server takes no writes right now (read-only
            // primary, a failover in progress): like an outage, a pause
            // bounded by max_outage, not the end of the job.
            Some(c)
                if c.starts_with("08") || c.starts_with("57P") || c == "25P03" || c == "25006" =>
            {
                Class::Lost
            }
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

/// The backend's PID and its server's incarnation
/// (`pg_postmaster_start_time()` in µs): a restart or a failover changes it.
pub const INCARNATION_SQL: &str =
    "SELECT pg_backend_pid(), (extract(epoch FROM pg_postmaster_start_time()) * 1e6)::int8";

/// Added to `statement_timeout` for the client-side deadline of every await
/// on a worker's or the reader's connection. The server ends its own work
/// by `statement_timeout`; an answer later than that plus this margin means
/// the connection is dead or half-open, and awaiting it would stall the
/// worker (and the batch's row locks, until the server notices) forever.
pub const CLIENT_MARGIN: Duration = Duration::from_secs(5);

/// The client-side deadline of one statement, COMMIT or connection attempt.
pub fn client_deadline(l: &crate::policy::Limits) -> Duration {
    l.statement_timeout + CLIENT_MARGIN
}

/// `f` within `d`, else a lost-connection error (`Class::Lost`): the
/// connection is mid-protocol then and must be dropped, never reused.
pub async fn within<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{what} timed out: no answer within {} (statement_timeout + {}; the connection is dead or half-open)",
                humantime::format_duration(d),
                humantime::format_duration(CLIENT_MARGIN)
            ),
        ))),
    }
}

/// First PostgreSQL version with `transaction_timeout` (17).
const TRANSACTION_TIMEOUT_SINCE: u32 = 170_000;

/// The worker session's limits as one statement (the values are numbers
/// pacer formats itself), set once per connection: `lock_timeout` bounds
/// how long a batch waits for a lock, `statement_timeout` how long it holds
/// them (both were per transaction, `SET LOCAL`, before batches became one
/// statement; a worker's connection runs nothing but batches). The others
/// bound the harm a stalled or cut-off pacer can do to live traffic: the
/// server ends a worker's transaction left idle (pacer frozen between two
/// statements of a batch that is an explicit transaction), and from
/// PostgreSQL 17 any transaction outliving a batch's worst case (at most
/// three statements, each within `statement_timeout`, with at most the
/// idle timeout before each), and
/// notices a dead peer by itself (the keepalives every pacer session takes
/// in `store::connect`); so row locks are never held for longer than these.
pub fn session_limits_sql(l: &crate::policy::Limits, server_version_num: u32) -> String {
    let idle = l.idle_in_transaction_timeout.as_millis().max(1);
    let mut sql = format!(
        "SELECT set_config('lock_timeout', '{}', false),
                set_config('statement_timeout', '{}', false),
                set_config('idle_in_transaction_session_timeout', '{idle}', false)",
        l.lock_timeout.as_millis(),
        l.statement_timeout.as_millis()
    );
    if server_version_num >= TRANSACTION_TIMEOUT_SINCE {
        let tx = 3 * (l.statement_timeout.as_millis() + idle);
        sql.push_str(&format!(
            ",\n                set_config('transaction_timeout', '{tx}', false)"
        ));
    }
    sql
}

async fn session_limits(
    c: &mut PgConnection,
    l: &crate::policy::Limits,
) -> Result<(), sqlx::Error> {
    let version = match c.server_version_num() {
        Some(v) => v,
        None => {
            let v: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                .fetch_one(&mut *c)
                .await?;
            v.max(0) as u32
        }
    };
    sqlx::raw_sql(AssertSqlSafe(session_limits_sql(l, version)))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Round trips to the server on the workers' and the reader's connections:
/// each request whose answer pacer awaits (one statement, or one string of
/// statements over the simple protocol). Opening a connection (startup,
/// TLS, authentication) is not counted; the statements that set a new
/// session up are. `attempts`: batch attempts.
#[derive(Default, Debug)]
pub struct Trips {
    round_trips: AtomicU64,
    attempts: AtomicU64,
}

impl Trips {
    pub fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// (round trips, batch attempts) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.round_trips.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
        )
    }
}

/// `f`, one round trip, within the client deadline (`within`), counted.
async fn trip<T>(
    sh: &Shared,
    what: &str,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    sh.trips.trip();
    within(client_deadline(&sh.limits), what, f).await
}

/// The batch was fenced off: `fenced()` raised in `Store::batch_sql`.
pub fn is_fenced(e: &sqlx::Error) -> bool {
    sql_state(e).as_deref() == Some(FENCED)
}

/// SQLSTATE of `fenced()` (migrations/20261205000002_fenced.sql).
const FENCED: &str = "PF001";

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// A lost-connection class error that still says for sure the batch did
/// not commit: the server answered that it takes no writes (25006), or it
/// had already ended the transaction left idle (25P03).
fn surely_not_committed(e: &sqlx::Error) -> bool {
    matches!(sql_state(e).as_deref(), Some("25006" | "25P03"))
}

/// A connection error in plain words for the user: sqlx's I/O errors carry
/// TLS and socket jargon (`peer closed connection without sending TLS
/// close_notify`) that does not say what happened to the database.
pub fn plain_error(e: &sqlx::Error) -> String {
    let raw = super::target::db_message(e);
    let lower = raw.to_lowercase();
    let plain = if lower.contains("connection refused") {
        "connection refused (the server is down or restarting)"
    } else if lower.contains("close_notify")
        || lower.contains("unexpected eof")
        || lower.contains("bytes at eof")
        || lower.contains("connection reset")
        || lower.contains("broken pipe")
        || lower.contains("connection closed")
    {
        "the server closed the connection"
    } else if lower.contains("terminating connection due to administrator command") {
        "the server ended the session (pg_terminate_backend or shutdown)"
    } else if lower.contains("the database system is starting up")
        || lower.contains("the database system is shutting down")
        || lower.contains("the database system is in recovery mode")
    {
        "the server is restarting"
    } else if lower.contains("timed out") {
        "no answer from the server (timed out)"
    } else if e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "25006")
    {
        "the server takes no writes (read-only): waiting for a writable primary"
    } else {
        return raw;
    };
    format!("{plain}: {raw}")
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

    /// Connect if needed. `Ok(false)`: the server is a new incarnation.
    async fn ensure(&mut self, sh: &Shared) -> Result<bool, sqlx::Error> {
        if self.conn.is_none() {
            let d = client_deadline(&sh.limits);
            let mut c = within(d, "connecting", async {
                crate::store::connect(&sh.url, &sh.app_name)
                    .await
                    .map_err(|e| sqlx::Error::Io(std::io::Error::other(format!("{e:#}"))))
            })
            .await?;
            let (pid, incarnation): (i32, i64) = trip(
                sh,
                "reading the server's incarnation",
                sqlx::query_as(INCARNATION_SQL).fetch_one(&mut c),
            )
            .await?;
            if incarnation != sh.incarnation.load(Ordering::SeqCst) {
                sh.restart_seen.store(true, Ordering::SeqCst);
                // Dropped, not closed: a close could hang on a dying server.
                drop(c);
                return Ok(false);
            }
            trip(
                sh,
                "setting the session's limits",
                session_limits(&mut c, &sh.limits),
            )
            .await?;
            if sh.one_statement.get().is_none() {
                let ok = one_statement_works(sh, &mut c).await?;
                let _ = sh.one_statement.set(ok);
            }
            tracing::debug!(pid, "writer connected");
            self.conn = Some((c, pid));
        }
        Ok(true)
    }

    /// Apply `keys` with progress record `batch_id`, all or nothing, under
    /// `epoch`. With `lock_free`, first lock the rows that are free right
    /// now and apply only those; the others come back as `deferred`.
    pub async fn attempt(
        &mut self,
        sh: &Shared,
        keys: &Keys,
        batch_id: i64,
        pass: i32,
        lock_free: bool,
        epoch: i64,
    ) -> Attempt {
        sh.trips.attempt();
        match self.ensure(sh).await {
            Ok(true) => {}
            Ok(false) => return Attempt::NewIncarnation,
            Err(e) => return Attempt::Lost(format!("cannot connect: {}", plain_error(&e))),
        }
        let (conn, pid) = self
            .conn
            .as_mut()
            .map(|(c, p)| (c, *p))
            .expect("connected above");
        let b = Batch {
            keys,
            batch_id,
            pass,
            epoch,
        };
        // The batch commits under the epoch the Job handed it out with,
        // or not at all.
        let one_statement = !lock_free && sh.one_statement.get() == Some(&true);
        let r = if one_statement {
            run_one(sh, conn, pid, &b).await
        } else {
            run_tx(sh, conn, pid, &b, lock_free).await
        };
        match r {
            Ok(Ok(a)) => a,
            Ok(Err(commit_err)) => self.commit_failed(pid, commit_err, epoch),
            Err(e) => {
                let class = classify(&e);
                let msg = if class.is_lost() {
                    plain_error(&e)
                } else {
                    super::target::db_message(&e)
                };
                if matches!(class, Class::Lost)
                    || trip(sh, "ROLLBACK", conn.execute("ROLLBACK"))
                        .await
                        .is_err()
                {
                    self.conn = None;
                }
                if is_fenced(&e) {
                    return Attempt::Fenced { epoch };
                }
                match class {
                    Class::Retry(k) => Attempt::Retry(k, msg),
                    Class::Lost => Attempt::Lost(msg),
                    Class::Fatal => Attempt::Fatal(msg),
                }
            }
        }
    }

    /// The commit itself failed: a COMMIT, or the one statement that is
    /// its own transaction. No transaction is left open either way.
    fn commit_failed(&mut self, pid: i32, e: sqlx::Error, epoch: i64) -> Attempt {
        if is_fenced(&e) {
            return Attempt::Fenced { epoch };
        }
        let class = classify(&e);
        if class.is_lost() {
            self.conn = None;
        }
        match class {
            Class::Lost if surely_not_committed(&e) => Attempt::Lost(plain_error(&e)),
            Class::Lost => Attempt::Ambiguous {
                pid,
                msg: plain_error(&e),
            },
            Class::Retry(k) => Attempt::Retry(k, super::target::db_message(&e)),
            Class::Fatal => Attempt::Fatal(super::target::db_message(&e)),
        }
    }

    /// Close the connection politely (graceful stop), but never wait on a
    /// half-open one for long.
    pub async fn close(self) {
        if let Some((c, _)) = self.conn {
            let _ = tokio::time::timeout(CLIENT_MARGIN, c.close()).await;
        }
    }
}

/// Whether the server takes `Store::batch_sql` for this policy's update
/// (it prepares): asked once per run, by the first writer to connect. An
/// update it cannot be wrapped around (`MERGE`, one with its own
/// `RETURNING`, a table with `DO INSTEAD` rules...) runs as an explicit
/// transaction instead, as before: no less safe, two round trips more.
async fn one_statement_works(sh: &Shared, c: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let Some(sql) = &sh.batch_sql else {
        return Ok(false);
    };
    let described = trip(
        sh,
        "preparing the batch statement",
        c.describe(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.clone()))),
    )
    .await;
    match described {
        Ok(_) => Ok(true),
        Err(e) if classify(&e).is_lost() => Err(e),
        Err(e) => {
            tracing::info!(
                reason = %super::target::db_message(&e),
                "job.update cannot share one statement with the progress record; \
                 each batch is an explicit transaction (two round trips more)"
            );
            Ok(false)
        }
    }
}

/// What a batch writes, besides its rows.
struct Batch<'a> {
    keys: &'a Keys,
    batch_id: i64,
    pass: i32,
    epoch: i64,
}

/// `Store::batch_sql` bound for `apply`: returns the rows changed.
fn batch_statement<'q>(
    sh: &'q Shared,
    b: &Batch<'_>,
    apply: &Keys,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments> {
    let sql = sh.batch_sql.clone().unwrap_or_default();
    apply
        .bind_scalar(sqlx::query_scalar(AssertSqlSafe(sql)))
        .bind(&sh.job)
        .bind(b.batch_id)
        .bind(b.pass)
        .bind(apply.first_text().unwrap_or_default())
        .bind(apply.last_text().unwrap_or_default())
        .bind(apply.len() as i32)
        .bind(b.epoch)
}

/// The failpoints armed for this commit (tests only; none otherwise),
/// started: `in_commit` and `terminate_in_commit` fire while the commit
/// is in flight.
async fn arm_commit(sh: &Shared, pid: i32) -> Result<Vec<Point>, sqlx::Error> {
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
        let mut killer = within(client_deadline(&sh.limits), "connecting", async {
            crate::store::connect(&sh.url, "pacer-failpoint")
                .await
                .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))
        })
        .await?;
        let d = failpoint::delay();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut killer)
                .await;
        });
    }
    Ok(armed)
}

/// After a commit that succeeded: `after_commit` dies, `lose_commit`
/// pretends the answer never came.
fn committed(armed: &[Point]) -> Result<(), sqlx::Error> {
    if armed.contains(&Point::AfterCommit) {
        failpoint::die("after_commit");
    }
    if armed.contains(&Point::LoseCommit) {
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "failpoint lose_commit: connection lost during COMMIT",
        )));
    }
    Ok(())
}

/// The batch as one statement outside any transaction block, so it is its
/// own transaction: the update and its progress record commit together
/// when it succeeds, neither when it fails (an error, a fenced epoch, the
/// server or the connection dying in the middle). One round trip. Outer
/// error: nothing was sent. Inner error: the statement failed, and with a
/// lost connection whether it committed is unknown (`Attempt::Ambiguous`).
async fn run_one(
    sh: &Shared,
    conn: &mut PgConnection,
    pid: i32,
    b: &Batch<'_>,
) -> Result<Result<Attempt, sqlx::Error>, sqlx::Error> {
    let armed = arm_commit(sh, pid).await?;
    let rows = match trip(
        sh,
        "the batch",
        batch_statement(sh, b, b.keys).fetch_one(&mut *conn),
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = committed(&armed) {
        return Ok(Err(e));
    }
    Ok(Ok(Attempt::Committed {
        rows: rows.max(0) as u64,
        deferred: sh.target.key_type.empty(),
    }))
}

/// The batch as an explicit transaction: BEGIN, with `lock_free` the rows
/// free right now locked first, the update and its progress record (one
/// statement, or two when the update cannot be wrapped), COMMIT. Outer
/// error: failed before COMMIT (the caller rolls back or drops the
/// connection). Inner error: COMMIT itself failed.
async fn run_tx(
    sh: &Shared,
    conn: &mut PgConnection,
    pid: i32,
    b: &Batch<'_>,
    lock_free: bool,
) -> Result<Result<Attempt, sqlx::Error>, sqlx::Error> {
    trip(sh, "BEGIN", conn.execute("BEGIN")).await?;
    let (apply, deferred) = if lock_free {
        let rows = trip(
            sh,
            "locking the free rows",
            b.keys
                .bind(sqlx::query(AssertSqlSafe(sh.target.lock_free_sql())))
                .fetch_all(&mut *conn),
        )
        .await?;
        let mut free = sh.target.key_type.empty();
        for r in &rows {
            free.push_from(r, 0)?;
        }
        let set = free.texts().into_iter().collect();
        b.keys.partition(&set)
    } else {
        (b.keys.clone(), sh.target.key_type.empty())
    };
    if apply.is_empty() {
        trip(sh, "ROLLBACK", conn.execute("ROLLBACK")).await?;
        return Ok(Ok(Attempt::Committed { rows: 0, deferred }));
    }
    let rows = if sh.one_statement.get() == Some(&true) {
        // Fenced: `fenced()` raises, the caller rolls back.
        let rows = trip(
            sh,
            "the batch",
            batch_statement(sh, b, &apply).fetch_one(&mut *conn),
        )
        .await?;
        rows.max(0) as u64
    } else {
        let rows = trip(
            sh,
            "job.update",
            apply
                .bind(sqlx::query(AssertSqlSafe(sh.target.update.clone())))
                .execute(&mut *conn),
        )
        .await?
        .rows_affected();
        // The fencing check rides on the progress record.
        let recorded = trip(
            sh,
            "writing the progress record",
            sqlx::query(AssertSqlSafe(sh.store.progress_insert_sql()))
                .bind(&sh.job)
                .bind(b.batch_id)
                .bind(b.pass)
                .bind(apply.first_text().unwrap_or_default())
                .bind(apply.last_text().unwrap_or_default())
                .bind(apply.len() as i32)
                .bind(rows as i64)
                .bind(b.epoch)
                .execute(&mut *conn),
        )
        .await?
        .rows_affected();
        if recorded == 0 {
            trip(sh, "ROLLBACK", conn.execute("ROLLBACK")).await?;
            return Ok(Ok(Attempt::Fenced { epoch: b.epoch }));
        }
        rows
    };
    let armed = arm_commit(sh, pid).await?;
    if let Err(e) = trip(sh, "COMMIT", conn.execute("COMMIT")).await {
        return Ok(Err(e));
    }
    if let Err(e) = committed(&armed) {
        return Ok(Err(e));
    }
    Ok(Ok(Attempt::Committed { rows, deferred }))
}

/// What looking an ambiguous COMMIT up came to.
pub enum Resolved {
    /// The progress record exists: the batch committed, with these rows.
    Committed(u64),
    NotCommitted,
    /// The server restarted (or failed over) meanwhile: the batch is
    /// dropped and the run resumes from the stored cursor.
    NewIncarnation,
}

/// After a connection broke during COMMIT: wait until the old backend is
/// gone (so its transaction has ended one way or the other), then look the
/// batch's progress record up. The server may be down for a while: keep
/// trying, with capped backoff, for as long as `limits.max_outage`.
pub async fn resolve_ambiguous(
    sh: &Shared,
    old_pid: i32,
    batch_id: i64,
) -> anyhow::Result<Resolved> {
    let t0 = std::time::Instant::now();
    let d = client_deadline(&sh.limits);
    let mut tries = 0u32;
    let mut conn = loop {
        let c = tokio::time::timeout(d, crate::store::connect(&sh.url, &sh.app_name))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("connecting timed out after {d:?}")));
        match c {
            Ok(c) => break c,
            Err(e) => {
                tries += 1;
                if sh.stopping() || t0.elapsed() > sh.max_outage() {
                    return Err(e);
                }
                tokio::time::sleep(crate::store::backoff(tries, Duration::from_secs(2))).await;
            }
        }
    };
    let (_, incarnation): (i32, i64) = within(
        d,
        "reading the server's incarnation",
        sqlx::query_as(INCARNATION_SQL).fetch_one(&mut conn),
    )
    .await?;
    if incarnation != sh.incarnation.load(Ordering::SeqCst) {
        // The old PID may belong to someone else now: never wait on it.
        sh.restart_seen.store(true, Ordering::SeqCst);
        drop(conn);
        return Ok(Resolved::NewIncarnation);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive: bool = within(
            d,
            "looking for the old backend",
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(old_pid)
                .fetch_one(&mut conn),
        )
        .await?;
        if !alive {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = within(
                d,
                "ending the old backend",
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(old_pid)
                    .execute(&mut conn),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = tokio::time::timeout(d, sh.store.batch_committed(&mut conn, &sh.job, batch_id))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "looking the batch up timed out after {d:?}"
            ))
        })?;
    let _ = tokio::time::timeout(CLIENT_MARGIN, conn.close()).await;
    Ok(match rows {
        Some(r) => Resolved::Committed(r as u64),
        None => Resolved::NotCommitted,
    })
}

impl Class {
    pub fn is_lost(&self) -> bool {
        matches!(self, Class::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> crate::policy::Limits {
        crate::policy::Policy::from_toml(
            "p.toml",
            r#"
[job]
name = "j"
table = "t"
key = "id"
pending = "x IS NULL"
update = "UPDATE t SET x = 1 WHERE id = ANY($1) AND x IS NULL"
[limits]
batch_size = { start = 100, min = 10, max = 1000 }
sleep = { start = "0ms", min = "0ms", max = "1s" }
workers = { start = 1, min = 1, max = 2 }
statement_timeout = "10s"
idle_in_transaction_timeout = "2s"
"#,
        )
        .unwrap()
        .limits
    }

    #[test]
    fn transaction_timeout_only_where_the_server_has_it() {
        let l = limits();
        for v in [120_000, 150_020, 160_004, 169_999] {
            let sql = session_limits_sql(&l, v);
            assert!(!sql.contains("transaction_timeout'"), "{v}: {sql}");
            assert!(
                sql.contains("'idle_in_transaction_session_timeout', '2000'"),
                "{sql}"
            );
        }
        for v in [170_000, 170_002, 180_000] {
            let sql = session_limits_sql(&l, v);
            // Three statements of 10 s with 2 s of idle before each.
            assert!(
                sql.contains("set_config('transaction_timeout', '36000', false)"),
                "{v}: {sql}"
            );
            assert!(
                sql.contains("'idle_in_transaction_session_timeout', '2000'"),
                "{sql}"
            );
        }
    }

    #[test]
    fn the_batch_timeouts_are_the_session_s() {
        let l = limits();
        let sql = session_limits_sql(&l, 150_000);
        assert!(
            sql.contains("set_config('statement_timeout', '10000', false)"),
            "{sql}"
        );
        assert!(
            sql.contains(&format!(
                "set_config('lock_timeout', '{}', false)",
                l.lock_timeout.as_millis()
            )),
            "{sql}"
        );
    }

    #[test]
    fn the_client_deadline_outlasts_the_server_timeout() {
        let l = limits();
        assert_eq!(client_deadline(&l), Duration::from_secs(15));
    }
}
