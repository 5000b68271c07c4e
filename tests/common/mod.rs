//! Shared helpers for the tests that run against the real testbed
//! (`scripts/testbed up`; `scripts/test` starts it before `cargo test`).
//! The testbed runs on ports of its own (scripts/testbed-ports.sh: the
//! same variables, the same defaults), never on a server the machine
//! already runs.
#![allow(dead_code)]

use std::fs::File;
use std::time::{Duration, Instant};

use pacer::policy::Policy;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A testbed port: `var` from the environment, else its default.
fn port(var: &str, default: u16) -> u16 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a port")),
        Err(_) => default,
    }
}

pub fn primary_port() -> u16 {
    port("PACER_TESTBED_PRIMARY_PORT", 15432)
}

pub fn replica_port() -> u16 {
    port("PACER_TESTBED_REPLICA_PORT", 15433)
}

/// The testbed's second, standalone cluster (`scripts/testbed up solo`, no
/// replica): with the primary, fleet tests span two clusters.
pub fn solo_port() -> u16 {
    port("PACER_TESTBED_SOLO_PORT", 15434)
}

/// The testbed primary, without a database: `postgres://postgres@127.0.0.1:15432`.
pub fn primary_server() -> String {
    format!("postgres://postgres@127.0.0.1:{}", primary_port())
}

/// The testbed replica, without a database.
pub fn replica_server() -> String {
    format!("postgres://postgres@127.0.0.1:{}", replica_port())
}

/// The solo cluster, without a database: `postgres://postgres@127.0.0.1:15434`.
pub fn solo_server() -> String {
    format!("postgres://postgres@127.0.0.1:{}", solo_port())
}

/// A database of the solo cluster: `postgres://postgres@127.0.0.1:15434/{db}`.
pub fn solo_url(db: &str) -> String {
    format!("{}/{db}", solo_server())
}

/// The testbed's Prometheus, `host:port`.
pub fn prometheus_addr() -> String {
    format!("127.0.0.1:{}", port("PACER_TESTBED_PROMETHEUS_PORT", 19090))
}

pub fn prometheus_url() -> String {
    format!("http://{}", prometheus_addr())
}

/// A Prometheus client on the testbed's Prometheus.
pub fn prometheus() -> pacer::signals::prometheus::Prometheus {
    let mut c: pacer::policy::PrometheusConfig = toml::from_str("").unwrap();
    c.url = prometheus_url();
    pacer::signals::prometheus::Prometheus::new(&c).unwrap()
}

/// pacer-traffic's `/metrics` and `/control`.
pub fn traffic_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        port("PACER_TESTBED_TRAFFIC_PORT", 19300)
    )
}

/// A loopback port nothing listens on right now (for `[http] listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
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
        .connect_with(opts(&primary_server(), "postgres", "pacer-test-admin"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the testbed primary ({}) is not reachable: run scripts/testbed up: {e}",
                primary_server()
            )
        });
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
        .connect_with(opts(&primary_server(), TEST_DB, app))
        .await
        .unwrap()
}

/// A single connection (its own backend pid) on the primary.
pub async fn session(app: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect_with(&opts(&primary_server(), TEST_DB, app))
        .await
        .unwrap()
}

/// A pool on the replica's copy of the test database. On a fresh testbed
/// `primary` has only just created that database, and the replica may not
/// have replayed the CREATE DATABASE yet: retry for a few seconds.
pub async fn replica() -> PgPool {
    let start = Instant::now();
    loop {
        match PgPoolOptions::new()
            .max_connections(2)
            .connect_with(opts(&replica_server(), TEST_DB, "pacer-test"))
            .await
        {
            Ok(pool) => return pool,
            Err(_) if start.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "the testbed replica ({}) is not reachable: run scripts/testbed up: {e}",
                replica_server()
            ),
        }
    }
}

pub fn replica_url() -> String {
    format!("{}/{TEST_DB}", replica_server())
}

/// A policy for `table` in the test database with the given signals
/// (TOML `[[signal]]` blocks) and extra top-level sections, on the
/// testbed's servers (its Prometheus too: never the default
/// 127.0.0.1:9090, which may be the user's own).
pub fn policy(job: &str, table: &str, signals: &str, extra: &str) -> Policy {
    let text = format!(
        r#"
[job]
name = "{job}"
table = "{table}"
key = "id"
pending = "status IS NULL"
update = "UPDATE {table} SET status = 'x' WHERE id = ANY($1) AND status IS NULL"

[database]
url = "{primary}/{TEST_DB}"
replicas = ["{replica}"]

[prometheus]
url = "{prometheus}"

[limits]
batch_size = {{ start = 100, min = 10, max = 1000 }}
sleep = {{ start = "100ms", min = "0ms", max = "1s" }}
workers = {{ start = 1, min = 1, max = 2 }}

{extra}

{signals}
"#,
        primary = primary_server(),
        replica = replica_url(),
        prometheus = prometheus_url(),
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
        .post(format!("{}/control", traffic_url()))
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
                &replica_port().to_string(),
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
                &format!("{}/control", traffic_url()),
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
