//! The chaos suite: the real `pacer run` binary against PostgreSQL clusters
//! the suite owns (initdb into a temp dir, its own port and socket
//! directory; never the testbed's primary, never a cluster the machine
//! already runs), one fault at a time, each checked for rows lost and rows
//! applied twice and measured as an operator would see it.
//!
//! Shared by the benchmark (`bench/chaos.rs`, run through `bench/chaos`,
//! results in docs/RELIABILITY.md) and its reduced form in CI
//! (`tests/chaos.rs`), which include this file with `#[path = ...]`.
//!
//! Every scenario backfills a table of its own, in a database of its own,
//! with a deliberately non-idempotent update (`n = n + 1, done = true`, no
//! guard) so that a batch applied twice shows as `n = 2`. A "live" client
//! updates rows of the same table in short transactions all along (random
//! ones, and ones just ahead of pacer's last batch) and records how long
//! its updates took: the longest is the longest wait of a live session on
//! pacer (a one-row primary-key update takes about a millisecond unless it
//! waits for a lock).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// PostgreSQL 15's binaries (Debian's `postgresql-15`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Settings of one run of the suite: the full benchmark or its CI form.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `pacer` binary under test.
    pub pacer: PathBuf,
    /// How many `kill -9` in the crash scenario.
    pub kills: usize,
    /// Workers (`limits.workers` start = max) in every scenario.
    pub workers: u32,
    /// Hard rate cap (rows/s) while faults are injected, so the job is
    /// still running when the fault comes; the finishing run is uncapped.
    pub rate: u32,
    /// The primary stopped for this long.
    pub outage: Duration,
    /// pacer frozen with SIGSTOP for this long.
    pub freeze: Duration,
    /// The primary read-only for this long.
    pub read_only: Duration,
    /// Each Prometheus fault (refused, hanging, garbage) lasts this long.
    pub prom_fault: Duration,
    /// `limits.statement_timeout` of the chaos policy.
    pub statement_timeout: Duration,
    /// `limits.idle_in_transaction_timeout` of the chaos policy.
    pub idle_timeout: Duration,
    /// Seed of the kill moments and of the live client's rows.
    pub seed: u64,
    /// Only scenarios whose name contains this.
    pub only: Option<String>,
    /// Where pacer's logs go (one file per process).
    pub log_dir: PathBuf,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl Config {
    /// The benchmark of docs/RELIABILITY.md: 20 s outage and freeze.
    pub fn full(pacer: PathBuf, log_dir: PathBuf) -> Config {
        Config {
            pacer,
            kills: 50,
            workers: 4,
            rate: 3000,
            outage: Duration::from_secs(20),
            freeze: Duration::from_secs(20),
            read_only: Duration::from_secs(10),
            prom_fault: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(2),
            seed: 0xc4a0_5eed,
            only: None,
            log_dir,
            verbose: true,
        }
    }

    /// The reduced form CI runs: the same faults, shorter.
    pub fn ci(pacer: PathBuf, log_dir: PathBuf) -> Config {
        Config {
            kills: 10,
            workers: 3,
            rate: 2000,
            outage: Duration::from_secs(4),
            freeze: Duration::from_secs(4),
            read_only: Duration::from_secs(3),
            prom_fault: Duration::from_secs(3),
            ..Config::full(pacer, log_dir)
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }

    fn say(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!("chaos: {}", msg.as_ref());
        }
    }
}

/// What one fault came to: one row of the table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Scenario name (`restart`, `outage`, ...).
    pub name: String,
    /// The fault, in words.
    pub fault: String,
    /// What pacer is expected to do.
    pub expected: String,
    /// What pacer did, from its log lines and exit code.
    pub did: String,
    /// Exit code of the `pacer run` that met the fault (None: still
    /// running when the fault was over, then stopped with SIGTERM).
    pub exit: Option<i32>,
    /// Seconds from the fault to pacer's pause decision (or, where pacer
    /// refuses or stops, to its exit).
    pub pause_s: Option<f64>,
    /// Seconds from the end of the fault to the next batch committed.
    pub resume_s: Option<f64>,
    /// Rows never applied (still pending at the end, or `n = 0`).
    pub lost: Option<i64>,
    /// Rows applied more than once (`n > 1`).
    pub doubled: Option<i64>,
    /// Longest update of the live client, ms.
    pub live_wait_ms: Option<f64>,
    /// Live updates done / failed (failures: the server down or read-only).
    pub live_ok: u64,
    pub live_failed: u64,
    /// Whether pacer did what was expected, with 0 lost and 0 doubled.
    pub ok: bool,
    /// What went against expectations.
    pub problems: Vec<String>,
    /// Wall time of the scenario, s.
    pub seconds: f64,
    /// Free-form figures (kills landed mid-batch, restart times, ...).
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(name: &str, fault: &str, expected: &str) -> Outcome {
        Outcome {
            name: name.into(),
            fault: fault.into(),
            expected: expected.into(),
            ..Outcome::default()
        }
    }

    fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    fn check(&mut self, cond: bool, p: impl Into<String>) {
        if !cond {
            self.problem(p);
        }
    }
}

// ---------------------------------------------------------------------------
// A throwaway cluster.

/// A PostgreSQL cluster in a temp dir on a port of its own, run as the
/// `postgres` OS user; stopped (immediately) and deleted on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    pub fn new() -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("pacer-chaos-")
            .tempdir_in("/tmp")?;
        let st = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(st.success(), "chown of the cluster's directory failed");
        let st = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "initdb failed");
        Ok(Cluster {
            dir,
            port: free_port(),
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(st.success(), "pg_ctl {args:?} failed");
        Ok(())
    }

    /// Always with this cluster's own port and socket directory: a bare
    /// `pg_ctl start` would aim at the default port.
    pub async fn start(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=60 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &opts, "start"])
            .await
    }

    async fn is_up(&self) -> bool {
        connect(&self.url("postgres")).await.is_ok()
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    Ok(tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(url)).await??)
}

