//! Baselines: the "normal" value a relative level (`"baseline * 1.2"`)
//! refers to, measured once before a job's first start. The caller stores
//! them with the job so a resumed run compares against the same normal,
//! not against whatever the (possibly already degraded) present looks like.
//!
//! - Prometheus signals: a range query over `baseline.window` ending now,
//!   step `window / 200` (at least 1 s); the baseline is the median.
//!   Enough history means at least `baseline.min_samples` finite points
//!   spanning at least half the window.
//! - Postgres signals: `baseline.min_samples` readings one controller tick
//!   apart; the baseline is their median. Missing readings do not count.
//! - Too little history: `on_insufficient = "refuse"` fails with an error
//!   saying what was found and how to proceed; `"wait"` keeps trying (and
//!   says so in the logs) until there is enough.
//! - A fixed `baseline = <number>` in the signal skips measuring.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Context, Shared, build_source};
use crate::policy::{OnInsufficient, Policy, Signal, Source as Kind};

/// How a baseline was obtained, for the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub value: f64,
    pub samples: usize,
    pub how: String,
}

/// Not enough history (yet): what was found, for the error or the wait log.
#[derive(Debug, Clone)]
struct Short(String);

pub async fn capture(policy: &Policy, ctx: &Context) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut shared = Shared::default();
    let mut jobs = Vec::new();
    for s in &policy.signals {
        if let Some(b) = s.baseline {
            tracing::info!(signal = %s.name, baseline = b, "baseline fixed by the policy");
            out.insert(s.name.clone(), b);
            continue;
        }
        if !s.needs_baseline() {
            continue;
        }
        let prepared = match s.source() {
            Some(Kind::Prometheus(q)) => {
                let prom = super::prometheus::Prometheus::new(&policy.prometheus)
                    .map_err(|e| anyhow::anyhow!("signal {:?}: {e}", s.name))?;
                Prepared::Prom(prom, q.to_string())
            }
            Some(Kind::Postgres(_)) => {
                Prepared::Sampled(build_source(policy, s, ctx, &mut shared).await?)
            }
            _ => anyhow::bail!("signal {:?}: this kind of signal has no baseline", s.name),
        };
        jobs.push((s, prepared));
    }
    let results =
        futures::future::join_all(jobs.into_iter().map(|(s, p)| measure(policy, s, p))).await;
    for r in results {
        let (name, b) = r?;
        tracing::info!(signal = %name, baseline = b.value, samples = b.samples, "baseline measured: {}", b.how);
        out.insert(name, b.value);
    }
    Ok(out)
}

enum Prepared {
    Prom(super::prometheus::Prometheus, String),
    Sampled(Box<dyn super::Source>),
}

async fn measure(policy: &Policy, s: &Signal, p: Prepared) -> anyhow::Result<(String, Baseline)> {
    let cfg = &policy.baseline;
    let retry = policy.controller.tick.max(Duration::from_secs(5));
    loop {
        let attempt = match &p {
            Prepared::Prom(prom, q) => {
                from_prometheus(prom, q, cfg.window, cfg.min_samples as usize).await
            }
            Prepared::Sampled(src) => {
                from_samples(
                    src.as_ref(),
                    s.timeout,
                    policy.controller.tick,
                    cfg.min_samples as usize,
                )
                .await
            }
        };
        match (attempt, cfg.on_insufficient) {
            (Ok(b), _) => return Ok((s.name.clone(), b)),
            (Err(Short(why)), OnInsufficient::Refuse) => anyhow::bail!(
                "signal {:?}: not enough history for a baseline: {why}. Wait and retry, shorten \
                 baseline.window, set baseline.on_insufficient = \"wait\", or give the signal a fixed \
                 `baseline = <number>`",
                s.name
            ),
            (Err(Short(why)), OnInsufficient::Wait) => {
                tracing::warn!(signal = %s.name, "waiting for baseline history: {why}");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

async fn from_prometheus(
    prom: &super::prometheus::Prometheus,
    q: &str,
    window: Duration,
    min_samples: usize,
) -> Result<Baseline, Short> {
    let step = (window.as_secs_f64() / 200.0).max(1.0);
    let end = chrono::Utc::now().timestamp();
    let start = end - window.as_secs() as i64;
    let points = prom.range(q, start, end, step).await.map_err(Short)?;
    let span = match (points.first(), points.last()) {
        (Some(a), Some(b)) => b.0 - a.0 + step,
        _ => 0.0,
    };
    let need_span = window.as_secs_f64() / 2.0;
    if points.len() < min_samples || span < need_span {
        return Err(Short(format!(
            "{} finite points over {:.0}s of the {} window (need {min_samples} points over {:.0}s)",
            points.len(),
            span,
            humantime::format_duration(window),
            need_span
        )));
    }
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    Ok(Baseline {
        value: median(&values).expect("non-empty"),
        samples: values.len(),
        how: format!(
            "median of {} points over the last {} (step {step}s)",
            values.len(),
            humantime::format_duration(window)
        ),
    })
}

async fn from_samples(
    src: &dyn super::Source,
    timeout: Duration,
    tick: Duration,
    min_samples: usize,
) -> Result<Baseline, Short> {
    let mut values = Vec::new();
    let mut last_missing = None;
    // Twice the needed attempts: an occasional missing reading is fine, a
    // source that is mostly missing is not a baseline.
    for i in 0..min_samples.max(1) * 2 {
        if i > 0 {
            tokio::time::sleep(tick).await;
        }
        match tokio::time::timeout(timeout, src.read()).await {
            Ok(r) => match r.value {
                Some(v) => values.push(v),
                None => last_missing = r.missing,
            },
            Err(_) => last_missing = Some("timed out".into()),
        }
        if values.len() >= min_samples {
            return Ok(Baseline {
                value: median(&values).expect("non-empty"),
                samples: values.len(),
                how: format!(
                    "median of {} readings {} apart",
                    values.len(),
                    humantime::format_duration(tick)
                ),
            });
        }
    }
    Err(Short(format!(
        "{} of {min_samples} readings succeeded (last problem: {})",
        values.len(),
        last_missing.as_deref().unwrap_or("none")
    )))
}

/// Median of finite values; `None` for an empty slice.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
