//! The AIMD controller: a pure state machine.
//!
//! `Controller::step(now, &Inputs) -> Decision` does no I/O, reads no clock,
//! draws no random numbers: time and observations come in as arguments. The
//! same controller therefore runs in production, in the simulator and in
//! tests, and the same inputs always give the same decisions.
//!
//! The rules, in order (see DESIGN.md and `docs/CONTROLLER.md`):
//! 1. a manual pause or a pause window pauses;
//! 2. a signal in stop (sustained for `stop_for`) or missing beyond
//!    `missing_grace` with `on_missing = "pause"` pauses, remembering the last
//!    calm knobs;
//! 3. a paused job resumes only after every signal stayed calm for
//!    `resume_after`: after a signal pause at min(last calm rate, `beta` ×
//!    the rate at the pause), after a manual or window pause with its knobs;
//!    growth is held for `hold_after_resume`, so a signal tripping again
//!    during that hold resumes another `beta` lower;
//! 4. a slow signal, a batch over `target_batch_time`, or a lock timeout /
//!    deadlock cuts the effective rate once by a factor between `beta` and 1
//!    (deeper the closer the signal is to its stop level), spread over the
//!    knobs, then waits for a recovery epoch before cutting again;
//! 5. all calm: additive increase, a worker more only after a calm spell and
//!    only while the current workers are busy;
//! 6. everything is clamped to the policy limits and the active windows' caps.

mod decision;
mod estimate;
mod knobs;

pub use decision::{
    Action, BatchError, BatchOutcome, Cause, Decision, Inputs, ManualPause, SignalView, State, View,
};
/// Formatting shared with the logs and the report.
pub use decision::{fmt_dur, knob_delta, num};
pub use knobs::{Caps, Knobs};

use std::time::Duration;

use chrono::{DateTime, Utc};

use estimate::{Estimator, Smoothing, StopLevels};

use crate::policy::{ControllerConfig, Limits, OnMissing, Policy, Schedule, Signal};

/// Controller time: wall-clock instants handed in by the caller.
pub type Time = DateTime<Utc>;

/// A signal's levels, resolved against its baseline once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalLevels {
    pub name: String,
    pub slow: Option<f64>,
    pub stop: Option<f64>,
    pub baseline: Option<f64>,
    /// The level expressions as written, for explanations.
    pub slow_expr: Option<String>,
    pub stop_expr: Option<String>,
    pub stop_for: Duration,
    pub on_missing: OnMissing,
    /// Lock contention grows with how long each transaction holds its rows,
    /// so a cut for this signal shrinks the batch rather than only the rate.
    pub lock_bound: bool,
    /// How long a change of rate takes to show fully in this signal: the
    /// source's own delay (a PromQL range plus the scrape interval, a
    /// counting window, a tick) plus the estimate's smoothing. A signal
    /// too noisy for its levels is smoothed longer at run time, and its
    /// delay in force grows with it (`Controller::growth_delay`).
    pub delay: Duration,
    /// How the estimate is formed.
    pub smoothing: Smoothing,
    /// How long a repeated reading is taken as the same sample.
    pub repeat_after: Duration,
}

/// Each signal of `policy` resolved once: its levels against `baselines`
/// (by signal name, falling back to a signal's fixed `baseline` key), its
/// measurement delay and smoothing. The controller runs on these, and a
/// report draws the same levels without building a controller.
pub fn resolve_levels(
    policy: &Policy,
    baselines: &std::collections::BTreeMap<String, f64>,
) -> Result<Vec<SignalLevels>, ControllerError> {
    let mut signals = Vec::new();
    let scrape = policy.prometheus.scrape_interval.unwrap_or(DEFAULT_SCRAPE);
    for s in &policy.signals {
        let (delay, smoothing) = delay_of(s, &policy.controller, scrape);
        // Only a Prometheus value repeats between scrapes.
        let repeat_after = if s.prometheus.is_some() {
            scrape.saturating_mul(3) / 2
        } else {
            Duration::ZERO
        };
        let baseline = baselines.get(&s.name).copied().or(s.baseline);
        let resolve =
            |lvl: Option<crate::policy::Level>| -> Result<Option<f64>, ControllerError> {
                match lvl {
                    None => Ok(None),
                    Some(l) => l.resolve(baseline).map(Some).ok_or_else(|| {
                        ControllerError::MissingBaseline {
                            signal: s.name.clone(),
                            level: l.to_string(),
                        }
                    }),
                }
            };
        let (slow, stop) = if s.is_http() {
            // 0 = 2xx, 1 = anything else: stop at once.
            (None, Some(0.5))
        } else {
            (resolve(s.slow_above)?, resolve(s.stop_above)?)
        };
        signals.push(SignalLevels {
            name: s.name.clone(),
            slow,
            stop,
            baseline,
            slow_expr: s.slow_above.map(|l| l.to_string()),
            stop_expr: s.stop_above.map(|l| l.to_string()),
            stop_for: s.stop_for,
            on_missing: s.on_missing,
            lock_bound: matches!(
                s.sim_kind(),
                Some("lock_waiters" | "blocked_by_pacer" | "ddl_waiting")
            ),
            delay,
            smoothing,
            repeat_after,
        });
    }
    Ok(signals)
}

/// How far past slow a signal may go before stop, as a share of its room
/// below slow (from its baseline, or from zero), for the signal where that
/// is least; infinite when no signal has both levels.
///
/// Growth approaches the last trouble spot additively, and with a signal's
/// delay the rate overshoots that spot before the signal shows it. Where
/// stop sits far above slow (the shipped policies: 1.5 and 1.0), the
/// overshoot ends in a cut; where it sits just above (`slow/stop 1.4/1.5`:
/// 0.25), the same overshoot crosses stop. There, growth flattens near the
/// spot as CUBIC's window does at W_max (its growth ∝ distance^(2/3)).
fn narrowest_band(signals: &[SignalLevels]) -> f64 {
    signals
        .iter()
        .filter_map(|s| {
            let (slow, stop) = (s.slow?, s.stop?);
            let floor = s.baseline.filter(|b| *b < slow).unwrap_or(0.0);
            (slow > floor).then(|| (stop - slow) / (slow - floor))
        })
        .fold(f64::INFINITY, f64::min)
}

/// Default scrape interval of Prometheus, when the policy does not say.
pub const DEFAULT_SCRAPE: Duration = Duration::from_secs(15);

/// Counting window of Poisson-like count signals.
const COUNT_WINDOW: Duration = Duration::from_secs(30);

/// Additive growth per measurement delay once the rate is above half the
/// rate of the last cut, as a share of that rate (CUBIC's idea: approach
/// the last known trouble spot slowly).
const NEAR_CUT_STEP: f64 = 0.1;

/// The least share of `NEAR_CUT_STEP` growth keeps at the last trouble
/// spot itself, however narrow the band from slow to stop (see
/// `narrowest_band`).
const PLATEAU_FLOOR: f64 = 0.25;

