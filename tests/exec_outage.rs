//! Long runs meet outages: a killed control connection, a primary
//! restarted with `-m immediate`, a primary down for ~20 s. Each must be a
//! pause, never the end of the run, and never a row applied twice or lost.
//! The restart tests run on a throwaway cluster of their own (initdb as
//! the `postgres` OS user, on a free port), never on a shared server.

mod exec_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exec_common::*;
use sqlx::{Connection, PgConnection, PgPool};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temp dir, stopped (immediately) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let st = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "pg_ctl {args:?} failed");
    }

    fn new() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pacer-outage-")
            .tempdir_in("/tmp")
            .unwrap();
        std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        let st = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        let c = Cluster {
            dir,
            port: free_port(),
        };
        c.start();
        c
    }

    /// Always with this cluster's own port and socket directory: a bare
    /// `pg_ctl start` would aim at the default port.
    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &opts, "start"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
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
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `pacer run` in the background with its log in a file the test reads.
fn spawn_logged(mut c: tokio::process::Command) -> (tokio::process::Child, PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pacer-outage-{}-{n}.log", std::process::id()));
    c.stderr(std::process::Stdio::from(
        std::fs::File::create(&path).unwrap(),
    ));
    (c.spawn().unwrap(), path)
}

/// Table `t`: 30,000 rows whose `counter` each batch increments (a row
/// applied twice shows as 2).
async fn counters_table(url: &str) {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, counter integer NOT NULL DEFAULT 0, pad text);
         INSERT INTO t (id, pad) SELECT g, md5(g::text) FROM generate_series(1, 30000) g;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
}

/// `pacer run` (rate-capped) with `spec` on a fresh `counters_table`,
/// once it has done 3,000 rows: the policy's directory and path, the
/// child, its log. As a `fleet`, the same job is the one `[[target]]` of a
/// fleet policy.
async fn started(
    url: &str,
    spec: &Spec<'_>,
    fleet: bool,
) -> (tempfile::TempDir, PathBuf, tokio::process::Child, PathBuf) {
    counters_table(url).await;
    let (dir, p) = policy(url, spec);
    if fleet {
        let text = std::fs::read_to_string(&p).unwrap();
        let db = format!("[database]\nurl = \"{url}\"\n");
        assert!(text.contains(&db), "{text}");
        let text =
            text.replace(&db, "") + &format!("\n[[target]]\nname = \"one\"\nurl = \"{url}\"\n");
        std::fs::write(&p, text).unwrap();
    }
    let (child, log) = spawn_logged(capped(pacer(&["run"], &p)));
    assert!(
        wait_counters(url, Duration::from_secs(20), |c| c.1 > 3000).await,
        "the job did not start"
    );
    (dir, p, child, log)
}

async fn counters_at(url: &str) -> Option<(i64, i64, i64)> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url))
        .await
        .ok()?
        .ok()?;
    let r = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE counter = 0), count(*) FILTER (WHERE counter = 1), count(*) FILTER (WHERE counter > 1) FROM t",
    )
    .fetch_one(&mut c)
    .await
    .ok();
    let _ = c.close().await;
    r
}

async fn wait_counters<F: Fn((i64, i64, i64)) -> bool>(url: &str, limit: Duration, f: F) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if counters_at(url).await.is_some_and(&f) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn status_of(policy: &Path) -> serde_json::Value {
    let out = output(pacer(&["status", "--json"], &policy.to_path_buf())).await;
    serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null)
}

/// A primary restarted with `-m immediate`, then down for ~18 s: pacer
/// pauses with the cause in plain words, resumes by itself from the
/// stored progress, honours an HTTP pause asked for while the database is
/// down, and finishes with every row applied exactly once.
#[tokio::test]
async fn a_restart_and_an_outage_are_pauses() {
    let cluster = Cluster::new();
    let url = cluster.url();
    let (_d, p, mut child, log) = started(
        &url,
        &Spec {
            batch: (300, 100, 500),
            workers: (2, 1, 2),
            max_retries: 2,
            ..Spec::default()
        },
        false,
    )
    .await;
    let listen = listen_of(&p);

    // 1. Restart with -m immediate: in-flight batches die mid-transaction
    //    or mid-COMMIT.
    cluster.pg_ctl(&["-w", "-m", "immediate", "restart"]);
    let restarted = Instant::now();
    let before = counters_at(&url).await.unwrap().1;
    assert!(
        wait_counters(&url, Duration::from_secs(20), |c| c.1 > before + 1000).await,
        "pacer did not resume after the restart"
    );
    let resumed_after = restarted.elapsed();
    assert!(
        child.try_wait().unwrap().is_none(),
        "pacer exited after the restart"
    );

    // 2. The primary down for ~18 s; a pause over HTTP meanwhile.
    cluster.pg_ctl(&["-w", "-m", "fast", "stop"]);
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = reqwest::Client::new()
        .post(format!("http://{listen}/pause"))
        .json(&serde_json::json!({"by": "test", "reason": "pause while down"}))
        .send()
        .await
        .unwrap();
    let code = resp.status();
    let body = resp.text().await.unwrap();
    assert!(
        code.is_success(),
        "POST /pause while the database is down: {code} {body}"
    );
    assert!(body.contains("paused in this process"), "{body}");
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "pacer exited during the outage"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("database unreachable: connection refused"),
        "{text}"
    );
    cluster.start();
    let outage = stopped.elapsed();

    // The HTTP pause holds after the database is back, and is stored.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            status_of(&p).await["state"] == "paused"
        })
        .await,
        "not paused after the outage: {}",
        status_of(&p).await
    );
    let s = status_of(&p).await;
    assert_eq!(s["paused_by"]["reason"], "pause while down", "{s}");
    let frozen = counters_at(&url).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counters_at(&url).await.unwrap(),
        frozen,
        "rows changed while paused over HTTP"
    );
    assert!(
        frozen.0 > 0,
        "the job finished before the outage; make it longer"
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{listen}/resume"))
        .json(&serde_json::json!({"by": "test", "reason": "database back"}))
        .send()
        .await
        .unwrap();
    let code = resp.status();
    assert!(
        code.is_success(),
        "POST /resume: {code} {}",
        resp.text().await.unwrap()
    );

    let st = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("pacer did not finish")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(0), "{text}");
    assert_eq!(
        counters_at(&url).await.unwrap(),
        (0, 30_000, 0),
        "rows lost or applied twice"
    );
    assert!(text.contains("the database server restarted"), "{text}");
    assert!(
        !text.contains("close_notify"),
        "raw TLS jargon shown to the user:\n{text}"
    );
    eprintln!("resumed {resumed_after:?} after the restart; outage of {outage:?} survived");
}

