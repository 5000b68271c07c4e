//! The best any controller could have done: at every tick, the highest
//! backfill rate that keeps every signal's noise-free reading (`SimKind::
//! reading_of`: the levels' units) at or below its slow
//! level (stop level for signals without one), within what the policy's
//! limits and windows allow. Its integral is the instant bound.
//!
//! No controller can reach that: it learns of new room only once its
//! signals show it, one measurement delay later. `safe_rows_bound` gives
//! the oracle the same delay: at each tick the lower of the safe rate now
//! and the safe rate one delay ago (room that appears counts only once it
//! could have been measured; room that vanishes is never credited).

use super::model::{Plant, Truth};
use super::setup::Setup;
use crate::controller::Knobs;

/// The oracle's day: its rate, batch size and resulting truth per run tick.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    pub rates: Vec<f64>,
    pub batches: Vec<f64>,
    pub truths: Vec<Truth>,
    /// Whether the rate was limited by the knobs' reach rather than a signal.
    pub knob_bound: Vec<bool>,
    /// Share of each tick's batches that fail (lock timeouts, deadlocks).
    pub failing: Vec<f64>,
    /// Rows of the instant bound (no measurement delay).
    pub instant_rows: f64,
    /// Rows of the bound with the policy's measurement delay.
    pub rows: f64,
    /// That delay, seconds.
    pub delay: f64,
}

/// The most the knobs can deliver at a tick: limits and active window caps.
pub struct Reach {
    pub paused: bool,
    pub batch_min: f64,
    pub batch_max: f64,
    pub workers: f64,
    pub sleep: f64,
    pub rate_cap: f64,
}

/// Batch sizes the oracle tries (log-spaced, min to max) when a signal
/// depends on the batch size.
const BATCH_STEPS: u32 = 16;

impl Setup {
    pub fn reach(&self, i: usize) -> Reach {
        let l = &self.policy.limits;
        let caps = self.caps[i];
        let k = Knobs {
            batch_size: l.batch_size.max,
            sleep: l.sleep.min,
            workers: l.workers.max,
        }
        .clamp(l, &caps);
        Reach {
            paused: caps.pause,
            batch_min: l.batch_size.min as f64,
            batch_max: k.batch_size as f64,
            workers: k.workers as f64,
            sleep: k.sleep.as_secs_f64(),
            rate_cap: l.max_rows_per_second.map_or(f64::INFINITY, |c| c as f64),
        }
    }

    /// Whether backfilling at `rate` in batches of `batch` keeps every
    /// signal at or below its safe level this tick, within the knobs' reach.
    fn feasible(&self, plant: &Plant, i: usize, r: &Reach, rate: f64, batch: f64) -> bool {
        let m = &self.model;
        let c = &self.trace.ticks[i];
        let u = m.utilisation(c.live, rate, batch);
        if u >= m.latency.u_max {
            return false;
        }
        let bt = m.batch_time(batch, u, c);
        if rate > r.workers * batch / (bt + r.sleep) * (1.0 + 1e-9) || rate > r.rate_cap {
            return false;
        }
        let t = plant.peek(m, c, rate, batch, bt, self.dt());
        self.kinds.iter().enumerate().all(|(j, kind)| {
            self.safe_level(j)
                .is_none_or(|level| kind.value(&t) <= level)
        })
    }

    /// Highest safe rate at tick `i` for one batch size (bisection: every
    /// signal grows with the rate, the knobs' reach shrinks with it).
    fn best_rate(&self, plant: &Plant, i: usize, r: &Reach, batch: f64) -> (f64, bool) {
        let m = &self.model;
        let c = &self.trace.ticks[i];
        let hi = (r.workers * batch / (m.batch_time(batch, c.live, c) + r.sleep)).min(r.rate_cap);
        if self.feasible(plant, i, r, hi, batch) {
            return (hi, true);
        }
        if !self.feasible(plant, i, r, 0.0, batch) {
            return (0.0, false);
        }
        let (mut lo, mut hi) = (0.0, hi);
        // 24 halvings: a millionth of the range, far below what any
        // strategy's rate is judged to.
        for _ in 0..24 {
            let mid = 0.5 * (lo + hi);
            if self.feasible(plant, i, r, mid, batch) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Close to the capacity limit the binding constraint may still be
        // the knobs (their reach shrinks as utilisation grows).
        let u = m.utilisation(c.live, hi, batch);
        let knob_bound =
            hi > r.workers * batch / (m.batch_time(batch, u, c) + r.sleep) || hi > r.rate_cap;
        (lo, knob_bound)
    }

    /// Run the oracle over the whole day.
    pub fn oracle(&self) -> Oracle {
        let dt = self.dt();
        let sensitive = self.kinds.iter().any(|k| k.batch_sensitive());
        let mut plant = Plant::default();
        if self.trace.start_index > 0 {
            let before = &self.quiet[self.trace.start_index - 1];
            plant.lag_bytes = before.lag_bytes;
            plant.slot_lag_bytes = before.slot_lag_bytes;
        }
        let mut o = Oracle::default();
        for i in self.trace.start_index..self.trace.ticks.len() {
            let reach = self.reach(i);
            let mut best = (0.0, reach.batch_max, false);
            if !reach.paused {
                let candidates: Vec<f64> = if sensitive && reach.batch_max > reach.batch_min {
                    (0..=BATCH_STEPS)
                        .map(|k| {
                            (reach.batch_min
                                * (reach.batch_max / reach.batch_min)
                                    .powf(k as f64 / BATCH_STEPS as f64))
                            .round()
                        })
                        .collect()
                } else {
                    vec![reach.batch_max]
                };
                for b in candidates {
                    let (rate, kb) = self.best_rate(&plant, i, &reach, b);
                    if rate > best.0 {
                        best = (rate, b, kb);
                    }
                }
            }
            let (rate, batch, kb) = best;
            let c = &self.trace.ticks[i];
            let u = self.model.utilisation(c.live, rate, batch);
            let bt = self.model.batch_time(batch, u, c);
            let t = plant.advance(&self.model, c, rate, batch, bt, dt);
            let (timeout, deadlock) =
                self.model
                    .batch_error_odds(batch, c.live, reach.workers.max(1.0));
            let failing = (timeout + deadlock).min(1.0);
            o.rates.push(rate);
            o.batches.push(batch);
            o.truths.push(t);
            o.knob_bound.push(kb);
            o.failing.push(failing);
            o.instant_rows += rate * (1.0 - failing) * dt;
        }
        o.delay = self.measurement_delay();
        let lag = (o.delay / dt).round() as usize;
        o.rows = (0..o.rates.len())
            .map(|i| o.rates[i].min(o.rates[i.saturating_sub(lag)]) * (1.0 - o.failing[i]) * dt)
            .sum();
        o
    }
}
