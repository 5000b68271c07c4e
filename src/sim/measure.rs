//! How pacer sees the simulated database: each policy signal maps to a
//! simulated counterpart, read through a pipeline that imitates its real
//! source, with that source's delay and noise:
//!
//! - a Prometheus latency quantile is computed as `histogram_quantile` does,
//!   from the requests the simulated day served, counted into histogram
//!   buckets over the query's own range window and read as of the last
//!   scrape: its noise comes from the request counts (so it is correlated
//!   across overlapping windows), its resolution from the buckets, its delay
//!   from the window and the scrape interval;
//! - an error rate the same way, from error and request counts;
//! - the heartbeat lag is late by up to one heartbeat;
//! - byte figures are averaged samples with a little noise;
//! - lock counts are Poisson draws around their true mean.

use std::collections::VecDeque;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::model::{Model, Truth};
use super::scenario::{normal, poisson};
use crate::policy::Signal;

/// Simulated counterparts of policy signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimKind {
    Latency,
    ErrorRate,
    LagSeconds,
    LagBytes,
    SlotLagBytes,
    LockWaiters,
    BlockedByPacer,
    WalBytesPerSecond,
    Http,
}

impl SimKind {
    /// The counterpart of `signal`, or an error naming the signal.
    pub fn of(signal: &Signal) -> anyhow::Result<SimKind> {
        let Some(kind) = signal.sim_kind() else {
            anyhow::bail!(
                "signal {:?} has no simulated counterpart: add sim = \"latency\" (or another of {}) to it",
                signal.name,
                crate::policy::SIM_HINTS.join(", ")
            );
        };
        Ok(match kind {
            "latency" => SimKind::Latency,
            "error_rate" => SimKind::ErrorRate,
            "replication_lag_seconds" => SimKind::LagSeconds,
            "replication_lag_bytes" => SimKind::LagBytes,
            "logical_slot_lag_bytes" => SimKind::SlotLagBytes,
            "lock_waiters" => SimKind::LockWaiters,
            "blocked_by_pacer" => SimKind::BlockedByPacer,
            "wal_bytes_per_second" => SimKind::WalBytesPerSecond,
            "http" => SimKind::Http,
            other => anyhow::bail!(
                "signal {:?}: {other:?} has no simulated counterpart; simulated: {}",
                signal.name,
                crate::policy::SIM_HINTS.join(", ")
            ),
        })
    }

    pub fn value(self, t: &Truth) -> f64 {
        match self {
            SimKind::Latency => t.latency,
            SimKind::ErrorRate => t.error_rate,
            SimKind::LagSeconds => t.lag_seconds,
            SimKind::LagBytes => t.lag_bytes,
            SimKind::SlotLagBytes => t.slot_lag_bytes,
            SimKind::LockWaiters => t.lock_waiters,
            SimKind::BlockedByPacer => t.blocked_by_pacer,
            SimKind::WalBytesPerSecond => t.wal_bytes_per_second,
            SimKind::Http => t.http,
        }
    }

    /// What the signal's own query reads for a true value `v` with
    /// unlimited requests and no delay: the units the policy's levels are
    /// written in. A Prometheus latency quantile is interpolated inside
    /// histogram buckets, which reads a lognormal tail up to ~3 % high
    /// depending on where in its bucket the p95 falls; every other
    /// source reads the value itself, apart from its noise and delay.
    pub fn reading_of(self, v: f64, m: &Model) -> f64 {
        match self {
            SimKind::Latency => {
                let bounds = m.latency.bucket_bounds();
                histogram_quantile(QUANTILE, &bounds, &bucket_shares(v, m, &bounds)).unwrap_or(v)
            }
            _ => v,
        }
    }

