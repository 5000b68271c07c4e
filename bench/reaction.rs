//! Reaction-time benchmark: how long from a fault to pacer's workers all
//! idle, as a DBA would see it in `pg_stat_activity`.
//!
//! Run through `bench/reaction` (brings the testbed up and builds pacer).
//! Each round: wait until pacer is running and a worker is writing, inject
//! a fault (replica replay paused, or 8x the baseline checkout latency
//! added in the traffic generator), wait for pacer's `pausing` decision
//! naming that signal, and time from the injection to the first moment
//! (not before the decision) after which no backend named `pacer:<job>`
//! holds a write transaction for `--confirm` seconds. Then undo the fault.
//! A round where pacer paused for another signal first is repeated (up to
//! 3 tries) so each figure is a reaction to the injected fault. The time
//! includes the signal's own delay (lag has to grow past `stop_above`, the
//! p95 window has to fill with slow requests) and `stop_for`: that is
//! what an operator experiences.

#[path = "testbed_addr.rs"]
mod testbed_addr;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

#[derive(Parser, Debug)]
struct Args {
    /// The pacer binary.
    #[arg(long, default_value = "target/debug/pacer")]
    pacer: String,
    /// Rounds per fault kind.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Which faults: lag, latency or both.
    #[arg(long, default_value = "both")]
    faults: String,
    /// Rows in the benchmark table.
    #[arg(long, default_value_t = 2_000_000)]
    rows: i64,
    /// Idle this long counts as "all workers idle" (longer than any sleep
    /// between batches, so a gap between two batches does not count).
    #[arg(long, default_value_t = 2.0)]
    confirm: f64,
    /// Database (on the testbed primary) for the benchmark table.
    #[arg(long, default_value_t = testbed_addr::pg("PACER_TESTBED_PRIMARY_PORT", 15432, "pacer_reaction"))]
    database_url: String,
    #[arg(long, default_value_t = testbed_addr::pg("PACER_TESTBED_REPLICA_PORT", 15433, "pacer_reaction"))]
    replica_url: String,
    #[arg(long, default_value_t = testbed_addr::http("PACER_TESTBED_TRAFFIC_PORT", 19300))]
    traffic: String,
    #[arg(long, default_value_t = testbed_addr::http("PACER_TESTBED_PROMETHEUS_PORT", 19090))]
    prometheus: String,
    /// pacer's `[http] listen` (the testbed's Prometheus scrapes it).
    #[arg(long, default_value_t = format!("127.0.0.1:{}", testbed_addr::port("PACER_TESTBED_PACER_PORT", 19187)))]
    http_listen: String,
}

const P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(traffic_request_duration_seconds_bucket{route="checkout"}[10s])))"#;

fn policy(job: &str, a: &Args) -> String {
    format!(
        r#"
[job]
name = "{job}"
table = "public.bench_orders"
key = "id"
pending = "status IS NULL"
update = "UPDATE public.bench_orders SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END WHERE id = ANY($1) AND status IS NULL"

[database]
url = "{db}"
replicas = ["{replica}"]

[prometheus]
url = "{prom}"

[http]
listen = "{listen}"

[limits]
batch_size = {{ start = 200, min = 50, max = 500 }}
sleep = {{ start = "100ms", min = "20ms", max = "500ms" }}
workers = {{ start = 2, min = 1, max = 2 }}
max_rows_per_second = 2000

[controller]
tick = "500ms"
resume_after = "3s"
hold_after_resume = "2s"
missing_grace = "10s"
cooldown = "2s"

[baseline]
window = "1m"
min_samples = 20
on_insufficient = "wait"

[[signal]]
name = "replica_lag"
postgres = "replication_lag_seconds"
slow_above = 0.5
stop_above = 1.0

[[signal]]
name = "checkout_p95"
prometheus = '{P95}'
slow_above = "baseline * 3"
stop_above = "baseline * 5"
stop_for = "1s"
"#,
        db = a.database_url,
        replica = a.replica_url,
        prom = a.prometheus,
        listen = a.http_listen,
    )
}

