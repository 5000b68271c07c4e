//! A fleet's rows in its coordination database (`fleet_targets`).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;

/// One target as the coordination database records it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    pub target: String,
    pub cluster: Option<String>,
    pub state: String,
    pub message: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Register the fleet's targets: new ones wait, known ones keep their
    /// record (a target that ended stays ended until it runs again).
    pub async fn fleet_register(
        &self,
        conn: &mut PgConnection,
        fleet: &str,
        targets: &[(String, String)],
    ) -> anyhow::Result<()> {
        let (names, clusters): (Vec<String>, Vec<String>) = targets.iter().cloned().unzip();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS f (fleet, target, cluster, state)
             SELECT $1, t, c, 'waiting' FROM unnest($2::text[], $3::text[]) AS u(t, c)
             ON CONFLICT (fleet, target) DO UPDATE SET cluster = EXCLUDED.cluster,
                 state = CASE WHEN f.state = 'running' THEN 'stopped' ELSE f.state END,
                 updated_at = now()",
            self.t("fleet_targets")
        )))
        .bind(fleet)
        .bind(&names)
        .bind(&clusters)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Record a target's new state; `running` sets its start, an end its
    /// finish.
    pub async fn fleet_set(
        &self,
        conn: &mut PgConnection,
        fleet: &str,
        target: &str,
        state: &str,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET state = $3, message = $4,
                 started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END,
                 finished_at = CASE WHEN $3 IN ('done', 'failed', 'stopped') THEN now() ELSE NULL END,
                 updated_at = now()
             WHERE fleet = $1 AND target = $2",
            self.t("fleet_targets")
        )))
        .bind(fleet)
        .bind(target)
        .bind(state)
        .bind(message)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn fleet_rows(
        &self,
        conn: &mut PgConnection,
        fleet: &str,
    ) -> anyhow::Result<Vec<FleetRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT target, cluster, state, message, started_at, finished_at
             FROM {} WHERE fleet = $1 ORDER BY target",
            self.t("fleet_targets")
        )))
        .bind(fleet)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FleetRow {
                    target: r.try_get("target")?,
                    cluster: r.try_get("cluster")?,
                    state: r.try_get("state")?,
                    message: r.try_get("message")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            })
            .collect()
    }
}
