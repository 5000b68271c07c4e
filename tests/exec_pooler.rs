//! pacer refuses to run through a connection pooler in transaction or
//! statement mode (its session locks and settings would silently not
//! hold), and accepts one in session mode. A real pgbouncer (Debian's
//! `pgbouncer` package; scripts/test installs it) on a port of its own
//! (`PACER_TESTBED_POOLER_PORT`, default 15439), in front of the test's
//! database on the testbed's primary, started and stopped by the test.

mod exec_common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A pgbouncer process, stopped on drop.
struct Bouncer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Bouncer {
    /// Three aliases for database `db` on `server` (`host:port`): `tx`,
    /// `stmt` and `sess`, one per pool mode.
    fn start(server: (&str, u16), db: &str) -> Bouncer {
        assert!(
            Path::new(PGBOUNCER).exists(),
            "pgbouncer is not installed (apt-get install -y pgbouncer; scripts/test does it)"
        );
        let port: u16 = std::env::var("PACER_TESTBED_POOLER_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(15439);
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} (PACER_TESTBED_POOLER_PORT) is in use"
        );
        let dir = tempfile::Builder::new()
            .prefix("pacer-pooler-")
            .tempdir_in("/tmp")
            .unwrap();
        let (host, pgport) = server;
        let conf = format!(
            "[databases]
tx = host={host} port={pgport} dbname={db} pool_mode=transaction
stmt = host={host} port={pgport} dbname={db} pool_mode=statement
sess = host={host} port={pgport} dbname={db} pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
pool_mode = session
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), conf).unwrap();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        // pgbouncer will not run as root.
        let st = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let child = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", PGBOUNCER])
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Bouncer {
            child,
            _dir: dir,
            port,
        };
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "pgbouncer did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn url(&self, alias: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{alias}", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SIGTERM to pgbouncer itself (by its pidfile): an immediate
        // shutdown; runuser then exits with it.
        if let Ok(pid) = std::fs::read_to_string(self._dir.path().join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid.trim()])
                .status();
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The testbed server behind the `#[sqlx::test]` pool, and the database.
async fn server_of(pool: &PgPool) -> ((String, u16), String) {
    let url = url_of(pool).await;
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    (
        (opts.get_host().to_string(), opts.get_port()),
        opts.get_database().unwrap().to_string(),
    )
}

#[sqlx::test(migrations = false)]
async fn a_transaction_pooler_is_refused_a_session_pooler_is_not(pool: PgPool) {
    counter_table(&pool, "t", 2000).await;
    let ((host, port), db) = server_of(&pool).await;
    let bouncer = Bouncer::start((&host, port), &db);

    for (alias, mode) in [("tx", "transaction"), ("stmt", "statement")] {
        let (_d, p) = policy(&bouncer.url(alias), &Spec::default());
        let out = output(pacer(&["run"], &p)).await;
        assert_eq!(out.code, Some(2), "{mode} mode:\n{}", out.all());
        assert!(
            out.all()
                .contains("leads to a pooler in transaction or statement mode")
                && out.all().contains("pool_mode = session"),
            "{mode} mode:\n{}",
            out.all()
        );
        // Whole, within the 300 characters of an error line.
        let line = out
            .all()
            .lines()
            .find(|l| l.contains("leads to a pooler"))
            .unwrap()
            .to_string();
        assert!(!line.contains('…'), "{line}");
        let out = output(pacer(&["check"], &p)).await;
        assert_eq!(out.code, Some(1), "{mode} mode:\n{}", out.all());
        assert!(
            out.stdout
                .contains("problem: database.url leads to a pooler"),
            "{mode} mode:\n{}",
            out.all()
        );
    }
    assert_eq!(
        counters(&pool, "t").await,
        (2000, 0, 0),
        "rows were written"
    );
    let schema: bool = sqlx::query_scalar("SELECT to_regnamespace('pacer') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!schema, "pacer's tables were created through the pooler");

    // A pool in session mode gives every client a session of its own:
    // accepted, and the job runs through it.
    let (_d, p) = policy(&bouncer.url("sess"), &Spec::default());
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "session mode:\n{}", out.all());
    let out = output(pacer(&["run"], &p)).await;
    assert_eq!(out.code, Some(0), "session mode:\n{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 2000, 0));
    drop(bouncer);
}