/// Statements one at a time (`ALTER SYSTEM` refuses to run in the implicit
/// transaction of a multi-statement query).
async fn exec_each(url: &str, stmts: &[&str]) -> anyhow::Result<()> {
    let mut c = connect(url).await?;
    for q in stmts {
        sqlx::raw_sql(sqlx::AssertSqlSafe(q.to_string()))
            .execute(&mut c)
            .await?;
    }
    let _ = c.close().await;
    Ok(())
}

async fn exec(url: &str, sql: &str) -> anyhow::Result<()> {
    let mut c = connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// The policy.

/// What varies between the chaos policies.
pub struct PolicySpec<'a> {
    pub job: &'a str,
    pub url: &'a str,
    pub workers: u32,
    pub statement_timeout: Duration,
    pub idle_timeout: Duration,
    /// `[prometheus]` url of a fault injector, and a signal reading it.
    pub prometheus: Option<&'a str>,
}

/// Lines added to `[job]` of every chaos policy: the update below is
/// deliberately not idempotent (so a double shows), which pacer refuses
/// unless the policy says it knows.
pub const JOB_EXTRA: &str = "idempotent = false";

/// The text of every chaos policy: the one place it is written.
pub fn policy_text(s: &PolicySpec) -> String {
    let mut t = format!(
        r#"[job]
name = "{job}"
table = "public.t"
key = "id"
pending = "NOT done"
update = "UPDATE public.t SET n = n + 1, done = true WHERE id = ANY($1)"
{extra}

[database]
url = "{url}"

[limits]
batch_size = {{ start = 200, min = 50, max = 400 }}
sleep = {{ start = "0ms", min = "0ms", max = "200ms" }}
workers = {{ start = {w}, min = 1, max = {w} }}
read_chunk = 2000
lock_timeout = "500ms"
statement_timeout = "{st}ms"
idle_in_transaction_timeout = "{it}ms"
max_retries = 5
max_outage = "5m"

[controller]
tick = "200ms"
resume_after = "1s"
hold_after_resume = "1s"
missing_grace = "2s"

[http]
listen = "127.0.0.1:{port}"
"#,
        job = s.job,
        extra = JOB_EXTRA,
        url = s.url,
        w = s.workers,
        st = s.statement_timeout.as_millis(),
        it = s.idle_timeout.as_millis(),
        port = free_port(),
    );
    if let Some(p) = s.prometheus {
        t.push_str(&format!(
            r#"
[prometheus]
url = "{p}"
timeout = "1s"
scrape_interval = "1s"

[[signal]]
name = "checkout_p95"
prometheus = "chaos_checkout_p95"
stop_above = 1000
on_missing = "pause"
timeout = "1s"
delay = "2s"
"#
        ));
    }
    t
}

// ---------------------------------------------------------------------------
// A scenario: its database, table, policy and pacer processes.

struct Scene<'a> {
    cfg: &'a Config,
    cluster: &'a Cluster,
    name: String,
    url: String,
    rows: i64,
    job: String,
    dir: tempfile::TempDir,
    policy: PathBuf,
    logs: Vec<PathBuf>,
}

impl<'a> Scene<'a> {
    async fn new(
        cfg: &'a Config,
        cluster: &'a Cluster,
        name: &str,
        rows: i64,
        prometheus: Option<&str>,
    ) -> anyhow::Result<Scene<'a>> {
        let db = format!("chaos_{}", name.replace('-', "_"));
        let admin = cluster.url("postgres");
        exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        )
        .await?;
        exec(&admin, &format!("CREATE DATABASE {db}")).await?;
        let url = cluster.url(&db);
        exec(
            &url,
            &format!(
                "CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL DEFAULT 0,
                                 done boolean NOT NULL DEFAULT false, pad text);
                 INSERT INTO t (id, pad) SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
                 ANALYZE t;"
            ),
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("policy.toml");
        let job = name.to_string();
        std::fs::write(&policy, policy_for(cfg, &job, &url, prometheus))?;
        Ok(Scene {
            cfg,
            cluster,
            name: name.into(),
            url,
            rows,
            job,
            dir,
            policy,
            logs: Vec::new(),
        })
    }

    /// `pacer run` with JSON logs to a file of its own; `capped` applies
    /// the config's rate cap.
    fn spawn(&mut self, policy: &Path, capped: bool) -> anyhow::Result<Child> {
        let log = self.cfg.log_dir.join(format!(
            "chaos-{}-{}-{}.log",
            self.name,
            std::process::id(),
            self.logs.len()
        ));
        let mut c = Command::new(&self.cfg.pacer);
        c.arg("run")
            .arg("--policy")
            .arg(policy)
            .env_remove("PACER_FAILPOINT")
            .env_remove("DATABASE_URL")
            .env("PACER_LOG_FORMAT", "json")
            .env("PACER_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true);
        if capped {
            c.env(
                "PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND",
                self.cfg.rate.to_string(),
            );
        }
        self.logs.push(log);
        Ok(c.spawn()?)
    }

    fn run(&mut self, capped: bool) -> anyhow::Result<Child> {
        let p = self.policy.clone();
        self.spawn(&p, capped)
    }

    fn log(&self) -> &Path {
        self.logs.last().expect("pacer was started")
    }

    /// Rows done according to pacer's progress records.
    async fn done(&self) -> i64 {
        let q = async {
            let mut c = connect(&self.url).await?;
            let n: Option<i64> =
                sqlx::query_scalar("SELECT sum(rows)::int8 FROM pacer.progress WHERE job = $1")
                    .bind(&self.job)
                    .fetch_one(&mut c)
                    .await?;
            let _ = c.close().await;
            anyhow::Ok(n.unwrap_or(0))
        };
        q.await.unwrap_or(-1)
    }

    /// Wait until pacer has committed more than `n` rows.
    async fn wait_done(&self, n: i64, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.done().await > n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Start `pacer run` (capped) and wait until it writes.
    async fn start(&mut self, out: &mut Outcome) -> anyhow::Result<Child> {
        let mut child = self.run(true)?;
        let before = self.done().await.max(0);
        let spawned = Instant::now();
        let started = self.wait_done(before + 1500, Duration::from_secs(60)).await;
        if !started {
            let _ = child.start_kill();
            anyhow::bail!(
                "{}: pacer did not start writing within 60 s (log {}): {}",
                self.name,
                self.log().display(),
                tail(self.log(), 5)
            );
        }
        // In its stride (every worker writing) before the fault comes.
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(spawned.elapsed())).await;
        if let Ok(Some(st)) = child.try_wait() {
            out.problem(format!("pacer exited ({st}) right after it started"));
        }
        Ok(child)
    }

    /// First progress record committed after `t`.
    async fn first_batch_after(&self, t: DateTime<Utc>, limit: Duration) -> Option<f64> {
        let t0 = Instant::now();
        loop {
            let r = async {
                let mut c = connect(&self.url).await?;
                let at: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT min(committed_at) FROM pacer.progress WHERE job = $1 AND committed_at > $2",
                )
                .bind(&self.job)
                .bind(t)
                .fetch_one(&mut c)
                .await?;
                let _ = c.close().await;
                anyhow::Ok(at)
            }
            .await;
            if let Ok(Some(at)) = r {
                return Some(secs(at - t));
            }
            if t0.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (lost, doubled): rows never applied and rows applied twice.
    async fn counts(&self) -> anyhow::Result<(i64, i64)> {
        let mut c = connect(&self.url).await?;
        let r: (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE NOT done OR n = 0), count(*) FILTER (WHERE n > 1) FROM t",
        )
        .fetch_one(&mut c)
        .await?;
        let _ = c.close().await;
        Ok(r)
    }

    /// Stop a run still going (SIGTERM, a graceful stop) and finish the
    /// table with an uncapped run, then count lost and doubled rows.
    async fn finish(&mut self, mut child: Child, out: &mut Outcome) -> anyhow::Result<()> {
        match child.try_wait()? {
            Some(st) => {
                out.exit = st.code();
            }
            None => {
                signal(child.id(), "-TERM");
                match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(st) => {
                        let st = st?;
                        out.check(
                            st.code() == Some(0),
                            format!("SIGTERM after the fault: exit {:?}", st.code()),
                        );
                    }
                    Err(_) => {
                        out.problem("pacer did not stop within 30 s of SIGTERM");
                        let _ = child.kill().await;
                    }
                }
            }
        }
        let mut last = self.run(false)?;
        let st = tokio::time::timeout(Duration::from_secs(180), last.wait()).await;
        match st {
            Ok(st) => {
                let code = st?.code();
                out.check(
                    code == Some(0),
                    format!("the finishing run exited {code:?}: {}", tail(self.log(), 3)),
                );
            }
            Err(_) => {
                out.problem("the finishing run did not end within 180 s");
                let _ = last.kill().await;
            }
        }
        let (lost, doubled) = self.counts().await?;
        out.lost = Some(lost);
        out.doubled = Some(doubled);
        Ok(())
    }
}

