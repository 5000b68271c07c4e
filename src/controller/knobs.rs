//! The three knobs and the arithmetic that moves them together.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Limits;

/// What the executor obeys: rows per write transaction, pause between a
/// worker's batches, concurrent write transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knobs {
    pub batch_size: u32,
    #[serde(with = "humantime_serde")]
    pub sleep: Duration,
    pub workers: u32,
}

/// Caps of the active time windows, merged; `None` means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub pause: bool,
    pub max_batch_size: Option<u32>,
    pub max_workers: Option<u32>,
    pub min_sleep: Option<Duration>,
}

impl Caps {
    /// The tighter of two sets of caps.
    pub fn merge(self, o: &Caps) -> Caps {
        fn tight<T: Ord + Copy>(a: Option<T>, b: Option<T>, lower: bool) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if lower { x.min(y) } else { x.max(y) }),
                (x, y) => x.or(y),
            }
        }
        Caps {
            pause: self.pause || o.pause,
            max_batch_size: tight(self.max_batch_size, o.max_batch_size, true),
            max_workers: tight(self.max_workers, o.max_workers, true),
            min_sleep: tight(self.min_sleep, o.min_sleep, false),
        }
    }
}

impl Knobs {
    /// The slowest knobs the limits allow: smallest batch, longest sleep,
    /// fewest workers.
    pub fn slowest(l: &Limits) -> Knobs {
        Knobs {
            batch_size: l.batch_size.min,
            sleep: l.sleep.max,
            workers: l.workers.min,
        }
    }

    /// Effective rate in rows/s for a given batch duration (seconds):
    /// workers × batch / (batch time + sleep).
    pub fn rate(&self, batch_secs: f64) -> f64 {
        let cycle = batch_secs + self.sleep.as_secs_f64();
        if cycle <= 0.0 {
            return f64::INFINITY;
        }
        self.workers as f64 * self.batch_size as f64 / cycle
    }

    /// Clamp to the policy limits and the windows' caps. Caps only ever
    /// tighten: a window cannot raise a limit.
    pub fn clamp(&self, l: &Limits, caps: &Caps) -> Knobs {
        let bmax = l
            .batch_size
            .max
            .min(caps.max_batch_size.unwrap_or(u32::MAX))
            .max(l.batch_size.min);
        let wmax = l
            .workers
            .max
            .min(caps.max_workers.unwrap_or(u32::MAX))
            .max(l.workers.min);
        let smin = l
            .sleep
            .min
            .max(caps.min_sleep.unwrap_or_default())
            .min(l.sleep.max);
        Knobs {
            batch_size: self.batch_size.clamp(l.batch_size.min, bmax),
            sleep: self.sleep.clamp(smin, l.sleep.max),
            workers: self.workers.clamp(l.workers.min, wmax),
        }
    }

    /// Smaller batches at the same effective rate: batch and sleep both
    /// scale by `factor` (rate = workers × batch / (batch × per-row +
    /// sleep) is unchanged), within the limits. For hiccups that are about
    /// the transaction, not the load: one slow batch, an odd lock timeout.
    pub fn shrink_batch(&self, factor: f64, l: &Limits, caps: &Caps) -> Knobs {
        let f = if factor.is_nan() {
            1.0
        } else {
            factor.clamp(0.0, 1.0)
        };
        let start = self.clamp(l, caps);
        let b = ((start.batch_size as f64 * f).floor() as u32).max(l.batch_size.min);
        // The batch's own share: at the batch floor the sleep stays.
        let f = b as f64 / start.batch_size.max(1) as f64;
        // Rounded up to the nanosecond, so the rate never ends above.
        let sleep = (start.sleep.as_nanos() as f64 * f).ceil();
        Knobs {
            batch_size: b,
            sleep: Duration::from_nanos(sleep as u64),
            ..start
        }
        .clamp(l, caps)
    }

    /// Cut the effective rate by `factor` once, spread over the knobs:
    /// sleep first (finest grain), then workers once sleep is at its max,
    /// then batch size once both are exhausted. With `shrink_batch` (slow
    /// batches, lock trouble) the batch shrinks by the same factor first,
    /// because shorter transactions are what those causes need; the rate cut
    /// still happens only once, not once per knob.
    ///
    /// `batch_secs` is the expected duration of a batch at the current size.
    /// Any factor in (0, 1] is honoured, down to the limits' floor: a resume
    /// after a long slide asks for β × the rate at the pause out of the
    /// last calm knobs, which can be a thousandth of them.
    pub fn decrease(
        &self,
        factor: f64,
        shrink_batch: bool,
        batch_secs: f64,
        l: &Limits,
        caps: &Caps,
    ) -> Knobs {
        // NaN (no rate to judge) cuts nothing; zero goes to the floor.
        let factor = if factor.is_nan() {
            1.0
        } else {
            factor.clamp(f64::MIN_POSITIVE, 1.0)
        };
        let start = self.clamp(l, caps);
        let b0 = start.batch_size.max(1) as f64;
        let per_row = (batch_secs / b0).max(0.0);
        let target = start.rate(batch_secs) * factor;
        let smin = l
            .sleep
            .min
            .max(caps.min_sleep.unwrap_or_default())
            .min(l.sleep.max)
            .as_secs_f64();
        let smax = l.sleep.max.as_secs_f64();

        let mut b = if shrink_batch {
            (b0 * factor).floor()
        } else {
            b0
        };
        b = b.clamp(l.batch_size.min as f64, b0);
        let mut w = start.workers as f64;
        let wmin = l.workers.min as f64;
        // Sleep needed for the target rate with w workers of batch b.
        let sleep_for = |w: f64, b: f64| w * b / target - per_row * b;
        let mut s = sleep_for(w, b);
        if !s.is_finite() || s > smax {
            // Fewer workers, each with the longest sleep (rounded up so the
            // rate does not end above target), then re-fit sleep.
            w = (target * (per_row * b + smax) / b).floor().clamp(wmin, w);
            s = sleep_for(w, b);
            if !s.is_finite() || s > smax {
                // Still too fast at min workers and max sleep: smaller batches.
                s = smax;
                let denom = w - target * per_row;
                b = if denom > 0.0 {
                    (target * smax / denom).floor()
                } else {
                    l.batch_size.min as f64
                };
                b = b.clamp(l.batch_size.min as f64, b0);
            }
        }
        let s = s.clamp(smin, smax).max(start.sleep.as_secs_f64().min(smax));
        Knobs {
            batch_size: b as u32,
            sleep: Duration::try_from_secs_f64(s).unwrap_or(l.sleep.max),
            workers: w as u32,
        }
        .clamp(l, caps)
    }
}
