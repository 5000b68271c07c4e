//! Operator control while a job runs: pause/resume, and other sessions'
//! row locks.

mod exec_common;

use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

async fn status(policy: &std::path::PathBuf) -> serde_json::Value {
    let out = output(pacer(&["status", "--json"], policy)).await;
    serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null)
}

#[sqlx::test(migrations = false)]
async fn pause_and_resume_while_running(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 30_000).await;
    let (_dir, policy) = policy(
        &url,
        &Spec {
            batch: (200, 100, 400),
            sleep_ms: 50,
            ..Spec::default()
        },
    );
    let mut child = spawn(capped(pacer(&["run"], &policy)));
    let started = wait_until(Duration::from_secs(30), || async {
        counters(&pool, "t").await.1 > 1000
    })
    .await;
    assert!(started, "the job did not start");

    let out = output({
        let mut c = pacer(&["pause"], &policy);
        c.args(["--reason", "flash sale"]);
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let paused = wait_until(Duration::from_secs(10), || async {
        status(&policy).await["state"] == "paused"
    })
    .await;
    assert!(paused, "the job did not pause: {}", status(&policy).await);
    let s = status(&policy).await;
    assert_eq!(s["paused_by"]["reason"], "flash sale");
    // In-flight batches finish; then nothing moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = counters(&pool, "t").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        counters(&pool, "t").await,
        frozen,
        "rows changed while paused"
    );
    assert!(
        frozen.0 > 0,
        "the job finished before the pause took effect; make it longer"
    );

    let out = output(pacer(&["resume"], &policy)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let status_code = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status_code.success());
    assert_eq!(counters(&pool, "t").await, (0, 30_000, 0));

    // Knobs restored: the resume decision hands back the knobs in force at the pause.
    let rows: Vec<(String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT action, before, knobs FROM pacer.decisions WHERE job = 't' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let pause = rows
        .iter()
        .position(|r| r.0 == "pause")
        .expect("a pause decision");
    let resume = rows
        .iter()
        .position(|r| r.0 == "resume")
        .expect("a resume decision");
    assert!(resume > pause);
    assert_eq!(
        rows[resume].2, rows[pause].1,
        "resume must restore the knobs from before the pause"
    );
}

#[sqlx::test(migrations = false)]
async fn locked_rows_are_set_aside_and_done_after_release(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 6_000).await;
    let lock_timeout_ms = 300;
    let (_dir, policy) = policy(
        &url,
        &Spec {
            batch: (100, 50, 200),
            read_chunk: 1000,
            lock_timeout_ms,
            statement_timeout_ms: 3000,
            ..Spec::default()
        },
    );
    // Another session holds row locks on 50 rows in the middle.
    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *locker).await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "WITH l AS (SELECT id FROM t WHERE id IN (SELECT id FROM t ORDER BY id OFFSET 3000 LIMIT 50) FOR UPDATE)
         SELECT count(*) FROM l",
    )
    .fetch_one(&mut *locker)
    .await
    .unwrap();
    assert_eq!(locked, 50);

    let mut child = spawn(capped(pacer(&["run"], &policy)));
    // The rest proceeds while the lock is held, and pacer never waits for a
    // lock longer than lock_timeout.
    let mut longest_wait = 0.0f64;
    let mut rest_done = false;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let w: f64 = sqlx::query_scalar(
            "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8
               FROM pg_stat_activity WHERE application_name = 'pacer:t' AND datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        longest_wait = longest_wait.max(w);
        if counters(&pool, "t").await == (50, 5_950, 0) {
            rest_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rest_done,
        "unlocked rows were not all done while the lock was held: {:?}",
        counters(&pool, "t").await
    );
    assert!(
        longest_wait < lock_timeout_ms as f64 / 1000.0 + 0.5,
        "pacer waited {longest_wait}s for a lock (lock_timeout {lock_timeout_ms}ms)"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "pacer must keep the locked keys for later, not finish"
    );

    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());
    assert_eq!(counters(&pool, "t").await, (0, 6_000, 0));
    let lock_errors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pacer.decisions WHERE job = 't' AND causes::text LIKE '%lock_timeout%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        lock_errors > 0,
        "lock timeouts must be reported to the controller"
    );
}