/// The least share of the growth bound a calm tick keeps near slow (see
/// `Controller::headroom`). On tuning seeds 1–5 (as-shipped policies, high
/// noise) 0.5 kept the worst seed's time above stop at 0.11 % for 0.02–0.03
/// of efficiency; 0.25 cost twice that for no more safety.
const HEADROOM_FLOOR: f64 = 0.5;

/// A cut or pause at up to this multiple of the slowest rate the limits
/// allow marks no trouble spot (see `Controller::trouble_spot`).
const NO_SPOT_BELOW: f64 = 1.5;

/// A new raw reading this many of its signal's standard deviations above
/// slow, while the estimate is still at or below it, holds growth for the
/// signal's delay (see `Controller::guard_until`).
const GUARD_SIGMAS: f64 = 2.0;

/// Standard deviations of its measured noise a new reading must be above
/// stop to count as trouble the last cut did not explain before the
/// estimate is there. More than `GUARD_SIGMAS`: a latency quantile from
/// few requests has a long upper tail that a deviation measured from the
/// median of differences understates, and this cuts where that only holds
/// growth.
const RAW_STOP_SIGMAS: f64 = 3.0;

/// Where the batch size puts a lock-bound signal, as a share of its slow
/// level (see `Controller::lock_batch`).
const LOCK_AIM: f64 = 0.5;

/// A signal's measurement delay and smoothing, from its source.
fn delay_of(s: &Signal, cfg: &ControllerConfig, scrape: Duration) -> (Duration, Smoothing) {
    let tick = cfg.tick;
    if let Some(q) = s.prometheus.as_deref() {
        // The policy's `delay` (required when the query has no range, e.g.
        // a recording rule) already includes the scrape; else the query's
        // look-back plus the scrape interval.
        let (range, source) = match s.delay {
            Some(d) => (d, d),
            None => {
                let range = crate::signals::promql::lookback(q)
                    .ok()
                    .flatten()
                    .unwrap_or(scrape);
                (range, range.saturating_add(scrape))
            }
        };
        let tau = cfg.smoothing.max(range / 2);
        return (
            source.saturating_add(tau),
            Smoothing::Ewma { tau, window: range },
        );
    }
    if s.is_http() {
        return (
            tick,
            Smoothing::Ewma {
                tau: Duration::ZERO,
                window: tick,
            },
        );
    }
    match s.postgres.as_deref() {
        Some("lock_waiters" | "blocked_by_pacer") => {
            let w = COUNT_WINDOW.max(tick.saturating_mul(3));
            ((w / 2).saturating_add(tick), Smoothing::Window(w))
        }
        Some("ddl_waiting") => (
            tick,
            Smoothing::Ewma {
                tau: Duration::ZERO,
                window: tick,
            },
        ),
        _ => (
            tick.saturating_add(cfg.smoothing),
            Smoothing::Ewma {
                tau: cfg.smoothing,
                window: tick,
            },
        ),
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControllerError {
    #[error("signal {signal:?}: {level} is relative to a baseline, but no baseline was captured")]
    MissingBaseline { signal: String, level: String },
}

/// Per-signal memory between ticks.
#[derive(Debug, Clone)]
struct Track {
    /// The estimate and the stop rule's bookkeeping.
    est: Estimator,
    /// First tick of the current uninterrupted spell without a value.
    missing_since: Option<Time>,
    /// The estimate at each tick of the current pause, back to the one
    /// a delay ago (see `Controller::unresponsive_for`).
    paused_trail: std::collections::VecDeque<(Time, f64)>,
    /// How far the estimate was above slow when it last asked for a cut;
    /// cleared once it is calm again.
    excess_at_cut: Option<f64>,
}

/// How one signal reads at this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Calm,
    /// Missing within grace, or `on_missing = "hold"`: neither grow nor cut.
    Hold,
    Slow,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Running,
    Paused {
        since: Time,
        /// What paused the job, as a comparable key (signal names, manual, window).
        key: Vec<String>,
        /// Knobs to resume with.
        resume_knobs: Knobs,
        /// Knobs in force when a signal paused the job: the resume starts
        /// at no more than `beta` × their rate.
        at_pause: Option<Knobs>,
    },
}

/// The controller. Every field is state carried between ticks.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControllerConfig,
    limits: Limits,
    signals: Vec<SignalLevels>,
    windows: Vec<(String, Schedule, Caps)>,
    /// The knobs in force.
    knobs: Knobs,
    mode: Mode,
    track: Vec<Track>,
    /// Start of the current spell in which every signal was calm.
    calm_since: Option<Time>,
    /// Knobs at the last tick where every signal was calm; a signal pause
    /// resumes from these rather than from the knobs that caused trouble.
    last_calm_knobs: Knobs,
    /// Time of the last decrease; with `epoch_open`, the recovery epoch.
    last_decrease: Option<Time>,
    /// True until a batch started after the last decrease has completed:
    /// slow readings before that reflect the old knobs, not the new ones.
    epoch_open: bool,
    /// End of the no-growth hold after a resume.
    hold_until: Option<Time>,
    /// Last time the worker count changed (up or down): workers grow only
    /// after `worker_after` of calm since then.
    workers_changed_at: Option<Time>,
    /// Batch size that last caused lock contention: growth stops below it
    /// and concurrency grows instead (more workers with smaller batches hold
    /// fewer rows each), until a long calm spell clears it.
    batch_ceiling: Option<u32>,
    /// Smoothed seconds per row, learned from batch outcomes.
    secs_per_row: Option<f64>,
    last_tick: Option<Time>,
    /// The first tick: a cut within a signal's delay of it says nothing
    /// about the backfill's rate.
    started: Option<Time>,
    /// How long the current recovery epoch lasts at least: the delay of
    /// the signals that caused the cut (their readings before then still
    /// show the old rate).
    epoch_delay: Duration,
    /// Effective rate (rows/s) when trouble last appeared (a cut or a
    /// pause): growth turns additive above half of it.
    rate_at_cut: Option<f64>,
    /// Last rate-neutral batch shrink after a batch-level hiccup.
    last_resize: Option<Time>,
    /// No growth before this: a new raw reading came in well above slow
    /// while the estimate was still below it. The estimate trails the
    /// readings by the smoothing, and growth by the full bound through
    /// that lag carried the live p95 past stop at the knee of the latency
    /// curve before the estimate reached slow (docs/BENCHMARKS.md, live
    /// rounds of 2026-12-06 and 2026-12-07). Growth waits until the estimate has taken
    /// the reading in: a real rise then cuts, a noisy one is forgotten.
    guard_until: Option<Time>,
    /// The rate in force at each recent tick, over the longest signal
    /// delay: a signal's trouble shows the rates of its delay before, and
    /// that is the spot growth should approach slowly (see `spot_at`).
    recent_rates: std::collections::VecDeque<(Time, f64)>,
    /// The share of `NEAR_CUT_STEP` growth keeps at the last trouble spot
    /// (see `narrowest_band`).
    plateau: f64,
}

