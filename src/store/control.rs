//! The pause switch: one row per job, flipped by `pacer pause`/`resume`
//! and read by the runner every tick.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::{Fail, Store, database_url};
use crate::policy::Policy;
use crate::text::operator_text;

/// Longest pause reason kept, in characters: a sentence, not a document.
pub const MAX_REASON: usize = 500;
/// Longest `changed_by` kept, in characters.
pub const MAX_BY: usize = 100;

/// Who and why as they may be stored and shown: the pause switch's text
/// goes to every log line of a paused job, to `/status` and to reports, so
/// a newline in it could forge a log line and an escape could repaint the
/// operator's terminal. Applied on write and again on read (rows written by
/// an older pacer or by hand).
pub fn clean(by: &str, reason: &str) -> (String, String) {
    (operator_text(by, MAX_BY), operator_text(reason, MAX_REASON))
}

#[derive(Debug, Clone)]
pub struct Switch {
    pub paused: bool,
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Store {
    pub async fn set_paused(
        &self,
        conn: &mut PgConnection,
        job: &str,
        paused: bool,
        by: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let (by, reason) = clean(by, reason);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (job, paused, changed_by, reason, changed_at) VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (job) DO UPDATE SET paused = EXCLUDED.paused, changed_by = EXCLUDED.changed_by,
                 reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at",
            self.t("control")
        )))
        .bind(job)
        .bind(paused)
        .bind(by)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn switch(
        &self,
        conn: &mut PgConnection,
        job: &str,
    ) -> anyhow::Result<Option<Switch>> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT paused, changed_by, reason, changed_at FROM {} WHERE job = $1",
            self.t("control")
        )))
        .bind(job)
        .fetch_optional(&mut *conn)
        .await?;
        r.map(|r| {
            let by: String = r.try_get("changed_by")?;
            let reason: String = r.try_get("reason")?;
            let (by, reason) = clean(&by, &reason);
            Ok(Switch {
                paused: r.try_get("paused")?,
                by,
                reason,
                at: r.try_get("changed_at")?,
            })
        })
        .transpose()
    }
}

/// Who is flipping the switch: `user@host`, from the environment.
pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let who = if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    };
    operator_text(&who, MAX_BY)
}

/// Flip the pause switch as `by`; `pacer pause`/`resume` and `POST
/// /pause`/`/resume` all go through here so they act the same.
pub async fn set_switch(
    policy: &Policy,
    paused: bool,
    by: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    set_switch_at(
        &url,
        &Store::for_policy(policy),
        &policy.job.name,
        paused,
        by,
        reason,
    )
    .await
}

/// Flip `job`'s switch in pacer's tables of the database at `url` (a
/// fleet's switch lives in its coordination database).
pub async fn set_switch_at(
    url: &str,
    store: &Store,
    job: &str,
    paused: bool,
    by: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let mut conn = super::connect(url, "pacer-cli").await?;
    store.migrate(&mut conn).await?;
    store.set_paused(&mut conn, job, paused, by, reason).await?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(())
}
