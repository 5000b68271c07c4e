//! Everything one simulated day shares across strategy runs: the trace, the
//! no-backfill truth, the signal mapping and the baselines.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::measure::{Meter, SimKind};
use super::model::{Model, Plant, Truth};
use super::scenario::{Scenario, Trace};
use crate::controller::{Caps, Controller, SignalLevels};
use crate::policy::Policy;

/// Warm-up before the baseline window so rate windows are full.
const WARMUP_SECS: f64 = 120.0;

/// Longest day one run simulates: the per-tick history grows with it.
const MAX_DAYS: f64 = 7.0;

/// One simulated day, ready to run strategies on.
#[derive(Debug, Clone)]
pub struct Setup {
    pub policy: Policy,
    pub model: Model,
    pub scenario: Scenario,
    pub seed: u64,
    pub trace: Trace,
    /// Instant the backfill starts (tick `trace.start_index`).
    pub start: DateTime<Utc>,
    pub kinds: Vec<SimKind>,
    /// Baselines measured before start (only for signals without a fixed
    /// `baseline`, which wins).
    pub baselines: BTreeMap<String, f64>,
    /// Resolved levels, in policy order.
    pub levels: Vec<SignalLevels>,
    /// The same levels as true values (`SimKind::truth_at`): the day is
    /// judged on what each signal's query would read without noise or
    /// delay, in the units the policy's levels are written in.
    pub judged: Vec<JudgedLevels>,
    /// True values with no backfill at all, per tick of the trace.
    pub quiet: Vec<Truth>,
    /// Merged caps of the policy's windows, per tick of the trace.
    pub caps: Vec<Caps>,
    /// Rows of the simulated table the Job walks (`None`, the default:
    /// more than the day can reach). With a number, the run ends when the
    /// Job finds no pending row left, as a real run does.
    pub table_rows: Option<u64>,
}

impl Setup {
    pub fn new(
        policy: &Policy,
        model: &Model,
        scenario: &Scenario,
        seed: u64,
        duration: Option<Duration>,
    ) -> anyhow::Result<Setup> {
        let kinds = policy
            .signals
            .iter()
            .map(SimKind::of)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = crate::policy::local_instant(
            &policy.job.timezone,
            scenario.date,
            scenario.start.hour(),
            scenario.start.minute(),
        )
        .ok_or_else(|| {
            anyhow::anyhow!(
                "scenario {}: {} {} does not exist in time zone {} (daylight-saving gap?)",
                scenario.name,
                scenario.date,
                scenario.start.format("%H:%M"),
                policy.job.timezone
            )
        })?;
        let dt = policy.controller.tick.as_secs_f64();
        let duration = duration.unwrap_or(scenario.duration).as_secs_f64();
        if duration > MAX_DAYS * 86_400.0 {
            anyhow::bail!(
                "simulated duration {} is longer than the supported {MAX_DAYS} days",
                humantime::format_duration(Duration::from_secs(duration as u64))
            );
        }
        if duration < dt {
            anyhow::bail!("simulated duration must be at least one tick ({dt}s)");
        }
        if policy.baseline.window.as_secs_f64() > MAX_DAYS * 86_400.0 {
            anyhow::bail!(
                "baseline.window {} is longer than the {MAX_DAYS} days the simulator replays",
                humantime::format_duration(policy.baseline.window)
            );
        }
        // Warm up at least long enough to fill the longest query window.
        let longest = policy
            .signals
            .iter()
            .filter_map(|s| s.prometheus.as_deref())
            .filter_map(|q| crate::signals::promql::lookback(q).ok().flatten())
            .map(|d| d.as_secs_f64() + model.measurement.scrape_interval)
            .fold(WARMUP_SECS, f64::max);
        if longest > MAX_DAYS * 86_400.0 {
            anyhow::bail!(
                "a signal's query looks back {}, longer than the {MAX_DAYS} days the simulator replays",
                humantime::format_duration(Duration::from_secs(longest as u64))
            );
        }
        let preroll = policy.baseline.window.as_secs_f64() + longest;
        let trace = Trace::new(scenario, model, seed, dt, preroll, duration);
        let mut plant = Plant::default();
        let quiet: Vec<Truth> = trace
            .ticks
            .iter()
            .map(|c| plant.advance(model, c, 0.0, 1.0, 0.0, dt))
            .collect();

        // The simulated Prometheus answers what the real one's targets API
        // would: its scrape interval, unless the policy says otherwise.
        let mut policy = policy.clone();
        if policy.prometheus.scrape_interval.is_none() {
            policy.prometheus.scrape_interval =
                Some(Duration::from_secs_f64(model.measurement.scrape_interval));
        }
        let policy = &policy;
        let mut setup = Setup {
            policy: policy.clone(),
            model: model.clone(),
            scenario: scenario.clone(),
            seed,
            trace,
            start,
            kinds,
            baselines: BTreeMap::new(),
            levels: Vec::new(),
            judged: Vec::new(),
            quiet,
            caps: Vec::new(),
            table_rows: None,
        };
        setup.baselines = setup.measure_baselines()?;
        let ctrl = Controller::new(policy, &setup.baselines)?;
        setup.levels = ctrl.levels().to_vec();
        setup.judged = setup
            .levels
            .iter()
            .zip(&setup.kinds)
            .map(|(l, k)| JudgedLevels {
                slow: l.slow.map(|v| k.truth_at(v, model)),
                stop: l.stop.map(|v| k.truth_at(v, model)),
            })
            .collect();
        setup.caps = (0..setup.trace.ticks.len())
            .map(|i| ctrl.caps_at(setup.instant(i)).0)
            .collect();
        Ok(setup)
    }

