//! A fleet on real databases: three targets from one policy, two on the
//! testbed's standalone cluster (`solo`) and one on the primary whose
//! replica the test pauses. Each target finishes exactly once; pausing
//! replay pauses only the cluster behind it; `max_active_targets = 2`
//! holds; the two targets sharing a cluster write together what one
//! writes alone there (within ±10 %).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

/// Rows per target: `b` is small, so `a` runs a while alone after it.
const ROWS: [(&str, i64); 3] = [("a", 24_000), ("b", 5_000), ("c", 12_000)];

async fn admin(server: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("{server} is not reachable (scripts/testbed up): {e}"))
}

/// A fresh database `db` on `server` with `rows` rows to count up once.
async fn fresh_db(server: &str, db: &str, rows: i64) -> PgPool {
    let a = admin(server).await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&a)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&a)
        .await
        .unwrap();
    a.close().await;
    let p = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{server}/{db}"))
        .await
        .unwrap();
    if rows > 0 {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, counter integer NOT NULL DEFAULT 0);
             INSERT INTO items (id) SELECT g * 3 FROM generate_series(1, {rows}) g;
             ANALYZE items;"
        )))
        .execute(&p)
        .await
        .unwrap();
    }
    p
}

/// The fleets' common part: a counter that each batch adds 1 to (so a
/// batch applied twice shows as 2), knobs pinned (start = min = max) so
/// that rates are known: `batch` rows per (batch time + `sleep_ms`).
fn head(job: &str, batch: u32, sleep_ms: u32) -> String {
    format!(
        r#"
[job]
name = "{job}"
table = "items"
key = "id"
pending = "counter = 0"
update = "UPDATE items SET counter = counter + 1 WHERE id = ANY($1)"
idempotent = false

[limits]
batch_size = {{ start = {batch}, min = {batch}, max = {batch} }}
sleep = {{ start = "{sleep_ms}ms", min = "{sleep_ms}ms", max = "{sleep_ms}ms" }}
workers = {{ start = 1, min = 1, max = 1 }}

[controller]
tick = "250ms"
resume_after = "1s"
hold_after_resume = "1s"
"#
    )
}

/// `pacer run` on a fleet policy in the background, its logs in `log`.
fn run_fleet(path: &std::path::Path, log: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pacer"))
        .args(["run", "--policy"])
        .arg(path)
        .env("PACER_LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn done(p: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE counter > 0")
        .fetch_one(p)
        .await
        .unwrap()
}

