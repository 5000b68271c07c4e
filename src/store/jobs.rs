//! The jobs table: one row per job, and the progress rows of its batches.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use crate::controller::Knobs;

/// The job's row carries a newer epoch than the runner's: another runner
/// took the runner lock (and bumped it) since, so this one owns nothing
/// any more and must not write the job's row or commit a batch.
#[derive(Debug, thiserror::Error)]
#[error(
    "another pacer took over job {job:?} (its epoch moved past {epoch}, the one this runner took); \
     standing down: one runner per job"
)]
pub struct Fenced {
    pub job: String,
    pub epoch: i64,
}

impl Fenced {
    /// Whether `e` (or its cause) says the runner was fenced off.
    pub fn is(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.downcast_ref::<Fenced>().is_some())
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub name: String,
    pub fingerprint: String,
    pub settings_hash: String,
    pub table_name: String,
    pub key_column: String,
    pub pending_sql: String,
    pub update_sql: String,
    pub baselines: BTreeMap<String, f64>,
    pub state: String,
    pub pass: i32,
    pub cursor_key: Option<String>,
    pub rows_at_start: Option<i64>,
    pub knobs: Option<Knobs>,
    pub message: Option<String>,
    pub runner_pid: Option<i32>,
    pub runner_host: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a new job row starts with.
pub struct NewJob<'a> {
    pub name: &'a str,
    pub fingerprint: &'a str,
    pub settings_hash: &'a str,
    pub table_name: &'a str,
    pub key_column: &'a str,
    pub pending_sql: &'a str,
    pub update_sql: &'a str,
    pub baselines: &'a BTreeMap<String, f64>,
    pub rows_at_start: Option<i64>,
}

