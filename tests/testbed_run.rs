//! `pacer run` against the real testbed: it pauses when replica lag, the
//! checkout p95 or a missing Prometheus say so, its workers go idle in
//! `pg_stat_activity`, and it resumes after `resume_after` once calm.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgPool};

const P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(traffic_request_duration_seconds_bucket{route="checkout"}[10s])))"#;

/// A running `pacer run` whose log lines are collected as they come.
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn start(policy_toml: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy_toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pacer"))
            .args(["--log-format", "json", "run", "--policy"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pacer run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Run {
            child,
            lines,
            _dir: dir,
        }
    }

    /// Wait for a log line containing every one of `needles` that appears
    /// after line `from`; returns its index.
    async fn wait_line(&mut self, from: usize, needles: &[&str], limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(i) = lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
                    .map(|(i, _)| i)
                {
                    return i;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pacer run exited with {status} before logging {needles:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "no log line with {needles:?} within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(120)..].join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

/// Backends of the job holding a write transaction: busy workers.
async fn busy_workers(pool: &PgPool, job: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state IN ('active', 'idle in transaction') AND backend_xid IS NOT NULL",
    )
    .bind(format!("pacer:{job}"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// After a pause decision, in-flight batches finish and commit (bounded by
/// `statement_timeout`); then the workers stay idle: sustained for 2 s,
/// longer than any sleep between batches.
async fn assert_idle(pool: &PgPool, job: &str) {
    common::eventually(
        Duration::from_secs(15),
        "in-flight batches finished",
        || async { (busy_workers(pool, job).await == 0).then_some(()) },
    )
    .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            busy_workers(pool, job).await,
            0,
            "a worker of {job} is writing while paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relative baseline must be measured on calm traffic: wait until no
/// latency was injected during the baseline window plus the p95's rate
/// window (a previous test or benchmark may just have done so).
async fn wait_calm_traffic() {
    let prom = common::prometheus();
    common::eventually(
        Duration::from_secs(120),
        "no injected latency in the last 45 s",
        || async {
            prom.instant("max(max_over_time(traffic_added_latency_seconds[45s]))")
                .await
                .ok()
                .filter(|v| *v == 0.0)
        },
    )
    .await;
}

/// A fresh table with 300k pending rows in the test database and a policy
/// for a new job on it (a unique name, so no earlier run is resumed); the
/// hard rate cap keeps the job running for the whole test.
async fn job(pool: &PgPool, base: &str, signals: &str, extra: &str) -> (String, String) {
    let table = format!("public.{base}_orders");
    let job = format!("{base}_{}", chrono::Utc::now().timestamp_millis());
    for sql in [
        format!("DROP TABLE IF EXISTS {table}"),
        format!("CREATE TABLE {table} (id bigint PRIMARY KEY, paid_at timestamptz, status text)"),
        format!(
            "INSERT INTO {table} SELECT g, CASE WHEN g % 3 = 0 THEN now() END, NULL FROM generate_series(1, 300000) g"
        ),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(pool).await.unwrap();
    }
    let policy = format!(
        r#"
[job]
name = "{job}"
table = "{table}"
key = "id"
pending = "status IS NULL"
update = "UPDATE {table} SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END WHERE id = ANY($1) AND status IS NULL"

[database]
url = "{primary}/{db}"
replicas = ["{replica}"]

[prometheus]
url = "{prometheus}"

[http]
listen = "127.0.0.1:{http_port}"

[limits]
batch_size = {{ start = 100, min = 20, max = 200 }}
sleep = {{ start = "100ms", min = "50ms", max = "500ms" }}
workers = {{ start = 2, min = 1, max = 2 }}
max_rows_per_second = 1000

[controller]
tick = "500ms"
resume_after = "5s"
hold_after_resume = "2s"
missing_grace = "5s"
cooldown = "2s"

{extra}

{signals}
"#,
        primary = common::primary_server(),
        db = common::TEST_DB,
        replica = common::replica_url(),
        prometheus = common::prometheus_url(),
        http_port = common::free_port(),
    );
    (job, policy)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pauses_on_replica_lag_and_resumes_when_replay_catches_up() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let replica = common::replica().await;
    let (name, policy) = job(
        &pool,
        "runlag",
        "[[signal]]\nname = \"replica_lag\"\npostgres = \"replication_lag_seconds\"\nslow_above = 1.0\nstop_above = 2.0\nstop_for = \"1s\"\n",
        "",
    )
    .await;
    let mut run = Run::start(&policy);
    run.wait_line(0, &["running"], Duration::from_secs(60))
        .await;
    // Rows being written (a snapshot of pg_stat_activity can miss short
    // transactions between sleeps).
    let done = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM public.runlag_orders WHERE status IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = done().await;
    common::eventually(Duration::from_secs(30), "workers writing", || async {
        (done().await > before).then_some(())
    })
    .await;

    let _resume = common::ResumeReplay;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    let t = Instant::now();
    let i = run
        .wait_line(0, &["pausing", "replica_lag"], Duration::from_secs(30))
        .await;
    eprintln!("paused {:?} after the replay pause", t.elapsed());
    assert_idle(&pool, &name).await;

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    let t = Instant::now();
    run.wait_line(i, &["resuming"], Duration::from_secs(60))
        .await;
    // resume_after = 5s of calm first.
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "resumed after only {:?}",
        t.elapsed()
    );
    // Rows committed after the resume, not a snapshot of busy sessions: a
    // job resuming at a low rate spends a few ms per second in a
    // transaction, which 200 ms polls of pg_stat_activity can miss for 30 s.
    let at_resume = done().await;
    common::eventually(Duration::from_secs(30), "workers writing again", || async {
        (done().await > at_resume).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pauses_when_checkout_p95_crosses_its_relative_stop_and_resumes_after() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    wait_calm_traffic().await;
    let (name, policy) = job(
        &pool,
        "runp95",
        &format!(
            "[[signal]]\nname = \"checkout_p95\"\nprometheus = '{P95}'\nslow_above = \"baseline * 2\"\nstop_above = \"baseline * 3\"\nstop_for = \"2s\"\n"
        ),
        "[baseline]\nwindow = \"30s\"\nmin_samples = 10\non_insufficient = \"wait\"\n",
    )
    .await;
    let mut run = Run::start(&policy);
    run.wait_line(0, &["running"], Duration::from_secs(120))
        .await;
    // Its estimate starts from Prometheus's history of the query.
    run.wait_line(
        0,
        &["estimate primed from the last", "checkout_p95"],
        Duration::from_secs(1),
    )
    .await;
    let base: f64 = {
        let prom = common::prometheus();
        prom.instant(P95).await.unwrap()
    };
    let _reset = common::ResetTraffic;
    common::traffic_control(
        serde_json::json!({ "added_latency_ms": (base * 5.0).max(0.05) * 1000.0 }),
    )
    .await;
    let i = run
        .wait_line(0, &["pausing", "checkout_p95"], Duration::from_secs(60))
        .await;
    assert_idle(&pool, &name).await;
    // The injected latency does not respond to the pause: once the pause
    // could have shown (twice the signal's 21 s delay plus stop_for), pacer
    // says so, once, and stays paused.
    let t = Instant::now();
    let j = run
        .wait_line(
            i,
            &["has not come down", "checkout_p95", "WARN"],
            Duration::from_secs(120),
        )
        .await;
    assert!(
        t.elapsed() >= Duration::from_secs(30),
        "reported after only {:?}:\n{}",
        t.elapsed(),
        run.log()
    );
    common::traffic_control(serde_json::json!({ "added_latency_ms": 0 })).await;
    run.wait_line(j, &["resuming"], Duration::from_secs(120))
        .await;
    let lines = run.lines.lock().unwrap().clone();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("has not come down"))
            .count(),
        1,
        "one warning per pause"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pauses_when_prometheus_is_down_past_missing_grace_and_resumes_when_back() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let (name, policy) = job(
        &pool,
        "runmiss",
        &format!("[[signal]]\nname = \"checkout_p95\"\nprometheus = '{P95}'\nstop_above = 10\non_missing = \"pause\"\n"),
        "",
    )
    .await;
    let mut run = Run::start(&policy);
    run.wait_line(0, &["running"], Duration::from_secs(60))
        .await;
    let _restart = common::RestartPrometheus;
    // Readings go missing from the moment Prometheus starts shutting down.
    let t = Instant::now();
    common::testbed(&["down", "prometheus"]);
    let i = run
        .wait_line(0, &["pausing", "checkout_p95"], Duration::from_secs(30))
        .await;
    // Not before missing_grace (5 s).
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "paused after only {:?}",
        t.elapsed()
    );
    assert_idle(&pool, &name).await;
    common::testbed(&["up", "prometheus"]);
    run.wait_line(i, &["resuming"], Duration::from_secs(90))
        .await;
}
