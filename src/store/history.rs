//! A job's `History` rebuilt from pacer's tables, for `pacer report`:
//! decisions (with causes) from `decisions`, the timeline from `samples`.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgConnection;

use super::Store;
use super::decisions::StoredDecision;
use crate::controller::{Action, BatchError, Cause, Decision, Knobs, State};
use crate::history::{History, SignalInfo};
use crate::policy::Policy;

impl Store {
    /// Everything `report::render` draws for `policy`'s job. Signal levels
    /// are resolved against the baselines the job captured at its start.
    pub async fn history(
        &self,
        conn: &mut PgConnection,
        policy: &Policy,
        baselines: &std::collections::BTreeMap<String, f64>,
    ) -> anyhow::Result<History> {
        let job = &policy.job.name;
        let mut stored = self.decisions(conn, job, i64::MAX).await?;
        stored.reverse();
        let decisions: Vec<Decision> = stored.iter().filter_map(decision_from_stored).collect();
        let signals = crate::controller::resolve_levels(policy, baselines)
            .map(|levels| {
                levels
                    .iter()
                    .map(|l| SignalInfo {
                        name: l.name.clone(),
                        slow: l.slow,
                        stop: l.stop,
                        baseline: l.baseline,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(History {
            job: job.clone(),
            signals,
            samples: self.samples(conn, job).await?,
            pauses: History::pauses_from_decisions(&decisions),
            decisions,
            retries: self.retries(conn, job).await?,
        })
    }
}

/// A stored decision back as the controller made it; `None` for a row an
/// older or newer pacer wrote in a shape this one does not know.
pub fn decision_from_stored(d: &StoredDecision) -> Option<Decision> {
    let state = match d.state.as_str() {
        "running" => State::Running,
        "slowing" => State::Slowing,
        "paused" => State::Paused,
        _ => return None,
    };
    let action = match d.action.as_str() {
        "hold" => Action::Hold,
        "increase" => Action::Increase,
        "decrease" => Action::Decrease,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "clamp" => Action::Clamp,
        _ => return None,
    };
    let before: Knobs = serde_json::from_value(d.before.clone()).ok()?;
    let knobs: Knobs = serde_json::from_value(d.knobs.clone()).ok()?;
    let causes = d
        .causes
        .as_array()
        .map(|a| a.iter().filter_map(cause_from_json).collect())
        .unwrap_or_default();
    Some(Decision {
        at: d.at,
        state,
        action,
        before,
        knobs,
        causes,
        windows: Vec::new(),
        view: Default::default(),
    })
}

fn cause_from_json(v: &Value) -> Option<Cause> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let d = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(Duration::ZERO)
    };
    Some(match v.get("kind")?.as_str()? {
        "signal" => Cause::Signal {
            signal: s("signal")?,
            value: f("value")?,
            estimate: f("estimate"),
            level: if s("level").as_deref() == Some("stop") {
                "stop"
            } else {
                "slow"
            },
            threshold: f("threshold")?,
            expr: s("expr"),
            baseline: f("baseline"),
        },
        "missing" => Cause::Missing {
            signal: s("signal")?,
            reason: s("reason").unwrap_or_default(),
            missing_for: d("missing_for"),
            on_missing: v
                .get("on_missing")
                .and_then(|o| serde_json::from_value(o.clone()).ok()),
        },
        "slow_batch" => Cause::SlowBatch {
            duration: d("duration"),
            target: d("target"),
        },
        "batch_error" => Cause::BatchError {
            error: match s("error")?.as_str() {
                "lock_timeout" => BatchError::LockTimeout,
                "deadlock" => BatchError::Deadlock,
                "serialization_failure" => BatchError::SerializationFailure,
                "statement_timeout" => BatchError::StatementTimeout,
                "connection_lost" => BatchError::ConnectionLost,
                _ => BatchError::Other,
            },
            count: v.get("count").and_then(Value::as_u64).unwrap_or(0) as usize,
        },
        "manual" => Cause::Manual {
            by: s("by").unwrap_or_default(),
            reason: s("reason").unwrap_or_default(),
        },
        "window" => Cause::Window {
            window: s("window").unwrap_or_default(),
        },
        "calm" => Cause::Calm {
            calm_for: d("calm_for"),
        },
        "raw_above_slow" => Cause::RawAboveSlow {
            signal: s("signal")?,
            value: f("value")?,
            estimate: f("estimate")?,
            threshold: f("threshold")?,
            noise: f("noise").unwrap_or(0.0),
            hold: d("hold"),
        },
        _ => return None,
    })
}
