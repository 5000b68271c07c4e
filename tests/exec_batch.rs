//! The one-statement batch (`Store::batch_sql`), on the server itself: the
//! policy's update and the batch's progress record in a single statement
//! that is its own transaction. Exactly-once rests on both committing
//! together or not at all, fencing on a stale epoch writing nothing, also
//! when the epoch moves while the statement runs (its snapshot is older
//! than the check's lock), and on a runner's check making a new runner's
//! epoch bump wait.

mod exec_common;

use std::collections::BTreeMap;
use std::time::Duration;

use exec_common::*;
use pacer::store::Store;
use pacer::store::jobs::NewJob;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

const UPDATE: &str = "UPDATE public.t SET counter = counter + 1 WHERE id = ANY($1) -- a comment\n;";

async fn setup(pool: &PgPool) -> (String, Store, String) {
    let url = url_of(pool).await;
    counter_table(pool, "t", 100).await;
    let store = Store::new("pacer");
    let mut c = PgConnection::connect(&url).await.unwrap();
    store.migrate(&mut c).await.unwrap();
    store
        .create_job(
            &mut c,
            &NewJob {
                name: "t",
                fingerprint: "f",
                settings_hash: "s",
                table_name: "public.t",
                key_column: "id",
                pending_sql: "counter = 0",
                update_sql: UPDATE,
                baselines: &BTreeMap::new(),
                rows_at_start: None,
            },
        )
        .await
        .unwrap();
    sqlx::query("UPDATE pacer.jobs SET epoch = 5 WHERE name = 't'")
        .execute(&mut c)
        .await
        .unwrap();
    let sql = store.batch_sql(UPDATE).expect("the update can be wrapped");
    (url, store, sql)
}

async fn run_batch(
    c: &mut PgConnection,
    sql: &str,
    keys: &[i64],
    batch_id: i64,
    epoch: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .bind(keys.to_vec())
        .bind("t")
        .bind(batch_id)
        .bind(1i32)
        .bind(keys[0].to_string())
        .bind(keys[keys.len() - 1].to_string())
        .bind(keys.len() as i32)
        .bind(epoch)
        .fetch_one(&mut *c)
        .await
}

async fn keys(pool: &PgPool, n: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM t ORDER BY id LIMIT $1")
        .bind(n)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn progress_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pacer.progress WHERE job = 't'")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn code(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}

/// Batch 1 under epoch 5 on a worker connection of its own, running in
/// the background (so the test can watch it wait); its backend pid.
async fn spawn_batch(
    url: &str,
    sql: &str,
    ks: &[i64],
) -> (tokio::task::JoinHandle<Result<i64, sqlx::Error>>, i32) {
    let mut w = PgConnection::connect(url).await.unwrap();
    let wpid = pid(&mut w).await;
    let (sql, ks) = (sql.to_string(), ks.to_vec());
    let batch = tokio::spawn(async move { run_batch(&mut w, &sql, &ks, 1, 5).await });
    (batch, wpid)
}

async fn wait_for_lock_wait(pool: &PgPool, pid: i32) {
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(pid)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(false)
        })
        .await,
        "the batch never waited on the lock"
    );
}

async fn pid(c: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *c)
        .await
        .unwrap()
}

