//! What a signal most likely reads, from noisy and repeating samples.
//!
//! Slow and growth decisions judge the *estimate*: a time-based
//! exponentially weighted average of new samples (α = 1 − e^(−Δt/τ)), so a
//! single noisy reading above `slow_above` neither cuts the rate nor blocks
//! growth, and a Prometheus value repeated between scrapes is not counted as
//! fresh evidence. Count signals (lock waiters, blocked sessions) are
//! Poisson-like: one reading of 2 says little, so they are judged by their
//! mean over a window instead.
//!
//! Stop decisions stay on raw readings (fail-safe) but must fire on a noisy
//! signal too: one reading at or below stop resets "above stop for
//! `stop_for`", which a signal 5 % above stop read with 10 % noise almost
//! never completes. Stop fires when the raw reading stays above stop for
//! `stop_for` (the plain rule), when the estimate stays above stop for
//! `stop_for`, or when at least 80 % of the raw readings of the last
//! `stop_for` are above stop: never later than the plain rule.

use std::collections::VecDeque;
use std::time::Duration;

use super::Time;

/// Share of the raw readings within `stop_for` that must be above stop.
pub const STOP_SHARE: f64 = 0.8;

/// How one signal is smoothed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    /// EWMA of new samples with this time constant.
    Ewma(Duration),
    /// Mean of the readings over this window.
    Window(Duration),
}

/// Per-signal estimator and stop bookkeeping.
#[derive(Debug, Clone)]
pub struct Estimator {
    smoothing: Smoothing,
    /// A repeated value counts as a new sample once this long has passed
    /// (zero: every reading is new). A Prometheus value repeats between
    /// scrapes; a value that stays the same across scrapes is real.
    repeat_after: Duration,
    /// The current estimate.
    value: Option<f64>,
    /// The last raw value folded in and when, to tell a new sample from a
    /// repeated one.
    last_raw: Option<f64>,
    last_at: Option<Time>,
    /// Readings of the counting window (Window smoothing).
    window: VecDeque<(Time, f64)>,
    /// Raw readings of the last `stop_for`: (time, above stop).
    recent: VecDeque<(Time, bool)>,
    /// Since when the raw reading has been above stop without a break.
    raw_above_since: Option<Time>,
    /// Since when the estimate has been above stop without a break.
    est_above_since: Option<Time>,
    /// When the signal was first seen (the share rule needs a full span).
    first_seen: Option<Time>,
}

impl Estimator {
    pub fn new(smoothing: Smoothing, repeat_after: Duration) -> Estimator {
        Estimator {
            smoothing,
            repeat_after,
            value: None,
            last_raw: None,
            last_at: None,
            window: VecDeque::new(),
            recent: VecDeque::new(),
            raw_above_since: None,
            est_above_since: None,
            first_seen: None,
        }
    }

    pub fn estimate(&self) -> Option<f64> {
        self.value
    }

    /// Whether the estimate rests on enough of its span to judge slow and
    /// growth by: half the counting window, or half the EWMA's time
    /// constant, since the first reading. Before that the estimate is one
    /// or two readings: a count signal's first reading of 1 against
    /// `slow_above = 0.5` is one Poisson event, and a cut on it marks the
    /// start rate as a trouble spot that growth then approaches additively
    /// for many minutes. Stop is not gated: it stays on raw readings.
    pub fn judged(&self, now: Time) -> bool {
        let span = match self.smoothing {
            Smoothing::Window(w) => w,
            Smoothing::Ewma(tau) => tau,
        };
        self.first_seen
            .is_some_and(|f| secs(now, f) >= span.as_secs_f64() / 2.0)
    }

    /// Fold in this tick's raw reading (a fresh value).
    pub fn observe(&mut self, now: Time, raw: f64) {
        self.first_seen.get_or_insert(now);
        match self.smoothing {
            Smoothing::Window(w) => {
                self.window.push_back((now, raw));
                while self
                    .window
                    .front()
                    .is_some_and(|(t, _)| secs(now, *t) > w.as_secs_f64())
                {
                    self.window.pop_front();
                }
                let n = self.window.len().max(1) as f64;
                self.value = Some(self.window.iter().map(|(_, v)| v).sum::<f64>() / n);
            }
            Smoothing::Ewma(tau) => {
                let new = self.last_raw != Some(raw)
                    || self
                        .last_at
                        .is_none_or(|at| secs(now, at) >= self.repeat_after.as_secs_f64());
                match (self.value, self.last_at) {
                    (Some(old), Some(at)) if new => {
                        let dt = secs(now, at).max(0.0);
                        let tau = tau.as_secs_f64();
                        let alpha = if tau > 0.0 {
                            1.0 - (-dt / tau).exp()
                        } else {
                            1.0
                        };
                        self.value = Some(old + alpha * (raw - old));
                        self.last_at = Some(now);
                    }
                    (None, _) | (_, None) => {
                        self.value = Some(raw);
                        self.last_at = Some(now);
                    }
                    _ => {}
                }
                self.last_raw = Some(raw);
            }
        }
    }

