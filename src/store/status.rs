//! A job's status as `pacer status --json` prints it and `GET /status`
//! serves it: one function for both, so the API and the CLI cannot drift
//! apart. Reads only pacer's tables (and `pg_stat_activity` to tell a live
//! runner from a dead one).

use serde_json::json;

use super::{Fail, Store, database_url, runner_app_name};
use crate::policy::Policy;

/// The JSON `pacer status --json` prints for a job that never started.
pub fn not_started(policy: &Policy) -> serde_json::Value {
    json!({"job": policy.job.name, "state": null, "message": "job has not started"})
}

/// Exactly what `pacer status --json` prints, started or not: `GET /status`
/// serves this, so the API and the CLI cannot drift apart.
pub async fn status_json(policy: &Policy) -> anyhow::Result<serde_json::Value> {
    Ok(status(policy).await?.unwrap_or_else(|| not_started(policy)))
}

/// The job's status as JSON; `None` when the job never started. Reads only
/// pacer's tables: rows left is the count taken at start minus rows done.
pub async fn status(policy: &Policy) -> anyhow::Result<Option<serde_json::Value>> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    let mut conn = super::connect(&url, "pacer-cli").await?;
    let store = Store::for_policy(policy);
    if !store.exists(&mut conn).await? {
        return Ok(None);
    }
    let job = &policy.job.name;
    let Some(row) = store.job(&mut conn, job).await? else {
        return Ok(None);
    };
    let (rows_done, _) = store.progress_totals(&mut conn, job).await?;
    let recent = store.recent_rows(&mut conn, job, 60.0).await?;
    let alive: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database())",
    )
    .bind(runner_app_name(job))
    .fetch_one(&mut conn)
    .await?;
    let mut state = row.state.clone();
    let mut note = row.message.clone();
    if !alive && matches!(state.as_str(), "running" | "slowing" | "paused") {
        state = "stopped".into();
        note = Some(
            "no runner is alive (the last one died without recording a stop); `pacer run` resumes"
                .into(),
        );
    }
    let rows_pending = row.rows_at_start.map(|n| (n - rows_done).max(0));
    let rate = if alive { recent as f64 / 60.0 } else { 0.0 };
    let eta = match (rows_pending, rate > 0.0) {
        (Some(p), true) => Some((p as f64 / rate).round() as i64),
        _ => None,
    };
    let last = store.decisions(&mut conn, job, 1).await?.into_iter().next();
    let switch = store.switch(&mut conn, job).await?;
    // The estimates and target rate of the last tick, beside its raw
    // readings: what the last decision judged.
    let controller = store.last_view(&mut conn, job).await?;
    // Who holds the job's lease and for how long yet (negative: expired,
    // a standby takes over `takeover_after` later); null once released.
    // Tables of an older pacer have no lease: null too.
    let lease = store
        .lease(&mut conn, job)
        .await
        .ok()
        .flatten()
        .and_then(|l| {
            l.expired_for.map(
                |e| json!({"holder": l.holder, "expires_in_seconds": (-e * 10.0).round() / 10.0}),
            )
        });
    let paused_by = switch
        .filter(|s| s.paused)
        .map(|s| json!({"by": s.by, "reason": s.reason, "at": s.at}));
    Ok(Some(json!({
        "job": job,
        "state": state,
        "rows_done": rows_done,
        "rows_pending": rows_pending,
        "rows_at_start": row.rows_at_start,
        "rows_per_second": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta,
        "knobs": row.knobs,
        "last_decision": last,
        "controller": controller,
        "paused_by": paused_by,
        "lease": lease,
        "pass": row.pass,
        "cursor": row.cursor_key,
        "message": note,
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
    })))
}
