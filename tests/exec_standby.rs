//! A standby runner takes a job over from an active runner that died
//! (`kill -9`), froze (SIGSTOP for 60 s) or was cut off by a network
//! partition (its packets dropped in a network namespace); the old runner,
//! if it wakes up, commits nothing more and stands down; a standby with a
//! changed policy refuses. The update increments a counter without a guard
//! (`[job] idempotent = false`), so a row applied twice shows as 2.
//!
//! Lease and takeover are short here (`[job] lease = 1s`,
//! `takeover_after = 1s`) to keep the tests fast; the freeze and the
//! partition last far longer than both.

mod exec_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use exec_common::*;
use sqlx::PgPool;
use tokio::process::{Child, Command};

const ROWS: i64 = 30_000;

/// Short lease and takeover, the same for every runner of a test.
/// `[job] lease` and `takeover_after` of the runners: 1 s unless
/// `PACER_TEST_LEASE` / `PACER_TEST_TAKEOVER_AFTER` say otherwise (to
/// measure a takeover at the defaults, 10s and 15s).
fn timing(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| "1s".into())
}

fn fast(mut c: Command) -> Command {
    c.env("PACER_POLICY__JOB__LEASE", timing("PACER_TEST_LEASE"))
        .env(
            "PACER_POLICY__JOB__TAKEOVER_AFTER",
            timing("PACER_TEST_TAKEOVER_AFTER"),
        )
        .env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "3000");
    c
}

/// A standby of the same policy, with an HTTP port of its own (both run on
/// this host; `[http]` is not part of what a standby must match).
fn standby(p: &PathBuf) -> Command {
    let mut c = fast(pacer(&["run", "--standby"], p));
    c.env(
        "PACER_POLICY__HTTP__LISTEN",
        format!("127.0.0.1:{}", free_port()),
    );
    c
}

fn spec() -> Spec<'static> {
    Spec {
        batch: (200, 100, 300),
        workers: (2, 2, 2),
        ..Spec::default()
    }
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

async fn epoch(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT epoch FROM pacer.jobs WHERE name = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn started(pool: &PgPool) {
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(pool, "t").await.1 > 1500
        })
        .await,
        "the active runner did not start"
    );
}

/// Wait until the job's epoch moves past `old` (the standby bumped it);
/// returns the time since `since` and the server's time when it was seen.
async fn takeover(
    pool: &PgPool,
    old: i64,
    since: Instant,
    limit: Duration,
) -> (Duration, chrono::DateTime<chrono::Utc>) {
    assert!(
        wait_until(limit, || async { epoch(pool).await > old }).await,
        "the standby did not take over within {limit:?}"
    );
    let seen: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap();
    (since.elapsed(), seen)
}