fn policy_for(cfg: &Config, job: &str, url: &str, prometheus: Option<&str>) -> String {
    policy_text(&PolicySpec {
        job,
        url,
        workers: cfg.workers,
        statement_timeout: cfg.statement_timeout,
        idle_timeout: cfg.idle_timeout,
        prometheus,
    })
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn signal(pid: Option<u32>, sig: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status();
    }
}

/// The last `n` lines of a log, messages only.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => format!(
                "{} {}{}",
                v["level"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or(""),
                v["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            Err(_) => l.to_string(),
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// pacer's JSON log lines.
fn events(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn at(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v["timestamp"].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The first log event at or after `t` that `pick` accepts: seconds from
/// `t`, and its message.
fn first_after(
    log: &Path,
    t: DateTime<Utc>,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<(f64, String)> {
    // Log timestamps have millisecond precision.
    let t = t - chrono::TimeDelta::milliseconds(1);
    events(log).into_iter().find_map(|v| {
        let when = at(&v)?;
        (when >= t && pick(&v)).then(|| {
            (
                secs(when - t),
                v["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

/// The first decision with this action at or after `t`.
fn decision_after(log: &Path, action: &str, t: DateTime<Utc>) -> Option<(f64, String)> {
    first_after(log, t, |v| v["action"] == action)
}

/// The first log line at or after `t` whose message starts with `prefix`.
fn message_after(log: &Path, prefix: &str, t: DateTime<Utc>) -> Option<(f64, String)> {
    first_after(log, t, |v| {
        v["message"].as_str().is_some_and(|m| m.starts_with(prefix))
    })
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

/// A pause decision's cause in a few words: `pausing: paused by pacer:
/// control connection lost: the server closed the connection: <driver
/// detail>` is `control connection lost: the server closed the
/// connection`; a missing signal keeps its name, how long and the gist of
/// the reason.
fn cause(msg: &str) -> String {
    let m = msg.strip_prefix("pausing: ").unwrap_or(msg);
    let m = m.strip_prefix("paused by pacer: ").unwrap_or(m);
    let m = m.split("; ").next().unwrap_or(m);
    if let Some((sig, rest)) = m.split_once(" missing for ") {
        let dur = rest.split(' ').next().unwrap_or("");
        let gist = if rest.contains("Connection refused") {
            "connection refused"
        } else if rest.contains("timed out") || rest.contains("no answer within") {
            "no answer within the timeout"
        } else if rest.contains("parse JSON") {
            "the answer is not JSON"
        } else {
            "no value"
        };
        return format!("{sig} missing for {dur}: {gist}");
    }
    let mut parts = m.splitn(3, ": ");
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => short(&format!("{a}: {b}"), 100),
        _ => short(m, 100),
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Wait for a child with a limit; None if it is still running.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(st)) => Some(st.code()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The live client.

/// Short transactions on random rows of the table, as the application
/// would: the longest one is the longest wait of a live session on pacer.
pub struct Live {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LiveStats>,
    max_us: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LiveStats {
    pub ok: u64,
    pub failed: u64,
    pub max: Duration,
}

impl Live {
    /// Half the updates go to random rows, half to the rows just ahead of
    /// pacer's last committed batch (its in-flight batches), where a live
    /// session meets pacer's row locks.
    pub fn start(url: &str, job: &str, rows: i64, seed: u64) -> Live {
        let stop = Arc::new(AtomicBool::new(false));
        let max_us = Arc::new(AtomicU64::new(0));
        let (url, job, s, m) = (
            url.to_string(),
            job.to_string(),
            stop.clone(),
            max_us.clone(),
        );
        let task = tokio::spawn(async move {
            let mut rng = Rng(seed | 1);
            let mut stats = LiveStats::default();
            let mut conn: Option<PgConnection> = None;
            let mut frontier: Option<i64> = None;
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                if conn.is_none() {
                    match connect(&url).await {
                        Ok(mut c) => {
                            let _ = sqlx::query("SET statement_timeout = '60s'")
                                .execute(&mut c)
                                .await;
                            let _ = sqlx::query("SET application_name = 'chaos-live'")
                                .execute(&mut c)
                                .await;
                            conn = Some(c);
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                i += 1;
                if i % 10 == 1 {
                    frontier = sqlx::query_scalar(
                        "SELECT last_key::int8 FROM pacer.progress WHERE job = $1 ORDER BY committed_at DESC LIMIT 1",
                    )
                    .bind(&job)
                    .fetch_optional(&mut *c)
                    .await
                    .ok()
                    .flatten();
                }
                let id = match frontier {
                    Some(f) if i.is_multiple_of(2) => {
                        (f - 200 + rng.below(1200) as i64).clamp(1, rows)
                    }
                    _ => 1 + rng.below(rows as u64) as i64,
                };
                let t0 = Instant::now();
                let r = sqlx::query("UPDATE t SET pad = md5(random()::text) WHERE id = $1")
                    .bind(id)
                    .execute(&mut *c)
                    .await;
                let took = t0.elapsed();
                match r {
                    Ok(_) => {
                        stats.ok += 1;
                        stats.max = stats.max.max(took);
                        m.fetch_max(took.as_micros() as u64, Ordering::SeqCst);
                    }
                    Err(_) => {
                        stats.failed += 1;
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(c) = conn {
                let _ = c.close().await;
            }
            stats
        });
        Live { stop, task, max_us }
    }

    /// Count a wait measured elsewhere (a targeted update) as live.
    pub fn note(&self, d: Duration) {
        self.max_us
            .fetch_max(d.as_micros() as u64, Ordering::SeqCst);
    }

    pub async fn finish(self, out: &mut Outcome) -> LiveStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut st = self.task.await.unwrap_or_default();
        st.max = st
            .max
            .max(Duration::from_micros(self.max_us.load(Ordering::SeqCst)));
        out.live_wait_ms = Some(st.max.as_secs_f64() * 1000.0);
        out.live_ok = st.ok;
        out.live_failed = st.failed;
        st
    }
}

/// Deterministic pseudo-random numbers (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ---------------------------------------------------------------------------
// A Prometheus that can be made to refuse, hang or answer garbage.

const PROM_OK: u8 = 0;
const PROM_REFUSE: u8 = 1;
const PROM_HANG: u8 = 2;
const PROM_GARBAGE: u8 = 3;

/// A fault injector standing in for Prometheus on a port of its own: it
/// answers every query with one calm sample, or (on command) refuses
/// connections (nothing listens), accepts them and never answers, or
/// answers garbage.
pub struct FakeProm {
    pub url: String,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProm {
    pub fn start() -> FakeProm {
        let port = free_port();
        let mode = Arc::new(AtomicU8::new(PROM_OK));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            let mut listener: Option<tokio::net::TcpListener> = None;
            loop {
                if m.load(Ordering::SeqCst) == PROM_REFUSE {
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                if listener.is_none() {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    let _ = sock.set_reuseaddr(true);
                    match sock.bind(addr).and_then(|_| sock.listen(128)) {
                        Ok(l) => listener = Some(l),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let l = listener.as_ref().unwrap();
                let accepted = tokio::time::timeout(Duration::from_millis(50), l.accept()).await;
                if let Ok(Ok((sock, _))) = accepted {
                    tokio::spawn(serve_prom(sock, m.clone()));
                }
            }
        });
        FakeProm {
            url: format!("http://127.0.0.1:{port}"),
            mode,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for FakeProm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_prom(mut sock: tokio::net::TcpStream, mode: Arc<AtomicU8>) {
    // Read the request head and body (queries may come as POST forms).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        if buf.len() > 1 << 20 {
            return;
        }
    }
    let body = match mode.load(Ordering::SeqCst) {
        PROM_HANG => {
            // Accept, read, never answer (the socket stays open).
            tokio::time::sleep(Duration::from_secs(600)).await;
            return;
        }
        PROM_GARBAGE => "\u{1}\u{2}<html>502 Bad Gateway{{{\"status\":".to_string(),
        _ => {
            let now = Utc::now().timestamp_millis() as f64 / 1000.0;
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now},"0.05"]}}]}}}}"#
            )
        }
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// ---------------------------------------------------------------------------
// The faults.

/// Run every scenario the config wants on one throwaway cluster, in order.
pub async fn run_all(cfg: &Config) -> anyhow::Result<Vec<Outcome>> {
    std::fs::create_dir_all(&cfg.log_dir)?;
    let cluster = Cluster::new()?;
    cluster.start().await?;
    cfg.say(format!(
        "throwaway cluster on 127.0.0.1:{} (logs in {})",
        cluster.port,
        cfg.log_dir.display()
    ));
    type Scenario = for<'a> fn(
        &'a Config,
        &'a Cluster,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<Vec<Outcome>>> + 'a>,
    >;
    let all: Vec<(&str, Scenario)> = vec![
        ("restart", |c, k| Box::pin(one(restart(c, k)))),
        ("outage", |c, k| Box::pin(one(outage(c, k)))),
        ("terminate-workers", |c, k| {
            Box::pin(one(terminate(c, k, false)))
        }),
        ("terminate-control", |c, k| {
            Box::pin(one(terminate(c, k, true)))
        }),
        ("read-only", |c, k| Box::pin(one(read_only(c, k)))),
        ("table-dropped", |c, k| Box::pin(one(table_dropped(c, k)))),
        ("prometheus", |c, k| Box::pin(prometheus(c, k))),
        ("frozen", |c, k| Box::pin(one(frozen(c, k)))),
        ("two-jobs", |c, k| Box::pin(one(two_jobs(c, k)))),
        ("kill-9", |c, k| Box::pin(one(kills(c, k)))),
    ];
    let mut outs = Vec::new();
    for (name, f) in all {
        if !cfg.wants(name) {
            continue;
        }
        cfg.say(format!("{name} ..."));
        let t0 = Instant::now();
        let r = f(cfg, &cluster).await;
        // Whatever happened, the cluster is up and writable for the next.
        if !cluster.is_up().await {
            let _ = cluster.start().await;
        }
        let _ = reset_read_only(&cluster).await;
        let mut got = match r {
            Ok(o) => o,
            Err(e) => {
                let mut o = Outcome::new(name, name, "");
                o.problem(format!("the scenario failed: {e:#}"));
                vec![o]
            }
        };
        let took = t0.elapsed().as_secs_f64();
        for o in &mut got {
            o.seconds = took;
            if o.lost.is_some_and(|n| n != 0) || o.doubled.is_some_and(|n| n != 0) {
                o.problems.push("rows lost or applied twice".into());
            }
            o.ok = o.problems.is_empty();
            cfg.say(format!(
                "{name}: {} in {took:.0}s — {}{}",
                if o.ok { "ok" } else { "NOT OK" },
                o.did,
                if o.ok {
                    String::new()
                } else {
                    format!(" — problems: {}", o.problems.join("; "))
                }
            ));
        }
        outs.extend(got);
    }
    Ok(outs)
}

async fn one(
    f: impl std::future::Future<Output = anyhow::Result<Outcome>>,
) -> anyhow::Result<Vec<Outcome>> {
    Ok(vec![f.await?])
}

/// The first decision with this action at or after `t`, waiting for it
/// to appear in the log for up to `limit`.
async fn wait_decision(
    log: &Path,
    action: &str,
    t: DateTime<Utc>,
    limit: Duration,
) -> Option<(f64, String)> {
    let t0 = Instant::now();
    loop {
        if let Some(d) = decision_after(log, action, t) {
            return Some(d);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After-the-fault bookkeeping common to the pause-and-resume faults: the
/// pause decision after the injection, then (if paused) the resume
/// decision after it, and the first batch committed after both the end of
/// the fault and the resume.
/// What a fault should make pacer do before it carries on.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Pause,
    /// A pause, or, when the loss is found while the tick's records are
    /// written, the workers held and a reconnect before the next decision
    /// ("database reachable again"): no pause decision then.
    PauseOrReconnect,
    NoPause,
}

async fn paused_and_resumed(
    s: &Scene<'_>,
    out: &mut Outcome,
    injected: DateTime<Utc>,
    undone: DateTime<Utc>,
    expect: Expect,
) {
    let expect_pause = expect != Expect::NoPause;
    let limit = if expect_pause {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(2)
    };
    let pause = wait_decision(s.log(), "pause", injected, limit).await;
    let mut from = undone;
    match &pause {
        Some((t, msg)) => {
            out.pause_s = Some(*t);
            out.did = format!("paused ({})", cause(msg));
            let paused_at = injected + chrono::TimeDelta::milliseconds((*t * 1000.0) as i64);
            match wait_decision(s.log(), "resume", paused_at, Duration::from_secs(60)).await {
                Some((r, _)) => {
                    let resumed_at =
                        paused_at + chrono::TimeDelta::milliseconds((r * 1000.0) as i64);
                    from = from.max(resumed_at);
                }
                None => out.problem("no resume decision within 60 s of the pause"),
            }
        }
        None if expect == Expect::PauseOrReconnect
            && message_after(s.log(), "database reachable again", injected).is_some() =>
        {
            out.did = "held its workers and reconnected before its next decision".into();
        }
        None if expect_pause => {
            out.problem("no pause decision in pacer's log");
            out.did = "did not pause".into();
        }
        None => out.did = "carried on without a pause".into(),
    }
    out.resume_s = s
        .first_batch_after(from, Duration::from_secs(60))
        .await
        .map(|t| t + secs(from - undone));
    match out.resume_s {
        Some(_) => out.did.push_str("; resumed by itself"),
        None => out.problem("no batch committed within 60 s of the end of the fault"),
    }
}

/// What a failed command printed last (the one non-JSON `error:` line).
fn final_error(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
        .to_string()
}

fn code_of(c: Option<i32>) -> String {
    c.map(|c| c.to_string())
        .unwrap_or_else(|| "by signal".into())
}

/// The gist of a stop message: `job.update failed on the batch of 240
/// keys from 1 to 240: X; nothing of this batch was applied` is X.
fn essence(msg: &str) -> String {
    let m = msg.strip_prefix("stopping the job: ").unwrap_or(msg);
    let m = m.strip_prefix("error: ").unwrap_or(m);
    let m = match m.find("failed on the batch") {
        Some(i) => m[i..].split_once(": ").map(|(_, r)| r).unwrap_or(m),
        None => m,
    };
    let m = m.split("; nothing").next().unwrap_or(m);
    format!("\"{}\"", short(m, 80))
}

/// The last ERROR line: its message and error.
fn last_error(log: &Path) -> String {
    events(log)
        .iter()
        .rev()
        .find(|v| v["level"] == "ERROR")
        .map(|v| {
            let m = v["message"].as_str().unwrap_or("");
            match v["error"].as_str() {
                Some(e) => format!("{m}: {e}"),
                None => m.to_string(),
            }
        })
        .unwrap_or_else(|| tail(log, 1))
}

async fn restart(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "restart",
        "primary restarted (`pg_ctl restart -m immediate`)",
        "pause, resume from stored progress",
    );
    let mut s = Scene::new(cfg, cluster, "restart", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed);
    let child = s.start(&mut out).await?;
    let injected = Utc::now();
    cluster
        .pg_ctl(&["-w", "-m", "immediate", "restart"])
        .await?;
    let undone = Utc::now();
    paused_and_resumed(&s, &mut out, injected, undone, Expect::Pause).await;
    if log_has(s.log(), "the database server restarted") {
        out.did = out.did.replacen(
            "; resumed",
            "; saw the restart, rebuilt its state from the stored progress; resumed",
            1,
        );
    } else {
        out.problem("the restart was not noticed (no `the database server restarted` line)");
    }
    live.finish(&mut out).await;
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn outage(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "outage",
        &format!(
            "primary down {} s (`pg_ctl stop -m fast`, wait, start)",
            cfg.outage.as_secs()
        ),
        "pause (database unreachable), resume by itself",
    );
    let mut s = Scene::new(cfg, cluster, "outage", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 1);
    let mut child = s.start(&mut out).await?;
    let injected = Utc::now();
    cluster.pg_ctl(&["-w", "-m", "fast", "stop"]).await?;
    tokio::time::sleep(cfg.outage).await;
    out.check(
        child.try_wait()?.is_none(),
        "pacer exited during the outage",
    );
    cluster.start().await?;
    let undone = Utc::now();
    paused_and_resumed(&s, &mut out, injected, undone, Expect::Pause).await;
    if log_has(s.log(), "database unreachable: connection refused") {
        out.did = out.did.replacen(
            "; resumed",
            ", then database unreachable: connection refused; resumed",
            1,
        );
    } else {
        out.problem("no `database unreachable: connection refused` cause in the log");
    }
    live.finish(&mut out).await;
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn terminate(cfg: &Config, cluster: &Cluster, control: bool) -> anyhow::Result<Outcome> {
    let name = if control {
        "terminate-control"
    } else {
        "terminate-workers"
    };
    let mut out = if control {
        Outcome::new(
            name,
            "control backend terminated (`pg_terminate_backend`, application_name `pacer:<job>:control`)",
            "pause (switch unreadable), reconnect, re-take the locks, resume",
        )
    } else {
        Outcome::new(
            name,
            "worker backends terminated (`pg_terminate_backend`, application_name `pacer:<job>`), 3 times 1 s apart",
            "retry the batches, carry on",
        )
    };
    let mut s = Scene::new(cfg, cluster, name, 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 2);
    let child = s.start(&mut out).await?;
    let app = if control {
        format!("pacer:{}:control", s.job)
    } else {
        format!("pacer:{}", s.job)
    };
    let injected = Utc::now();
    let mut killed = 0i64;
    let rounds = if control { 1 } else { 3 };
    for i in 0..rounds {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut c = connect(&s.url).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(&app)
        .fetch_one(&mut c)
        .await?;
        killed += n;
        let _ = c.close().await;
    }
    let undone = Utc::now();
    out.notes.push(format!("{killed} backend(s) terminated"));
    out.check(killed > 0, "no backend to terminate");
    let expect = if control {
        Expect::PauseOrReconnect
    } else {
        Expect::NoPause
    };
    paused_and_resumed(&s, &mut out, injected, undone, expect).await;
    if control {
        out.check(
            log_has(s.log(), "control connection lost"),
            "no `control connection lost` cause in the log",
        );
    }
    out.did = format!("{} ({killed} backend(s) terminated)", out.did);
    live.finish(&mut out).await;
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn reset_read_only(cluster: &Cluster) -> anyhow::Result<()> {
    exec_each(
        &cluster.url("postgres"),
        &[
            "SET default_transaction_read_only = off",
            "ALTER SYSTEM RESET default_transaction_read_only",
            "SELECT pg_reload_conf()",
        ],
    )
    .await
}

async fn read_only(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "read-only",
        &format!(
            "primary read-only {} s (`ALTER SYSTEM SET default_transaction_read_only = on` + reload, then off)",
            cfg.read_only.as_secs()
        ),
        "pause while writes fail, resume by itself",
    );
    let mut s = Scene::new(cfg, cluster, "read-only", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 3);
    let mut child = s.start(&mut out).await?;
    let injected = Utc::now();
    exec_each(
        &cluster.url("postgres"),
        &[
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
        ],
    )
    .await?;
    let t_ro = Instant::now();
    let exited = wait_exit(&mut child, cfg.read_only).await;
    // Read-only for the whole duration, whatever pacer did.
    tokio::time::sleep(cfg.read_only.saturating_sub(t_ro.elapsed())).await;
    reset_read_only(cluster).await?;
    let undone = Utc::now();
    match exited {
        Some(code) => {
            let printed = final_error(s.log());
            if !printed.contains("job.update failed") {
                out.problem(format!(
                    "its last word is a failure to write its own state, not the cause: {printed:?}"
                ));
            }
            out.exit = code;
            let stop = last_error(s.log());
            if let Some(t) = at(events(s.log()).last().unwrap_or(&serde_json::Value::Null)) {
                out.pause_s = Some(secs(t - injected));
            }
            out.did = format!("stopped, exit {} ({})", code_of(code), essence(&stop));
            out.problem(format!(
                "pacer gave up (exit {code:?}) on a read-only primary instead of pausing; re-run by hand to finish"
            ));
        }
        None => paused_and_resumed(&s, &mut out, injected, undone, Expect::Pause).await,
    }
    live.finish(&mut out).await;
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn table_dropped(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "table-dropped",
        "target table dropped mid-run",
        "stop at once with a clear error (exit 3), nothing doubled",
    );
    let mut s = Scene::new(cfg, cluster, "table-dropped", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 4);
    let mut child = s.start(&mut out).await?;
    // Keep a copy of the table as it was when dropped, in the same
    // transaction, to count rows applied twice before the drop.
    let injected = Utc::now();
    exec(
        &s.url,
        "SET lock_timeout = '20s';
         BEGIN;
         LOCK TABLE t IN ACCESS EXCLUSIVE MODE;
         CREATE TABLE t_at_drop AS SELECT * FROM t;
         DROP TABLE t;
         COMMIT;",
    )
    .await?;
    live.finish(&mut out).await;
    let code = wait_exit(&mut child, Duration::from_secs(60)).await;
    let last_error = last_error(s.log());
    match code {
        Some(code) => {
            out.exit = code;
            if let Some(t) = events(s.log()).last().and_then(at) {
                out.pause_s = Some(secs(t - injected));
            }
            out.did = format!("stopped, exit {} ({})", code_of(code), essence(&last_error));
            out.check(code == Some(3), format!("exit {code:?}, expected 3"));
            out.check(
                last_error.contains("\"public.t\" does not exist"),
                format!("the error does not say the table is gone: {last_error:?}"),
            );
        }
        None => {
            out.did = "still running 60 s after the drop".into();
            out.problem("pacer did not stop within 60 s of the table being dropped");
            let _ = child.kill().await;
        }
    }
    let mut c = connect(&s.url).await?;
    let doubled: i64 = sqlx::query_scalar("SELECT count(*) FROM t_at_drop WHERE n > 1")
        .fetch_one(&mut c)
        .await?;
    let _ = c.close().await;
    out.doubled = Some(doubled);
    out.notes
        .push("rows lost: not applicable (the table is gone)".into());
    Ok(out)
}

/// The three Prometheus faults on one run, one after the other; each is a
/// row of its own.
async fn prometheus(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Vec<Outcome>> {
    let prom = FakeProm::start();
    let mut first = Outcome::new("prometheus", "", "");
    let mut s = Scene::new(cfg, cluster, "prometheus", 150_000, Some(&prom.url)).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 5);
    let child = s.start(&mut first).await?;
    let mut rows = Vec::new();
    for (mode, name, what) in [
        (PROM_REFUSE, "prometheus-down", "down (connection refused)"),
        (
            PROM_HANG,
            "prometheus-hanging",
            "hanging (accepts, never answers)",
        ),
        (
            PROM_GARBAGE,
            "prometheus-garbage",
            "answering garbage (HTTP 200, not JSON)",
        ),
    ] {
        let mut o = Outcome::new(
            name,
            &format!("Prometheus {what} for {} s", cfg.prom_fault.as_secs()),
            "pause after missing_grace (2 s), resume when it answers",
        );
        let injected = Utc::now();
        prom.set(mode);
        tokio::time::sleep(cfg.prom_fault).await;
        prom.set(PROM_OK);
        let undone = Utc::now();
        paused_and_resumed(&s, &mut o, injected, undone, Expect::Pause).await;
        if let Some(p) = o.pause_s {
            let grace = 2.0;
            o.check(
                p >= grace - 0.1,
                format!("paused after {p:.1} s, before missing_grace"),
            );
        }
        // Let it run calm again a moment before the next fault.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rows.push(o);
    }
    live.finish(&mut first).await;
    s.finish(child, &mut first).await?;
    // The live figures and the final counts are the run's, shared by the
    // three rows.
    for o in &mut rows {
        o.live_wait_ms = first.live_wait_ms;
        o.live_ok = first.live_ok;
        o.live_failed = first.live_failed;
        o.lost = first.lost;
        o.doubled = first.doubled;
        o.problems.extend(first.problems.iter().cloned());
    }
    Ok(rows)
}

async fn frozen(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let bound = cfg.idle_timeout + cfg.statement_timeout;
    let mut out = Outcome::new(
        "frozen",
        &format!(
            "pacer frozen {} s (SIGSTOP mid-batch, then SIGCONT)",
            cfg.freeze.as_secs()
        ),
        &format!(
            "no row lock outlives the freeze: live waits ≤ idle_in_transaction_timeout + statement_timeout = {:.0} s; carry on after SIGCONT",
            bound.as_secs_f64()
        ),
    );
    let mut s = Scene::new(cfg, cluster, "frozen", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 6);
    let mut child = s.start(&mut out).await?;
    let pid = child.id();
    // Freeze pacer at many moments, looking for a worker inside a batch
    // transaction holding row locks (idle in transaction): a batch is one
    // self-committing statement, so only a lock-free retry (BEGIN, lock the
    // free rows, apply, COMMIT) can be caught so. If one is, aim the live
    // update at a row it holds (the lowest pending key that
    // `FOR UPDATE SKIP LOCKED` skips); else at the lowest pending key.
    let mut c = connect(&s.url).await?;
    let app = format!("pacer:{}", s.job);
    let mut key: Option<i64> = None;
    let mut looks = 0;
    for _ in 0..60 {
        looks += 1;
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND state = 'idle in transaction'",
        )
        .bind(&app)
        .fetch_one(&mut c)
        .await?;
        if n > 0 {
            let mut tx = c.begin().await?;
            key = sqlx::query_scalar(
                "WITH pending AS (SELECT id FROM t WHERE NOT done ORDER BY id LIMIT 5000),
                      free AS (SELECT id FROM t WHERE NOT done ORDER BY id LIMIT 5000 FOR UPDATE SKIP LOCKED)
                 SELECT min(id) FROM pending WHERE id NOT IN (SELECT id FROM free)",
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            if key.is_some() {
                break;
            }
        }
        signal(pid, "-CONT");
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    if key.is_some() {
        out.notes
            .push("caught pacer inside a (lock-free retry) transaction holding row locks".into());
    } else {
        signal(pid, "-STOP");
        key = sqlx::query_scalar("SELECT min(id) FROM t WHERE NOT done")
            .fetch_one(&mut c)
            .await?;
        out.notes.push(format!(
            "frozen at {looks} moments: never inside a transaction (one-statement batches)"
        ));
    }
    let injected = Utc::now();
    let stopped = Instant::now();
    let _ = c.close().await;
    let mut probe = connect(&s.url).await?;
    sqlx::query("SET statement_timeout = '60s'")
        .execute(&mut probe)
        .await?;
    let t0 = Instant::now();
    let r = sqlx::query("UPDATE t SET pad = 'live' WHERE id = $1")
        .bind(key.unwrap_or(1))
        .execute(&mut probe)
        .await;
    let aimed = t0.elapsed();
    let _ = probe.close().await;
    out.check(r.is_ok(), format!("the aimed live update failed: {r:?}"));
    live.note(aimed);
    out.notes.push(format!(
        "an update of the frozen batch's first row waited {:.2} s",
        aimed.as_secs_f64()
    ));
    tokio::time::sleep(cfg.freeze.saturating_sub(stopped.elapsed())).await;
    out.check(child.try_wait()?.is_none(), "pacer exited while frozen");
    let undone = Utc::now();
    signal(pid, "-CONT");
    paused_and_resumed(&s, &mut out, injected, undone, Expect::NoPause).await;
    let log = s.log();
    let mut did = Vec::new();
    if log_has(log, "idle-in-transaction timeout") {
        did.push("the server ended its frozen transaction (idle_in_transaction_timeout)");
    }
    if log_has(log, "the batch had not committed; retrying it") {
        did.push("after SIGCONT found that batch had not committed and retried it");
    } else if log_has(log, "retrying the batch once the database is back") {
        did.push("after SIGCONT retried that batch");
    }
    did.push(if out.resume_s.is_some() {
        "carried on"
    } else {
        "did not carry on"
    });
    out.did = did.join("; ");
    let st = live.finish(&mut out).await;
    out.check(
        st.max <= bound,
        format!(
            "a live session waited {:.2} s on a frozen pacer (bound {:.0} s)",
            st.max.as_secs_f64(),
            bound.as_secs_f64()
        ),
    );
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn two_jobs(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "two-jobs",
        "a second job (another name) started on the same table",
        "the second is refused before it writes (exit 3)",
    );
    let mut s = Scene::new(cfg, cluster, "two-jobs", 80_000, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 7);
    let child = s.start(&mut out).await?;
    let second = s.dir.path().join("second.toml");
    std::fs::write(&second, policy_for(cfg, "two-jobs-second", &s.url, None))?;
    let injected = Instant::now();
    let mut other = s.spawn(&second, false)?;
    let code = wait_exit(&mut other, Duration::from_secs(60)).await;
    let log2 = s.log().to_path_buf();
    let msg = last_error(&log2);
    match code {
        Some(code) => {
            out.exit = code;
            out.pause_s = Some(injected.elapsed().as_secs_f64());
            out.did = format!("second refused, exit {} ({})", code_of(code), essence(&msg));
            out.check(code == Some(3), format!("the second job exited {code:?}"));
            out.check(
                msg.contains("already being backfilled"),
                format!("unclear refusal: {msg:?}"),
            );
        }
        None => {
            out.did = "the second job ran".into();
            out.problem("the second job was not refused within 60 s");
            let _ = other.kill().await;
        }
    }
    let mut c = connect(&s.url).await?;
    let second_rows: Option<i64> = sqlx::query_scalar(
        "SELECT sum(rows)::int8 FROM pacer.progress WHERE job = 'two-jobs-second'",
    )
    .fetch_one(&mut c)
    .await?;
    let _ = c.close().await;
    out.check(
        second_rows.unwrap_or(0) == 0,
        format!("the second job wrote {second_rows:?} rows"),
    );
    live.finish(&mut out).await;
    s.finish(child, &mut out).await?;
    Ok(out)
}

async fn kills(cfg: &Config, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(
        "kill-9",
        &format!(
            "{} × `kill -9` of pacer at random moments, {} workers, restarted each time",
            cfg.kills, cfg.workers
        ),
        "every row applied exactly once",
    );
    // Enough rows that the kills all come before the end: each run lives
    // at most ~2.5 s at the rate cap.
    let rows = (cfg.kills as i64 * 3 * cfg.rate as i64).max(20_000);
    let mut s = Scene::new(cfg, cluster, "kill-9", rows, None).await?;
    let live = Live::start(&s.url, &s.job, s.rows, cfg.seed + 8);
    let mut rng = Rng(cfg.seed);
    let mut mid = 0usize;
    let mut restarts = Vec::new();
    let mut died = 0usize;
    for i in 0..cfg.kills {
        let before = s.done().await.max(0);
        let spawned = Utc::now();
        let mut child = s.run(true)?;
        let delay = Duration::from_millis(300 + rng.below(2200));
        match tokio::time::timeout(delay, child.wait()).await {
            Ok(st) => {
                out.problem(format!(
                    "run {i} ended by itself ({:?}) before its kill: {}",
                    st?.code(),
                    tail(s.log(), 2)
                ));
            }
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                died += 1;
            }
        }
        let after = s.done().await;
        if after > before {
            mid += 1;
            if let Some(t) = s.first_batch_after(spawned, Duration::ZERO).await {
                restarts.push(t);
            }
        }
        let (_, doubled) = s.counts().await?;
        if doubled > 0 {
            out.problem(format!("after kill {i}: {doubled} rows applied twice"));
            break;
        }
    }
    restarts.sort_by(f64::total_cmp);
    if !restarts.is_empty() {
        out.resume_s = Some(restarts[restarts.len() / 2]);
        out.notes.push(format!(
            "start to first batch: median {:.2} s, worst {:.2} s",
            restarts[restarts.len() / 2],
            restarts[restarts.len() - 1]
        ));
    }
    let (left, _) = s.counts().await?;
    out.check(
        left > 0,
        "the job finished during the kills; make it longer",
    );
    out.did = format!(
        "{died} runs killed, {mid} of them after writing; each restart resumed from the stored progress"
    );
    out.notes.push(format!(
        "{mid} of {died} kills came after the run had written"
    ));
    live.finish(&mut out).await;
    let child = s.run(false)?;
    // `finish` waits for this run to end by itself (uncapped).
    let mut child = child;
    let st = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
    match st {
        Ok(st) => {
            let code = st?.code();
            out.check(code == Some(0), format!("the final run exited {code:?}"));
        }
        Err(_) => out.problem("the final run did not end within 180 s"),
    }
    let (lost, doubled) = s.counts().await?;
    out.lost = Some(lost);
    out.doubled = Some(doubled);
    Ok(out)
}

// ---------------------------------------------------------------------------
// The table.

fn opt(x: Option<f64>, unit: &str) -> String {
    x.map(|v| {
        if v < 10.0 {
            format!("{v:.2} {unit}")
        } else {
            format!("{v:.1} {unit}")
        }
    })
    .unwrap_or_else(|| "—".into())
}

fn count(x: Option<i64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

/// The markdown table of docs/RELIABILITY.md.
pub fn table(outs: &[Outcome]) -> String {
    let mut t = String::from(
        "| fault | what pacer did | time to pause | time to resume | rows lost | rows doubled | longest live wait | ok |\n\
         | --- | --- | --- | --- | ---: | ---: | ---: | --- |\n",
    );
    for o in outs {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.fault,
            o.did.replace('|', "\\|"),
            opt(o.pause_s, "s"),
            opt(o.resume_s, "s"),
            count(o.lost),
            count(o.doubled),
            o.live_wait_ms
                .map(|v| format!("{v:.0} ms"))
                .unwrap_or_else(|| "—".into()),
            if o.ok { "yes" } else { "**no**" },
        ));
    }
    t
}
