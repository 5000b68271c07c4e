//! The jobs table: one row per job, and the progress rows of its batches.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use crate::controller::Knobs;

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

    /// Where the run is: state, pass and resume cursor, knobs.
    pub async fn save_position(
        &self,
        conn: &mut PgConnection,
        name: &str,
        state: &str,
        pass: i32,
        cursor: Option<&str>,
        knobs: &Knobs,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = $2, pass = $3, cursor_key = $4, knobs = $5, updated_at = now()
             WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(state)
        .bind(pass)
        .bind(cursor)
        .bind(serde_json::to_value(knobs)?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// A final state (`done`, `stopped`, `failed`) with its message.
    pub async fn finish(
        &self,
        conn: &mut PgConnection,
        name: &str,
        state: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = $2, message = $3, updated_at = now(),
                    finished_at = CASE WHEN $2 = 'done' THEN now() ELSE finished_at END
             WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(state)
        .bind(message)
        .execute(&mut *conn)
        .await?;
        Ok(())
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}