/// Wait for a runner to exit within `secs`; returns its code and stdout.
async fn exited(run: &mut Child, secs: u64, what: &str) -> (Option<i32>, String) {
    let status = tokio::time::timeout(Duration::from_secs(secs), run.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {secs} s"))
        .unwrap();
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    (status.code(), stdout)
}

/// No row skipped, none applied twice, and every change has its record.
async fn exactly_once(pool: &PgPool) {
    assert_eq!(
        counters(pool, "t").await,
        (0, ROWS, 0),
        "rows lost or doubled"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(rows), 0)::bigint FROM pacer.progress WHERE job = 't'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(recorded, ROWS, "rows changed without a progress record");
}

/// Batches the old runner (epoch `old`) committed after the takeover was
/// seen: must be none.
async fn late_commits(pool: &PgPool, old: i64, seen: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pacer.progress WHERE job = 't' AND epoch <= $1 AND committed_at >= $2",
    )
    .bind(old)
    .bind(seen)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn kill_9_the_active_runner_and_the_standby_takes_over(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", ROWS).await;
    let (_d, p) = policy(&url, &spec());
    let mut active = spawn(fast(pacer(&["run"], &p)));
    started(&pool).await;
    let mut stby = spawn(standby(&p));
    // The standby is waiting, holding nothing but an idle session.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stby.try_wait().unwrap().is_none(),
        "the standby exited while the active runner ran"
    );
    let waiting: Vec<(String, String)> = sqlx::query_as(
        "SELECT state, coalesce(wait_event_type, '') FROM pg_stat_activity WHERE application_name = 'pacer:t:standby'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(waiting.len(), 1, "the standby's session: {waiting:?}");
    assert_ne!(waiting[0].1, "Lock", "the standby waits in a lock");
    let old = epoch(&pool).await;
    // `pacer status` names the lease's holder.
    let out = output(pacer(&["status", "--json"], &p)).await;
    let st: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.all()));
    let holder = st["lease"]["holder"].as_str().unwrap_or_default();
    assert!(
        holder.contains(&format!(":{}:", active.id().unwrap())),
        "{st}"
    );

    active.start_kill().unwrap();
    let killed = Instant::now();
    active.wait().await.unwrap();
    let (took, _) = takeover(&pool, old, killed, Duration::from_secs(60)).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pacer.progress WHERE job = 't' AND epoch > $1",
            )
            .bind(old)
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        })
        .await,
        "the standby committed no batch"
    );
    println!(
        "kill -9: the standby took the job over {:.1} s after the kill (new epoch); first batch by {:.1} s (lease {}, takeover_after {})",
        took.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
        timing("PACER_TEST_LEASE"),
        timing("PACER_TEST_TAKEOVER_AFTER")
    );
    let (code, stdout) = exited(&mut stby, 60, "the standby").await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("job t done"), "{stdout}");
    exactly_once(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_standby_with_a_changed_policy_refuses(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", ROWS).await;
    let (_d, p) = policy(&url, &spec());
    let mut active = spawn(fast(pacer(&["run"], &p)));
    started(&pool).await;

    // Another update: another job on the same rows.
    let (_d2, changed) = policy(
        &url,
        &Spec {
            update: "UPDATE t SET counter = counter + 1, pad = 'x' WHERE id = ANY($1)",
            ..spec()
        },
    );
    let out = output(standby(&changed)).await;
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.all().contains("standby refused") && out.all().contains("job.table/key/pending/update"),
        "{}",
        out.all()
    );

    // Other limits: refused too, naming them.
    let mut c = standby(&p);
    c.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "5000");
    let out = output(c).await;
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.all().contains("standby refused") && out.all().contains("[limits]"),
        "{}",
        out.all()
    );

    // Another pacer version (its tables at another schema version): refused.
    sqlx::query(
        "INSERT INTO pacer._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'from a newer pacer', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = output(standby(&p)).await;
    sqlx::query("DELETE FROM pacer._sqlx_migrations WHERE version = 29991231000000")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.all().contains("standby refused")
            && out.all().contains("schema version 29991231000000"),
        "{}",
        out.all()
    );

    // None touched the job: the active runner finishes it.
    let (code, stdout) = exited(&mut active, 60, "the active runner").await;
    assert_eq!(code, Some(0), "{stdout}");
    exactly_once(&pool).await;
}

/// How long the active runner stays frozen (the 60 s by default).
fn freeze() -> Duration {
    let secs = std::env::var("PACER_TEST_FREEZE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[sqlx::test(migrations = false)]
async fn a_frozen_active_runner_is_replaced_and_commits_nothing_after_it_wakes(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", ROWS).await;
    let (_d, p) = policy(&url, &spec());
    let mut active = spawn(fast(pacer(&["run"], &p)));
    let pid = active.id().unwrap();
    started(&pool).await;
    let mut stby = spawn(standby(&p));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = epoch(&pool).await;

    signal(pid, "-STOP");
    let frozen = Instant::now();
    let (took, seen) = takeover(&pool, old, frozen, Duration::from_secs(30)).await;
    println!(
        "SIGSTOP: the standby took the job over {:.1} s after the freeze (lease 1 s, takeover_after 1 s)",
        took.as_secs_f64()
    );
    let (code, stdout) = exited(&mut stby, 60, "the standby").await;
    assert_eq!(code, Some(0), "{stdout}");
    exactly_once(&pool).await;

    let rest = freeze().saturating_sub(frozen.elapsed());
    tokio::time::sleep(rest).await;
    signal(pid, "-CONT");
    let (code, stdout) = exited(&mut active, 60, "the woken runner").await;
    println!(
        "SIGSTOP: the old runner woke after {:.0} s and stood down: {}",
        frozen.elapsed().as_secs_f64(),
        stdout.trim()
    );
    assert_eq!(code, Some(3), "{stdout}");
    assert!(
        stdout.contains("took over") && stdout.contains("standing down"),
        "{stdout}"
    );
    assert_eq!(
        late_commits(&pool, old, seen).await,
        0,
        "the old runner committed after the takeover"
    );
    exactly_once(&pool).await;
}

/// A network namespace with a veth pair to the host; deleted on drop
/// (which deletes the pair too).
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    fn new() -> Option<Netns> {
        let id = std::process::id() % 10_000;
        let name = format!("pacer-stby-{id}");
        let (host_if, ns_if) = (format!("psh{id}"), format!("psn{id}"));
        let net = format!("10.231.{}", id % 250);
        let host_ip = format!("{net}.1");
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns {
            name,
            host_if,
            host_ip,
        };
        let n = ns.name.as_str();
        let ok = ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            n,
        ]) && ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]) && ip(&["link", "set", &ns.host_if, "up"])
            && ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{net}.2/30"),
                "dev",
                &ns_if,
            ])
            && ip(&["-n", n, "link", "set", &ns_if, "up"])
            && ip(&["-n", n, "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    /// Cut the link: the host end goes down, so packets either way are
    /// dropped without a word (no RST, no FIN), as in a real partition.
    fn partition(&self, cut: bool) {
        let state = if cut { "down" } else { "up" };
        assert!(
            ip(&["link", "set", &self.host_if, state]),
            "ip link set {state}"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name]);
        ip(&["link", "del", &self.host_if]);
    }
}

