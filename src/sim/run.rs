//! One strategy driven through the simulated day in virtual time: the real
//! controller (or fixed knobs) sets the knobs, the model turns them into a
//! rate and true signal values, the meters turn those into readings.

use std::collections::BTreeMap;

use serde::Serialize;

use super::dispatch::{Dispatch, DispatchStats, TickEnv, TickOut};
use super::model::{Plant, Truth};
use super::setup::Setup;
use crate::controller::{Action, Controller, Decision, Inputs, Knobs, State};
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
    /// Seconds with some signal's noise-free reading above its stop level while
    /// the no-backfill day stayed below it.
    pub seconds_above_stop: f64,
    /// Of `seconds_above_stop`: seconds when the no-backfill day was
    /// already above stop and the backfill made it at least 5 % worse.
    pub seconds_worsened_above_stop: f64,
    /// As above for the slow level (for tuning: time spent in "slow").
    pub seconds_above_slow: f64,
    /// Rows done while every signal's noise-free reading was at or below its slow
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
    /// Highest noise-free reading of each signal during the run.
    pub max_signals: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knobs: Option<Knobs>,
    /// What the executor's `Job` decided: attempts, lock-free retries,
    /// keys set aside, sweeps, the end.
    pub dispatch: DispatchStats,
    #[serde(skip)]
    pub actions: BTreeMap<String, u64>,
    /// The decisions that changed a knob, and the holds on growth: the
    /// lines `pacer simulate` logs.
    #[serde(skip)]
    pub log: Vec<Decision>,
    #[serde(skip)]
    pub history: Option<History>,
    /// With `record`: the true state of each tick, beside `history`.
    #[serde(skip)]
    pub truths: Vec<Truth>,
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
        let mut dispatch = Dispatch::new(
            &self.policy,
            m,
            self.start,
            self.table_rows,
            self.dispatch_rng(),
        );
        dispatch.report = controller.is_some();
        let mut clean_rows = 0.0;
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
            dispatch: DispatchStats::default(),
            actions: BTreeMap::new(),
            log: Vec::new(),
            history: None,
            truths: Vec::new(),
        };
        let mut samples = Vec::new();
        let mut window_paused = false;
        let mut readings = Vec::with_capacity(meters.len());
        // The pre-start readings pacer's shell would fetch from Prometheus
        // to prime the estimates (`Controller::prime`), as far back as the
        // preroll goes.
        let wanted = controller
            .as_ref()
            .map(Controller::history_wanted)
            .unwrap_or_default();
        let mut before: Vec<Vec<(crate::controller::Time, f64)>> = vec![Vec::new(); wanted.len()];

        for i in 0..self.trace.ticks.len() {
            let c = &self.trace.ticks[i];
            let running_part = i >= self.trace.start_index;
            let caps = self.caps[i];
            let k = knobs.clamp(limits, &caps);
            let batch = k.batch_size.max(1) as f64;
            let workers = k.workers.max(1) as f64;
            let (rate_k, bt) = if running_part && !dispatch.ended() {
                m.knob_rate(c, batch, k.sleep.as_secs_f64(), workers)
            } else {
                (0.0, m.batch_time(batch, c.live, c))
            };
            // The real Job dispatches this tick's attempts.
            let out = if running_part {
                dispatch.tick(
                    i - self.trace.start_index,
                    &TickEnv {
                        model: m,
                        conditions: c,
                        knobs: k,
                        paused: paused || caps.pause,
                        batch_time: bt,
                        rate_cap: limits.max_rows_per_second.map(f64::from),
                    },
                )
            } else {
                TickOut::default()
            };
            // The primary feels the knobs' rate for the worker-time spent
            // running batches and the sleeps between them (0 while held by
            // a pause or the end of the run, less while waiting on locks).
            let mut rate = rate_k / workers * out.worker_seconds / dt;
            if let Some(cap) = limits.max_rows_per_second {
                rate = rate.min(cap as f64);
            }
            let done = out.rows;
            let truth = plant.advance(m, c, rate, batch, bt, dt);
            if record && running_part {
                stats.truths.push(truth);
            }
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
                for ((h, r), w) in before.iter_mut().zip(&readings).zip(&wanted) {
                    if let (Some(v), Some(_)) = (r.value, w) {
                        h.push((now, v));
                    }
                }
                continue;
            }
            if i == self.trace.start_index
                && let Some(ctrl) = controller.as_mut()
            {
                for (h, w) in before.iter_mut().zip(&wanted) {
                    let span =
                        chrono::Duration::from_std(w.unwrap_or_default()).unwrap_or_default();
                    h.retain(|(at, _)| now - *at <= span);
                }
                ctrl.prime(&before);
            }

            let mut view = None;
            let state = match controller.as_mut() {
                Some(ctrl) => {
                    let d = ctrl.step(
                        now,
                        &Inputs {
                            readings: readings.clone(),
                            batches: out.batches,
                            manual_pause: None,
                            app_limited: out.app_limited,
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
                    }
                    // Holds on growth are logged as `pacer run` logs them;
                    // they change nothing, so the counts above and the
                    // history (like the store's) leave them out.
                    if d.logged() {
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
                let lv = &self.judged[j];
                above_stop |= lv.stop.is_some_and(|s| v > s && q <= s);
                // Already above stop without the backfill: harm only when
                // the backfill made it clearly worse (as read, like the
                // levels; rare enough to read per tick).
                worsened |= lv
                    .stop
                    .is_some_and(|s| q > s && kind.reading_of(v, m) > kind.reading_of(q, m) * 1.05);
                above_slow |= lv.slow.is_some_and(|s| v > s && q <= s);
                clean &= self.safe_level(j).is_none_or(|s| v <= s);
                let e = stats
                    .max_signals
                    .get_mut(&self.levels[j].name)
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
                    rows_done: dispatch.rows(),
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
        // The highest true value, as its query would read it (reading_of
        // grows with the true value), beside the levels.
        for (kind, l) in self.kinds.iter().zip(&self.levels) {
            if let Some(e) = stats.max_signals.get_mut(&l.name)
                && *e > f64::MIN
            {
                *e = kind.reading_of(*e, m);
            }
        }
        stats.rows_done = dispatch.rows();
        stats.dispatch = dispatch.stats.clone();
        stats.batch_errors = stats.dispatch.lock_timeouts + stats.dispatch.deadlocks;
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
                decisions: stats.log.iter().filter(|d| d.changed()).cloned().collect(),
                retries: BTreeMap::new(),
            });
        }
        Ok(stats)
    }
}
