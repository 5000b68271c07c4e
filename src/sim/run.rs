//! One strategy driven through the simulated day in virtual time: the real
//! controller (or fixed knobs) sets the knobs, the model turns them into a
//! rate and true signal values, the meters turn those into readings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::model::Plant;
use super::setup::Setup;
use rand::RngExt;

use super::scenario::normal;
use crate::controller::{
    Action, BatchError, BatchOutcome, Controller, Decision, Inputs, Knobs, State,
};
use crate::history::{History, Sample, SignalInfo};
use crate::signals::Reading;

/// Who turns the knobs.
#[derive(Debug, Clone)]
pub enum Strategy {
    /// The real controller.
    Pacer,
    /// The same knobs all day (still obeying window caps and pause windows,
    /// as the executor would).
    Fixed(Knobs),
}

/// Outcome of one strategy on the day.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub rows_done: u64,
    /// Filled in by the caller from the oracle.
    pub efficiency: f64,
    /// Seconds with some signal's true value above its stop level while
    /// the no-backfill day stayed below it.
    pub seconds_above_stop: f64,
    /// Of `seconds_above_stop`: seconds when the no-backfill day was
    /// already above stop and the backfill made it at least 5 % worse.
    pub seconds_worsened_above_stop: f64,
    /// As above for the slow level (for tuning: time spent in "slow").
    pub seconds_above_slow: f64,
    /// Rows done while every signal's true value was at or below its slow
    /// level (stop level for signals without one): rows earned without
    /// pushing production into "slow".
    pub clean_rows: u64,
    /// Filled in by the caller: clean_rows / the bound.
    pub clean_efficiency: f64,
    /// Batches that failed with a lock timeout or a deadlock (retried).
    pub batch_errors: u64,
    pub pauses: u64,
    /// Decisions that changed something.
    pub decisions: u64,
    /// Highest true value of each signal during the run.
    pub max_signals: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knobs: Option<Knobs>,
    #[serde(skip)]
    pub actions: BTreeMap<String, u64>,
    #[serde(skip)]
    pub log: Vec<Decision>,
    #[serde(skip)]
    pub history: Option<History>,
}

