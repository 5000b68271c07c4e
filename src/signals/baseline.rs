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
    /// The readings the median was taken of.
    pub points: Vec<f64>,
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
        let (s, b) = r?;
        tracing::info!(signal = %s.name, baseline = b.value, samples = b.samples, "baseline measured: {}", b.how);
        let level = |l: &Option<crate::policy::Level>| l.and_then(|l| l.resolve(Some(b.value)));
        if let Some(w) = noise_warning(&b.points, level(&s.slow_above), level(&s.stop_above)) {
            tracing::warn!(signal = %s.name, "{}: {w}", s.name);
        }
        out.insert(s.name.clone(), b.value);
    }
    Ok(out)
}

/// Share of readings above a level at which the signal's own noise, before
/// any backfill, is taken to cross it: a stop reached by noise pauses the
/// job again and again (the seed's +20 % on a p95 of a few milliseconds:
/// 53 % of 10-second windows over it with no backfill on the testbed).
const NOISY_STOP_SHARE: f64 = 0.05;
const NOISY_SLOW_SHARE: f64 = 0.25;

/// A warning when the baseline's own readings already cross the levels the
/// job will be judged by.
pub fn noise_warning(points: &[f64], slow: Option<f64>, stop: Option<f64>) -> Option<String> {
    if points.is_empty() {
        return None;
    }
    let share =
        |level: f64| points.iter().filter(|v| **v > level).count() as f64 / points.len() as f64;
    let advice = "a longer range window in the query, a longer stop_for, or levels further \
                  from the baseline make it steadier";
    if let Some((stop, part)) = stop.map(|l| (l, share(l)))
        && part >= NOISY_STOP_SHARE
    {
        return Some(format!(
            "{:.0} % of the readings the baseline was measured on are already above stop ({}), \
             with no backfill judged yet: the job may pause on the signal's own noise; {advice}",
            100.0 * part,
            crate::controller::num(stop)
        ));
    }
    if let Some((slow, part)) = slow.map(|l| (l, share(l)))
        && part >= NOISY_SLOW_SHARE
    {
        return Some(format!(
            "{:.0} % of the readings the baseline was measured on are already above slow ({}): \
             the job will slow down on the signal's own noise; {advice}",
            100.0 * part,
            crate::controller::num(slow)
        ));
    }
    None
}

enum Prepared {
    Prom(super::prometheus::Prometheus, String),
    Sampled(Box<dyn super::Source>),
}

async fn measure<'a>(
    policy: &Policy,
    s: &'a Signal,
    p: Prepared,
) -> anyhow::Result<(&'a Signal, Baseline)> {
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
            (Ok(b), _) => return Ok((s, b)),
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
        points: values,
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
                points: values,
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
    use super::{median, noise_warning};

    #[test]
    fn a_baseline_whose_readings_cross_stop_is_flagged() {
        // A p95 of ~4 ms read every second: 10 of 60 readings above +20 %.
        let mut points = vec![0.004; 50];
        points.extend([0.0055; 10]);
        let w = noise_warning(&points, Some(0.0044), Some(0.0048)).expect("flagged");
        assert!(
            w.starts_with(
                "17 % of the readings the baseline was measured on are already above stop (0.0048)"
            ),
            "{w}"
        );
        // Quiet readings: nothing to say.
        let quiet = vec![0.004; 60];
        assert_eq!(noise_warning(&quiet, Some(0.0044), Some(0.0048)), None);
        // Above slow often, never above stop: the slow warning.
        let mut slowish = vec![0.004; 40];
        slowish.extend([0.0046; 20]);
        let w = noise_warning(&slowish, Some(0.0044), Some(0.0048)).expect("flagged");
        assert!(w.contains("already above slow (0.0044)"), "{w}");
        assert_eq!(noise_warning(&[], Some(1.0), Some(2.0)), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