/// Forward `listen` (host side of the veth) to the database server: the
/// testbed's server listens on 127.0.0.1 only. A plain byte pipe; while
/// the link is down its writes toward the namespace go nowhere, and the
/// server sees an idle client, as with a real partition.
async fn forwarder(listen: &str, server: String) -> String {
    let l = tokio::net::TcpListener::bind(format!("{listen}:0"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut a, _)) = l.accept().await else {
                return;
            };
            let server = server.clone();
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(&server).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    addr
}

#[sqlx::test(migrations = false)]
async fn a_partitioned_active_runner_is_replaced_and_commits_nothing_after_it_heals(pool: PgPool) {
    let Some(ns) = Netns::new() else {
        println!("SKIPPED: cannot create a network namespace here (needs root and `ip netns`)");
        return;
    };
    let url = url_of(&pool).await;
    counter_table(&pool, "t", ROWS).await;
    let (_d, p) = policy(&url, &spec());
    // postgres://user@HOST:PORT/db → the server address and the same URL
    // through the forwarder.
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (server, db) = rest.split_once('/').unwrap();
    let via = forwarder(&ns.host_ip, server.to_string()).await;
    let ns_url = format!("{scheme_user}@{via}/{db}");

    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, BIN, "run", "--policy"])
        .arg(&p)
        .env_remove("PACER_FAILPOINT")
        .env("PACER_LOG_LEVEL", "info")
        .env("PACER_POLICY__DATABASE__URL", &ns_url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut active = spawn(fast(c));
    started(&pool).await;
    let mut stby = spawn(standby(&p));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = epoch(&pool).await;
    let through: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pacer:t%' AND application_name <> 'pacer:t:standby'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(through >= 2, "the active runner's sessions: {through}");

    ns.partition(true);
    let cut = Instant::now();
    let (took, seen) = takeover(&pool, old, cut, Duration::from_secs(30)).await;
    println!(
        "partition: the standby took the job over {:.1} s after the cut (lease 1 s, takeover_after 1 s)",
        took.as_secs_f64()
    );
    let (code, stdout) = exited(&mut stby, 60, "the standby").await;
    assert_eq!(code, Some(0), "{stdout}");
    exactly_once(&pool).await;

    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut.elapsed())).await;
    ns.partition(false);
    let healed = cut.elapsed();
    let (code, stdout) = exited(&mut active, 90, "the cut-off runner").await;
    println!(
        "partition: healed after {:.0} s; the old runner stood down {:.1} s later: {}",
        healed.as_secs_f64(),
        (cut.elapsed() - healed).as_secs_f64(),
        stdout.trim()
    );
    assert_eq!(code, Some(3), "{stdout}");
    assert!(
        stdout.contains("took over") && stdout.contains("standing down"),
        "{stdout}"
    );
    assert_eq!(
        late_commits(&pool, old, seen).await,
        0,
        "the old runner committed after the takeover"
    );
    exactly_once(&pool).await;
}