    /// The signal is missing this tick: the stop spells break (missing has
    /// its own rule), the estimate is kept for when it comes back.
    pub fn missing(&mut self) {
        self.raw_above_since = None;
        self.est_above_since = None;
        self.recent.clear();
    }

    /// Whether the stop rule fires at `now` for `raw` against `stop`.
    pub fn stop(&mut self, now: Time, raw: f64, stop: f64, stop_for: Duration) -> bool {
        let span = stop_for.as_secs_f64();
        let above = raw > stop;
        if above {
            self.raw_above_since.get_or_insert(now);
        } else {
            self.raw_above_since = None;
        }
        if self.value.is_some_and(|e| e > stop) {
            self.est_above_since.get_or_insert(now);
        } else {
            self.est_above_since = None;
        }
        self.recent.push_back((now, above));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| secs(now, *t) > span)
        {
            self.recent.pop_front();
        }
        let held = |since: Option<Time>| since.is_some_and(|s| secs(now, s) >= span);
        // With stop_for = 0 the policy asks for the raw rule alone.
        if held(self.raw_above_since) || (span > 0.0 && held(self.est_above_since)) {
            return true;
        }
        // The share rule needs a full span of readings behind it.
        let full = self.first_seen.is_some_and(|f| secs(now, f) >= span) && span > 0.0;
        if !above || !full || self.recent.is_empty() {
            return false;
        }
        let n = self.recent.len() as f64;
        let up = self.recent.iter().filter(|(_, a)| *a).count() as f64;
        up / n >= STOP_SHARE
    }
}

fn secs(now: Time, then: Time) -> f64 {
    (now - then).num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_repeated_value_is_not_new_evidence() {
        let mut e = Estimator::new(
            Smoothing::Ewma(Duration::from_secs(10)),
            Duration::from_secs(30),
        );
        e.observe(at(0), 1.0);
        for s in 1..10 {
            e.observe(at(s), 2.0);
        }
        // One new sample (2.0) after 1 s: α = 1 − e^(−0.1) ≈ 0.095.
        let v = e.estimate().unwrap();
        assert!((v - (1.0 + (1.0 - (-0.1f64).exp()))).abs() < 1e-9, "{v}");
        // The next new sample folds in the whole time since the last one.
        e.observe(at(20), 2.0 + 1e-9);
        let w = e.estimate().unwrap();
        assert!(w > 1.8, "{w}");
    }

    #[test]
    fn a_window_mean_for_counts() {
        let mut e = Estimator::new(Smoothing::Window(Duration::from_secs(3)), Duration::ZERO);
        for (s, v) in [(0, 0.0), (1, 4.0), (2, 0.0), (3, 0.0), (4, 0.0), (5, 0.0)] {
            e.observe(at(s), v);
        }
        assert_eq!(e.estimate(), Some(0.0));
    }

    #[test]
    fn stop_on_a_clean_sustained_crossing_fires_no_later_than_the_plain_rule() {
        let mut e = Estimator::new(
            Smoothing::Ewma(Duration::from_secs(10)),
            Duration::from_secs(30),
        );
        let span = Duration::from_secs(10);
        let mut fired = None;
        for s in 0..40 {
            let raw = if s < 20 { 1.0 } else { 2.0 };
            e.observe(at(s), raw);
            if e.stop(at(s), raw, 1.5, span) && fired.is_none() {
                fired = Some(s);
            }
        }
        let f = fired.expect("fires");
        assert!((20..=30).contains(&f), "fired at {f}");
    }

    #[test]
    fn stop_fires_on_a_noisy_signal_mostly_above() {
        let mut e = Estimator::new(
            Smoothing::Ewma(Duration::from_secs(10)),
            Duration::from_secs(30),
        );
        let span = Duration::from_secs(30);
        // Above stop, but every fifth reading dips below it: the plain rule
        // never completes 30 s.
        let mut fired = false;
        for s in 0..120 {
            let raw = if s % 5 == 0 { 0.9 } else { 1.3 };
            e.observe(at(s), raw);
            fired |= e.stop(at(s), raw, 1.0, span);
        }
        assert!(fired);
    }
}
