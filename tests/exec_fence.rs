//! Fencing: a runner whose job epoch another runner bumped commits no
//! batch after the bump, records nothing on the job's row, and stands down
//! with exit 3; the next runner finishes the job with every row applied
//! exactly once (the update increments a counter without a guard).

mod exec_common;

use std::time::Duration;

use exec_common::*;
use sqlx::{Connection, PgConnection, PgPool};

#[sqlx::test(migrations = false)]
async fn a_runner_fenced_off_by_a_new_epoch_commits_nothing_more(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 40_000).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            workers: (4, 4, 4),
            ..Spec::default()
        },
    );
    let mut run = spawn({
        let mut c = pacer(&["run"], &p);
        c.env("PACER_POLICY__LIMITS__MAX_ROWS_PER_SECOND", "4000");
        c
    });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 2000
        })
        .await,
        "the run did not start"
    );

    // Another runner takes the job: the row locked FOR UPDATE for a moment
    // (in-flight batches that passed their check commit first, later ones
    // wait), then the epoch bumped.
    let mut other = PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let old: i64 = sqlx::query_scalar("SELECT epoch FROM pacer.jobs WHERE name = 't' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(old >= 1, "the runner took no epoch at start ({old})");
    let locked_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    sqlx::query("UPDATE pacer.jobs SET epoch = epoch + 1 WHERE name = 't'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let row_after_bump = job_row(&pool).await;

    let stdout = stood_down(&mut run, 30).await;
    assert!(
        stdout.contains("another pacer took over") && stdout.contains("standing down"),
        "{stdout}"
    );

    // Nothing committed under the old epoch once the bump had the row.
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pacer.progress WHERE job = 't' AND epoch = $1 AND committed_at >= $2",
    )
    .bind(old)
    .bind(locked_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(late, 0, "batches of the old epoch committed after the bump");
    let newer: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pacer.progress WHERE job = 't' AND epoch > $1")
            .bind(old)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(newer, 0, "the fenced runner took the new epoch");
    // Nothing recorded on the job's row either.
    let row_now = job_row(&pool).await;
    assert_eq!(
        row_now, row_after_bump,
        "the fenced runner wrote the job's row"
    );
    // What was committed is exactly what the progress records say.
    let (_, done, twice) = counters(&pool, "t").await;
    assert_eq!(twice, 0, "rows applied twice");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(rows), 0)::bigint FROM pacer.progress WHERE job = 't'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, done, "rows changed without a progress record");

    // The next runner finishes the job: no row lost, none doubled.
    let out = output(pacer(&["run"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 40_000, 0));
    let epochs: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT epoch FROM pacer.progress WHERE job = 't' AND epoch > $1 ORDER BY 1",
    )
    .bind(old)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(epochs, vec![old + 2], "the next runner's own epoch");
}

/// The job's row is fenced too: a paused runner (no batch to notice the
/// new epoch) learns it from its next save of the position, records
/// nothing, and stands down.
#[sqlx::test(migrations = false)]
async fn a_paused_runner_learns_it_was_fenced_from_its_own_save(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 30_000).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            workers: (2, 2, 2),
            ..Spec::default()
        },
    );
    let mut run = spawn(capped(pacer(&["run"], &p)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 1000
        })
        .await,
        "the run did not start"
    );
    let out = output(pacer(&["pause"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, String>("SELECT state FROM pacer.jobs WHERE name = 't'")
                .fetch_one(&pool)
                .await
                .unwrap()
                == "paused"
        })
        .await,
        "the job did not pause"
    );
    let frozen = counters(&pool, "t").await;
    let (old,): (i64,) = sqlx::query_as(
        "WITH l AS (SELECT name FROM pacer.jobs WHERE name = 't' FOR UPDATE)
         UPDATE pacer.jobs j SET epoch = j.epoch + 1 FROM l WHERE j.name = l.name RETURNING j.epoch - 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let row_after_bump = job_row(&pool).await;
    let stdout = stood_down(&mut run, 20).await;
    assert!(
        stdout.contains(&format!("its epoch moved past {old}")) && stdout.contains("standing down"),
        "{stdout}"
    );
    let row_now = job_row(&pool).await;
    assert_eq!(
        row_now, row_after_bump,
        "the fenced runner wrote the job's row"
    );
    assert_eq!(
        counters(&pool, "t").await,
        frozen,
        "rows changed after the bump"
    );
}

/// The job row's state, cursor and last write: a fenced runner must leave
/// them as they were.
async fn job_row(pool: &PgPool) -> (String, Option<String>, chrono::DateTime<chrono::Utc>) {
    sqlx::query_as("SELECT state, cursor_key, updated_at FROM pacer.jobs WHERE name = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Wait for the fenced runner to exit and return what it printed; it must
/// exit 3 within `secs` seconds.
async fn stood_down(run: &mut tokio::process::Child, secs: u64) -> String {
    let status = tokio::time::timeout(Duration::from_secs(secs), run.wait())
        .await
        .unwrap_or_else(|_| panic!("the fenced runner did not stand down within {secs} s"))
        .unwrap();
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "{stdout}");
    stdout
}
