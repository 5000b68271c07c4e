//! A pause that dead row versions hold up (`[job] vacuum`): the service's
//! health check here fails while the table holds more than 3,000 dead
//! versions, as a service whose reads cross the backfilled range slows
//! down with them. Autovacuum is off on the table, so only a VACUUM can
//! bring the check back; pacer's pause alone never does.

mod exec_common;

use std::time::Duration;

use axum::routing::get;
use exec_common::*;
use sqlx::PgPool;

const LIMIT: i64 = 3000;

async fn dead(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn vacuums(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `t` with `rows` rows, out of autovacuum's reach: only a VACUUM clears
/// its dead versions, and no analyze replaces their count with an estimate.
async fn quiet_table(pool: &PgPool, rows: i64) {
    counter_table(pool, "t", rows).await;
    sqlx::query("ALTER TABLE t SET (autovacuum_enabled = false)")
        .execute(pool)
        .await
        .unwrap();
}

/// Every row of `t` updated, its dead versions in the shared statistics:
/// a backend's counts reach them when its next transaction ends after
/// the flush request.
const UPDATE_ALL: &[&str] = &[
    "UPDATE t SET counter = 1",
    "SELECT pg_stat_force_next_flush()",
    "SELECT 1",
];

async fn run(c: &mut sqlx::PgConnection, statements: &[&'static str]) {
    for sql in statements {
        sqlx::query(*sql).execute(&mut *c).await.unwrap();
    }
}

/// 503 while `t` has more than `LIMIT` dead row versions.
async fn health_check(pool: PgPool) -> String {
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            let pool = pool.clone();
            async move {
                if dead(&pool).await > LIMIT {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "slow")
                } else {
                    (axum::http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/health")
}

async fn setup(
    pool: &PgPool,
    vacuum: &str,
    rows: i64,
    batch: u32,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let url = url_of(pool).await;
    quiet_table(pool, rows).await;
    let health = health_check(pool.clone()).await;
    let (dir, path) = policy(
        &url,
        &Spec {
            update: "UPDATE t SET counter = 1 WHERE id = ANY($1) AND counter = 0",
            idempotent: true,
            batch: (batch, batch, batch),
            sleep_ms: 50,
            extra: &format!(
                "\n[[signal]]\nname = \"health\"\nhttp = \"{health}\"\nstop_for = \"0s\"\ntimeout = \"2s\"\n"
            ),
            ..Spec::default()
        },
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[job]\n", &format!("[job]\nvacuum = \"{vacuum}\"\n"), 1);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[sqlx::test(migrations = false)]
async fn when_stuck_vacuums_and_the_job_finishes(pool: PgPool) {
    let (_dir, policy) = setup(&pool, "when-stuck", 20_000, 500).await;
    let out = output(capped(pacer(&["run"], &policy))).await;
    let log = out.all();
    assert_eq!(out.code, Some(0), "{log}");
    assert_eq!(counters(&pool, "t").await, (0, 20_000, 0), "{log}");
    // 20,000 rows, a stop at 3,000 dead: the job paused on the check and
    // a VACUUM of pacer's let it go on, more than once.
    assert!(vacuums(&pool).await >= 2, "{log}");
    assert!(log.contains("has not come down"), "{log}");
    assert!(log.contains("vacuuming t: "), "{log}");
    assert!(log.contains("vacuumed t in "), "{log}");
}

#[sqlx::test(migrations = false)]
async fn off_says_what_would_clear_it_and_waits(pool: PgPool) {
    let (dir, policy) = setup(&pool, "off", 20_000, 500).await;
    let log_path = dir.path().join("run.log");
    let mut cmd = capped(pacer(&["run"], &policy));
    cmd.stderr(std::process::Stdio::from(
        std::fs::File::create(&log_path).unwrap(),
    ));
    let mut child = cmd.spawn().unwrap();
    let said = log_says(
        &log_path,
        "(or job.vacuum = \"when-stuck\"",
        Duration::from_secs(60),
    )
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(said, "{log}");
    assert!(log.contains("`VACUUM t`"), "{log}");
    // Still paused on the check, and nothing vacuumed the table.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "{log}");
    assert_eq!(vacuums(&pool).await, 0);
    assert!(dead(&pool).await > LIMIT);
    let (left, done, twice) = counters(&pool, "t").await;
    assert!(left > 0 && done > 0 && twice == 0, "{left} {done} {twice}");
    child.kill().await.unwrap();
}

/// `as-it-goes` vacuums while the job runs, before the dead versions get
/// to fail the check: at 150 rows/s, 1,500 pile up between two looks,
/// half the check's limit, and the job never pauses.
#[sqlx::test(migrations = false)]
async fn as_it_goes_vacuums_before_the_check_fails(pool: PgPool) {
    let (_dir, policy) = setup(&pool, "as-it-goes", 4_500, 50).await;
    let mut cmd = pacer(&["run"], &policy);
    cmd.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "150");
    let out = output(cmd).await;
    let log = out.all();
    assert_eq!(out.code, Some(0), "{log}");
    assert_eq!(counters(&pool, "t").await, (0, 4_500, 0), "{log}");
    assert!(vacuums(&pool).await >= 1, "{log}");
    assert!(log.contains("and job.vacuum = \"as-it-goes\""), "{log}");
    assert!(!log.contains("pausing"), "{log}");
}

/// A transaction older than the dead versions keeps them: pacer's VACUUM
/// then cleans little, which it says instead of trying again; once that
/// transaction ends, the same VACUUM clears them.
#[sqlx::test(migrations = false)]
async fn a_vacuum_behind_an_old_snapshot_cleans_little(pool: PgPool) {
    use pacer::executor::vacuum::{cleaned_little, dead_rows, vacuum};
    quiet_table(&pool, 5_000).await;
    let mut old = pool.acquire().await.unwrap();
    run(
        &mut old,
        &[
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "SELECT count(*) FROM t",
        ],
    )
    .await;
    let mut c = pool.acquire().await.unwrap();
    run(&mut c, UPDATE_ALL).await;
    let before = dead_rows(&mut c, "t").await.unwrap();
    assert_eq!(before.dead, 5_000, "{before:?}");
    assert!(vacuum(&mut c, "t").await.unwrap());
    let after = dead_rows(&mut c, "t").await.unwrap();
    assert!(cleaned_little(before, after), "{before:?} → {after:?}");
    sqlx::query("COMMIT").execute(&mut *old).await.unwrap();
    assert!(vacuum(&mut c, "t").await.unwrap());
    let after = dead_rows(&mut c, "t").await.unwrap();
    assert_eq!(after.dead, 0, "{after:?}");
    assert!(!cleaned_little(before, after));
}

/// A table another VACUUM holds (here a session holding the lock VACUUM
/// takes, as autovacuum does while it works) is skipped, and pacer says it
/// did not vacuum rather than that it vacuumed and cleaned nothing.
#[sqlx::test(migrations = false)]
async fn a_table_another_vacuum_holds_is_skipped_and_said_so(pool: PgPool) {
    use pacer::executor::vacuum::{dead_rows, vacuum};
    quiet_table(&pool, 5_000).await;
    let mut c = pool.acquire().await.unwrap();
    run(&mut c, UPDATE_ALL).await;
    let mut holder = pool.acquire().await.unwrap();
    run(
        &mut holder,
        &["BEGIN", "LOCK TABLE t IN SHARE UPDATE EXCLUSIVE MODE"],
    )
    .await;
    assert!(!vacuum(&mut c, "t").await.unwrap(), "ran while held");
    assert_eq!(vacuums(&pool).await, 0);
    assert_eq!(dead_rows(&mut c, "t").await.unwrap().dead, 5_000);
    sqlx::query("COMMIT").execute(&mut *holder).await.unwrap();
    assert!(vacuum(&mut c, "t").await.unwrap(), "skipped once free");
    assert_eq!(vacuums(&pool).await, 1);
    assert_eq!(dead_rows(&mut c, "t").await.unwrap().dead, 0);
}
