//! The job's lease: how a standby on another host knows the active runner
//! is alive. A session ending is no such sign — a frozen or partitioned
//! runner's session lives on for hours while the kernel answers keepalives
//! — so the active runner renews `jobs.lease_until` every tick, and a
//! standby takes over once it has been expired for `[job] takeover_after`.
//! Every time is the server's `now()`: hosts' clocks never enter.

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;

/// The lease as a standby sees it, with what it must match to take over.
#[derive(Debug, Clone)]
pub struct Lease {
    /// `host:pid:nonce` of the runner that holds or last held it.
    pub holder: Option<String>,
    /// Seconds since the lease expired (negative: still valid); `None`
    /// when it was released or never taken.
    pub expired_for: Option<f64>,
    pub fingerprint: String,
    pub settings_hash: String,
    pub state: String,
    pub epoch: i64,
}

/// This process's name in `jobs.lease_holder`: host and pid for people,
/// plus a nonce, since a restarted container can have the same host name
/// and pid as the process it replaces.
pub fn runner_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        format!(
            "{}:{}:{nonce:08x}",
            super::jobs::hostname(),
            std::process::id()
        )
    })
}

/// `idle_session_timeout` for the active runner's control session: it is
/// used every tick, so a session idle for a whole lease belongs to a runner
/// that is frozen or cut off, and the server ends it (releasing the runner
/// lock) without waiting for TCP to notice. Postgres 14+; an older server
/// only lacks this safety net (a standby still ends the session).
pub async fn arm_idle_timeout(conn: &mut PgConnection, lease: Duration) {
    let r = sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
        .bind(lease.as_millis().max(1).to_string())
        .execute(&mut *conn)
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "idle_session_timeout not set (Postgres older than 14?)");
    }
}

impl Store {
    /// Renew the lease for `lease` from now, only while the job carries the
    /// runner's `epoch` (else `Fenced`): a runner that lost the job must
    /// not look alive to a standby.
    pub async fn renew_lease(
        &self,
        conn: &mut PgConnection,
        name: &str,
        epoch: i64,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET lease_until = now() + make_interval(secs => $3), lease_holder = $4
             WHERE name = $1 AND epoch = $2",
            self.t("jobs")
        )))
        .bind(name)
        .bind(epoch)
        .bind(lease.as_secs_f64())
        .bind(runner_id())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(super::jobs::Fenced {
                job: name.to_string(),
                epoch,
            }
            .into());
        }
        Ok(())
    }

    /// Claim the lease right after taking the runner lock, before the
    /// epoch is bumped (migrations, the probe): another standby must see
    /// the job taken meanwhile, not the expired lease of the runner this
    /// one replaces. No epoch check: the runner lock is the right to it.
    /// A job without a row yet has no lease to claim.
    pub async fn claim_lease(
        &self,
        conn: &mut PgConnection,
        name: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET lease_until = now() + make_interval(secs => $2), lease_holder = $3
             WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .bind(lease.as_secs_f64())
        .bind(runner_id())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// At the end of a run: a standby may take over at once. The holder
    /// stays, so a runner of the same job that wakes up later sees it was
    /// not the last one.
    pub async fn release_lease(
        &self,
        conn: &mut PgConnection,
        name: &str,
        epoch: i64,
    ) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET lease_until = NULL WHERE name = $1 AND epoch = $2 AND lease_holder = $3",
            self.t("jobs")
        )))
        .bind(name)
        .bind(epoch)
        .bind(runner_id())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The job's lease, or `None` when the job has no row.
    pub async fn lease(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> anyhow::Result<Option<Lease>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT lease_holder, extract(epoch FROM now() - lease_until)::float8 AS expired_for,
                    fingerprint, settings_hash, state, epoch
               FROM {} WHERE name = $1",
            self.t("jobs")
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Lease {
            holder: r.try_get("lease_holder")?,
            expired_for: r.try_get("expired_for")?,
            fingerprint: r.try_get("fingerprint")?,
            settings_hash: r.try_get("settings_hash")?,
            state: r.try_get("state")?,
            epoch: r.try_get("epoch")?,
        }))
    }

    /// The newest migration applied to pacer's tables (`None`: none yet).
    pub async fn applied_schema_version(
        &self,
        conn: &mut PgConnection,
    ) -> anyhow::Result<Option<i64>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.t("_sqlx_migrations"))
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(version) FROM {} WHERE success",
            self.t("_sqlx_migrations")
        )))
        .fetch_one(&mut *conn)
        .await?)
    }
}
