//! Readings from before the run, to prime the controller's estimates
//! (`Controller::prime`): a run that starts (or restarts, or takes over
//! from another runner) knows each Prometheus signal's level and noise at
//! its first tick instead of learning them over its first minutes.
//!
//! Only Prometheus keeps history to fetch: a range query of the signal's
//! own query, one point per controller tick, which is what pacer would have
//! read had it been running. Postgres signals start from their first
//! reading, as before. Nothing here stops a run: a failed query is logged
//! and that signal starts unprimed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::policy::{Policy, Source as Kind};

/// Each signal's readings over the span `wanted` gives it (policy order,
/// oldest first; empty where nothing is wanted or could be fetched).
pub async fn readings_before(
    policy: &Policy,
    wanted: &[Option<Duration>],
    step: Duration,
) -> Vec<Vec<(DateTime<Utc>, f64)>> {
    let any = policy
        .signals
        .iter()
        .zip(wanted)
        .any(|(s, w)| w.is_some() && matches!(s.source(), Some(Kind::Prometheus(_))));
    let prom = if any {
        super::prometheus::Prometheus::new(&policy.prometheus)
            .inspect_err(|e| {
                tracing::warn!(
                    "signal history not fetched: {e}; estimates start from the first readings"
                )
            })
            .ok()
    } else {
        None
    };
    let end = Utc::now().timestamp();
    let step = step.as_secs_f64().max(1.0);
    let fetches = policy.signals.iter().zip(wanted).map(|(s, w)| {
        let prom = prom.as_ref();
        async move {
            let (Some(prom), Some(span), Some(Kind::Prometheus(q))) = (prom, w, s.source()) else {
                return Vec::new();
            };
            let start = end - span.as_secs() as i64;
            match prom.range(q, start, end, step).await {
                Ok(points) => {
                    tracing::info!(
                        signal = %s.name,
                        readings = points.len(),
                        "estimate primed from the last {} of readings",
                        humantime::format_duration(*span)
                    );
                    points
                        .into_iter()
                        .filter_map(|(t, v)| {
                            DateTime::from_timestamp_millis((t * 1000.0).round() as i64)
                                .map(|at| (at, v))
                        })
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(
                        signal = %s.name,
                        "history not fetched ({e}); its estimate starts from its first reading"
                    );
                    Vec::new()
                }
            }
        }
    });
    futures::future::join_all(fetches).await
}
