//! A job paused for too long is a problem someone should hear about: the
//! stop numbers may never calm down, or a manual pause was forgotten. This
//! decides when to warn and whether to stop; the run loop logs and exits.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Default interval between two warnings about the same long pause.
pub const WARN_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseVerdict {
    /// Running, or paused for less than `max_pause`, or warned recently.
    Quiet,
    /// Log `events::log_long_pause` now.
    Warn { paused_for: Duration },
    /// The policy says to stop (`stop_after_max_pause`): exit with
    /// `cli::exit::MAX_PAUSE` so a scheduler can alert.
    Stop { paused_for: Duration },
}

#[derive(Debug, Clone)]
pub struct PauseWatch {
    max_pause: Option<Duration>,
    stop: bool,
    every: Duration,
    last_warn: Option<DateTime<Utc>>,
}

impl PauseWatch {
    /// From the policy's `[job] max_pause` and `stop_after_max_pause`.
    pub fn new(max_pause: Option<Duration>, stop: bool, every: Duration) -> PauseWatch {
        PauseWatch {
            max_pause,
            stop,
            every,
            last_warn: None,
        }
    }

    pub fn max_pause(&self) -> Option<Duration> {
        self.max_pause
    }

    /// Call every tick with when the current pause began (`None` = running).
    pub fn observe(
        &mut self,
        now: DateTime<Utc>,
        paused_since: Option<DateTime<Utc>>,
    ) -> PauseVerdict {
        let (Some(max), Some(since)) = (self.max_pause, paused_since) else {
            self.last_warn = None;
            return PauseVerdict::Quiet;
        };
        let paused_for = (now - since).to_std().unwrap_or_default();
        if paused_for < max {
            self.last_warn = None;
            return PauseVerdict::Quiet;
        }
        if self.stop {
            return PauseVerdict::Stop { paused_for };
        }
        match self.last_warn {
            Some(w) if (now - w).to_std().unwrap_or_default() < self.every => PauseVerdict::Quiet,
            _ => {
                self.last_warn = Some(now);
                PauseVerdict::Warn { paused_for }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_interval_and_resets_on_resume() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut w = PauseWatch::new(Some(Duration::from_secs(600)), false, WARN_EVERY);
        assert_eq!(w.observe(at(599), Some(t0)), PauseVerdict::Quiet);
        assert_eq!(
            w.observe(at(600), Some(t0)),
            PauseVerdict::Warn {
                paused_for: Duration::from_secs(600)
            }
        );
        assert_eq!(w.observe(at(601), Some(t0)), PauseVerdict::Quiet);
        assert_eq!(w.observe(at(899), Some(t0)), PauseVerdict::Quiet);
        assert_eq!(
            w.observe(at(900), Some(t0)),
            PauseVerdict::Warn {
                paused_for: Duration::from_secs(900)
            }
        );
        assert_eq!(w.observe(at(901), None), PauseVerdict::Quiet);
        // A new pause starts the clock again.
        assert_eq!(w.observe(at(1000), Some(at(950))), PauseVerdict::Quiet);
    }

    #[test]
    fn stops_when_the_policy_says_so() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut w = PauseWatch::new(Some(Duration::from_secs(60)), true, WARN_EVERY);
        assert_eq!(
            w.observe(t0 + chrono::Duration::seconds(30), Some(t0)),
            PauseVerdict::Quiet
        );
        assert!(matches!(
            w.observe(t0 + chrono::Duration::seconds(61), Some(t0)),
            PauseVerdict::Stop { .. }
        ));
        let mut none = PauseWatch::new(None, true, WARN_EVERY);
        assert_eq!(
            none.observe(t0 + chrono::Duration::days(3), Some(t0)),
            PauseVerdict::Quiet
        );
    }
}
