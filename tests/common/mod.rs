//! Shared helpers for the tests that run against the real testbed
//! (`scripts/testbed up`; `scripts/test` starts it before `cargo test`).
#![allow(dead_code)]

use std::fs::File;
use std::time::{Duration, Instant};

use pacer::policy::Policy;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub const PRIMARY: &str = "postgres://postgres@127.0.0.1:5432";
pub const REPLICA: &str = "postgres://postgres@127.0.0.1:5433";
pub const PROMETHEUS: &str = "http://127.0.0.1:9090";
pub const TRAFFIC: &str = "http://127.0.0.1:9300";
/// Database the signal tests create their tables in.
pub const TEST_DB: &str = "pacer_signals_test";

/// Testbed tests run one at a time, across test binaries and processes:
/// pausing replay or stopping Prometheus affects everyone.
pub struct TestbedLock(#[allow(dead_code)] File);

pub fn lock() -> TestbedLock {
    let f = File::create(std::env::temp_dir().join("pacer-testbed.lock"))
        .expect("creating the testbed lock file");
    f.lock().expect("locking the testbed");
    TestbedLock(f)
}

fn opts(base: &str, db: &str, app: &str) -> PgConnectOptions {
    format!("{base}/{db}")
        .parse::<PgConnectOptions>()
        .expect("valid URL")
        .application_name(app)
}

/// A pool on the primary's test database, created if needed.
pub async fn primary(app: &str) -> PgPool {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts(PRIMARY, "postgres", "pacer-test-admin"))
        .await
        .expect("the testbed primary (127.0.0.1:5432) is not reachable: run scripts/testbed up");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(TEST_DB)
            .fetch_one(&admin)
            .await
            .unwrap();
    if !exists {
        // Two test processes may race here; losing the race is fine.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {TEST_DB}")))
            .execute(&admin)
            .await;
    }
    admin.close().await;
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts(PRIMARY, TEST_DB, app))
        .await
        .unwrap()
}

/// A single connection (its own backend pid) on the primary.
pub async fn session(app: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect_with(&opts(PRIMARY, TEST_DB, app))
        .await
        .unwrap()
}

pub async fn replica() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts(REPLICA, TEST_DB, "pacer-test"))
        .await
        .expect("the testbed replica (127.0.0.1:5433) is not reachable: run scripts/testbed up")
}

pub fn replica_url() -> String {
    format!("{REPLICA}/{TEST_DB}")
}

/// A policy for `table` in the test database with the given signals
/// (TOML `[[signal]]` blocks) and extra top-level sections.
pub fn policy(job: &str, table: &str, signals: &str, extra: &str) -> Policy {
    let text = format!(
        r#"
[job]
name = "{job}"
table = "{table}"
key = "id"
pending = "status IS NULL"
update = "UPDATE {table} SET status = 'x' WHERE id = ANY($1)"

[database]
url = "{PRIMARY}/{TEST_DB}"
replicas = ["{replica}"]

[limits]
batch_size = {{ start = 100, min = 10, max = 1000 }}
sleep = {{ start = "100ms", min = "0ms", max = "1s" }}
workers = {{ start = 1, min = 1, max = 2 }}

{extra}

{signals}
"#,
        replica = replica_url()
    );
    Policy::from_toml("test-policy.toml", &text)
        .unwrap_or_else(|e| panic!("test policy invalid: {e}\n{text}"))
}

/// Poll `f` until it returns Some, or panic after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Set the traffic generator's fault knobs.
pub async fn traffic_control(body: serde_json::Value) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{TRAFFIC}/control"))
        .json(&body)
        .send()
        .await
        .expect("pacer-traffic is not reachable: run scripts/testbed up");
    assert!(
        resp.status().is_success(),
        "POST /control {body}: {}",
        resp.status()
    );
    resp.json().await.unwrap()
}

/// Run `scripts/testbed` with arguments; panics with its output on failure.
pub fn testbed(args: &[&str]) {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testbed"))
        .args(args)
        .output()
        .expect("running scripts/testbed");
    assert!(
        out.status.success(),
        "scripts/testbed {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Always resume replay, even when a test panics half-way.
pub struct ResumeReplay;
impl Drop for ResumeReplay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                "5433",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
                "SELECT pg_wal_replay_resume()",
            ])
            .output();
    }
}

/// Always take injected latency away (tests that change the rate restore it).
pub struct ResetTraffic;
impl Drop for ResetTraffic {
    fn drop(&mut self) {
        let _ = std::process::Command::new("curl")
            .args([
                "-fsS",
                "-m",
                "5",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"added_latency_ms":0}"#,
                &format!("{TRAFFIC}/control"),
            ])
            .output();
    }
}

/// Always bring Prometheus back.
pub struct RestartPrometheus;
impl Drop for RestartPrometheus {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testbed"))
            .args(["up", "prometheus"])
            .output();
    }
}