/// Rows/s of `series` (t, rows) in [from, to]: the least-squares slope
/// of its samples, so that the 300-row steps of single batches do not
/// make a few seconds' rate jump by a batch more or less.
fn rate(series: &[(f64, i64)], from: f64, to: f64) -> f64 {
    let inside: Vec<(f64, f64)> = series
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(t, n)| (*t, *n as f64))
        .collect();
    assert!(
        inside.len() >= 8,
        "too few samples in [{from:.1}, {to:.1}]: {inside:?}"
    );
    let n = inside.len() as f64;
    let (mt, mn) = (
        inside.iter().map(|p| p.0).sum::<f64>() / n,
        inside.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = inside.iter().map(|p| (p.0 - mt) * (p.1 - mn)).sum();
    let var: f64 = inside.iter().map(|p| (p.0 - mt).powi(2)).sum();
    cov / var
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_on_two_clusters_shares_budgets_and_pauses_per_cluster() {
    let _lock = common::lock();
    let primary = common::primary_server();
    let solo = common::solo_server();
    let pa = fresh_db(&solo, "pacer_fleet_a", ROWS[0].1).await;
    let pb = fresh_db(&solo, "pacer_fleet_b", ROWS[1].1).await;
    let pc = fresh_db(&primary, "pacer_fleet_c", ROWS[2].1).await;
    let coord = fresh_db(&primary, "pacer_fleet_coord", 0).await;
    let replica_c = format!("{}/pacer_fleet_c", common::replica_server());
    let listen = format!("127.0.0.1:{}", common::free_port());

    // Knobs pinned (start = min = max): a target alone writes 300 rows per
    // (batch time + 300 ms), and so does its cluster's budget, which two
    // targets then split. Order: a, b (solo) first, c (primary) once one
    // of them finishes.
    let policy = format!(
        r#"{head}
[[signal]]
name = "replica_lag"
postgres = "replication_lag_seconds"
stop_above = 1.5
stop_for = "1s"

[fleet]
coordination_url = "{primary}/pacer_fleet_coord"
max_active_targets = 2

[http]
listen = "{listen}"

[[target]]
name = "a"
url = "{solo}/pacer_fleet_a"

[[target]]
name = "b"
url = "{solo}/pacer_fleet_b"

[[target]]
name = "c"
url = "{primary}/pacer_fleet_c"
replicas = ["{replica_c}"]
"#,
        head = head("fl", 300, 300)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &policy).unwrap();
    let log = dir.path().join("fleet.log");
    let mut child = run_fleet(&path, &log);

    let replica = PgPoolOptions::new()
        .max_connections(1)
        .connect(&replica_c)
        .await
        .unwrap();
    let _resume = common::ResumeReplay;
    let t0 = Instant::now();
    let mut series: [Vec<(f64, i64)>; 3] = Default::default();
    let mut replay_paused_at: Option<f64> = None;
    let mut replay_resumed_at: Option<f64> = None;
    let mut metrics: Option<String> = None;
    let status = loop {
        let t = t0.elapsed().as_secs_f64();
        let counts = [done(&pa).await, done(&pb).await, done(&pc).await];
        for (s, n) in series.iter_mut().zip(counts) {
            s.push((t, n));
        }
        // One /metrics for the whole fleet while a and b run.
        if metrics.is_none() && counts[0] > 500 && counts[1] > 500 {
            metrics = Some(
                reqwest::get(format!("http://{listen}/metrics"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
        }
        // Once c writes, pause replay behind it; 12 s later resume it.
        if replay_paused_at.is_none() && counts[2] > 600 {
            sqlx::query("SELECT pg_wal_replay_pause()")
                .execute(&replica)
                .await
                .unwrap();
            replay_paused_at = Some(t);
        }
        if let (Some(p), None) = (replay_paused_at, replay_resumed_at)
            && t > p + 12.0
        {
            sqlx::query("SELECT pg_wal_replay_resume()")
                .execute(&replica)
                .await
                .unwrap();
            replay_resumed_at = Some(t);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t < 150.0,
            "the fleet did not finish in 150 s:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    // Kept for a look after a failure (or a pass).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("testbed_fleet.log"),
        &logs,
    );
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "fleet run failed: {status}\n{stdout}\n{logs}"
    );
    assert!(
        stdout.contains("3 done, 0 running, 0 waiting, 0 failed"),
        "{stdout}"
    );

    let m = metrics.expect("scraped /metrics while a and b ran");
    for want in [
        "pacer_rows_done_total{pacer_job=\"fl.a\",target=\"a\"}",
        "pacer_rows_done_total{pacer_job=\"fl.b\",target=\"b\"}",
        "pacer_fleet_targets{pacer_job=\"fl\",state=\"running\"} 2",
        "pacer_fleet_cluster_rate_rows_per_second{pacer_job=\"fl\",cluster=",
    ] {
        assert!(m.contains(want), "no {want} in /metrics:\n{m}");
    }
    assert_eq!(
        m.matches("# TYPE pacer_rows_done_total counter").count(),
        1,
        "{m}"
    );

    // Exactly once, on every target.
    for (p, (name, n)) in [&pa, &pb, &pc].into_iter().zip(ROWS) {
        assert_eq!(counts(p).await, (0, n, 0), "target {name}");
    }

    // max_active_targets = 2: never three running at once, by the
    // coordination database's record and by what the tables show.
    let spans: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT target, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
         FROM pacer.fleet_targets WHERE fleet = 'fl' AND state = 'done' ORDER BY started_at",
    )
    .fetch_all(&coord)
    .await
    .unwrap();
    assert_eq!(spans.len(), 3, "{spans:?}");
    for (n, s, _) in &spans {
        let at_once = spans.iter().filter(|(_, a, b)| a <= s && s < b).count();
        assert!(
            at_once <= 2,
            "{at_once} running when {n} started: {spans:?}"
        );
    }
    assert_eq!(
        spans.last().unwrap().0,
        "c",
        "c waits for a slot: {spans:?}"
    );
    let first_write = |s: &[(f64, i64)]| s.iter().find(|(_, n)| *n > 0).unwrap().0;
    let finished = |s: &[(f64, i64)], n: i64| s.iter().find(|(_, d)| *d == n).unwrap().0;
    let b_done = finished(&series[1], ROWS[1].1);
    assert!(
        first_write(&series[2]) >= b_done.min(finished(&series[0], ROWS[0].1)) - 0.5,
        "c wrote before a slot was free"
    );

    // Replay paused behind c: c stops writing, a (another cluster) does not.
    let paused = replay_paused_at.expect("c wrote");
    let resumed = replay_resumed_at.expect("replay was resumed");
    let (from, to) = (paused + 4.0, resumed);
    let c_rate = rate(&series[2], from, to);
    let a_rate = rate(&series[0], from, to);
    eprintln!("while replay was paused: c {c_rate:.0} rows/s, a {a_rate:.0} rows/s");
    assert!(c_rate < 20.0, "c kept writing: {c_rate:.0} rows/s\n{logs}");
    assert!(a_rate > 100.0, "a stopped too: {a_rate:.0} rows/s\n{logs}");
    assert!(
        logs.contains("pausing") && logs.contains("replica_lag"),
        "no cluster pause in the log:\n{logs}"
    );

    // The shared budget: a and b together (before b finished) against a
    // alone on the same cluster (after b finished, while c was paused and
    // the machine otherwise quiet).
    let a_start = first_write(&series[0]).max(first_write(&series[1]));
    let together = rate(&series[0], a_start + 1.0, b_done - 0.5)
        + rate(&series[1], a_start + 1.0, b_done - 0.5);
    let alone = a_rate;
    let ratio = together / alone;
    eprintln!(
        "solo cluster: a+b together {together:.0} rows/s, a alone {alone:.0} rows/s, ratio {ratio:.2}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "two targets on one cluster wrote {together:.0} rows/s together, one alone {alone:.0} rows/s (ratio {ratio:.2})\n{logs}"
    );
}

/// `pacer <args> --policy <path>` to its end: (exit code, stdout + stderr).
async fn pacer(args: &[&str], path: &std::path::Path) -> (i32, String) {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_pacer"))
        .args(args)
        .arg("--policy")
        .arg(path)
        .output()
        .await
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_pauses_as_a_whole_and_per_target_and_says_so() {
    let _lock = common::lock();
    let primary = common::primary_server();
    let solo = common::solo_server();
    let p1 = fresh_db(&solo, "pacer_fleet_p1", 3_000).await;
    let p2 = fresh_db(&solo, "pacer_fleet_p2", 3_000).await;
    let _coord = fresh_db(&primary, "pacer_fleet_coord2", 0).await;
    let policy = format!(
        r#"
{head}
[fleet]
coordination_url = "{primary}/pacer_fleet_coord2"

[http]
listen = "127.0.0.1:{port}"

[[target]]
name = "p1"
url = "{solo}/pacer_fleet_p1"

[[target]]
name = "p2"
url = "{solo}/pacer_fleet_p2"
"#,
        head = head("fp", 100, 100),
        port = common::free_port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &policy).unwrap();

    let (code, out) = pacer(&["status"], &path).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fleet fp has not started"), "{out}");
    let (code, out) = pacer(&["verify"], &path).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--target NAME"), "{out}");
    let (code, out) = pacer(&["status", "--target", "p9"], &path).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no such target (targets: p1, p2)"), "{out}");

    // Paused before it starts: the fleet starts no target.
    let (code, out) = pacer(&["pause", "--reason", "freeze"], &path).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fleet fp paused"), "{out}");
    let log = dir.path().join("fleet.log");
    let mut child = run_fleet(&path, &log);
    let logs = || std::fs::read_to_string(&log).unwrap();
    common::eventually(
        Duration::from_secs(30),
        "fleet paused in the log",
        || async { logs().contains("fleet paused by").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((done(&p1).await, done(&p2).await), (0, 0), "{}", logs());
    let (code, out) = pacer(&["status"], &path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 targets: 0 done, 0 running, 2 waiting") && out.contains("freeze"),
        "{out}"
    );

    // One target paused on its own, then the fleet resumed: the other runs.
    let (code, out) = pacer(
        &["pause", "--target", "p1", "--reason", "tenant audit"],
        &path,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = pacer(&["resume"], &path).await;
    assert_eq!(code, 0, "{out}");
    common::eventually(Duration::from_secs(30), "p2 writing", || async {
        (done(&p2).await > 300).then_some(())
    })
    .await;
    assert_eq!(done(&p1).await, 0, "p1 was paused on its own\n{}", logs());
    let (code, out) = pacer(&["status", "--json"], &path).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["running"], 2, "{v}");
    assert_eq!(v["paused"], 1, "{v}");
    let p1s = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "p1")
        .unwrap();
    assert_eq!(p1s["job"]["paused_by"]["reason"], "tenant audit", "{v}");

    let (code, out) = pacer(&["resume", "--target", "p1"], &path).await;
    assert_eq!(code, 0, "{out}");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the fleet did not finish:\n{}", logs()))
        .unwrap();
    assert!(status.success(), "{}", logs());
    for p in [&p1, &p2] {
        assert_eq!(counts(p).await, (0, 3_000, 0));
    }
    let (_, out) = pacer(&["status"], &path).await;
    assert!(
        out.contains("2 done, 0 running, 0 waiting, 0 failed"),
        "{out}"
    );
    assert!(out.contains("no fleet runner is running"), "{out}");

    // The fleet's report: a table of the targets, and each one's own.
    let report = dir.path().join("report");
    let (code, out) = pacer(&["report", "--out", report.to_str().unwrap()], &path).await;
    assert_eq!(code, 0, "{out}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("2 targets: 2 done"), "{md}");
    for t in ["p1", "p2"] {
        assert!(
            md.contains(&format!("[{t}/report.md]({t}/report.md)")),
            "{md}"
        );
        let own = std::fs::read_to_string(report.join(t).join("report.md")).unwrap();
        assert!(own.contains(&format!("fp.{t}")), "{own}");
        assert!(report.join(t).join("timeline.svg").exists());
    }
}

/// A small fleet policy: `fleet` holds extra `[fleet]` keys, `targets` the
/// `[[target]]` tables (if any).
fn small_fleet(job: &str, coord: &str, fleet: &str, targets: &str) -> String {
    format!(
        r#"
{head}
[fleet]
coordination_url = "{coord}"
max_active_targets = 1
{fleet}

[http]
listen = "127.0.0.1:{port}"

{targets}
"#,
        head = head(job, 200, 50),
        port = common::free_port()
    )
}

async fn counts(p: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE counter = 0), count(*) FILTER (WHERE counter = 1), count(*) FILTER (WHERE counter > 1) FROM items",
    )
    .fetch_one(p)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_unreachable_targets_and_a_second_runner_lose_nothing() {
    let _lock = common::lock();
    let primary = common::primary_server();
    let solo = common::solo_server();
    let f1 = fresh_db(&solo, "pacer_fleet_f1", 2_000).await;
    let _f2 = fresh_db(&solo, "pacer_fleet_f2", 0).await; // no items table
    let f3 = fresh_db(&solo, "pacer_fleet_f3", 2_000).await;
    let _coord = fresh_db(&primary, "pacer_fleet_coord3", 0).await;
    let coord = format!("{primary}/pacer_fleet_coord3");
    let catalog = fresh_db(&primary, "pacer_fleet_catalog", 0).await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE tenants (name text, dsn text, active bool);
         INSERT INTO tenants VALUES ('f1', '{solo}/pacer_fleet_f1', true), ('f2', '{solo}/pacer_fleet_f2', true),
                                    ('f3', '{solo}/pacer_fleet_f3', true), ('old', '{solo}/gone', false);"
    )))
    .execute(&catalog)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Targets from a catalog query; f2 fails (no table), `skip` goes on.
    let path = dir.path().join("skip.toml");
    std::fs::write(
        &path,
        small_fleet(
            "fa",
            &coord,
            &format!(
                "on_target_failure = \"skip\"\ncatalog_url = \"{primary}/pacer_fleet_catalog\"\n\
                 targets_query = \"SELECT name, dsn AS url FROM tenants WHERE active ORDER BY name\""
            ),
            "",
        ),
    )
    .unwrap();
    let (code, out) = pacer(&["run"], &path).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("2 done, 0 running, 0 waiting, 1 failed") && out.contains("failed f2:"),
        "{out}"
    );
    assert_eq!(counts(&f1).await, (0, 2_000, 0), "{out}");
    assert_eq!(counts(&f3).await, (0, 2_000, 0), "{out}");
    let (code, out) = pacer(&["status"], &path).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("f2") && out.contains("failed"), "{out}");

    // A catalog query that is not one: an invalid-input error naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("FROM tenants", "FROM no_such_table"),
    )
    .unwrap();
    let (code, out) = pacer(&["run"], &bad).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("fleet.targets_query") && out.contains("no_such_table"),
        "{out}"
    );

    // pause-fleet: f2 fails first, the fleet pauses with f1 unstarted; a
    // second runner is refused; `pacer resume` lets f1 run.
    let f1b = fresh_db(&solo, "pacer_fleet_f1", 2_000).await;
    let path = dir.path().join("pause.toml");
    std::fs::write(
        &path,
        small_fleet(
            "fb",
            &coord,
            "on_target_failure = \"pause-fleet\"",
            &format!(
                "[[target]]\nname = \"f2\"\nurl = \"{solo}/pacer_fleet_f2\"\n\n[[target]]\nname = \"f1\"\nurl = \"{solo}/pacer_fleet_f1\"\n"
            ),
        ),
    )
    .unwrap();
    let log = dir.path().join("pause.log");
    let mut child = run_fleet(&path, &log);
    let logs = || std::fs::read_to_string(&log).unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the fleet pausing itself",
        || async {
            logs()
                .contains("fleet paused by fleet: target f2 failed")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counts(&f1b).await,
        (2_000, 0, 0),
        "f1 must not start\n{}",
        logs()
    );
    let (code, out) = pacer(&["status"], &path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("paused by fleet: target f2 failed") && !out.contains("no fleet runner"),
        "{out}"
    );
    let (code, out) = pacer(&["run"], &path).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("fleet fb is already running"), "{out}");
    let (code, out) = pacer(&["resume"], &path).await;
    assert_eq!(code, 0, "{out}");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the fleet did not finish:\n{}", logs()))
        .unwrap();
    assert_eq!(status.code(), Some(3), "{}", logs());
    assert_eq!(counts(&f1b).await, (0, 2_000, 0), "{}", logs());
    // Fixed, the failed target runs on the next run: the pause the
    // failure set belonged to the last run.
    let f2 = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{solo}/pacer_fleet_f2"))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, counter integer NOT NULL DEFAULT 0);
         INSERT INTO items (id) SELECT g FROM generate_series(1, 500) g;",
    )
    .execute(&f2)
    .await
    .unwrap();
    let (code, out) = tokio::time::timeout(Duration::from_secs(60), pacer(&["run"], &path))
        .await
        .expect("the rerun is not held by the last run's pause");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 done, 0 running, 0 waiting, 0 failed"),
        "{out}"
    );
    assert_eq!(counts(&f2).await, (0, 500, 0), "{out}");

    // One unreachable target: nothing starts anywhere.
    let f4 = fresh_db(&solo, "pacer_fleet_f4", 2_000).await;
    let path = dir.path().join("down.toml");
    std::fs::write(
        &path,
        small_fleet(
            "fc",
            &coord,
            "on_target_failure = \"skip\"",
            &format!(
                "[[target]]\nname = \"f4\"\nurl = \"{solo}/pacer_fleet_f4\"\n\n[[target]]\nname = \"gone\"\nurl = \"postgres://postgres@127.0.0.1:{}/x\"\n",
                common::free_port()
            ),
        ),
    )
    .unwrap();
    let (code, out) = pacer(&["run"], &path).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("cannot reach 1 of the fleet's 2 targets; nothing started: gone:"),
        "{out}"
    );
    assert_eq!(counts(&f4).await, (2_000, 0, 0), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_fleet_resumes_where_it_stopped_exactly_once() {
    let _lock = common::lock();
    let primary = common::primary_server();
    let solo = common::solo_server();
    let s1 = fresh_db(&solo, "pacer_fleet_s1", 6_000).await;
    let s2 = fresh_db(&primary, "pacer_fleet_s2", 6_000).await;
    let _coord = fresh_db(&primary, "pacer_fleet_coord4", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        small_fleet(
            "fs",
            &format!("{primary}/pacer_fleet_coord4"),
            "",
            &format!(
                "[[target]]\nname = \"s1\"\nurl = \"{solo}/pacer_fleet_s1\"\n\n[[target]]\nname = \"s2\"\nurl = \"{primary}/pacer_fleet_s2\"\n"
            ),
        )
        .replace("max_active_targets = 1", "max_active_targets = 2")
        .replace("sleep = { start = \"50ms\", min = \"50ms\", max = \"50ms\" }", "sleep = { start = \"400ms\", min = \"400ms\", max = \"400ms\" }"),
    )
    .unwrap();
    let child = run_fleet(&path, &dir.path().join("fleet.log"));
    common::eventually(Duration::from_secs(30), "both targets writing", || async {
        (done(&s1).await > 400 && done(&s2).await > 400).then_some(())
    })
    .await;
    let pid = child.id().unwrap() as i32;
    // SIGTERM: a graceful stop of every target.
    assert!(
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the fleet stops within 30 s of SIGTERM")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("2 stopped"), "{stdout}");
    let (left1, left2) = (counts(&s1).await.0, counts(&s2).await.0);
    assert!(
        left1 > 0 && left2 > 0,
        "stopped before the end: {left1}, {left2}"
    );
    let (_, st) = pacer(&["status"], &path).await;
    assert!(st.contains("2 stopped"), "{st}");

    let (code, out) = pacer(&["run"], &path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 done, 0 running, 0 waiting, 0 failed"),
        "{out}"
    );
    assert_eq!(counts(&s1).await, (0, 6_000, 0));
    assert_eq!(counts(&s2).await, (0, 6_000, 0));
}