impl Store {
    pub async fn job(&self, conn: &mut PgConnection, name: &str) -> anyhow::Result<Option<JobRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, fingerprint, settings_hash, table_name, key_column, pending_sql, update_sql,
                    baselines, state, pass, cursor_key, rows_at_start, knobs, message, runner_pid,
                    runner_host, created_at, started_at, updated_at, finished_at
             FROM {} WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let baselines: serde_json::Value = r.try_get("baselines")?;
        let knobs: Option<serde_json::Value> = r.try_get("knobs")?;
        Ok(Some(JobRow {
            name: r.try_get("name")?,
            fingerprint: r.try_get("fingerprint")?,
            settings_hash: r.try_get("settings_hash")?,
            table_name: r.try_get("table_name")?,
            key_column: r.try_get("key_column")?,
            pending_sql: r.try_get("pending_sql")?,
            update_sql: r.try_get("update_sql")?,
            baselines: serde_json::from_value(baselines).unwrap_or_default(),
            state: r.try_get("state")?,
            pass: r.try_get("pass")?,
            cursor_key: r.try_get("cursor_key")?,
            rows_at_start: r.try_get("rows_at_start")?,
            knobs: knobs.and_then(|k| serde_json::from_value(k).ok()),
            message: r.try_get("message")?,
            runner_pid: r.try_get("runner_pid")?,
            runner_host: r.try_get("runner_host")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            updated_at: r.try_get("updated_at")?,
            finished_at: r.try_get("finished_at")?,
        }))
    }

    pub async fn create_job(&self, conn: &mut PgConnection, j: &NewJob<'_>) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (name, fingerprint, settings_hash, table_name, key_column, pending_sql,
                             update_sql, baselines, state, rows_at_start)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9)",
            self.t("jobs")
        )))
        .bind(j.name)
        .bind(j.fingerprint)
        .bind(j.settings_hash)
        .bind(j.table_name)
        .bind(j.key_column)
        .bind(j.pending_sql)
        .bind(j.update_sql)
        .bind(serde_json::to_value(j.baselines)?)
        .bind(j.rows_at_start)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Baselines of signals added to the policy after the job started
    /// (measured at resume), merged with the ones it started with.
    pub async fn set_baselines(
        &self,
        conn: &mut PgConnection,
        name: &str,
        baselines: &BTreeMap<String, f64>,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET baselines = $2, updated_at = now() WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(serde_json::to_value(baselines)?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Accept a changed `pending`/`update` (`--accept-policy-change`).
    pub async fn accept_change(
        &self,
        conn: &mut PgConnection,
        name: &str,
        fingerprint: &str,
        pending: &str,
        update: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET fingerprint = $2, pending_sql = $3, update_sql = $4, updated_at = now()
             WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(fingerprint)
        .bind(pending)
        .bind(update)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Mark the start of a run by this process.
    pub async fn mark_started(
        &self,
        conn: &mut PgConnection,
        name: &str,
        settings_hash: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = 'running', settings_hash = $2, runner_pid = $3, runner_host = $4,
                    started_at = now(), updated_at = now(), finished_at = NULL, message = NULL
             WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(settings_hash)
        .bind(std::process::id() as i32)
        .bind(hostname())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Take the job for a runner that has just acquired the runner lock:
    /// bump its epoch and return the new one. `FOR UPDATE` first, because
    /// the bump itself only takes FOR NO KEY UPDATE (the epoch is in no
    /// key), which would not wait for batches holding FOR KEY SHARE: with
    /// it, batches of an earlier epoch that already passed their check
    /// commit before the bump, and every later check sees the new epoch.
    /// `wait` bounds that wait on the server (`lock_timeout`).
    pub async fn bump_epoch(
        &self,
        conn: &mut PgConnection,
        name: &str,
        wait: std::time::Duration,
    ) -> anyhow::Result<i64> {
        use sqlx::Connection as _;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(wait.as_millis().max(1).to_string())
            .execute(&mut *tx)
            .await?;
        let epoch: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "WITH l AS (SELECT name FROM {t} WHERE name = $1 FOR UPDATE)
             UPDATE {t} j SET epoch = j.epoch + 1 FROM l WHERE j.name = l.name RETURNING j.epoch",
            t = self.t("jobs")
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        epoch.ok_or_else(|| {
            super::Fail::failed(format!("job {name:?} is missing from pacer's tables"))
        })
    }

    /// `INSERT` of a batch's progress record that writes nothing unless the
    /// job still carries the batch's epoch (`$8`). `FOR KEY SHARE` makes a
    /// concurrent `bump_epoch` wait for this transaction, and this check
    /// wait for a bump in progress (then see its new epoch); it conflicts
    /// neither with the per-tick `save_position` nor with other batches,
    /// and the foreign key takes the same lock anyway. 0 rows = fenced.
    pub fn progress_insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (job, batch_id, pass, first_key, last_key, keys, rows, epoch)
             SELECT $1, $2, $3, $4, $5, $6, $7, epoch FROM {} WHERE name = $1 AND epoch = $8 FOR KEY SHARE",
            self.t("progress"),
            self.t("jobs")
        )
    }

    /// A whole batch as one statement, which commits on its own: the
    /// policy's `update` (keys in `$1`) as a data-modifying CTE, then the
    /// batch's progress record (`$2`..`$8` as in `progress_insert_sql`)
    /// with the rows the update returned. The epoch check is the same
    /// `FOR KEY SHARE` read; when it finds nothing, `fenced()` raises
    /// (SQLSTATE PF001) and the statement fails as a whole, the update with
    /// it. `None` when the update cannot be wrapped so (a trailing `;` is
    /// dropped; `RETURNING 1` is appended on a line of its own, after any
    /// `-- comment`); the server has the last word when it is prepared.
    pub fn batch_sql(&self, update: &str) -> Option<String> {
        let update = update.trim_end().trim_end_matches(';').trim_end();
        if update.is_empty() {
            return None;
        }
        Some(format!(
            "WITH pacer_applied AS (\n{update}\nRETURNING 1\n),
             pacer_n AS (SELECT count(*) AS rows FROM pacer_applied)
             INSERT INTO {p} (job, batch_id, pass, first_key, last_key, keys, rows, epoch)
             SELECT $2::text, $3::int8, $4::int4, $5::text, $6::text, $7::int4, pacer_n.rows,
                    coalesce((SELECT epoch FROM {j} WHERE name = $2::text AND epoch = $8::int8 FOR KEY SHARE),
                             {f}($2::text, $8::int8))
             FROM pacer_n
             RETURNING rows",
            p = self.t("progress"),
            j = self.t("jobs"),
            f = self.t("fenced"),
        ))
    }

    /// Where the run is: state, pass and resume cursor, knobs. Written only
    /// while the row carries the runner's `epoch` (else `Fenced`): a runner
    /// that lost the job must not move another runner's cursor.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_position(
        &self,
        conn: &mut PgConnection,
        name: &str,
        epoch: i64,
        state: &str,
        pass: i32,
        cursor: Option<&str>,
        knobs: &Knobs,
    ) -> anyhow::Result<()> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = $2, pass = $3, cursor_key = $4, knobs = $5, updated_at = now()
             WHERE name = $1 AND epoch = $6",
            self.t("jobs")
        )))
        .bind(name)
        .bind(state)
        .bind(pass)
        .bind(cursor)
        .bind(serde_json::to_value(knobs)?)
        .bind(epoch)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        fenced_if_none(n, name, epoch)
    }

    /// A final state (`done`, `stopped`, `failed`) with its message; like
    /// `save_position`, only under the runner's `epoch`.
    pub async fn finish(
        &self,
        conn: &mut PgConnection,
        name: &str,
        epoch: i64,
        state: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = $2, message = $3, updated_at = now(),
                    finished_at = CASE WHEN $2 = 'done' THEN now() ELSE finished_at END
             WHERE name = $1 AND epoch = $4",
            self.t("jobs")
        )))
        .bind(name)
        .bind(state)
        .bind(message)
        .bind(epoch)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        fenced_if_none(n, name, epoch)
    }

    /// Rows changed by committed batches, and the next free batch id.
    pub async fn progress_totals(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> anyhow::Result<(i64, i64)> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT coalesce(sum(rows), 0)::bigint AS rows, coalesce(max(batch_id), 0)::bigint + 1 AS next
             FROM {} WHERE job = $1",
            self.t("progress")
        )))
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        Ok((r.try_get("rows")?, r.try_get("next")?))
    }

    /// Rows committed in the last `secs` seconds (for the rate).
    pub async fn recent_rows(
        &self,
        conn: &mut PgConnection,
        name: &str,
        secs: f64,
    ) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(sum(rows), 0)::bigint FROM {}
             WHERE job = $1 AND committed_at > clock_timestamp() - make_interval(secs => $2)",
            self.t("progress")
        )))
        .bind(name)
        .bind(secs)
        .fetch_one(&mut *conn)
        .await?)
    }

    /// Whether the batch with this id committed (ambiguous COMMIT lookup).
    pub async fn batch_committed(
        &self,
        conn: &mut PgConnection,
        name: &str,
        batch_id: i64,
    ) -> anyhow::Result<Option<i64>> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT rows FROM {} WHERE job = $1 AND batch_id = $2",
            self.t("progress")
        )))
        .bind(name)
        .bind(batch_id)
        .fetch_optional(&mut *conn)
        .await?)
    }
}

fn fenced_if_none(rows: u64, job: &str, epoch: i64) -> anyhow::Result<()> {
    if rows == 0 {
        return Err(Fenced {
            job: job.to_string(),
            epoch,
        }
        .into());
    }
    Ok(())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_statement_wraps_the_update() {
        let s = Store::new("pacer");
        let sql = s
            .batch_sql("UPDATE t SET x = 1 WHERE id = ANY($1) -- note\n ;  \n")
            .unwrap();
        assert!(
            sql.starts_with(
                "WITH pacer_applied AS (\nUPDATE t SET x = 1 WHERE id = ANY($1) -- note\nRETURNING 1\n)"
            ),
            "{sql}"
        );
        assert!(sql.contains("FOR KEY SHARE"), "{sql}");
        assert!(sql.contains(&s.t("fenced")), "{sql}");
        assert_eq!(s.batch_sql(" ; "), None);
    }
}