    /// The true value whose noise-free reading is `level` (the inverse of
    /// `reading_of`, which grows with the true value): judging truth
    /// against this is judging the reading against `level`, at no cost
    /// per tick. `INFINITY` when no true value reads above `level`.
    pub fn truth_at(self, level: f64, m: &Model) -> f64 {
        if self != SimKind::Latency {
            return level;
        }
        let (mut lo, mut hi) = (0.0, m.latency.cap);
        if self.reading_of(hi, m) <= level {
            return f64::INFINITY;
        }
        // 60 halvings: below f64's resolution of the cap.
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if self.reading_of(mid, m) <= level {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Whether the value depends on batch size at a given rate (then the
    /// safe-rate oracle searches over batch sizes too).
    pub fn batch_sensitive(self) -> bool {
        matches!(self, SimKind::LockWaiters | SimKind::BlockedByPacer)
    }

    /// Whether the real source is a Prometheus query (range window, scrapes).
    pub fn is_prometheus(self) -> bool {
        matches!(self, SimKind::Latency | SimKind::ErrorRate)
    }
}

/// How a meter turns true values into what a reading says.
#[derive(Debug, Clone)]
enum Pipeline {
    /// Request counts per tick, per latency bucket (+Inf last), and errors.
    Requests {
        ring: VecDeque<Vec<f64>>,
        sums: Vec<f64>,
        /// Upper bounds of the finite buckets.
        bounds: Vec<f64>,
    },
    /// A plain moving average (byte figures, WAL rate).
    Average { ring: VecDeque<f64>, sum: f64 },
    /// The value now, drawn or shifted by the source's own error.
    Instant,
}

/// One signal's measurement pipeline.
#[derive(Debug, Clone)]
pub struct Meter {
    kind: SimKind,
    pipeline: Pipeline,
    /// Ticks the source looks back over.
    window_len: usize,
    /// Ticks between scrapes, and ticks since the last one.
    scrape_every: usize,
    since_scrape: usize,
    published: Option<f64>,
}

/// The quantile a latency signal reads (p95).
const QUANTILE: f64 = 0.95;

impl Meter {
    /// A meter for `kind` ticking every `dt` seconds. `window` is the
    /// source's look-back in seconds (a Prometheus query's range; `None`
    /// takes the model's default), `phase` in 0..1 places the first scrape.
    pub fn new(kind: SimKind, m: &Model, dt: f64, window: Option<f64>, phase: f64) -> Meter {
        let ms = &m.measurement;
        let ticks = |secs: f64| (secs / dt).round().max(1.0) as usize;
        let (pipeline, window_len, scrape_every) = match kind {
            SimKind::Latency | SimKind::ErrorRate => {
                let bounds = m.latency.bucket_bounds();
                let n = bounds.len() + 3;
                (
                    Pipeline::Requests {
                        ring: VecDeque::new(),
                        sums: vec![0.0; n],
                        bounds,
                    },
                    ticks(window.unwrap_or(ms.prometheus_window)),
                    ticks(ms.scrape_interval),
                )
            }
            SimKind::LagBytes | SimKind::SlotLagBytes | SimKind::WalBytesPerSecond => (
                Pipeline::Average {
                    ring: VecDeque::new(),
                    sum: 0.0,
                },
                // pg_stat_wal differences over a 10 s sampling interval.
                if kind == SimKind::WalBytesPerSecond {
                    ticks(10.0)
                } else {
                    1
                },
                1,
            ),
            SimKind::LagSeconds
            | SimKind::LockWaiters
            | SimKind::BlockedByPacer
            | SimKind::Http => (Pipeline::Instant, 1, 1),
        };
        // The first scrape lands somewhere in the first interval.
        let offset = ((phase.clamp(0.0, 1.0) * scrape_every as f64) as usize).min(scrape_every - 1);
        Meter {
            kind,
            pipeline,
            window_len,
            scrape_every,
            since_scrape: scrape_every - 1 - offset,
            published: None,
        }
    }

    /// Feed this tick's truth; returns what a reading now would say
    /// (`None` until the first scrape, or when the window saw no request).
    pub fn observe(&mut self, t: &Truth, m: &Model, dt: f64, rng: &mut ChaCha8Rng) -> Option<f64> {
        let v = self.kind.value(t);
        let window_len = self.window_len;
        match &mut self.pipeline {
            Pipeline::Requests { ring, sums, bounds } => {
                let counts = requests(self.kind, t, m, dt, bounds, rng);
                for (s, c) in sums.iter_mut().zip(&counts) {
                    *s += c;
                }
                ring.push_back(counts);
                if ring.len() > window_len
                    && let Some(old) = ring.pop_front()
                {
                    for (s, c) in sums.iter_mut().zip(&old) {
                        *s -= c;
                    }
                }
            }
            Pipeline::Average { ring, sum } => {
                ring.push_back(v);
                *sum += v;
                if ring.len() > window_len {
                    *sum -= ring.pop_front().unwrap_or_default();
                }
            }
            Pipeline::Instant => {}
        }
        self.since_scrape += 1;
        if self.since_scrape >= self.scrape_every {
            self.since_scrape = 0;
            let ms = &m.measurement;
            self.published = match &self.pipeline {
                Pipeline::Requests { sums, bounds, .. } => match self.kind {
                    SimKind::ErrorRate => {
                        let total = sums[sums.len() - 2];
                        (total > 0.0).then(|| sums[sums.len() - 1] / total)
                    }
                    _ => histogram_quantile(QUANTILE, bounds, sums),
                },
                Pipeline::Average { ring, sum } => {
                    let avg = sum / ring.len().max(1) as f64;
                    Some((avg * (1.0 + ms.sample_noise * normal(rng))).max(0.0))
                }
                Pipeline::Instant => Some(match self.kind {
                    // Heartbeat reading: late by up to one heartbeat interval.
                    SimKind::LagSeconds => v + rng.random::<f64>() * ms.heartbeat_interval,
                    SimKind::LockWaiters | SimKind::BlockedByPacer => poisson(rng, v),
                    _ => v,
                }),
            };
        }
        self.published
    }
}

/// One tick of live requests: counts per latency bucket (the finite
/// buckets, then +Inf), then the total, then the errors. Latencies are
/// lognormal with the model's spread around a median that puts the true p95
/// at `t.latency`; arrivals are Poisson.
fn requests(
    kind: SimKind,
    t: &Truth,
    m: &Model,
    dt: f64,
    bounds: &[f64],
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let n = bounds.len();
    let mut out = vec![0.0; n + 3];
    let mean = t.live * m.latency.requests_per_load * dt;
    if kind == SimKind::ErrorRate {
        let total = poisson(rng, mean);
        out[n + 1] = total;
        out[n + 2] = poisson(rng, total * t.error_rate.clamp(0.0, 1.0));
        return out;
    }
    let mut total = 0.0;
    for (i, share) in bucket_shares(t.latency, m, bounds).into_iter().enumerate() {
        let lambda = mean * share;
        if lambda > 1e-9 {
            let c = poisson(rng, lambda);
            out[i] = c;
            total += c;
        }
    }
    out[n + 1] = total;
    out
}

/// Each bucket's share of requests (finite buckets, then +Inf) when
/// latencies are lognormal with the model's spread and true p95 `p95`.
fn bucket_shares(p95: f64, m: &Model, bounds: &[f64]) -> Vec<f64> {
    let sigma = m.latency.spread;
    let ln_median = p95.max(1e-9).ln() - 1.644_853_6 * sigma;
    let mut prev_cdf = 0.0;
    let mut out = Vec::with_capacity(bounds.len() + 1);
    for b in bounds {
        let cdf = std_normal_cdf((b.ln() - ln_median) / sigma);
        out.push(cdf - prev_cdf);
        prev_cdf = cdf;
    }
    out.push(1.0 - prev_cdf);
    out
}

/// Prometheus's `histogram_quantile`: find the bucket holding rank q × total
/// and interpolate linearly inside it (from 0 for the first bucket); a rank
/// in +Inf reads as the highest finite bound. `counts` are per bucket (not
/// cumulative), finite buckets first, then +Inf, then the total.
pub fn histogram_quantile(q: f64, bounds: &[f64], counts: &[f64]) -> Option<f64> {
    let n = bounds.len();
    let total: f64 = counts[..=n].iter().sum();
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut cum = 0.0;
    for (i, upper) in bounds.iter().enumerate() {
        let c = counts[i];
        if cum + c >= rank && c > 0.0 {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - cum) / c);
        }
        cum += c;
    }
    bounds.last().copied()
}

/// Φ(x), the standard normal CDF (Abramowitz & Stegun 7.1.26 for erf,
/// absolute error below 1.5e-7: far below what request counts resolve).
fn std_normal_cdf(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    let erf = if z >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_matches_known_values() {
        for (x, p) in [
            (0.0, 0.5),
            (1.644_853_6, 0.95),
            (-1.959_964, 0.025),
            (3.0, 0.998_650_1),
        ] {
            assert!((std_normal_cdf(x) - p).abs() < 2e-7, "Φ({x})");
        }
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket_like_prometheus() {
        let bounds = [0.1, 0.2, 0.4];
        // 100 requests: 50 ≤ 0.1, 40 in (0.1, 0.2], 10 in (0.2, 0.4], none above.
        let counts = [50.0, 40.0, 10.0, 0.0, 100.0];
        // rank 95 lies halfway through the third bucket.
        let q = histogram_quantile(0.95, &bounds, &counts).unwrap();
        assert!((q - 0.3).abs() < 1e-12, "{q}");
        assert_eq!(histogram_quantile(0.95, &bounds, &[0.0; 5]), None);
        // All in +Inf: the highest finite bound, as Prometheus answers.
        assert_eq!(
            histogram_quantile(0.5, &bounds, &[0.0, 0.0, 0.0, 5.0, 5.0]),
            Some(0.4)
        );
    }

    #[test]
    fn a_busy_histogram_reads_the_true_p95_within_its_bucket_resolution() {
        let m = Model::builtin();
        let t = Truth {
            live: 1.0,
            latency: 0.1,
            ..Truth::default()
        };
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let mut meter = Meter::new(SimKind::Latency, &m, 1.0, Some(30.0), 0.0);
        let mut last = None;
        for _ in 0..60 {
            last = meter.observe(&t, &m, 1.0, &mut rng);
        }
        let v = last.expect("a reading after 60 s");
        // Linear interpolation inside a ×1.25 bucket is biased by a few %.
        assert!((v / 0.1 - 1.0).abs() < 0.06, "{v}");
    }

    /// `reading_of` is the limit of what the meter reads as requests grow:
    /// a busy histogram's reading of a steady p95 converges to it, not to
    /// the true value, where the bucket interpolation is biased.
    #[test]
    fn the_noise_free_reading_is_what_a_busy_histogram_reads() {
        let mut m = Model::builtin();
        m.latency.requests_per_load = 5.0e7;
        let mut biased = 0;
        for latency in [0.09, 0.095, 0.1, 0.105, 0.11, 0.12, 0.3] {
            let t = Truth {
                live: 1.0,
                latency,
                ..Truth::default()
            };
            let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
            let mut meter = Meter::new(SimKind::Latency, &m, 1.0, Some(10.0), 0.0);
            let mut last = None;
            for _ in 0..20 {
                last = meter.observe(&t, &m, 1.0, &mut rng);
            }
            let read = last.unwrap();
            let ideal = SimKind::Latency.reading_of(latency, &m);
            assert!(
                (read / ideal - 1.0).abs() < 1e-3,
                "{latency}: {read} vs {ideal}"
            );
            // A lognormal tail is concave where the p95 lies: linear
            // interpolation reads it high, never low.
            assert!(ideal >= latency, "{latency}: {ideal}");
            if ideal > latency * 1.01 {
                biased += 1;
            }
        }
        assert!(biased >= 2, "the bias the judge corrects for shows");
        // Only a histogram is interpolated.
        assert_eq!(SimKind::LagSeconds.reading_of(2.5, &m), 2.5);
    }

    #[test]
    fn truth_at_inverts_the_reading() {
        let m = Model::builtin();
        for level in [0.05, 0.1178, 0.126, 0.4] {
            let v = SimKind::Latency.truth_at(level, &m);
            assert!(v <= level, "{level}: {v}");
            let r = SimKind::Latency.reading_of(v, &m);
            assert!((r - level).abs() < 1e-9, "{level}: reads {r}");
            assert!(SimKind::Latency.reading_of(v * 1.0001, &m) > level);
        }
        // No true value reads above the highest bucket.
        assert_eq!(SimKind::Latency.truth_at(100.0, &m), f64::INFINITY);
        assert_eq!(SimKind::LockWaiters.truth_at(0.5, &m), 0.5);
    }

    #[test]
    fn a_reading_repeats_between_scrapes() {
        let m = Model::builtin();
        let t = Truth {
            live: 0.3,
            latency: 0.1,
            ..Truth::default()
        };
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let every = m.measurement.scrape_interval as usize;
        let mut meter = Meter::new(SimKind::Latency, &m, 1.0, Some(60.0), 0.0);
        let seen: Vec<f64> = (0..every * 6)
            .filter_map(|_| meter.observe(&t, &m, 1.0, &mut rng))
            .collect();
        let changes = seen.windows(2).filter(|w| w[0] != w[1]).count();
        assert!((4..=6).contains(&changes), "{changes} changes in {seen:?}");
    }
}
