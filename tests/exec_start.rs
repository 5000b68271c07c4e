//! How a run starts when it is not alone: a second runner of the same job,
//! and rows other sessions hold locked at the start.

mod exec_common;

use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

/// `pacer run` of `policy` on table `t`, capped at 1500 rows/s so it
/// outlasts a second run's 15 s wait for a lock; returns once it writes.
async fn start_slow_run(pool: &PgPool, policy: &std::path::PathBuf) -> tokio::process::Child {
    let first = spawn({
        let mut c = pacer(&["run"], policy);
        c.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "1500");
        c
    });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(pool, "t").await.1 > 1000
        })
        .await,
        "the first run did not start"
    );
    first
}

/// A second `pacer run` of a running job must learn it is not the runner
/// before it touches anything: the rolled-back double-apply probe takes row
/// locks on live rows, so it must never run beside the real runner.
#[sqlx::test(migrations = false)]
async fn a_second_runner_takes_the_lock_before_probing(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 40_000).await;
    // Statements run by pacer's control connection (the probe's updates)
    // bump a sequence, which a rollback does not undo.
    sqlx::raw_sql(
        "CREATE SEQUENCE probe_seen;
         CREATE FUNCTION probe_seen() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF current_setting('application_name') = 'pacer:t:control' THEN PERFORM nextval('probe_seen'); END IF; RETURN NULL; END $$;
         CREATE TRIGGER probe_seen AFTER UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION probe_seen();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            sleep_ms: 20,
            ..Spec::default()
        },
    );
    let mut first = start_slow_run(&pool, &p).await;
    let seen = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM probe_seen",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let probes_before = seen().await;
    assert!(probes_before > 0, "the first runner's probe was not seen");

    let (_d2, p2) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            ..Spec::default()
        },
    );
    let out = output(pacer(&["run"], &p2)).await;
    assert_eq!(out.code, Some(3), "{}", out.all());
    assert!(
        out.all().contains("already being run by another pacer"),
        "{}",
        out.all()
    );
    assert_eq!(
        seen().await,
        probes_before,
        "the second runner probed live rows before learning it was not the runner"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first runner must carry on"
    );
    let st = tokio::time::timeout(Duration::from_secs(60), first.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());
    assert_eq!(counters(&pool, "t").await, (0, 40_000, 0));
}

/// Rows locked by a live session when the job starts are traffic, not bad
/// input: `check` and `run` probe the rows they can lock, never exit 2.
#[sqlx::test(migrations = false)]
async fn rows_locked_at_start_are_not_invalid_input(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 5_000).await;
    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *locker).await.unwrap();
    sqlx::query("SELECT id FROM t ORDER BY id LIMIT 100 FOR UPDATE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let guarded = Spec {
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0",
        lock_timeout_ms: 300,
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &guarded);
    let t0 = std::time::Instant::now();
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("update is idempotent"),
        "{}",
        out.stdout
    );

    // Every key of the first batch locked: the probe is skipped, with a warning.
    let (_d, p_small) = policy(
        &url,
        &Spec {
            batch: (100, 50, 200),
            ..guarded
        },
    );
    let out = output(pacer(&["check"], &p_small)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("idempotency not tested: all 100 keys"),
        "{}",
        out.stdout
    );
    let checks = t0.elapsed();

    let mut run = spawn(capped(pacer(&["run"], &p)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await == (100, 4_900, 0)
        })
        .await,
        "the free rows were not done while 100 were locked: {:?}",
        counters(&pool, "t").await
    );
    assert!(run.try_wait().unwrap().is_none(), "run ended early");
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());
    assert_eq!(counters(&pool, "t").await, (0, 5_000, 0));
    eprintln!("two checks with locked rows took {checks:?}");
}

/// Two jobs with different names on one table would both apply their
/// update to the same rows: the second is refused at start, before it
/// writes anything, unless the policy says `[job] share_table = true`.
#[sqlx::test(migrations = false)]
async fn a_second_job_on_the_same_table_is_refused(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 40_000).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            job: "first",
            batch: (200, 100, 300),
            ..Spec::default()
        },
    );
    let mut first = start_slow_run(&pool, &p).await;
    let (_d2, p2) = policy(
        &url,
        &Spec {
            job: "second",
            batch: (200, 100, 300),
            ..Spec::default()
        },
    );
    let out = output(pacer(&["run"], &p2)).await;
    assert_eq!(out.code, Some(3), "{}", out.all());
    assert!(
        out.all()
            .contains("is already being backfilled by another pacer job")
            && out.all().contains("share_table"),
        "{}",
        out.all()
    );
    // Nothing applied twice: the second job never wrote.
    assert_eq!(counters(&pool, "t").await.2, 0);

    // Said on purpose, both may run (a guarded update keeps it exactly once).
    let guarded = Spec {
        job: "second",
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0",
        ..Spec::default()
    };
    let (_d3, p3) = policy(&url, &guarded);
    let out = output({
        let mut c = pacer(&["run"], &p3);
        c.env("PACER_POLICY__JOB__SHARE_TABLE", "true");
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let _ = first.kill().await;
    assert_eq!(
        counters(&pool, "t").await.0,
        0,
        "the shared run finished the table"
    );
}

/// A new job counts its pending rows exactly, in chunks of the key index,
/// not with one `count(*)` that scans the whole table before the first
/// batch: the rows already done are not counted, and the table has seen
/// no sequential scan by the time the first batch commits.
#[sqlx::test(migrations = false)]
async fn a_new_job_counts_its_pending_rows_exactly(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 100_000).await;
    // The test's own scans, in a session that ends (and so reports its
    // statistics) before the run: counted later, they would be the run's.
    let pending: i64 = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE t SET counter = 1 WHERE id % 7 = 0")
            .execute(&mut c)
            .await
            .unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM t WHERE counter = 0")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        n
    };
    assert!(pending > 50_000 && pending < 100_000, "{pending}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            read_chunk: 2000,
            ..Spec::default()
        },
    );
    // Up to the first batch's commit, where the process dies: the count,
    // and not the final sweep, is what has read the table by then.
    let seq_read = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relid = 't'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = seq_read().await;
    let mut first = pacer(&["run"], &p);
    first.env("PACER_FAILPOINT", "before_commit:1");
    let died = output(first).await;
    assert_ne!(died.code, Some(0), "{}", died.all());
    assert!(
        died.stderr
            .contains(&format!("pending={pending} exact=true")),
        "{}",
        died.stderr
    );
    // A session's statistics reach the views when it ends.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = seq_read().await - before;
    assert_eq!(
        read, 0,
        "rows read by sequential scans before the first commit"
    );
    let run = output(pacer(&["run"], &p)).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let s = output(pacer(&["status", "--json"], &p)).await;
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["rows_at_start"], pending, "{}", s.stdout);
}