impl Setup {
    /// Run `strategy` over the day; `record` keeps a per-tick history.
    pub fn run(&self, strategy: &Strategy, record: bool) -> anyhow::Result<RunStats> {
        let m = &self.model;
        let dt = self.dt();
        let limits = &self.policy.limits;
        let mut controller = match strategy {
            Strategy::Pacer => Some(Controller::new(&self.policy, &self.baselines)?),
            Strategy::Fixed(_) => None,
        };
        let mut knobs = match strategy {
            Strategy::Pacer => controller
                .as_ref()
                .map(|c| c.knobs())
                .expect("pacer has a controller"),
            Strategy::Fixed(k) => *k,
        };
        let mut paused = false;
        let mut rng = self.measure_rng();
        let mut meters = self.meters();
        let mut plant = Plant::default();
        let mut batch_acc = 0.0;
        let mut rows = 0.0;
        let mut clean_rows = 0.0;
        // One batch's duration: lognormal around the model's mean.
        let noise_sd = m.backfill.time_noise;
        let lock_timeout = limits.lock_timeout;
        let mut stats = RunStats {
            rows_done: 0,
            efficiency: 0.0,
            seconds_above_stop: 0.0,
            seconds_worsened_above_stop: 0.0,
            seconds_above_slow: 0.0,
            clean_rows: 0,
            clean_efficiency: 0.0,
            batch_errors: 0,
            pauses: 0,
            decisions: 0,
            max_signals: self
                .policy
                .signals
                .iter()
                .map(|s| (s.name.clone(), f64::MIN))
                .collect(),
            knobs: match strategy {
                Strategy::Fixed(k) => Some(*k),
                Strategy::Pacer => None,
            },
            actions: BTreeMap::new(),
            log: Vec::new(),
            history: None,
        };
        let mut samples = Vec::new();
        let mut window_paused = false;
        let mut readings = Vec::with_capacity(meters.len());

        for i in 0..self.trace.ticks.len() {
            let c = &self.trace.ticks[i];
            let running_part = i >= self.trace.start_index;
            let caps = self.caps[i];
            let k = knobs.clamp(limits, &caps);
            let active = running_part && !paused && !caps.pause;
            let batch = k.batch_size.max(1) as f64;
            let (mut rate, bt) = if active {
                m.knob_rate(c, batch, k.sleep.as_secs_f64(), k.workers as f64)
            } else {
                (0.0, m.batch_time(batch, c.live, c))
            };
            let mut app_limited = false;
            if let Some(cap) = limits.max_rows_per_second
                && rate > cap as f64
            {
                rate = cap as f64;
                app_limited = true;
            }
            let truth = plant.advance(m, c, rate, batch, bt, dt);
            readings.clear();
            let now =
                self.instant(i) + chrono::Duration::milliseconds((dt * 1000.0).round() as i64);
            // Fixed loops read no signals: skip the meters (and their cost).
            if controller.is_some() || record {
                for meter in meters.iter_mut() {
                    readings.push(match meter.observe(&truth, m, dt, &mut rng) {
                        Some(v) => Reading::value(v, now),
                        None => Reading::missing("no scrape yet", now),
                    });
                }
            }
            if !running_part {
                continue;
            }

            let mut batches = Vec::new();
            let (p_timeout, p_deadlock) = if active {
                m.batch_error_odds(batch, c.live, k.workers as f64)
            } else {
                (0.0, 0.0)
            };
            if active {
                batch_acc += rate / batch * dt;
                let n = batch_acc.floor();
                batch_acc -= n;
                for _ in 0..n as usize {
                    let draw: f64 = rng.random();
                    let (duration, error) = if draw < p_timeout {
                        (lock_timeout, Some(BatchError::LockTimeout))
                    } else if draw < p_timeout + p_deadlock {
                        (
                            Duration::from_secs_f64(bt * 0.5),
                            Some(BatchError::Deadlock),
                        )
                    } else {
                        let f = (noise_sd * normal(&mut rng) - noise_sd * noise_sd / 2.0).exp();
                        (Duration::from_secs_f64(bt * f), None)
                    };
                    if error.is_some() {
                        stats.batch_errors += 1;
                    }
                    let started = now
                        - chrono::Duration::milliseconds(
                            (duration.as_secs_f64() * 1000.0).round() as i64
                        );
                    batches.push(BatchOutcome {
                        started,
                        duration,
                        rows: if error.is_some() {
                            0
                        } else {
                            k.batch_size as u64
                        },
                        error,
                    });
                }
            }
            // Failed batches' rows are retried later: they are not done now.
            let done = rate * dt * (1.0 - p_timeout - p_deadlock).max(0.0);
            rows += done;

            let mut view = None;
            let state = match controller.as_mut() {
                Some(ctrl) => {
                    let d = ctrl.step(
                        now,
                        &Inputs {
                            readings: readings.clone(),
                            batches,
                            manual_pause: None,
                            app_limited,
                        },
                    );
                    knobs = d.knobs;
                    paused = d.state == State::Paused;
                    let state = d.state;
                    if record {
                        view = Some(d.view.clone());
                    }
                    if d.changed() {
                        stats.decisions += 1;
                        *stats
                            .actions
                            .entry(format!("{:?}", d.action).to_lowercase())
                            .or_default() += 1;
                        if d.action == Action::Pause {
                            stats.pauses += 1;
                        }
                        stats.log.push(d);
                    }
                    state
                }
                None => {
                    if caps.pause && !window_paused {
                        stats.pauses += 1;
                    }
                    if caps.pause {
                        State::Paused
                    } else {
                        State::Running
                    }
                }
            };
            window_paused = caps.pause;

            let quiet = &self.quiet[i];
            let (mut above_stop, mut worsened, mut above_slow, mut clean) =
                (false, false, false, true);
            for (j, kind) in self.kinds.iter().enumerate() {
                let v = kind.value(&truth);
                let q = kind.value(quiet);
                let lv = &self.levels[j];
                above_stop |= lv.stop.is_some_and(|s| v > s && q <= s);
                // Already above stop without the backfill: harm only when
                // the backfill made it clearly worse.
                worsened |= lv.stop.is_some_and(|s| q > s && v > q * 1.05);
                above_slow |= lv.slow.is_some_and(|s| v > s && q <= s);
                clean &= self.safe_level(j).is_none_or(|s| v <= s);
                let e = stats
                    .max_signals
                    .get_mut(&lv.name)
                    .expect("every signal has an entry");
                *e = e.max(v);
            }
            if above_stop || worsened {
                stats.seconds_above_stop += dt;
            }
            if worsened && !above_stop {
                stats.seconds_worsened_above_stop += dt;
            }
            if clean {
                clean_rows += done;
            }
            if above_slow {
                stats.seconds_above_slow += dt;
            }
            if record {
                let sample = Sample {
                    at: now,
                    state: state.as_str().to_string(),
                    knobs: k,
                    rows_per_second: rate,
                    rows_done: rows as u64,
                    signals: self
                        .levels
                        .iter()
                        .zip(&readings)
                        .map(|(l, r)| (l.name.clone(), r.value))
                        .collect(),
                    estimates: Default::default(),
                    target_rate: None,
                };
                samples.push(match &view {
                    Some(v) => sample.with_view(v),
                    None => sample,
                });
            }
        }
        stats.rows_done = rows.round() as u64;
        stats.clean_rows = clean_rows.round() as u64;
        if record {
            stats.history = Some(History {
                job: self.policy.job.name.clone(),
                signals: self
                    .levels
                    .iter()
                    .map(|l| SignalInfo {
                        name: l.name.clone(),
                        slow: l.slow,
                        stop: l.stop,
                        baseline: l.baseline,
                    })
                    .collect(),
                samples,
                pauses: History::pauses_from_decisions(&stats.log),
                decisions: stats.log.clone(),
                retries: BTreeMap::new(),
            });
        }
        Ok(stats)
    }
}