impl Controller {
    /// Build a controller for `policy`; relative levels are resolved against
    /// `baselines` (by signal name), falling back to a signal's fixed
    /// `baseline` key.
    pub fn new(
        policy: &Policy,
        baselines: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Controller, ControllerError> {
        let signals = resolve_levels(policy, baselines)?;
        let windows = policy
            .windows
            .iter()
            .zip(policy.schedules())
            .map(|(w, sched)| {
                (
                    w.name.clone(),
                    sched,
                    Caps {
                        pause: w.pause,
                        max_batch_size: w.max_batch_size,
                        max_workers: w.max_workers,
                        min_sleep: w.min_sleep,
                    },
                )
            })
            .collect();
        let l = &policy.limits;
        let knobs = Knobs {
            batch_size: l.batch_size.start,
            sleep: l.sleep.start,
            workers: l.workers.start,
        };
        let plateau = narrowest_band(&signals).clamp(PLATEAU_FLOOR, 1.0);
        Ok(Controller {
            cfg: policy.controller.clone(),
            limits: l.clone(),
            track: signals
                .iter()
                .map(|s| Track {
                    est: Estimator::new(s.smoothing, s.repeat_after, noise_gap(s)),
                    missing_since: None,
                    paused_trail: Default::default(),
                    excess_at_cut: None,
                })
                .collect(),
            signals,
            windows,
            knobs,
            mode: Mode::Running,
            calm_since: None,
            last_calm_knobs: knobs,
            last_decrease: None,
            epoch_open: false,
            hold_until: None,
            workers_changed_at: None,
            batch_ceiling: None,
            secs_per_row: None,
            last_tick: None,
            started: None,
            epoch_delay: Duration::ZERO,
            rate_at_cut: None,
            last_resize: None,
            guard_until: None,
            recent_rates: Default::default(),
            plateau,
        })
    }

    /// The current estimate of each signal, in policy order.
    pub fn estimates(&self) -> Vec<Option<f64>> {
        self.track.iter().map(|t| t.est.estimate()).collect()
    }

    /// How far back each signal's readings from before the run are worth
    /// fetching for `prime`, in policy order (`None`: none are used).
    pub fn history_wanted(&self) -> Vec<Option<Duration>> {
        self.track.iter().map(|t| t.est.history_span()).collect()
    }

    /// Fold each signal's readings from before the run into its estimate
    /// (policy order, oldest first; empty for none), before the first
    /// `step`: see `Estimator::prime`.
    pub fn prime(&mut self, history: &[Vec<(Time, f64)>]) {
        for (t, h) in self.track.iter_mut().zip(history) {
            t.est.prime(h);
        }
    }

    /// The slowest signal's measurement delay in force (a noisy signal
    /// smoothed longer counts with its longer delay): growth is bounded
    /// per it.
    pub fn growth_delay(&self) -> Duration {
        (0..self.signals.len())
            .map(|i| self.delay_now(i))
            .max()
            .unwrap_or_default()
            .max(self.cfg.tick)
    }

    /// Signal `i`'s delay now: its source's and its smoothing's, longer
    /// while its noise asks for longer smoothing.
    fn delay_now(&self, i: usize) -> Duration {
        self.signals[i]
            .delay
            .saturating_add(self.track[i].est.extra_delay())
    }

    /// Effective rate of `k` with the learned time per row.
    pub fn rate_of(&self, k: &Knobs) -> f64 {
        k.rate(self.spr() * k.batch_size as f64)
    }

    /// `rate` as the trouble spot growth approaches slowly; none
    /// within `NO_SPOT_BELOW` × the slowest the limits allow: the backfill can go no
    /// slower, so trouble there is the traffic's own and says nothing
    /// about where the backfill's starts (orders-status paused at 10 rows/s
    /// when the simulated business day's capacity fell to nothing).
    fn trouble_spot(&self, rate: f64) -> Option<f64> {
        (rate > NO_SPOT_BELOW * self.rate_of(&Knobs::slowest(&self.limits))).then_some(rate)
    }

    /// The trouble spot of trouble seen at `now` by signals of `delay`:
    /// the mean rate in force over that delay before (`step` records this
    /// tick's before it can cut or pause), which is what their readings
    /// show, not the rate growth has reached since.
    fn spot_at(&self, now: Time, delay: Duration) -> Option<f64> {
        let from = earlier(now, delay);
        let (n, sum) = self
            .recent_rates
            .iter()
            .filter(|(t, _)| *t >= from)
            .fold((0usize, 0.0), |(n, s), (_, r)| (n + 1, s + r));
        (n > 0)
            .then(|| sum / n as f64)
            .and_then(|r| self.trouble_spot(r))
    }

    /// Learned seconds per row, or a guess that puts the start batch at
    /// half the batch-time target.
    fn spr(&self) -> f64 {
        self.secs_per_row.unwrap_or(
            self.cfg.target_batch_time.as_secs_f64()
                / 2.0
                / self.limits.batch_size.start.max(1) as f64,
        )
    }

    /// Start from knobs stored by an earlier run (resume keeps its knobs).
    pub fn with_knobs(mut self, knobs: Knobs) -> Controller {
        self.knobs = knobs.clamp(&self.limits, &Caps::default());
        self.last_calm_knobs = self.knobs;
        self
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs
    }

    pub fn levels(&self) -> &[SignalLevels] {
        &self.signals
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.mode, Mode::Paused { .. })
    }

    /// The caps of every window active at `now`, merged (tightest wins).
    pub fn caps_at(&self, now: Time) -> (Caps, Vec<String>) {
        let mut caps = Caps::default();
        let mut names = Vec::new();
        for (name, sched, c) in &self.windows {
            if sched.contains(now) {
                caps = caps.merge(c);
                names.push(name.clone());
            }
        }
        (caps, names)
    }

