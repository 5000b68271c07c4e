//! Whether a latency quantile can see the levels a policy sets on it.
//!
//! `histogram_quantile` knows only bucket counts and interpolates linearly
//! inside the bucket that holds the quantile. When the baseline and the stop
//! level sit in the same bucket, the reading moves between them only as far
//! as the counts inside that one bucket shift: a +20 % stop on a histogram
//! whose buckets grow by ×1.5 is judged by interpolation, not measurement,
//! and on little traffic mostly by noise. `pacer check` warns before a run
//! trusts such a level.

use crate::policy::Policy;

use super::prometheus::Prometheus;
use super::promql;

/// The bucket (as its lower and upper bound) that holds `x`: buckets are
/// `(previous le, le]`, the first starts at 0, the last is open.
fn bucket_of(x: f64, bounds: &[f64]) -> (f64, f64) {
    match bounds.iter().position(|b| x <= *b) {
        Some(0) => (0.0, bounds[0]),
        Some(i) => (bounds[i - 1], bounds[i]),
        None => (bounds.last().copied().unwrap_or(0.0), f64::INFINITY),
    }
}

/// A warning when `level` (slow or stop, resolved) falls in the same
/// histogram bucket as `baseline`.
pub fn same_bucket(
    signal: &str,
    level_name: &str,
    level: f64,
    baseline: f64,
    bounds: &[f64],
) -> Option<String> {
    if bounds.is_empty() || level <= baseline {
        return None;
    }
    let (lo, hi) = bucket_of(baseline, bounds);
    if bucket_of(level, bounds) != (lo, hi) {
        return None;
    }
    let hi = if hi.is_finite() {
        format!("{hi}")
    } else {
        "+Inf".into()
    };
    Some(format!(
        "signal {signal}: {level_name} {level:.4} and the baseline {baseline:.4} fall in one histogram bucket ({lo} < le ≤ {hi}): the quantile interpolates inside a bucket and cannot tell them apart; add buckets between {lo} and {hi}"
    ))
}

/// Warnings for every Prometheus quantile signal of `policy` whose slow or
/// stop level shares the baseline's histogram bucket. The baseline is
/// estimated from the signal's current value (a run measures it properly
/// before it starts). Problems reaching Prometheus are notes, not errors:
/// `check` also runs where Prometheus is not reachable.
pub async fn check(policy: &Policy) -> (Vec<String>, Vec<String>) {
    let (mut warnings, mut notes) = (Vec::new(), Vec::new());
    let quantiles: Vec<_> = policy
        .signals
        .iter()
        .filter_map(|s| {
            let q = s.prometheus.as_deref()?;
            Some((s, q, promql::histogram_selector(q)?))
        })
        .collect();
    if quantiles.is_empty() {
        return (warnings, notes);
    }
    let prom = match Prometheus::new(&policy.prometheus) {
        Ok(p) => p,
        Err(e) => {
            notes.push(format!("histogram buckets not checked: {e}"));
            return (warnings, notes);
        }
    };
    for (sig, query, selector) in quantiles {
        let bounds = match prom.bucket_bounds(&selector).await {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                notes.push(format!(
                    "signal {}: no buckets found for {selector}; resolution not checked",
                    sig.name
                ));
                continue;
            }
            Err(e) => {
                notes.push(format!(
                    "signal {}: histogram buckets not checked: {e}",
                    sig.name
                ));
                continue;
            }
        };
        let baseline = match sig.baseline {
            Some(b) => b,
            None => match prom.instant(query).await {
                Ok(v) if v.is_finite() => v,
                _ => {
                    notes.push(format!(
                        "signal {}: no current value to estimate the baseline; resolution not checked",
                        sig.name
                    ));
                    continue;
                }
            },
        };
        for (name, level) in [("slow", sig.slow_above), ("stop", sig.stop_above)] {
            if let Some(v) = level.and_then(|l| l.resolve(Some(baseline)))
                && let Some(w) = same_bucket(&sig.name, name, v, baseline, &bounds)
            {
                warnings.push(w);
            }
        }
    }
    (warnings, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_inside_the_baselines_bucket_is_named() {
        // The testbed's generator: exponential buckets ×1.5.
        let bounds: Vec<f64> = (0..25).map(|i| 0.0005 * 1.5f64.powi(i)).collect();
        let w = same_bucket("checkout_p95", "stop", 0.0046 * 1.2, 0.0046, &bounds)
            .expect("+20 % of 4.6 ms stays in its ×1.5 bucket");
        assert!(w.contains("checkout_p95") && w.contains("stop"), "{w}");
        assert!(
            w.contains("0.003796875") && w.contains("0.0056953125"),
            "{w}"
        );
        // ×2.5 crosses two bucket bounds: resolvable.
        assert_eq!(
            same_bucket("checkout_p95", "stop", 0.0046 * 2.5, 0.0046, &bounds),
            None
        );
        // Fine buckets (×1.1) resolve +20 %.
        let fine: Vec<f64> = (0..80).map(|i| 0.001 * 1.1f64.powi(i)).collect();
        assert_eq!(same_bucket("p", "stop", 0.0046 * 1.2, 0.0046, &fine), None);
    }

    #[test]
    fn the_open_top_bucket_and_levels_below_the_baseline() {
        let bounds = [0.1, 0.2];
        let w = same_bucket("p", "slow", 0.5, 0.3, &bounds).unwrap();
        assert!(w.contains("+Inf"), "{w}");
        assert_eq!(same_bucket("p", "slow", 0.05, 0.1, &bounds), None);
        assert_eq!(same_bucket("p", "slow", 0.5, 0.3, &[]), None);
    }
}