async fn busy(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state IN ('active', 'idle in transaction') AND backend_xid IS NOT NULL",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// New complete lines of pacer's log since the last call.
struct LogTail {
    path: std::path::PathBuf,
    pos: usize,
    /// State of the last decision line (`running`, `slowing`, `paused`).
    state: String,
}

impl LogTail {
    fn lines(&mut self) -> Vec<String> {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let Some(end) = text[self.pos.min(text.len())..]
            .iter()
            .rposition(|b| *b == b'\n')
        else {
            return Vec::new();
        };
        let chunk = String::from_utf8_lossy(&text[self.pos..self.pos + end + 1]).to_string();
        self.pos += end + 1;
        let lines: Vec<String> = chunk.lines().map(str::to_string).collect();
        for l in &lines {
            if let Some(i) = l.find("state=\"") {
                let rest = &l[i + 7..];
                self.state = rest[..rest.find('"').unwrap_or(0)].to_string();
            }
        }
        lines
    }
}

enum Outcome {
    /// Seconds from injection to all workers idle.
    Idle(f64),
    /// pacer paused for another signal first: the round says nothing.
    OtherCause(String),
    Timeout,
}

/// From `t0`, wait for pacer's `pausing` decision and then for the first
/// moment after which no worker holds a write transaction for `confirm`.
/// Idle moments before the decision are gaps between batches, not a reaction.
async fn time_to_idle(
    pool: &PgPool,
    app: &str,
    log: &mut LogTail,
    signal: &str,
    t0: Instant,
    confirm: Duration,
    limit: Duration,
) -> Outcome {
    let mut decided: Option<Instant> = None;
    let mut idle_since: Option<Instant> = None;
    while t0.elapsed() < limit {
        if decided.is_none() {
            for l in log.lines() {
                if l.contains("pausing") {
                    if !l.contains(signal) {
                        return Outcome::OtherCause(l);
                    }
                    decided = Some(Instant::now());
                }
            }
        }
        let now = Instant::now();
        if busy(pool, app).await == 0 {
            let s = *idle_since.get_or_insert(now);
            if let Some(d) = decided
                && now.duration_since(s.max(d)) >= confirm
            {
                return Outcome::Idle(s.max(d).duration_since(t0).as_secs_f64());
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Outcome::Timeout
}

async fn wait_busy(pool: &PgPool, app: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if busy(pool, app).await > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn control(a: &Args, body: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/control", a.traffic))
        .json(&body)
        .send()
        .await
        .expect("pacer-traffic /control");
    assert!(r.status().is_success(), "{body}: {}", r.status());
}

fn stats(name: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let worst = v.last().copied().unwrap_or(f64::NAN);
    println!(
        "{name}: n={} median={median:.2}s worst={worst:.2}s all=[{}]",
        v.len(),
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // The same lock the testbed tests take: a test pausing replay would
    // corrupt a round, and a round's pause would break a test.
    let lock = std::fs::File::create(std::env::temp_dir().join("pacer-testbed.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("reaction: waiting for the testbed lock (a test is running)");
        lock.lock()?;
    }
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!(
            "{}/postgres",
            a.database_url
                .rsplit_once('/')
                .map_or(a.database_url.as_str(), |(server, _)| server)
        ))
        .await?;
    let db = a
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or("pacer_reaction")
        .to_string();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&a.database_url)
        .await?;
    let replica = PgPoolOptions::new()
        .max_connections(1)
        .connect(&a.replica_url)
        .await?;
    eprintln!(
        "reaction: creating public.bench_orders with {} rows",
        a.rows
    );
    for sql in [
        "DROP TABLE IF EXISTS public.bench_orders".to_string(),
        "CREATE TABLE public.bench_orders (id bigint PRIMARY KEY, paid_at timestamptz, status text)".into(),
        format!("INSERT INTO public.bench_orders SELECT g, CASE WHEN g % 3 = 0 THEN now() END, NULL FROM generate_series(1, {}) g", a.rows),
        "ANALYZE public.bench_orders".into(),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&pool).await?;
    }
    let job = format!("reaction_{}", chrono::Utc::now().timestamp());
    let app = format!("pacer:{job}");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy(&job, &a))?;
    let log_path = std::env::temp_dir().join(format!("{job}.log"));
    eprintln!(
        "reaction: starting {} run (log {})",
        a.pacer,
        log_path.display()
    );
    let log = std::fs::File::create(&log_path)?;
    let mut child: Child = Command::new(&a.pacer)
        .args(["run", "--policy"])
        .arg(&path)
        .stdout(log.try_clone()?)
        .stderr(Stdio::from(log))
        .spawn()?;
    /// Stops pacer and undoes both faults, even when the benchmark fails.
    struct Guard {
        pid: u32,
        replica_url: String,
        traffic: String,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let _ = Command::new("psql")
                .args([
                    "-X",
                    &self.replica_url,
                    "-Atc",
                    "SELECT pg_wal_replay_resume()",
                ])
                .output();
            let _ = Command::new("curl")
                .args([
                    "-fsS",
                    "-m",
                    "5",
                    "-H",
                    "content-type: application/json",
                    "-d",
                    r#"{"added_latency_ms":0}"#,
                    &format!("{}/control", self.traffic),
                ])
                .output();
        }
    }
    let _guard = Guard {
        pid: child.id(),
        replica_url: a.replica_url.clone(),
        traffic: a.traffic.clone(),
    };
    if !wait_busy(&pool, &app, Duration::from_secs(180)).await {
        let _ = child.kill();
        let tail: Vec<String> = BufReader::new(std::fs::File::open(&log_path)?)
            .lines()
            .map_while(Result::ok)
            .collect();
        anyhow::bail!(
            "pacer never started writing:\n{}",
            tail[tail.len().saturating_sub(30)..].join("\n")
        );
    }
    let prom = {
        let mut c: pacer::policy::PrometheusConfig = toml::from_str("")?;
        c.url = a.prometheus.clone();
        pacer::signals::prometheus::Prometheus::new(&c).map_err(anyhow::Error::msg)?
    };

    let confirm = Duration::from_secs_f64(a.confirm);
    let limit = Duration::from_secs(60);
    let mut lag = Vec::new();
    let mut lat = Vec::new();
    let kinds: Vec<&str> = match a.faults.as_str() {
        "both" => vec!["lag", "latency"],
        k => vec![k],
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let interrupted = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tokio::pin!(interrupted);
    let mut tail = LogTail {
        path: log_path.clone(),
        pos: 0,
        state: String::new(),
    };
    let mut failures = 0;
    for round in 0..a.rounds {
        for kind in &kinds {
            let signal = if *kind == "lag" {
                "replica_lag"
            } else {
                "checkout_p95"
            };
            // Rounds where pacer paused for something else first are
            // repeated (at most 3 tries), so every figure is a reaction to
            // the injected fault.
            let mut tries = 0;
            loop {
                tries += 1;
                // Running (not paused), the previous fault's tail out of the
                // p95 window, and a worker writing right now.
                let t = Instant::now();
                loop {
                    tail.lines();
                    if tail.state != "paused"
                        && busy(&pool, &app).await > 0
                        && t.elapsed()
                            > Duration::from_secs(if *kind == "latency" { 12 } else { 3 })
                    {
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(180) {
                        anyhow::bail!(
                            "round {round} {kind}: pacer not running within 180 s (log {})",
                            log_path.display()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tail.lines();
                let t0;
                match *kind {
                    "lag" => {
                        t0 = Instant::now();
                        sqlx::query("SELECT pg_wal_replay_pause()")
                            .execute(&replica)
                            .await?;
                    }
                    _ => {
                        let base = prom.instant(P95).await.map_err(anyhow::Error::msg)?;
                        t0 = Instant::now();
                        control(&a, serde_json::json!({ "added_latency_ms": (base * 8.0).max(0.02) * 1000.0 })).await;
                    }
                }
                let r = tokio::select! {
                    r = time_to_idle(&pool, &app, &mut tail, signal, t0, confirm, limit) => r,
                    // The guard undoes the fault and stops pacer on the way out.
                    _ = &mut interrupted => anyhow::bail!("interrupted"),
                };
                match *kind {
                    "lag" => {
                        sqlx::query("SELECT pg_wal_replay_resume()")
                            .execute(&replica)
                            .await?;
                    }
                    _ => control(&a, serde_json::json!({ "added_latency_ms": 0 })).await,
                }
                match r {
                    Outcome::Idle(s) => {
                        eprintln!("round {round} {kind}: all workers idle {s:.2}s after injection");
                        if *kind == "lag" {
                            lag.push(s)
                        } else {
                            lat.push(s)
                        }
                        break;
                    }
                    Outcome::OtherCause(line) if tries < 3 => {
                        eprintln!(
                            "round {round} {kind}: pacer paused for another reason first; repeating ({line})"
                        );
                    }
                    Outcome::OtherCause(line) => {
                        eprintln!(
                            "round {round} {kind}: pacer paused for another reason three times; counted as a failure ({line})"
                        );
                        failures += 1;
                        break;
                    }
                    Outcome::Timeout => {
                        eprintln!(
                            "round {round} {kind}: no pause with all workers idle within {limit:?} (counted as a failure)"
                        );
                        failures += 1;
                        break;
                    }
                }
            }
        }
    }
    println!(
        "reaction time from injection to all of pacer's workers idle (pg_stat_activity), confirm {:.1}s:",
        a.confirm
    );
    if kinds.contains(&"lag") {
        stats("replica lag (replay paused, stop_above 1 s)", &mut lag);
    }
    if kinds.contains(&"latency") {
        stats(
            "checkout latency +8x baseline (stop_above baseline*5, stop_for 1 s)",
            &mut lat,
        );
    }
    if failures > 0 {
        anyhow::bail!("{failures} rounds never reached idle");
    }
    Ok(())
}