    /// One tick: classify the readings, apply the rules, return the decision.
    pub fn step(&mut self, now: Time, inputs: &Inputs) -> Decision {
        let before = self.knobs;
        self.started.get_or_insert(now);
        if !self.is_paused() {
            let from = earlier(now, self.growth_delay());
            while self.recent_rates.front().is_some_and(|(t, _)| *t < from) {
                self.recent_rates.pop_front();
            }
            self.recent_rates.push_back((now, self.rate_of(&before)));
        }
        let mut causes = Vec::new();
        // Batch time as known before this tick's batches: one outlier
        // folded in would make itself look sustained.
        let usual_batch_secs = self.bt();
        self.learn(inputs);

        // Classify every signal.
        let mut classes = Vec::with_capacity(self.signals.len());
        let mut worst_slow_factor: Option<f64> = None;
        // Some estimate is above its stop level (not yet sustained).
        let mut deeper = false;
        // Every slow signal is still on its way down from the last cut.
        let mut explained = true;
        // Calm signals with a new raw reading well above slow.
        let mut guarded = Vec::new();
        for (i, sig) in self.signals.iter().enumerate() {
            let reading = inputs.readings.get(i);
            let fresh = reading.and_then(|r| {
                let age = (now - r.at).to_std().unwrap_or_default();
                r.value.filter(|_| age <= self.cfg.missing_grace)
            });
            let track = &mut self.track[i];
            let class = match fresh {
                None => {
                    track.est.missing();
                    let since = *track.missing_since.get_or_insert(now);
                    let gone = (now - since).to_std().unwrap_or_default();
                    let reason = reading
                        .and_then(|r| r.missing.clone())
                        .unwrap_or_else(|| "no reading".into());
                    if gone < self.cfg.missing_grace {
                        causes.push(Cause::Missing {
                            signal: sig.name.clone(),
                            reason,
                            missing_for: gone,
                            on_missing: None,
                        });
                        Class::Hold
                    } else {
                        let class = match sig.on_missing {
                            OnMissing::Pause => Class::Stop,
                            OnMissing::Hold => Class::Hold,
                            OnMissing::Ignore => Class::Calm,
                        };
                        if class != Class::Calm {
                            causes.push(Cause::Missing {
                                signal: sig.name.clone(),
                                reason,
                                missing_for: gone,
                                on_missing: Some(sig.on_missing),
                            });
                        }
                        class
                    }
                }
                Some(v) => {
                    track.missing_since = None;
                    track.est.observe(now, v);
                    let e = track.est.estimate().unwrap_or(v);
                    let signal_cause =
                        |level: &'static str, threshold: f64, expr: &Option<String>| {
                            Cause::Signal {
                                signal: sig.name.clone(),
                                value: v,
                                estimate: Some(e),
                                level,
                                threshold,
                                expr: expr.clone(),
                                baseline: sig.baseline,
                            }
                        };
                    let stopped = sig.stop.is_some_and(|stop| {
                        let levels = StopLevels {
                            stop,
                            slow: sig.slow,
                        };
                        track.est.stop(now, v, levels, sig.stop_for)
                    });
                    match (sig.stop, sig.slow) {
                        (Some(stop), _) if stopped => {
                            causes.push(signal_cause("stop", stop, &sig.stop_expr));
                            Class::Stop
                        }
                        // Above stop but not (yet) for stop_for: the
                        // deepest cut, judged on the estimate so one noisy
                        // reading does not halve the rate.
                        (Some(stop), _) if e > stop => {
                            causes.push(signal_cause("stop", stop, &sig.stop_expr));
                            worst_slow_factor = Some(self.cfg.beta);
                            deeper = true;
                            Class::Slow
                        }
                        // A new reading above stop by more than its
                        // measured noise explains is trouble the last cut
                        // did not explain, before the estimate gets there:
                        // the estimate trails a sudden rise (a flash crowd)
                        // by its time constant, while the epoch of a cut
                        // made before the rise held every further cut. It
                        // cuts by the estimate's depth (by the reading's,
                        // `beta`, the tuning days lost rows where the
                        // estimate's cut was enough), and again each
                        // cooldown while such readings go on. Not for
                        // counts: their estimate is a window's mean, which
                        // measures no noise (one tick's count is one
                        // Poisson draw).
                        (Some(stop), _)
                            if track.est.judged(now)
                                && track.est.fresh()
                                && track
                                    .est
                                    .sigma()
                                    .is_some_and(|n| v > stop + RAW_STOP_SIGMAS * n) =>
                        {
                            causes.push(signal_cause("stop", stop, &sig.stop_expr));
                            let f = sig.slow.map_or(self.cfg.beta, |slow| {
                                slow_factor(
                                    self.cfg.beta,
                                    e.max(slow),
                                    slow,
                                    sig.stop,
                                    sig.baseline,
                                )
                            });
                            worst_slow_factor = Some(worst_slow_factor.map_or(f, |w| w.min(f)));
                            deeper = true;
                            Class::Slow
                        }
                        // Too little evidence yet to call it slow or calm:
                        // neither cut nor grow on it.
                        _ if !track.est.judged(now) => Class::Hold,
                        (_, Some(slow)) if e > slow => {
                            causes.push(signal_cause("slow", slow, &sig.slow_expr));
                            let f = slow_factor(self.cfg.beta, e, slow, sig.stop, sig.baseline);
                            worst_slow_factor = Some(worst_slow_factor.map_or(f, |w| w.min(f)));
                            explained &= track.excess_at_cut.is_some_and(|x| e - slow <= x / 2.0);
                            Class::Slow
                        }
                        _ => {
                            track.excess_at_cut = None;
                            let noise = track.est.sigma().unwrap_or(0.0);
                            if let (Some(slow), Smoothing::Ewma { .. }) = (sig.slow, sig.smoothing)
                                && track.est.fresh()
                                && v > slow + GUARD_SIGMAS * noise
                            {
                                guarded.push((i, v, e, slow, noise));
                            }
                            Class::Calm
                        }
                    }
                }
            };
            classes.push(class);
        }
        for (i, value, estimate, threshold, noise) in guarded {
            let hold = self.delay_now(i);
            let until = later(now, hold);
            // Only a new hold is named: a reading that extends one already
            // running would otherwise put a line in the log every scrape.
            let new_hold = self.guard_until.is_none_or(|g| now >= g);
            self.guard_until = Some(self.guard_until.map_or(until, |g| g.max(until)));
            if !new_hold {
                continue;
            }
            causes.push(Cause::RawAboveSlow {
                signal: self.signals[i].name.clone(),
                value,
                estimate,
                threshold,
                noise,
                hold,
            });
        }
        let worst = classes.iter().copied().max().unwrap_or(Class::Calm);
        if worst == Class::Calm {
            self.calm_since.get_or_insert(now);
        } else {
            self.calm_since = None;
        }

        let (caps, active_windows) = self.caps_at(now);

        // Rule 1 and 2: what demands a pause right now.
        let mut pause_key = Vec::new();
        let mut pause_causes = Vec::new();
        if let Some(m) = &inputs.manual_pause {
            pause_key.push("manual".to_string());
            pause_causes.push(Cause::Manual {
                by: m.by.clone(),
                reason: m.reason.clone(),
            });
        }
        if caps.pause {
            for (name, _, c) in &self.windows {
                if c.pause && active_windows.contains(name) {
                    pause_key.push(format!("window:{name}"));
                    pause_causes.push(Cause::Window {
                        window: name.clone(),
                    });
                }
            }
        }
        for (i, c) in classes.iter().enumerate() {
            if *c == Class::Stop {
                pause_key.push(format!("signal:{}", self.signals[i].name));
            }
        }
        let stop_causes: Vec<Cause> = causes
            .iter()
            .filter(|c| match c {
                Cause::Signal { signal, level, .. } => {
                    *level == "stop" && pause_key.iter().any(|k| k == &format!("signal:{signal}"))
                }
                Cause::Missing { on_missing, .. } => *on_missing == Some(OnMissing::Pause),
                _ => false,
            })
            .cloned()
            .collect();
        pause_causes.extend(stop_causes);

        let batch_causes = self.batch_causes(inputs);

