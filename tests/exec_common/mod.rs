//! Helpers for the executor tests: a policy file pointing at the test's
//! database, and the real `pacer` binary as a child process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_pacer");

/// URL of the database a `#[sqlx::test]` pool is connected to.
pub async fn url_of(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base =
        std::env::var("DATABASE_URL").expect("DATABASE_URL must be set for the executor tests");
    let (prefix, _) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = prefix
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{server}/{db}")
}

pub struct Spec<'a> {
    pub job: &'a str,
    pub table: &'a str,
    pub key: &'a str,
    pub pending: &'a str,
    pub update: &'a str,
    /// Extra TOML lines appended to `[limits]`... given as whole sections.
    pub batch: (u32, u32, u32),
    pub workers: (u32, u32, u32),
    pub sleep_ms: u64,
    pub read_chunk: u32,
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub max_retries: u32,
    /// `[job] idempotent`. Off by default: the default update increments
    /// a counter without a guard, on purpose (a batch applied twice shows
    /// as 2), and says so.
    pub idempotent: bool,
    pub extra: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            job: "t",
            table: "t",
            key: "id",
            pending: "counter = 0",
            update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1)",
            batch: (500, 50, 2000),
            workers: (1, 1, 1),
            sleep_ms: 0,
            read_chunk: 5000,
            lock_timeout_ms: 1000,
            statement_timeout_ms: 10000,
            max_retries: 5,
            idempotent: false,
            extra: "",
        }
    }
}

/// A policy file in a temp dir (kept alive by the returned guard).
pub fn policy(url: &str, s: &Spec) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let text = format!(
        r#"
[job]
name = "{job}"
table = "{table}"
key = "{key}"
pending = "{pending}"
update = "{update}"
{idempotent}

[database]
url = "{url}"

[limits]
batch_size = {{ start = {b0}, min = {b1}, max = {b2} }}
sleep = {{ start = "{sleep}ms", min = "0ms", max = "1s" }}
workers = {{ start = {w0}, min = {w1}, max = {w2} }}
read_chunk = {chunk}
lock_timeout = "{lt}ms"
statement_timeout = "{st}ms"
max_retries = {mr}

[controller]
tick = "200ms"
resume_after = "0s"
hold_after_resume = "1s"
{extra}
"#,
        job = s.job,
        table = s.table,
        key = s.key,
        pending = s.pending.replace('"', "\\\""),
        update = s.update.replace('"', "\\\""),
        b0 = s.batch.0,
        b1 = s.batch.1,
        b2 = s.batch.2,
        w0 = s.workers.0,
        w1 = s.workers.1,
        w2 = s.workers.2,
        sleep = s.sleep_ms,
        chunk = s.read_chunk,
        lt = s.lock_timeout_ms,
        st = s.statement_timeout_ms,
        mr = s.max_retries,
        idempotent = if s.idempotent {
            ""
        } else {
            "idempotent = false"
        },
        extra = s.extra,
    );
    // Every run serves HTTP: give each policy a port of its own, so tests
    // running in parallel do not fight over the default 127.0.0.1:9187.
    let text = if s.extra.contains("[http]") {
        text
    } else {
        format!("{text}\n[http]\nlisten = \"127.0.0.1:{}\"\n", free_port())
    };
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `[http] listen` address of a policy file written by `policy`.
pub fn listen_of(policy: &std::path::Path) -> String {
    let text = std::fs::read_to_string(policy).unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("listen"))
        .expect("the policy has [http] listen");
    line.split('"').nth(1).unwrap().to_string()
}

pub fn pacer(args: &[&str], policy: &PathBuf) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).arg("--policy").arg(policy);
    c.env_remove("PACER_FAILPOINT")
        .env("PACER_LOG_LEVEL", "info");
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Cap the run at 3000 rows/s (the governor), so a test that acts while
/// the job runs is not outrun by a fast machine.
pub fn capped(mut c: Command) -> Command {
    c.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "3000");
    c
}

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub async fn output(mut c: Command) -> Out {
    let o = tokio::time::timeout(Duration::from_secs(120), c.output())
        .await
        .expect("pacer did not finish within 120s")
        .unwrap();
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// Start pacer in the background. Its stderr (logs) goes to a file, not a
/// pipe nobody reads: a full pipe would block the child mid-run.
pub fn spawn(mut c: Command) -> Child {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pacer-test-{}-{n}.log", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    c.stderr(Stdio::from(file));
    c.spawn().unwrap()
}

/// A table `name` with `n` rows, ids with gaps, and a counter the test
/// update increments (so a batch applied twice shows as 2).
pub async fn counter_table(pool: &PgPool, name: &str, n: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, counter integer NOT NULL DEFAULT 0, pad text);
         INSERT INTO {name} (id, pad) SELECT g + (g / 3) * 2 + (g / 1000) * 100, md5(g::text) FROM generate_series(1, {n}) g;
         ANALYZE {name};"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// (rows with counter 0, rows with counter 1, rows with counter > 1).
pub async fn counters(pool: &PgPool, table: &str) -> (i64, i64, i64) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE counter = 0), count(*) FILTER (WHERE counter = 1), count(*) FILTER (WHERE counter > 1) FROM {table}"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Poll `f` until it is true or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether the log file at `path` says `needle` within `limit`.
pub async fn log_says(path: &std::path::Path, needle: &str, limit: Duration) -> bool {
    wait_until(limit, || async {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
    })
    .await
}

/// Deterministic pseudo-random numbers for seeded crash moments.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