/// The control connection killed by a DBA: pacer reconnects, re-takes the
/// runner lock, keeps honouring `pacer pause`; while the pause switch
/// cannot be read at all (its table locked), no batch is taken.
#[sqlx::test(migrations = false)]
async fn a_lost_control_connection_is_reopened_and_the_pause_switch_honoured(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 40_000).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            ..Spec::default()
        },
    );
    let (mut child, log) = spawn_logged(capped(pacer(&["run"], &p)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 2000
        })
        .await
    );
    let ctl_pid = "SELECT pid FROM pg_stat_activity WHERE application_name = 't:control' AND datname = current_database()";
    let ctl_pid = ctl_pid.replace("'t:control'", "'pacer:t:control'");
    let old: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(ctl_pid.clone()))
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    let killed = Instant::now();
    // A new control session holds the runner lock (and the table lock,
    // one job per table) again.
    let relocked = wait_until(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.pid IN ({ctl_pid}) AND l.pid <> {old}"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        n == 2
    })
    .await;
    assert!(relocked, "the runner and table locks were not re-taken");
    let relock_time = killed.elapsed();

    // `pacer pause` is obeyed.
    let out = output({
        let mut c = pacer(&["pause"], &p);
        c.args(["--reason", "after the kill"]);
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let t_pause = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            status_of(&p).await["state"] == "paused"
        })
        .await,
        "pause ignored after the control connection was lost"
    );
    let pause_time = t_pause.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = counters(&pool, "t").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counters(&pool, "t").await,
        frozen,
        "rows written while paused"
    );
    let out = output(pacer(&["resume"], &p)).await;
    assert_eq!(out.code, Some(0));

    // The switch unreadable (its table locked): fail-safe, no batches.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            counters(&pool, "t").await.1 > frozen.1 + 500
        })
        .await,
        "no resume"
    );
    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *locker).await.unwrap();
    sqlx::query("LOCK pacer.control IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = counters(&pool, "t").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counters(&pool, "t").await,
        held,
        "batches taken while the pause switch could not be read"
    );
    assert!(held.0 > 0, "the job finished too soon; make it longer");
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    drop(locker);

    let st = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(0), "{text}");
    assert_eq!(counters(&pool, "t").await, (0, 40_000, 0));
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pacer.decisions WHERE job = 't' AND causes::text LIKE '%control connection lost%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        lost > 0,
        "the fail-safe pause is not in the decision log:\n{text}"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM pacer.jobs WHERE name = 't'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "done");
    eprintln!(
        "runner lock re-taken {relock_time:?} after the kill; pause obeyed in {pause_time:?}"
    );
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// A stop asked for while the database is down: the run takes no new
/// batches and says it waits (up to `max_outage`) to record how it ended,
/// instead of sitting silent; a second SIGTERM ends that wait at once,
/// exit 3 with the reason; the next run, once the database is back,
/// finishes every row exactly once.
#[tokio::test]
async fn a_second_stop_ends_the_wait_for_a_database_that_is_down() {
    second_stop_ends_the_wait(false).await;
}

/// The same in a fleet: the fleet runner passes the second SIGTERM on to
/// its targets (it reports the target failed: its end is not recorded).
#[tokio::test]
async fn a_second_stop_ends_a_fleet_targets_wait_for_its_database() {
    second_stop_ends_the_wait(true).await;
}

async fn second_stop_ends_the_wait(fleet: bool) {
    let cluster = Cluster::new();
    let url = cluster.url();
    let (_d, p, mut child, log) = started(
        &url,
        &Spec {
            batch: (300, 100, 500),
            ..Spec::default()
        },
        fleet,
    )
    .await;
    cluster.pg_ctl(&["-w", "-m", "fast", "stop"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, "-TERM");
    let said = log_says(&log, "waiting up to", Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(said, "no word of the wait for the database:\n{text}");
    assert!(
        text.contains("A SIGINT/SIGTERM now exits without recording it"),
        "{text}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the second stop (max_outage is 30 min):\n{text}"
    );
    signal(&child, "-TERM");
    let st = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("a second SIGTERM did not end the wait")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(3), "{text}");
    let mut out = String::new();
    use tokio::io::AsyncReadExt as _;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(
        out.contains("a stop request ended the wait for the database")
            && out.contains("committed progress is intact"),
        "{out}"
    );

    cluster.start();
    let again = output(capped(pacer(&["run"], &p))).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        counters_at(&url).await.unwrap(),
        (0, 30_000, 0),
        "rows lost or applied twice"
    );
}