/// Rows inserted behind the cursor while the job runs are caught by the
/// final sweep.
#[sqlx::test(migrations = false)]
async fn rows_inserted_behind_the_cursor_are_swept(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 10_000).await;
    let (_dir, policy) = policy(
        &url,
        &Spec {
            batch: (200, 100, 200),
            sleep_ms: 30,
            ..Spec::default()
        },
    );
    let mut child = spawn(capped(pacer(&["run"], &policy)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 2000
        })
        .await
    );
    sqlx::query("INSERT INTO t (id) SELECT -g FROM generate_series(1, 300) g")
        .execute(&pool)
        .await
        .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());
    assert_eq!(counters(&pool, "t").await, (0, 10_300, 0));
    // Pass 1's whole-table check found the inserted rows, so it walked
    // the keys; pass 2's found nothing.
    assert_eq!(stored_pass(&pool).await, 2, "a sweep pass must have run");
}

async fn stored_pass(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pass FROM pacer.jobs WHERE name = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The sweep after the first pass starts with one whole-table check; when
/// nothing is pending, that check ends the run instead of a keyset walk.
#[sqlx::test(migrations = false)]
async fn a_clean_table_is_proven_by_one_whole_table_check(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 6_000).await;
    let (_dir, policy) = policy(&url, &Spec::default());
    let out = output(pacer(&["run"], &policy)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 6_000, 0));
    let log = out.all();
    assert_eq!(
        log.matches("sweep: no row of the table is pending").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("walking the keys"), "{log}");
    // Pass 0 applied everything; the check closed pass 1 before any read.
    assert_eq!(stored_pass(&pool).await, 1, "{log}");
}

/// A whole-table check that cannot answer within its bound (here: one row
/// whose `pending` takes 3 s to evaluate once it is done, against a 2 s
/// bound) proves nothing: the sweep walks the keys as before, and the run
/// still ends with every row applied once.
#[sqlx::test(migrations = false)]
async fn a_slow_whole_table_check_falls_back_to_the_keyset_walk(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 3_000).await;
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    let pending = format!("counter = 0 OR (id = {last} AND counter = 1 AND pg_sleep(3) IS NULL)");
    let (_dir, policy) = policy(
        &url,
        &Spec {
            pending: &pending,
            ..Spec::default()
        },
    );
    let out = output(pacer(&["run"], &policy)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 3_000, 0));
    let log = out.all();
    assert!(
        log.contains("the whole-table check did not finish within its bound; walking the keys"),
        "{log}"
    );
    assert!(
        !log.contains("sweep: no row of the table is pending"),
        "{log}"
    );
    assert_eq!(stored_pass(&pool).await, 1, "{log}");
}

/// `pacer pause --reason` with a newline and an escape: stored, shown by
/// `pacer status` and logged as escapes, so it cannot forge a line.
#[sqlx::test(migrations = false)]
async fn a_pause_reason_cannot_forge_lines(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 10).await;
    let (_d, p) = policy(&url, &Spec::default());
    // A finished job, so `status` has a job row to show the switch with.
    assert_eq!(output(pacer(&["run"], &p)).await.code, Some(0));
    let forged = "sale\nINFO [t] resuming: forged\u{1b}[2J";
    let mut c = pacer(&["pause", "--reason", forged], &p);
    c.env("USER", "eve\nINFO");
    let out = output(c).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.all().contains('\u{1b}'), "{}", out.all());
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    let (by, reason): (String, String) =
        sqlx::query_as("SELECT changed_by, reason FROM pacer.control WHERE job = 't'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reason, "sale\\nINFO [t] resuming: forged\\u{1b}[2J");
    assert!(by.starts_with("eve\\nINFO"), "{by}");
    let v = status(&p).await;
    assert_eq!(v["paused_by"]["reason"], reason.as_str(), "{v}");
    let text = output(pacer(&["status"], &p)).await;
    assert!(!text.stdout.contains("\nINFO"), "{}", text.stdout);
}
