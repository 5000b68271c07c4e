//! The best any controller could have done: at every tick, the highest
//! backfill rate that keeps every signal's true value at or below its slow
//! level (stop level for signals without one), within what the policy's
//! limits and windows allow. Its integral is `safe_rows_bound`.

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
    pub rows: f64,
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
        let bt = m.batch_time(batch, u, c.live);
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
        let hi =
            (r.workers * batch / (m.batch_time(batch, c.live, c.live) + r.sleep)).min(r.rate_cap);
        if self.feasible(plant, i, r, hi, batch) {
            return (hi, true);
        }
        if !self.feasible(plant, i, r, 0.0, batch) {
            return (0.0, false);
        }
        let (mut lo, mut hi) = (0.0, hi);
        for _ in 0..40 {
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
            hi > r.workers * batch / (m.batch_time(batch, u, c.live) + r.sleep) || hi > r.rate_cap;
        (lo, knob_bound)
    }

    /// Run the oracle over the whole day.
    pub fn oracle(&self) -> Oracle {
        let dt = self.dt();
        let sensitive = self.kinds.iter().any(|k| k.batch_sensitive());
        let mut plant = Plant {
            lag_bytes: self.quiet[self.trace.start_index.saturating_sub(1)].lag_bytes,
        };
        if self.trace.start_index == 0 {
            plant.lag_bytes = 0.0;
        }
        let mut o = Oracle::default();
        for i in self.trace.start_index..self.trace.ticks.len() {
            let reach = self.reach(i);
            let mut best = (0.0, reach.batch_max, false);
            if !reach.paused {
                let candidates: Vec<f64> = if sensitive && reach.batch_max > reach.batch_min {
                    (0..=24)
                        .map(|k| {
                            (reach.batch_min
                                * (reach.batch_max / reach.batch_min).powf(k as f64 / 24.0))
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
            let bt = self.model.batch_time(batch, u, c.live);
            let t = plant.advance(&self.model, c, rate, batch, bt, dt);
            o.rates.push(rate);
            o.batches.push(batch);
            o.truths.push(t);
            o.knob_bound.push(kb);
            o.rows += rate * dt;
        }
        o
    }
}
