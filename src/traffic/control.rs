//! Fault injection knobs, changed at run time through `POST /control`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Highest accepted rate: well above what one generator process can send,
/// low enough that a typo cannot spawn millions of tasks a second.
pub const MAX_RATE: f64 = 20_000.0;
/// Highest accepted added latency.
pub const MAX_ADDED_LATENCY_MS: f64 = 60_000.0;

/// Current rate and added latency, read by the scheduler on every request.
#[derive(Debug)]
pub struct Control {
    rate_bits: AtomicU64,
    added_latency_us: AtomicU64,
}

/// The state as JSON, and the body of `POST /control` (absent = unchanged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlUpdate {
    /// Requests per second.
    pub rate: Option<f64>,
    /// Extra latency added to every request, in milliseconds (a slow
    /// dependency): the latency fault of the testbed.
    pub added_latency_ms: Option<f64>,
}

impl Control {
    pub fn new(rate: f64) -> Control {
        Control {
            rate_bits: AtomicU64::new(rate.to_bits()),
            added_latency_us: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    pub fn added_latency(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.added_latency_us.load(Ordering::Relaxed))
    }

    pub fn state(&self) -> ControlUpdate {
        ControlUpdate {
            rate: Some(self.rate()),
            added_latency_ms: Some(self.added_latency().as_secs_f64() * 1000.0),
        }
    }

    /// Validate everything first, then apply: a bad request changes nothing.
    pub fn apply(&self, u: &ControlUpdate) -> Result<ControlUpdate, String> {
        if let Some(r) = u.rate
            && !(r.is_finite() && r > 0.0 && r <= MAX_RATE)
        {
            return Err(format!(
                "rate {r} must be > 0 and <= {MAX_RATE} requests per second"
            ));
        }
        if let Some(l) = u.added_latency_ms
            && !(l.is_finite() && (0.0..=MAX_ADDED_LATENCY_MS).contains(&l))
        {
            return Err(format!(
                "added_latency_ms {l} must be between 0 and {MAX_ADDED_LATENCY_MS}"
            ));
        }
        if let Some(r) = u.rate {
            self.rate_bits.store(r.to_bits(), Ordering::Relaxed);
        }
        if let Some(l) = u.added_latency_ms {
            self.added_latency_us
                .store((l * 1000.0).round() as u64, Ordering::Relaxed);
        }
        Ok(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_update_changes_nothing() {
        let c = Control::new(50.0);
        let bad = ControlUpdate {
            rate: Some(100.0),
            added_latency_ms: Some(-1.0),
        };
        assert!(c.apply(&bad).is_err());
        assert_eq!(c.rate(), 50.0);
        let ok = ControlUpdate {
            rate: None,
            added_latency_ms: Some(25.0),
        };
        assert_eq!(c.apply(&ok).unwrap().added_latency_ms, Some(25.0));
        assert_eq!(c.rate(), 50.0);
    }
}
