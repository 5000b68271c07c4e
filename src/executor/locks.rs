//! Who may run a job: one runner per job (a session advisory lock on the
//! control connection), one job per table (unless `[job] share_table`),
//! and no start while an earlier run's backends still live.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;

use crate::store::{Fail, Store};

/// How long a new run waits for an earlier run's backends to go away.
pub(super) const STALE_WAIT: Duration = Duration::from_secs(15);

/// Who holds a lock that was taken when we tried but free when we looked.
pub(super) const HOLDER_UNKNOWN: &str = "holder unknown";

/// One runner per job: a session advisory lock held by the control
/// connection for the whole run (released by Postgres if the runner dies).
pub(super) async fn take_runner_lock(
    ctl: &mut PgConnection,
    store: &Store,
    job: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALE_WAIT;
    loop {
        let holder = try_runner_lock(ctl, store, job).await?;
        let Some(holder) = holder else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(Fail::failed(format!(
                "job {job:?} is already being run by another pacer ({holder}); one runner per job"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One job per table: two jobs with different names on one table would
/// each apply their update to the same rows (138,900 of 200,000 rows
/// applied twice with a non-idempotent update, measured). The lock is on
/// the root of a partition tree, so a job on a partition and one on its
/// parent exclude each other too. Held by the control connection with the
/// runner lock; `[job] share_table = true` skips it.
pub(super) async fn take_table_lock(ctl: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    match try_table_lock(ctl, table).await? {
        None => Ok(()),
        Some(holder) => Err(Fail::failed(format!(
            "table {table} is already being backfilled by another pacer job ({holder}); two jobs on one table \
             can apply their updates to the same rows: wait for it, or set [job] share_table = true if both may write it"
        ))),
    }
}

/// One attempt at the table lock: `None` when taken, else who holds it.
pub(super) async fn try_table_lock(
    ctl: &mut PgConnection,
    table: &str,
) -> anyhow::Result<Option<String>> {
    let key: String = sqlx::query_scalar(
        "SELECT 'pacer:table:' || coalesce(pg_partition_root($1::regclass), $1::regclass)::oid::text",
    )
    .bind(table)
    .fetch_one(&mut *ctl)
    .await?;
    try_advisory_lock(ctl, &key).await
}

/// One attempt at the runner lock: `None` when taken, else who holds it
/// (`pid N (application, address)`).
pub(super) async fn try_runner_lock(
    ctl: &mut PgConnection,
    store: &Store,
    job: &str,
) -> anyhow::Result<Option<String>> {
    try_advisory_lock(ctl, &format!("pacer:{}:{job}", store.schema())).await
}

/// One attempt at the session advisory lock named `key`: `None` when
/// taken, else who holds it (`pid N (application, address)`).
pub(super) async fn try_advisory_lock(
    ctl: &mut PgConnection,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1)::bigint)")
        .bind(key)
        .fetch_one(&mut *ctl)
        .await?;
    if got {
        return Ok(None);
    }
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(format('pid %s (%s, %s)', a.pid, a.application_name, a.client_addr), ', ')
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() AND l.objid = (hashtext($1)::bigint & 4294967295)::oid",
    )
    .bind(key)
    .fetch_one(&mut *ctl)
    .await
    .unwrap_or(None);
    Ok(Some(holder.unwrap_or_else(|| HOLDER_UNKNOWN.into())))
}

/// Refuse to start while backends of an earlier run still live (a killed
/// runner's transaction may still be committing); wait a little first.
pub(super) async fn wait_for_stale_backends(
    ctl: &mut PgConnection,
    app: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALE_WAIT;
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
        )
        .bind(app)
        .fetch_all(&mut *ctl)
        .await?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Fail::failed(format!(
                "backends of an earlier run of this job are still alive (application_name {app:?}, pids {pids:?}); \
                 wait for them to finish or end them with pg_terminate_backend, then run again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