/// What `Store::bump_epoch` does: FOR UPDATE, then the bump.
async fn bump(c: &mut PgConnection) {
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM pacer.jobs WHERE name = 't' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE pacer.jobs SET epoch = epoch + 1 WHERE name = 't'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn one_statement_applies_and_records_or_is_fenced_and_writes_nothing(pool: PgPool) {
    let (url, _store, sql) = setup(&pool).await;
    let mut c = PgConnection::connect(&url).await.unwrap();
    let ks = keys(&pool, 10).await;

    // A stale epoch: the statement fails as a whole with PF001.
    let e = run_batch(&mut c, &sql, &ks, 1, 4).await.unwrap_err();
    assert_eq!(code(&e), "PF001", "{e}");
    assert_eq!(
        counters(&pool, "t").await,
        (100, 0, 0),
        "the fenced batch wrote rows"
    );
    assert_eq!(progress_rows(&pool).await, 0);

    // The runner's epoch: applied and recorded, committed on its own (the
    // pool's connections see both).
    let rows = run_batch(&mut c, &sql, &ks, 1, 5).await.unwrap();
    assert_eq!(rows, 10);
    assert_eq!(counters(&pool, "t").await, (90, 10, 0));
    let (recorded, epoch): (i64, Option<i64>) =
        sqlx::query_as("SELECT rows, epoch FROM pacer.progress WHERE job = 't' AND batch_id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((recorded, epoch), (10, Some(5)));

    // Applying the same batch id again fails as a whole: no second update.
    let e = run_batch(&mut c, &sql, &ks, 1, 5).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    assert_eq!(counters(&pool, "t").await, (90, 10, 0));
}

/// The statement's snapshot is taken before its update runs, the epoch
/// check locks the job's row after it: a bump (and a position save before
/// it) committed in between must still fence the batch off.
#[sqlx::test(migrations = false)]
async fn a_bump_committed_while_the_batch_runs_fences_it(pool: PgPool) {
    let (url, _store, sql) = setup(&pool).await;
    let ks = keys(&pool, 10).await;
    // Live traffic holds one of the batch's rows.
    let mut live = PgConnection::connect(&url).await.unwrap();
    let mut live_tx = live.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM t WHERE id = $1 FOR UPDATE")
        .bind(ks[5])
        .execute(&mut *live_tx)
        .await
        .unwrap();

    let (batch, wpid) = spawn_batch(&url, &sql, &ks).await;
    wait_for_lock_wait(&pool, wpid).await;

    // The old runner saves its position (no key update), then another
    // runner takes the job; both commit while the batch waits.
    let mut other = PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE pacer.jobs SET state = 'running', updated_at = now() WHERE name = 't' AND epoch = 5")
        .execute(&mut other)
        .await
        .unwrap();
    bump(&mut other).await;
    live_tx.rollback().await.unwrap();

    let e = batch.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "PF001", "{e}");
    assert_eq!(
        counters(&pool, "t").await,
        (100, 0, 0),
        "the fenced batch wrote rows"
    );
    assert_eq!(progress_rows(&pool).await, 0);
}

/// A bump in progress (the row held FOR UPDATE) makes the batch's check
/// wait, then fail; a batch that passed its check makes a bump wait.
#[sqlx::test(migrations = false)]
async fn the_check_and_a_bump_wait_for_each_other(pool: PgPool) {
    let (url, _store, sql) = setup(&pool).await;
    let ks = keys(&pool, 10).await;

    let mut other = PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM pacer.jobs WHERE name = 't' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (batch, wpid) = spawn_batch(&url, &sql, &ks).await;
    wait_for_lock_wait(&pool, wpid).await;
    sqlx::query("UPDATE pacer.jobs SET epoch = epoch + 1 WHERE name = 't'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let e = batch.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "PF001", "{e}");
    assert_eq!(counters(&pool, "t").await, (100, 0, 0));
    assert_eq!(progress_rows(&pool).await, 0);

    // Epoch 6 now. A batch that has passed its check, its transaction not
    // yet ended (a lock-free retry runs it inside BEGIN ... COMMIT):
    let mut w = PgConnection::connect(&url).await.unwrap();
    let mut wtx = w.begin().await.unwrap();
    let rows = run_batch(&mut wtx, &sql, &ks, 2, 6).await.unwrap();
    assert_eq!(rows, 10);
    sqlx::query("SET lock_timeout = '300ms'")
        .execute(&mut other)
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    let e = sqlx::query("SELECT 1 FROM pacer.jobs WHERE name = 't' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        "55P03",
        "the bump did not wait for the batch: {e}"
    );
    tx.rollback().await.unwrap();
    wtx.commit().await.unwrap();
    bump(&mut other).await;
    assert_eq!(counters(&pool, "t").await, (90, 10, 0));
    assert_eq!(progress_rows(&pool).await, 1);
}

/// The batch's backend dies after its update, before its progress record
/// is written (a trigger holds the statement there): nothing of the batch
/// survives. There is no moment between two statements of a batch where a
/// crash could leave the update without its record.
#[sqlx::test(migrations = false)]
async fn a_batch_killed_after_its_update_leaves_nothing(pool: PgPool) {
    let (url, _store, sql) = setup(&pool).await;
    let ks = keys(&pool, 10).await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.stall() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
         CREATE TRIGGER stall BEFORE INSERT ON pacer.progress
           FOR EACH ROW EXECUTE FUNCTION public.stall();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (batch, wpid) = spawn_batch(&url, &sql, &ks).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(wait_event = 'PgSleep', false) FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(wpid)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .unwrap_or(false)
        })
        .await,
        "the batch never reached its progress record"
    );
    // The update is done (its rows are locked) and uncommitted.
    let free: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM t WHERE id = ANY($1) FOR UPDATE SKIP LOCKED) s",
    )
    .bind(ks.clone())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(free, 0, "the update had not run yet");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(wpid)
        .execute(&pool)
        .await
        .unwrap();
    assert!(batch.await.unwrap().is_err());
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            )
            .bind(wpid)
            .fetch_one(&pool)
            .await
            .unwrap()
        })
        .await
    );
    assert_eq!(
        counters(&pool, "t").await,
        (100, 0, 0),
        "the update survived without its record"
    );
    assert_eq!(progress_rows(&pool).await, 0);
}
