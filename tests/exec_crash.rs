//! Exactly-once under crashes: `pacer run` is killed at seeded moments
//! (SIGKILL at a random instant, or a failpoint just before, inside or just
//! after COMMIT), resumed each time, and at the end every row's counter,
//! which the update increments, is exactly 1 and `pacer verify` passes.

mod exec_common;

use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

/// Make every batch's COMMIT take a while (a deferred trigger on pacer's
/// progress table), so a kill "inside COMMIT" lands while the server commits.
async fn slow_commits(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    pacer::store::Store::new("pacer")
        .migrate(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON pacer.progress
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit();",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

async fn crash_scenario(pool: PgPool, workers: u32, seed: u64) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 100_000).await;
    slow_commits(&pool).await;
    let (_dir, policy) = policy(
        &url,
        &Spec {
            batch: (500, 100, 800),
            workers: (workers, 1, workers),
            ..Spec::default()
        },
    );
    let mut rng = Rng(seed);
    let mut crashes = 0;
    for i in 0..12 {
        let mut cmd = pacer(&["run"], &policy);
        // A rate cap (the governor) keeps the job long enough for twelve
        // crashes before the end; the final run goes uncapped.
        cmd.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "4000");
        let mode = i % 4;
        let n = 1 + rng.below(6);
        match mode {
            1 => {
                cmd.env("PACER_FAILPOINT", format!("before_commit:{n}"));
            }
            2 => {
                cmd.env("PACER_FAILPOINT", format!("in_commit:{n}"))
                    .env("PACER_FAILPOINT_DELAY_MS", "5");
            }
            3 => {
                cmd.env("PACER_FAILPOINT", format!("after_commit:{n}"));
            }
            _ => {}
        }
        let mut child = spawn(cmd);
        let status = if mode == 0 {
            let delay = Duration::from_millis(300 + rng.below(1200));
            match tokio::time::timeout(delay, child.wait()).await {
                Ok(s) => s.unwrap(),
                Err(_) => {
                    child.start_kill().unwrap();
                    child.wait().await.unwrap()
                }
            }
        } else {
            tokio::time::timeout(Duration::from_secs(60), child.wait())
                .await
                .expect("failpoint run did not end")
                .unwrap()
        };
        if !status.success() {
            crashes += 1;
        }
        let (_, _, twice) = counters(&pool, "t").await;
        assert_eq!(
            twice, 0,
            "crash {i} (mode {mode}): some rows were updated twice"
        );
    }
    assert!(
        crashes >= 10,
        "only {crashes} of 12 runs died before the end; the test did not test much"
    );
    let (left, _, _) = counters(&pool, "t").await;
    assert!(
        left > 0,
        "the job finished during the crash phase; make it longer"
    );

    let out = output(pacer(&["run"], &policy)).await;
    assert_eq!(out.code, Some(0), "final run failed:\n{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 100_000, 0));
    let v = output(pacer(&["verify", "--json"], &policy)).await;
    assert_eq!(v.code, Some(0), "verify:\n{}", v.all());
    let j: serde_json::Value = serde_json::from_str(v.stdout.trim()).unwrap();
    assert_eq!(j["rows_pending"], 0);
    assert_eq!(
        j["rows_done_by_pacer"], 100_000,
        "progress records must count every row exactly once"
    );
}

#[sqlx::test(migrations = false)]
async fn exactly_once_under_crashes_one_worker(pool: PgPool) {
    crash_scenario(pool, 1, 0x5eed_0001).await;
}

#[sqlx::test(migrations = false)]
async fn exactly_once_under_crashes_four_workers(pool: PgPool) {
    crash_scenario(pool, 4, 0x5eed_0004).await;
}

/// A connection lost during COMMIT is ambiguous: pacer must look the
/// batch's progress record up. `lose_commit` drops the answer of a COMMIT
/// that succeeded (must not re-apply); `terminate_in_commit` kills the
/// writer's backend while it commits (must retry).
#[sqlx::test(migrations = false)]
async fn ambiguous_commits_are_resolved_by_the_progress_record(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 20_000).await;
    slow_commits(&pool).await;
    let (_dir, policy) = policy(
        &url,
        &Spec {
            batch: (500, 100, 1000),
            ..Spec::default()
        },
    );
    let mut cmd = pacer(&["run"], &policy);
    cmd.env(
        "PACER_FAILPOINT",
        "lose_commit:2,terminate_in_commit:4,lose_commit:6",
    )
    .env("PACER_FAILPOINT_DELAY_MS", "5");
    let out = output(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr
            .contains("the batch had committed; not applying it again"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("the batch had not committed; retrying it"),
        "{}",
        out.stderr
    );
    assert_eq!(counters(&pool, "t").await, (0, 20_000, 0));
}