    pub fn dt(&self) -> f64 {
        self.trace.dt
    }

    /// Ticks of the backfill itself (after the pre-start history).
    pub fn run_ticks(&self) -> usize {
        self.trace.ticks.len() - self.trace.start_index
    }

    pub fn simulated_seconds(&self) -> f64 {
        self.run_ticks() as f64 * self.dt()
    }

    /// Start instant of tick `i` of the trace.
    pub fn instant(&self, i: usize) -> DateTime<Utc> {
        let offset = (i as f64 - self.trace.start_index as f64) * self.dt();
        self.start + chrono::Duration::milliseconds((offset * 1000.0).round() as i64)
    }

    /// A fresh measurement stream: every strategy run of one seed sees the
    /// same noise draws for the same pre-start history.
    pub fn measure_rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ 0x6d65_6173_7572_6500)
    }

    /// The batches' own draws (durations, errors, locked rows), apart from
    /// the measurement noise.
    pub fn dispatch_rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ 0x6469_7370_6174_6368)
    }

    /// Each signal's measurement pipeline: a Prometheus signal looks back
    /// over its own query's range, and its scrapes fall at a phase drawn
    /// from the seed (the same for every strategy run of the seed).
    pub fn meters(&self) -> Vec<Meter> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7068_6173_6500);
        self.kinds
            .iter()
            .zip(&self.policy.signals)
            .map(|(k, sig)| {
                let phase: f64 = rand::RngExt::random(&mut rng);
                Meter::new(*k, &self.model, self.dt(), self.window_of(sig), phase)
            })
            .collect()
    }

    /// The look-back of a signal's query in seconds, when it has one.
    pub fn window_of(&self, sig: &crate::policy::Signal) -> Option<f64> {
        let q = sig.prometheus.as_deref()?;
        crate::signals::promql::lookback(q)
            .ok()
            .flatten()
            .map(|d| d.as_secs_f64())
    }

    /// How long a change of rate takes to show fully in the slowest of the
    /// policy's signals: a Prometheus signal's look-back plus one scrape
    /// interval, a heartbeat, a 10 s WAL-rate sample; at least one tick.
    pub fn measurement_delay(&self) -> f64 {
        let ms = &self.model.measurement;
        self.kinds
            .iter()
            .zip(&self.policy.signals)
            .map(|(k, sig)| match k {
                SimKind::Latency | SimKind::ErrorRate => {
                    self.window_of(sig).unwrap_or(ms.prometheus_window) + ms.scrape_interval
                }
                SimKind::LagSeconds => ms.heartbeat_interval,
                SimKind::WalBytesPerSecond => 10.0,
                _ => 0.0,
            })
            .fold(self.dt(), f64::max)
    }

    /// As a real run does: the median of each signal over `baseline.window`
    /// before start, from what the measurement would have read.
    fn measure_baselines(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let mut rng = self.measure_rng();
        let mut meters = self.meters();
        let from = self.trace.start_index.saturating_sub(
            (self.policy.baseline.window.as_secs_f64() / self.dt()).round() as usize,
        );
        let mut seen: Vec<Vec<f64>> = vec![Vec::new(); meters.len()];
        for i in 0..self.trace.start_index {
            for (j, m) in meters.iter_mut().enumerate() {
                if let Some(v) = m.observe(&self.quiet[i], &self.model, self.dt(), &mut rng)
                    && i >= from
                {
                    seen[j].push(v);
                }
            }
        }
        let mut out = BTreeMap::new();
        for ((sig, vals), _) in self.policy.signals.iter().zip(seen).zip(&self.kinds) {
            if sig.baseline.is_some() || !sig.needs_baseline() {
                continue;
            }
            if vals.len() < self.policy.baseline.min_samples as usize {
                anyhow::bail!(
                    "signal {:?}: only {} samples in the baseline window, baseline.min_samples is {}",
                    sig.name,
                    vals.len(),
                    self.policy.baseline.min_samples
                );
            }
            out.insert(sig.name.clone(), median(vals));
        }
        Ok(out)
    }

    /// The true value a signal must stay under for the safe-rate bound:
    /// its slow level's, or its stop level's when it has none (HTTP checks).
    pub fn safe_level(&self, j: usize) -> Option<f64> {
        self.judged[j].slow.or(self.judged[j].stop)
    }
}

/// A signal's slow and stop levels as true values.
#[derive(Debug, Clone, Copy)]
pub struct JudgedLevels {
    pub slow: Option<f64>,
    pub stop: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
