//! Decision history: every decision that changed something, with causes.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use crate::controller::Decision;

/// A stored decision, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredDecision {
    pub at: chrono::DateTime<chrono::Utc>,
    pub state: String,
    pub action: String,
    pub before: serde_json::Value,
    pub knobs: serde_json::Value,
    pub causes: serde_json::Value,
    pub summary: String,
}

impl Store {
    pub async fn record_decision(
        &self,
        conn: &mut PgConnection,
        job: &str,
        d: &Decision,
    ) -> anyhow::Result<()> {
        let action = serde_json::to_value(d.action)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (job, at, state, action, before, knobs, causes, summary)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.t("decisions")
        )))
        .bind(job)
        .bind(d.at)
        .bind(d.state.as_str())
        .bind(action.as_str().unwrap_or("hold"))
        .bind(serde_json::to_value(d.before)?)
        .bind(serde_json::to_value(d.knobs)?)
        .bind(serde_json::to_value(&d.causes)?)
        .bind(d.summary())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn decisions(
        &self,
        conn: &mut PgConnection,
        job: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredDecision>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT at, state, action, before, knobs, causes, summary FROM {}
             WHERE job = $1 ORDER BY id DESC LIMIT $2",
            self.t("decisions")
        )))
        .bind(job)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredDecision {
                    at: r.try_get("at")?,
                    state: r.try_get("state")?,
                    action: r.try_get("action")?,
                    before: r.try_get("before")?,
                    knobs: r.try_get("knobs")?,
                    causes: r.try_get("causes")?,
                    summary: r.try_get("summary")?,
                })
            })
            .collect()
    }
}
