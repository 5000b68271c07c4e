//! `pacer status` of a whole fleet: the coordination database's record of
//! every target, the fleet's pause, and the progress of the targets that
//! run (read from their own databases, each bounded in time).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::coord::HELD_SQL;
use crate::policy::Policy;
use crate::store::{Fail, Store};

/// How long the status of one running target may take to read.
const TARGET_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet's status as JSON; `None` before its first run.
pub async fn status(policy: &Policy, policy_path: &Path) -> anyhow::Result<Option<Value>> {
    let fleet = &policy.job.name;
    let Some(url) = policy
        .fleet
        .as_ref()
        .and_then(|f| f.coordination_url.clone())
    else {
        return Err(Fail::invalid(
            "this fleet has no fleet.coordination_url, so no fleet record: ask for its target with --target NAME",
        ));
    };
    let targets = super::resolve_targets(policy, policy_path).await?;
    let store = Store::for_policy(policy);
    let mut c = crate::store::connect(&url, "pacer-cli")
        .await
        .map_err(|e| Fail::failed(format!("fleet.coordination_url: {e:#}")))?;
    if !store.exists(&mut c).await? {
        return Ok(None);
    }
    let rows = store.fleet_rows(&mut c, fleet).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let switch = store.switch(&mut c, fleet).await?;
    // Whether a fleet runner holds the fleet's lock, read from pg_locks
    // (taking the lock to test it could turn a starting runner away).
    let alive: bool = sqlx::query_scalar(HELD_SQL)
        .bind(fleet)
        .fetch_one(&mut c)
        .await?;
    let _ = sqlx::Connection::close(c).await;

    let mut out = Vec::new();
    let mut count = std::collections::BTreeMap::<String, u64>::new();
    let mut etas = Vec::new();
    let mut eta_known = true;
    let mut paused = 0u64;
    for r in &rows {
        *count.entry(r.state.clone()).or_default() += 1;
        let mut v = json!({
            "target": r.target,
            "cluster": r.cluster.as_deref().map(super::short),
            "state": r.state,
            "message": r.message,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
        });
        let listed = targets.iter().find(|t| t.name == r.target);
        if listed.is_none() {
            v["note"] = json!("no longer listed in the policy's targets");
        }
        match (r.state.as_str(), listed) {
            ("running", Some(t)) => {
                let s = tokio::time::timeout(
                    TARGET_TIMEOUT,
                    crate::store::status::status(&policy.for_target(t)),
                )
                .await;
                match s {
                    Ok(Ok(Some(job))) => {
                        if job["state"] == "paused" {
                            paused += 1;
                        }
                        match job["eta_seconds"].as_i64() {
                            Some(e) => etas.push(e),
                            None => eta_known = false,
                        }
                        v["job"] = job;
                    }
                    Ok(Ok(None)) => eta_known = false,
                    Ok(Err(e)) => {
                        eta_known = false;
                        v["job_error"] = json!(crate::telemetry::redact::error(&e));
                    }
                    Err(_) => {
                        eta_known = false;
                        v["job_error"] =
                            json!(format!("no answer within {}s", TARGET_TIMEOUT.as_secs()));
                    }
                }
            }
            ("waiting", _) | ("stopped", _) => eta_known = false,
            _ => {}
        }
        out.push(v);
    }
    // The fleet's ETA is the last running target's only when nothing waits:
    // a waiting target's rows are not counted until it starts.
    let eta = (eta_known && !etas.is_empty()).then(|| etas.iter().max().copied());
    Ok(Some(json!({
        "fleet": fleet,
        "runner_alive": alive,
        "targets_total": rows.len(),
        "done": count.get("done").copied().unwrap_or(0),
        "running": count.get("running").copied().unwrap_or(0),
        "paused": paused,
        "waiting": count.get("waiting").copied().unwrap_or(0),
        "failed": count.get("failed").copied().unwrap_or(0),
        "stopped": count.get("stopped").copied().unwrap_or(0),
        "eta_seconds": eta.flatten(),
        "paused_by": switch.filter(|s| s.paused).map(|s| json!({"by": s.by, "reason": s.reason, "at": s.at})),
        "targets": out,
    })))
}
