//! A stalled pacer (SIGSTOP, a hung host) must not hold row locks that
//! live traffic waits on for longer than the server's idle-in-transaction
//! timeout plus `statement_timeout`. A batch is one statement that commits
//! on its own, so a frozen pacer is never even inside a transaction: the
//! statement it had sent finishes on the server, and its locks go with it.

mod exec_common;

use std::time::{Duration, Instant};

use exec_common::*;
use sqlx::PgPool;

fn signal(pid: u32, sig: &str) {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_stopped_pacer_loses_its_row_locks(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 150_000).await;
    let statement_timeout_ms = 3000;
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (500, 100, 500),
            statement_timeout_ms,
            ..Spec::default()
        },
    );
    let mut child = spawn(pacer(&["run"], &p));
    let pid = child.id().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 2000
        })
        .await
    );
    // Freeze pacer at many moments: never is one of its workers found
    // inside a transaction (idle in transaction, holding row locks).
    for _ in 0..30 {
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pacer:t' AND datname = current_database() AND state = 'idle in transaction'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "a frozen pacer sat inside a batch transaction");
        signal(pid, "-CONT");
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    signal(pid, "-STOP");
    let stopped = Instant::now();
    // With one worker, the lowest pending key is in the frozen batch.
    let key: i64 = sqlx::query_scalar("SELECT min(id) FROM t WHERE counter = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut live = pool.acquire().await.unwrap();
    sqlx::query("SET statement_timeout = '15s'")
        .execute(&mut *live)
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = sqlx::query("UPDATE t SET pad = 'live' WHERE id = $1")
        .bind(key)
        .execute(&mut *live)
        .await;
    let waited = t0.elapsed();
    assert!(r.is_ok(), "the live update failed: {r:?}");
    let bound = Duration::from_millis(2000 + statement_timeout_ms + 1000);
    assert!(
        waited <= bound,
        "a live session waited {waited:?} on a frozen pacer (bound {bound:?})"
    );
    // Keep pacer frozen a while longer, then let it carry on.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
    signal(pid, "-CONT");
    let st = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("pacer did not finish after SIGCONT")
        .unwrap();
    assert!(st.success());
    assert_eq!(counters(&pool, "t").await, (0, 150_000, 0));
    eprintln!("live session waited {waited:?} on a frozen pacer");
}