        let (action, state) = if !pause_key.is_empty() {
            causes = pause_causes;
            self.pause(now, pause_key)
        } else if let Mode::Paused { resume_knobs, .. } = &self.mode {
            let resume_knobs = *resume_knobs;
            let calm_for = elapsed(now, self.calm_since);
            if worst == Class::Calm && calm_for >= self.cfg.resume_after {
                causes = vec![Cause::Calm { calm_for }];
                self.resume(now, resume_knobs);
                (Action::Resume, State::Running)
            } else {
                if worst == Class::Calm {
                    causes.push(Cause::Calm { calm_for });
                }
                (Action::Hold, State::Paused)
            }
        } else {
            // Running.
            if worst == Class::Calm {
                self.last_calm_knobs = self.knobs;
            }
            let mut factor = worst_slow_factor;
            // Batch-level hiccups shrink the batch but keep the rate.
            let mut resize: Option<f64> = None;
            let mut batch_cut = false;
            for c in &batch_causes {
                let (f, hiccup) = match c {
                    // One slow batch while batches are on target on
                    // average is noise (a checkpoint, a cache miss); a
                    // smoothed batch time over target is the database
                    // slowing down under the backfill: a cut.
                    Cause::SlowBatch { duration, target } => (
                        (target.as_secs_f64() / duration.as_secs_f64()).max(self.cfg.beta),
                        usual_batch_secs <= target.as_secs_f64(),
                    ),
                    // An odd lock timeout or deadlock is the application's
                    // own contention: smaller batches hold fewer of its
                    // rows. A quarter of the tick's batches failing is
                    // pacer's: β.
                    Cause::BatchError { count, .. }
                        if *count < 2 || (*count as f64) < 0.25 * inputs.batches.len() as f64 =>
                    {
                        (mild_factor(self.cfg.beta), true)
                    }
                    _ => (self.cfg.beta, false),
                };
                batch_cut |= !hiccup;
                let slot = if hiccup { &mut resize } else { &mut factor };
                *slot = Some(slot.map_or(f, |w| w.min(f)));
            }
            causes.extend(batch_causes.iter().cloned());
            if factor.is_none()
                && let Some(f) = resize
            {
                // Rate-neutral: batch and sleep shrink together. A cut of
                // the rate here, every few minutes on a noisy day, undid
                // the additive growth near the last trouble spot (the
                // seed's demo-live policy sat at half its bound for ten
                // minutes on a steady day, tuning seed 3).
                if self
                    .last_resize
                    .is_none_or(|t| (now - t).to_std().unwrap_or_default() >= self.cfg.cooldown)
                {
                    self.knobs = self.knobs.shrink_batch(f, &self.limits, &caps);
                    self.last_resize = Some(now);
                    (Action::Decrease, State::Running)
                } else {
                    (Action::Hold, State::Running)
                }
            } else if let Some(f) = factor {
                // Which signals ask for the cut: their delay is the epoch's.
                let cause_delay = classes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == Class::Slow)
                    .map(|(i, _)| self.delay_now(i))
                    .max()
                    .unwrap_or(self.cfg.tick);
                // Once the epoch is over, a signal still above slow but at
                // most half as far above it as at the last cut is that cut
                // still showing through its measurement window (one delay
                // shows about two thirds of a change through the
                // smoothing): cutting again would answer the same trouble
                // twice. For one more epoch at most: a signal that stays
                // above slow is cut below it in the end. A batch cause or a
                // signal past stop cuts regardless.
                let in_second_epoch = self.last_decrease.is_some_and(|d| {
                    (now - d).to_std().unwrap_or_default()
                        < self.epoch_delay.max(self.cfg.cooldown).saturating_mul(2)
                });
                let on_its_way = explained
                    && in_second_epoch
                    && !deeper
                    && !batch_cut
                    && worst_slow_factor.is_some();
                if !on_its_way && self.may_decrease(now, deeper) {
                    let lock_trouble = classes
                        .iter()
                        .zip(&self.signals)
                        .any(|(c, s)| *c == Class::Slow && s.lock_bound);
                    let shrink_batch = !batch_causes.is_empty() || lock_trouble;
                    self.knobs =
                        self.knobs
                            .decrease(f, shrink_batch, self.bt(), &self.limits, &caps);
                    if lock_trouble {
                        self.batch_ceiling = Some(self.knobs.batch_size);
                    }
                    if self.knobs.workers != before.workers {
                        self.workers_changed_at = Some(now);
                    }
                    // A signal's trouble marks a rate to approach slowly;
                    // a batch-level hiccup does not.
                    //
                    // Nor does a cut before the backfill has run for the
                    // delay of the signals that asked for it: their
                    // readings still describe the traffic without it (and
                    // pacer's own start). Live, a cut 5 s into a run, on
                    // a p95 spike at the start, made the start rate the
                    // spot, and growth crept additively from 1,500 to
                    // 2,600 rows/s in three minutes.
                    if worst_slow_factor.is_some() && elapsed(now, self.started) >= cause_delay {
                        self.rate_at_cut = self.spot_at(now, cause_delay);
                    }
                    for ((t, sig), c) in self.track.iter_mut().zip(&self.signals).zip(&classes) {
                        if let (Class::Slow, Some(slow), Some(e)) = (c, sig.slow, t.est.estimate())
                        {
                            t.excess_at_cut = Some(e - slow);
                        }
                    }
                    self.last_decrease = Some(now);
                    self.epoch_open = true;
                    self.epoch_delay = cause_delay;
                    (Action::Decrease, State::Slowing)
                } else {
                    (Action::Hold, State::Slowing)
                }
            } else if worst == Class::Calm
                && !inputs.app_limited
                && self.hold_until.is_none_or(|h| now >= h)
                && self.guard_until.is_none_or(|g| now >= g)
            {
                self.grow(now, inputs, &caps);
                (Action::Increase, State::Running)
            } else {
                (Action::Hold, State::Running)
            }
        };
        if self.hold_until.is_some_and(|h| now >= h) {
            self.hold_until = None;
        }

        let clamped = self.knobs.clamp(&self.limits, &caps);
        let mut action = action;
        if clamped != self.knobs {
            self.knobs = clamped;
            if action == Action::Hold {
                action = Action::Clamp;
            }
            for w in &active_windows {
                causes.push(Cause::Window { window: w.clone() });
            }
        }
        let action = if action == Action::Increase && self.knobs == before {
            Action::Hold
        } else {
            action
        };
        self.last_tick = Some(now);
        if matches!(self.mode, Mode::Paused { .. }) {
            for i in 0..self.track.len() {
                let delay = self.delay_now(i);
                let t = &mut self.track[i];
                let Some(e) = t.est.estimate() else { continue };
                t.paused_trail.push_back((now, e));
                // Keep one entry at or before a delay ago; a delay past
                // the start of time is never reached, and the first entry
                // is all that counts.
                match chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_sub_signed(d))
                {
                    Some(cutoff) => {
                        while t.paused_trail.get(1).is_some_and(|(at, _)| *at <= cutoff) {
                            t.paused_trail.pop_front();
                        }
                    }
                    None => t.paused_trail.truncate(1),
                }
            }
        }
        let view = self.view(now, inputs, state);
        Decision {
            at: now,
            state,
            action,
            before,
            knobs: self.knobs,
            causes,
            windows: active_windows,
            view,
        }
    }

    /// What this tick judged, for operators (see `View`).
    fn view(&self, now: Time, inputs: &Inputs, state: State) -> View {
        View {
            target_rate: if state == State::Paused {
                0.0
            } else {
                self.rate_of(&self.knobs)
            },
            signals: self
                .signals
                .iter()
                .zip(&self.track)
                .enumerate()
                .map(|(i, (s, t))| SignalView {
                    name: s.name.clone(),
                    raw: inputs.readings.get(i).and_then(|r| r.value),
                    estimate: t.est.estimate(),
                    delay: self.delay_now(i),
                    unresponsive_for: self.unresponsive_for(now, i),
                    noise: t.est.sigma(),
                    within_noise: t.est.within_noise(),
                })
                .collect(),
        }
    }

    /// How long the job has been paused by `s` without `s` responding to
    /// it, once that is clear. A pause stops every batch, so within
    /// `settle` (twice the signal's delay, and its `stop_for`) pacer's own
    /// effect leaves the estimate, or at least sets it falling. Still above
    /// stop then, and down by less than 2 % of its excess over the last
    /// delay, the signal is held up by something the backfill's current
    /// rate does not change: other load, dead row versions the backfill
    /// left for vacuum, a baseline taken in a quiet spell. A replica
    /// working off a backlog keeps falling, and is not flagged.
    fn unresponsive_for(&self, now: Time, i: usize) -> Option<Duration> {
        let (s, t, delay) = (&self.signals[i], &self.track[i], self.delay_now(i));
        let Mode::Paused { since, key, .. } = &self.mode else {
            return None;
        };
        if !key
            .iter()
            .any(|k| k.strip_prefix("signal:") == Some(&s.name))
        {
            return None;
        }
        let paused_for = (now - *since).to_std().unwrap_or_default();
        let (stop, e) = (s.stop?, t.est.estimate()?);
        let &(then, e_then) = t.paused_trail.front()?;
        let window = (now - then).to_std().unwrap_or_default();
        (paused_for >= settle(delay, s.stop_for)
            && window >= delay
            && e > stop
            && e_then - e < 0.02 * (e_then - stop))
            .then_some(paused_for)
    }

    /// Fold batch outcomes into the per-row time estimate and the recovery epoch.
    fn learn(&mut self, inputs: &Inputs) {
        for b in &inputs.batches {
            if b.error.is_none() && b.rows > 0 {
                let spr = b.duration.as_secs_f64() / b.rows as f64;
                self.secs_per_row = Some(match self.secs_per_row {
                    None => spr,
                    Some(old) => 0.8 * old + 0.2 * spr,
                });
            }
            if self.last_decrease.is_some_and(|d| b.started >= d) {
                self.epoch_open = false;
            }
        }
    }

    fn batch_causes(&self, inputs: &Inputs) -> Vec<Cause> {
        let mut out = Vec::new();
        let slowest = inputs
            .batches
            .iter()
            .filter(|b| b.error.is_none())
            .map(|b| b.duration)
            .max();
        if let Some(d) = slowest
            && d > self.cfg.target_batch_time
        {
            out.push(Cause::SlowBatch {
                duration: d,
                target: self.cfg.target_batch_time,
            });
        }
        for class in [
            BatchError::LockTimeout,
            BatchError::Deadlock,
            BatchError::StatementTimeout,
        ] {
            let count = inputs
                .batches
                .iter()
                .filter(|b| b.error == Some(class))
                .count();
            if count > 0 {
                out.push(Cause::BatchError {
                    error: class,
                    count,
                });
            }
        }
        out
    }

    /// Batch time at the current size, from the learned per-row time.
    fn bt(&self) -> f64 {
        let spr = self.secs_per_row.unwrap_or(
            self.cfg.target_batch_time.as_secs_f64() / 2.0 / self.limits.batch_size.start as f64,
        );
        spr * self.knobs.batch_size as f64
    }

    /// A decrease is allowed once the recovery epoch of the previous one is
    /// over: the cooldown has passed, a batch started after the cut has
    /// completed, and the cut could have shown in the signals that asked
    /// for it (their delay). One bad spell, seen late through a measurement
    /// window, cuts only once. A signal whose estimate went on past its
    /// stop level (`deeper`) is trouble the last cut did not explain: it
    /// may cut again after the cooldown.
    fn may_decrease(&self, now: Time, deeper: bool) -> bool {
        match self.last_decrease {
            None => true,
            Some(d) => {
                let since = (now - d).to_std().unwrap_or_default();
                if since < self.cfg.cooldown {
                    return false;
                }
                if deeper {
                    return true;
                }
                let epoch = self.epoch_delay.max(self.cfg.cooldown);
                since >= epoch && (!self.epoch_open || since >= epoch.saturating_mul(3))
            }
        }
    }

    /// Calm: raise the effective rate by the growth bound, then derive the
    /// knobs from it. The batch aims at half of `target_batch_time` (room
    /// for noisy batch times without tripping the slow-batch rule) and
    /// moves at most ×1.2 a tick; a worker is added only when the current
    /// ones, busy, cannot deliver the rate even without sleep; sleep takes
    /// the rest. Because sleep absorbs every change of batch or workers,
    /// no single step raises the rate by more than the bound.
    fn grow(&mut self, now: Time, inputs: &Inputs, caps: &Caps) {
        let c = &self.cfg;
        let l = &self.limits;
        let mut k = self.knobs;
        let spr = self.spr().max(1e-9);
        let rate = self.rate_of(&k);
        let target = self.growth_bound(now, rate);
        let calm_for = elapsed(now, self.calm_since);
        if calm_for >= c.worker_after.saturating_mul(4) {
            self.batch_ceiling = None;
        }
        let sleep_min = l.sleep.min.max(caps.min_sleep.unwrap_or_default());
        // Shorter batches cost nothing only while there is sleep to take
        // them from: with none left, each batch's fixed cost (its round
        // trip, its commit) would come out of the rate.
        let mut lock_batch = self.lock_batch(now, rate, target);
        if k.sleep <= sleep_min {
            lock_batch = lock_batch.max(k.batch_size);
        }
        let batch_max = l
            .batch_size
            .max
            .min(caps.max_batch_size.unwrap_or(u32::MAX))
            .min(self.batch_ceiling.unwrap_or(u32::MAX))
            .min(lock_batch)
            .max(l.batch_size.min);
        // Until a batch has been measured, grow the batch by steps only.
        let by_time = if inputs.batches.is_empty() && self.secs_per_row.is_none() {
            k.batch_size.saturating_add(c.batch_step)
        } else {
            (0.5 * c.target_batch_time.as_secs_f64() / spr).floor() as u32
        };
        let want = by_time.clamp(l.batch_size.min, batch_max);
        let up = ((k.batch_size as f64) * 1.2_f64.min(self.lock_batch_step(now))).floor() as u32;
        let down = ((k.batch_size as f64) / 1.2).ceil() as u32;
        k.batch_size = want.clamp(down.min(k.batch_size), up.max(k.batch_size));
        let b = k.batch_size as f64;
        let bt = b * spr;

        // One more worker when the current ones cannot deliver the target
        // even at the shortest sleep, after a calm spell since the last
        // change, and only while they are busy (app_limited is false here).
        let workers_max = l.workers.max.min(caps.max_workers.unwrap_or(u32::MAX));
        let since_change = self
            .workers_changed_at
            .map(|t| (now - t).to_std().unwrap_or_default())
            .unwrap_or(Duration::MAX);
        let reach = k.workers as f64 * b / (bt + sleep_min.as_secs_f64());
        if k.workers < workers_max
            && reach < target
            && calm_for >= c.worker_after
            && since_change >= c.worker_after
        {
            k.workers += 1;
            self.workers_changed_at = Some(now);
        }
        let sleep = k.workers as f64 * b / target - bt;
        k.sleep = Duration::try_from_secs_f64(sleep.max(0.0))
            .unwrap_or(l.sleep.max)
            .clamp(sleep_min.min(l.sleep.max), l.sleep.max);
        self.knobs = self.limit_growth(now, self.knobs, k);
    }

    /// The largest batch that keeps every lock-bound signal at about half
    /// its slow level at `target` rows/s. Waiters on pacer's locks grow as
    /// rate × batch time²: a batch holds its rows from the first update to
    /// its commit, on average half its duration, so the rows held at any
    /// moment are rate × T/2 and a live writer that meets one waits T/2
    /// (Little's law). At the same rate, a batch half as long halves the
    /// rows held and the wait, a quarter of the waiters; the rate stays
    /// whole. Half of slow leaves room for a count that is Poisson noise
    /// around its mean. Unbounded while the signal has not been judged or
    /// counts nothing.
    fn lock_batch(&self, now: Time, rate: f64, target: f64) -> u32 {
        let mut most = u32::MAX;
        for (s, t) in self.signals.iter().zip(&self.track) {
            let (true, Some(slow), Some(e)) = (s.lock_bound, s.slow, t.est.estimate()) else {
                continue;
            };
            // NaN or infinite where a rate or the estimate is zero: no bound.
            let share = LOCK_AIM * slow / e * rate / target;
            if !t.est.judged(now) || !share.is_finite() || share <= 0.0 {
                continue;
            }
            // Batch time is proportional to batch size at the learned
            // time per row, so the allowed time scales the batch alike.
            let allowed = self.knobs.batch_size as f64 * share.sqrt();
            most = most.min(allowed.floor().clamp(0.0, u32::MAX as f64) as u32);
        }
        most
    }

    /// The most the batch may grow in one tick while a lock-bound signal
    /// counts anything. Waiters on pacer's locks grow as rate × batch
    /// time² (`lock_batch`), so at the same rate a batch ×1.2 longer holds
    /// 1.44× the waiters: growing by ×1.2 a tick made the batch six times
    /// longer (the pressure ~38 times) in the ten seconds before a 30 s
    /// count could show it, and
    /// the cut that followed took minutes to regrow behind a slow p95's
    /// delay (`orders-status` at slow/stop 1.4/1.5 with a 60 s window:
    /// 0.62 of the bound, tuning seed 1). So the pressure grows by at most
    /// the growth bound per that signal's delay, as the rate does per the
    /// slowest signal's: the batch by its square root.
    fn lock_batch_step(&self, now: Time) -> f64 {
        let dt = self.tick_secs(now);
        let mut step = f64::INFINITY;
        for (i, (s, t)) in self.signals.iter().zip(&self.track).enumerate() {
            let counting = t.est.estimate().is_some_and(|e| e > 0.0);
            if s.lock_bound && counting && t.est.judged(now) {
                let d = self.delay_now(i).as_secs_f64().max(dt);
                step = step.min((1.0 + self.cfg.growth).powf(dt / d).sqrt());
            }
        }
        step
    }

    /// Seconds since the last tick (at least the tick).
    fn tick_secs(&self, now: Time) -> f64 {
        self.last_tick
            .map(|t| (now - t).to_std().unwrap_or_default())
            .unwrap_or(self.cfg.tick)
            .max(self.cfg.tick)
            .as_secs_f64()
    }

    /// The most the effective rate may rise in one tick: ×(1 + growth ×
    /// headroom) per measurement delay of the slowest signal (so no change
    /// is judged before it could have shown), and, once the rate is above half the
    /// rate of the last cut and up to 10 % above it, additive (+10 % of
    /// that rate per delay), flattening near that rate where the band from
    /// slow to stop is narrow (`narrowest_band`).
    pub fn growth_bound(&self, now: Time, rate: f64) -> f64 {
        let dt = self.tick_secs(now);
        let d = self.growth_delay().as_secs_f64().max(dt);
        let mult = rate * (1.0 + self.cfg.growth * self.headroom(now)).powf(dt / d);
        // Additive between half the rate of the last cut and a little
        // above it; past that the trouble spot has moved: probe again.
        match self.rate_at_cut {
            Some(cut) if rate > cut / 2.0 && rate < cut * 1.1 => {
                let near = ((1.0 - rate / cut).abs() / 0.5)
                    .powf(2.0 / 3.0)
                    .clamp(self.plateau, 1.0);
                mult.min(rate + NEAR_CUT_STEP * near * cut * dt / d)
            }
            _ => mult,
        }
    }

    /// The share of the growth bound a calm tick may use: the room left
    /// from the estimate up to slow, as a share of the room from baseline
    /// to slow, for every signal smoothed longer for its noise; at least
    /// `HEADROOM_FLOOR`, 1 with no such signal.
    ///
    /// A signal smoothed for noise trails its reading by up to six of its
    /// windows, and growing by the full bound until that estimate reaches
    /// slow carried the reading through stop before the estimate showed it
    /// (`demo-live`, `steady`, high noise, 15 s window, tuning seed 4: the
    /// estimate 0.1245 s against a reading of 0.134 s, stop 0.140 s, 2.6 %
    /// of the day above stop). Slowing growth as the estimate nears slow
    /// leaves the reading time to show.
    fn headroom(&self, now: Time) -> f64 {
        let mut h: f64 = 1.0;
        for (s, t) in self.signals.iter().zip(&self.track) {
            let (Some(slow), Some(base), Some(e)) = (s.slow, s.baseline, t.est.estimate()) else {
                continue;
            };
            if slow > base && t.est.extra_delay() > Duration::ZERO && t.est.judged(now) {
                h = h.min((slow - e) / (slow - base));
            }
        }
        h.clamp(HEADROOM_FLOOR, 1.0)
    }

    /// `proposed` knobs, with sleep raised so the effective rate rises by no
    /// more than the growth bound over `before`; `before` itself when even
    /// the longest sleep cannot hold it there.
    fn limit_growth(&self, now: Time, before: Knobs, proposed: Knobs) -> Knobs {
        let r0 = self.rate_of(&before);
        let r1 = self.rate_of(&proposed);
        let bound = self.growth_bound(now, r0);
        if r1 <= bound || !r0.is_finite() {
            return proposed;
        }
        let spr = self.spr();
        let w = proposed.workers as f64;
        let sleep = w * proposed.batch_size as f64 / bound - spr * proposed.batch_size as f64;
        let max = self.limits.sleep.max.as_secs_f64();
        if sleep.is_finite() && sleep >= 0.0 && sleep <= max {
            return Knobs {
                sleep: Duration::from_secs_f64(sleep).max(proposed.sleep),
                ..proposed
            };
        }
        // Even the longest sleep is too short for the proposed batch (a
        // crawl at the smallest knobs): keep the batch and shorten the
        // sleep, or else grow the batch only as far as the bound allows at
        // the longest sleep.
        let b0 = before.batch_size as f64;
        let sleep0 = w * b0 / bound - spr * b0;
        if sleep0.is_finite() && sleep0 >= 0.0 && sleep0 <= max && b0 <= proposed.batch_size as f64
        {
            return Knobs {
                batch_size: before.batch_size,
                sleep: Duration::from_secs_f64(sleep0),
                ..proposed
            };
        }
        let denom = w - bound * spr;
        let b = if denom > 0.0 {
            (bound * max / denom).floor()
        } else {
            0.0
        };
        if !(b.is_finite() && b > before.batch_size as f64) {
            return before;
        }
        Knobs {
            batch_size: (b as u32).min(proposed.batch_size),
            sleep: self.limits.sleep.max,
            ..proposed
        }
    }

    fn pause(&mut self, now: Time, key: Vec<String>) -> (Action, State) {
        match &mut self.mode {
            Mode::Paused { key: k, .. } => {
                // Already paused; keep the original cause for the resume
                // bookkeeping but remember any new ones.
                for c in key {
                    if !k.contains(&c) {
                        k.push(c);
                    }
                }
                (Action::Hold, State::Paused)
            }
            Mode::Running => {
                let manual_or_window = key.iter().all(|k| !k.starts_with("signal:"));
                let base = if manual_or_window {
                    self.knobs
                } else {
                    self.rate_at_cut = self.spot_at(now, self.growth_delay());
                    self.last_calm_knobs
                };
                let at_pause = (!manual_or_window).then_some(self.knobs);
                for t in &mut self.track {
                    t.paused_trail.clear();
                }
                self.mode = Mode::Paused {
                    since: now,
                    key,
                    resume_knobs: base,
                    at_pause,
                };
                self.hold_until = None;
                (Action::Pause, State::Paused)
            }
        }
    }

    fn resume(&mut self, now: Time, knobs: Knobs) {
        let at_pause = match std::mem::replace(&mut self.mode, Mode::Running) {
            Mode::Paused { at_pause, .. } => at_pause,
            Mode::Running => None,
        };
        for t in &mut self.track {
            t.paused_trail.clear();
        }
        let (caps, _) = self.caps_at(now);
        let mut k = knobs;
        // After a signal pause: min(last calm rate, β × rate at the pause),
        // judged with what a row costs now. The calm knobs may be the ones
        // that were about to cause the trouble.
        if let Some(p) = at_pause {
            let calm = self.rate_of(&k);
            let target = calm.min(self.cfg.beta * self.rate_of(&p));
            if calm > 0.0 && target < calm {
                k = k.decrease(
                    target / calm,
                    false,
                    self.spr() * k.batch_size as f64,
                    &self.limits,
                    &caps,
                );
            }
        }
        if k.workers != self.knobs.workers {
            self.workers_changed_at = Some(now);
        }
        self.knobs = k;
        self.last_calm_knobs = k;
        self.hold_until = Some(later(now, self.cfg.hold_after_resume));
        // A resume opens a recovery epoch: readings still describe the
        // paused spell until the slowest signal could show the new rate.
        self.last_decrease = Some(now);
        self.epoch_open = true;
        self.epoch_delay = self.growth_delay();
    }
}

/// What a signal's noise is judged against (see `estimate`): the gap from
/// its baseline, or from zero, to its slow level.
fn noise_gap(s: &SignalLevels) -> Option<f64> {
    let slow = s.slow?;
    Some(slow - s.baseline.unwrap_or(0.0))
}

/// How long a pause takes to show fully in a signal: twice its delay in
/// force, and the `stop_for` that a reading above stop needs.
fn settle(delay: Duration, stop_for: Duration) -> Duration {
    delay.saturating_mul(2).saturating_add(stop_for)
}

/// Time from `since` to `now`; zero without a `since`, or with one in
/// the future (a clock stepped back).
fn elapsed(now: Time, since: Option<Time>) -> Duration {
    since
        .map(|s| (now - s).to_std().unwrap_or_default())
        .unwrap_or_default()
}

/// `now - d`, saturating at the start of time.
fn earlier(now: Time, d: Duration) -> Time {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `now + d`, saturating at the end of time: a policy built in code may
/// hold durations no file would pass validation with.
fn later(now: Time, d: Duration) -> Time {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The mildest cut: a reading just above slow.
fn mild_factor(beta: f64) -> f64 {
    1.0 - (1.0 - beta) * 0.2
}

/// How deep a cut a slow reading earns: barely above `slow` cuts a little,
/// at `stop` cuts by `beta`. Plain AIMD's fixed halving wastes a quarter of
/// capacity on the sawtooth; a cut proportional to the excursion keeps the
/// job near the slow level.
///
/// A signal judged against a baseline (p95 at `baseline * 1.1`) is taken to
/// owe its excess over the baseline to the backfill: the cut is the share
/// of the rate that brings it back to slow, `(slow − baseline) / (value −
/// baseline)`, no deeper than `beta` and no shallower than the line from no
/// cut at slow to `beta` at stop. Near slow that is a cut of a few per
/// cent where the linear rule cuts at least a fifth of `1 − beta`: an
/// estimate a tenth of a per cent over a slow level at +10 % is 1 % beyond
/// the backfill's share, and 1 % less rate brings it back. Where live load,
/// not the backfill, raised the signal the cut falls short and the next
/// epoch cuts again; queueing latency is convex in load, so the share
/// over-cuts rather than under-cuts the backfill's own part.
fn slow_factor(beta: f64, value: f64, slow: f64, stop: Option<f64>, baseline: Option<f64>) -> f64 {
    let severity = match stop {
        Some(stop) if stop > slow => ((value - slow) / (stop - slow)).clamp(0.0, 1.0),
        _ => 1.0,
    };
    if let Some(base) = baseline.filter(|b| b.is_finite() && *b >= 0.0 && slow > *b && value > slow)
    {
        // Still `beta` at stop where slow and stop are far from the
        // baseline (at 1.4/1.5 the share alone cuts a signal at stop by a
        // fifth).
        let share = (slow - base) / (value - base);
        return share.min(1.0 - (1.0 - beta) * severity).clamp(beta, 1.0);
    }
    let mild = mild_factor(beta);
    mild - (mild - beta) * severity
}

#[cfg(test)]
mod tests;
