//! What goes into a tick and what comes out of it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Knobs, Time};
use crate::policy::OnMissing;
use crate::signals::Reading;

/// Classes of batch failure the controller reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchError {
    LockTimeout,
    Deadlock,
    SerializationFailure,
    StatementTimeout,
    ConnectionLost,
    Other,
}

impl BatchError {
    pub fn as_str(&self) -> &'static str {
        match self {
            BatchError::LockTimeout => "lock_timeout",
            BatchError::Deadlock => "deadlock",
            BatchError::SerializationFailure => "serialization_failure",
            BatchError::StatementTimeout => "statement_timeout",
            BatchError::ConnectionLost => "connection_lost",
            BatchError::Other => "other",
        }
    }
}

/// One batch as the executor saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchOutcome {
    pub started: Time,
    pub duration: Duration,
    pub rows: u64,
    pub error: Option<BatchError>,
}

/// Who paused the job by hand, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManualPause {
    pub by: String,
    pub reason: String,
}

/// Everything the controller learns in one tick.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// One reading per policy signal, in policy order.
    pub readings: Vec<Reading>,
    /// Batches completed since the previous tick.
    pub batches: Vec<BatchOutcome>,
    pub manual_pause: Option<ManualPause>,
    /// The workers were not the bottleneck (waiting on the rate cap, the
    /// reader, or out of work): growing knobs nobody uses is pointless.
    pub app_limited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Slowing,
    Paused,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Slowing => "slowing",
            State::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Hold,
    Increase,
    Decrease,
    Pause,
    Resume,
    /// Knobs lowered to a window's caps.
    Clamp,
}

/// Why a decision was taken; every decision carries its causes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    Signal {
        signal: String,
        /// The raw reading.
        value: f64,
        /// The smoothed estimate the decision judged (slow and growth
        /// decisions use it; a stop is judged on raw readings too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        estimate: Option<f64>,
        /// `slow` or `stop`.
        level: &'static str,
        threshold: f64,
        /// The level as written (`baseline * 1.2`).
        expr: Option<String>,
        baseline: Option<f64>,
    },
    Missing {
        signal: String,
        reason: String,
        #[serde(with = "humantime_serde")]
        missing_for: Duration,
        /// `None` while still within `missing_grace`.
        on_missing: Option<OnMissing>,
    },
    SlowBatch {
        #[serde(with = "humantime_serde")]
        duration: Duration,
        #[serde(with = "humantime_serde")]
        target: Duration,
    },
    BatchError {
        error: BatchError,
        count: usize,
    },
    Manual {
        by: String,
        reason: String,
    },
    Window {
        window: String,
    },
    Calm {
        #[serde(with = "humantime_serde")]
        calm_for: Duration,
    },
    /// A new raw reading well above slow while the estimate is not: no
    /// growth for `hold`, the signal's delay.
    RawAboveSlow {
        signal: String,
        value: f64,
        estimate: f64,
        threshold: f64,
        /// The signal's measured noise (one standard deviation; 0 until
        /// measured or on a clean signal).
        noise: f64,
        #[serde(with = "humantime_serde")]
        hold: Duration,
    },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Signal {
                signal,
                value,
                estimate,
                level,
                threshold,
                expr,
                baseline,
            } => {
                // For slow, the estimate is what crossed; the raw reading
                // beside it. A stop is judged on raw readings and on the
                // estimate: a raw reading at or below stop beside it means
                // the estimate crossed ("0.00793 > stop 0.00896" was
                // printed for a stop the estimate, 0.0106, had called).
                let crossed_by_estimate =
                    |e: f64| *level == "slow" || (*value <= *threshold && e > *threshold);
                match estimate {
                    Some(e) if crossed_by_estimate(*e) && num(*e) != num(*value) => write!(
                        f,
                        "{signal} {} (estimate; raw {}) > {level} {}",
                        num(*e),
                        num(*value),
                        num(*threshold)
                    )?,
                    _ => write!(f, "{signal} {} > {level} {}", num(*value), num(*threshold))?,
                }
                if let (Some(b), Some(e)) = (baseline, expr)
                    && e.starts_with("baseline")
                {
                    write!(f, " (baseline {} {})", num(*b), &e["baseline ".len()..])?;
                }
                Ok(())
            }
            Cause::Missing {
                signal,
                reason,
                missing_for,
                on_missing,
            } => {
                write!(
                    f,
                    "{signal} missing for {} ({reason})",
                    fmt_dur(*missing_for)
                )?;
                match on_missing {
                    None => write!(f, ", within grace"),
                    Some(m) => write!(f, ", on_missing = {}", format!("{m:?}").to_lowercase()),
                }
            }
            Cause::SlowBatch { duration, target } => {
                write!(
                    f,
                    "batch took {} > target {}",
                    fmt_dur(*duration),
                    fmt_dur(*target)
                )
            }
            Cause::BatchError { error, count } => write!(f, "{count}× {}", error.as_str()),
            Cause::Manual { by, reason } => write!(f, "paused by {by}: {reason}"),
            Cause::Window { window } => write!(f, "window {window}"),
            Cause::Calm { calm_for } => write!(f, "all signals calm for {}", fmt_dur(*calm_for)),
            Cause::RawAboveSlow {
                signal,
                value,
                estimate,
                threshold,
                noise,
                hold,
            } => {
                write!(f, "{signal} raw {} > slow {}", num(*value), num(*threshold))?;
                if *noise > 0.0 {
                    write!(f, " by more than twice its noise ±{}", num(*noise))?;
                }
                write!(
                    f,
                    ", estimate {} not yet: no growth for {}",
                    num(*estimate),
                    fmt_dur(*hold)
                )
            }
        }
    }
}

/// The controller's output for one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub at: Time,
    pub state: State,
    pub action: Action,
    pub before: Knobs,
    pub knobs: Knobs,
    pub causes: Vec<Cause>,
    /// Windows active at this tick.
    pub windows: Vec<String>,
    /// What the controller judged; shown in logs, `/metrics`, `/status` and
    /// the timeline, not stored with the decision (a tick's sample keeps it).
    #[serde(skip)]
    pub view: View,
}

/// The controller's view at one tick, for operators: a decision is only
/// explainable next to the estimates it judged, how late each signal shows a
/// change, and the rate the knobs aim at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Rows/s the knobs aim at with the learned time per row; 0 while paused.
    pub target_rate: f64,
    /// One per signal, in policy order.
    pub signals: Vec<SignalView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalView {
    pub name: String,
    pub raw: Option<f64>,
    pub estimate: Option<f64>,
    /// How long a change of rate takes to show fully in this signal.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Set while the job is paused by this signal and the signal has not
    /// responded to the pause (see `Controller::unresponsive_for`): how
    /// long the job has been paused.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unresponsive_for: Option<Duration>,
    /// The signal's measured noise (one standard deviation of a reading;
    /// 0 on a clean signal), once pacer has enough readings to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// The reading was above stop by less than its noise while the
    /// estimate was calm, and did not count toward the stop rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub within_noise: bool,
}

impl View {
    /// `p95 0.41 (raw 0.45, noise ±0.03, delay 1m 15s), lag 0 (raw 0, delay
    /// 6s)`; a reading above stop that was discounted as noise says so.
    pub fn signals_line(&self) -> String {
        self.signals
            .iter()
            .map(|s| {
                let n = |v: Option<f64>| v.map(num).unwrap_or_else(|| "-".into());
                // A clean signal measures no noise: nothing to show.
                let noise = s
                    .noise
                    .filter(|v| *v > 0.0)
                    .map(|v| format!(", noise ±{}", num(v)))
                    .unwrap_or_default();
                let discounted = if s.within_noise {
                    " above stop by less than its noise: not counted toward stop"
                } else {
                    ""
                };
                let stuck = s
                    .unresponsive_for
                    .map(|d| format!(", not coming down after {} paused", fmt_dur(d)))
                    .unwrap_or_default();
                format!(
                    "{} {} (raw {}{discounted}{noise}, delay {}{stuck})",
                    s.name,
                    n(s.estimate),
                    n(s.raw),
                    fmt_dur(s.delay)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
impl Decision {
    /// A hold at 100 rows, no sleep, one worker, in `state`, showing
    /// `view`: for the tests of what reads decisions (metrics, the
    /// vacuum trigger).
    pub fn holding(state: State, view: View) -> Decision {
        let k = Knobs {
            batch_size: 100,
            sleep: Duration::ZERO,
            workers: 1,
        };
        Decision {
            at: chrono::Utc::now(),
            state,
            action: Action::Hold,
            before: k,
            knobs: k,
            causes: vec![],
            windows: vec![],
            view,
        }
    }
}

impl Decision {
    /// Whether this decision is worth a log line: the state or knobs moved.
    pub fn changed(&self) -> bool {
        self.before != self.knobs
            || matches!(
                self.action,
                Action::Pause | Action::Resume | Action::Decrease | Action::Clamp
            )
    }

    /// A hold that starts a pause in growth (a reading well above slow
    /// the estimate has not taken in yet): it changes no knob, but an
    /// operator watching the rate stop rising needs the line.
    pub fn holds_growth(&self) -> bool {
        self.action == Action::Hold
            && self
                .causes
                .iter()
                .any(|c| matches!(c, Cause::RawAboveSlow { .. }))
    }

    /// Whether the decision is a line in the log (INFO in `pacer run`,
    /// printed by `pacer simulate`): it changed something, or it starts a
    /// hold on growth.
    pub fn logged(&self) -> bool {
        self.changed() || self.holds_growth()
    }

    /// A batch-level hiccup's answer: smaller batches at the same rate, a
    /// decrease that leaves the job running (a cut of the rate slows it).
    pub fn is_batch_resize(&self) -> bool {
        self.action == Action::Decrease && self.state == State::Running
    }

    /// What the decision did, as the log's first words.
    pub fn verb(&self) -> &'static str {
        if self.is_batch_resize() {
            return "smaller batches";
        }
        match self.action {
            Action::Hold if self.state == State::Paused => "paused",
            Action::Hold if self.state == State::Slowing => "holding (recovering)",
            Action::Hold => "holding",
            Action::Increase => "speeding up",
            Action::Decrease => "slowing down",
            Action::Pause => "pausing",
            Action::Resume => "resuming",
            Action::Clamp => "capping",
        }
    }

    /// One sentence for an operator, e.g. `slowing down: checkout_p95 0.41 >
    /// slow 0.40 (baseline 0.33 * 1.2); batch 2000→1000, sleep 100ms→200ms`.
    pub fn summary(&self) -> String {
        let mut s = self.verb().to_string();
        if !self.causes.is_empty() {
            s.push_str(": ");
            s.push_str(
                &self
                    .causes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let delta = knob_delta(&self.before, &self.knobs);
        if !delta.is_empty() {
            s.push_str("; ");
            s.push_str(&delta);
        }
        s
    }
}

/// `batch 2000→1000, sleep 100ms→200ms, workers 3→2`, only what changed.
pub fn knob_delta(a: &Knobs, b: &Knobs) -> String {
    let mut parts = Vec::new();
    if a.batch_size != b.batch_size {
        parts.push(format!("batch {}→{}", a.batch_size, b.batch_size));
    }
    if a.sleep != b.sleep {
        parts.push(format!("sleep {}→{}", fmt_dur(a.sleep), fmt_dur(b.sleep)));
    }
    if a.workers != b.workers {
        parts.push(format!("workers {}→{}", a.workers, b.workers));
    }
    parts.join(", ")
}

/// Durations rounded to what a person reads: `120ms`, `2.5s`, `3m10s`.
pub fn fmt_dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 0.05 {
            format!("{}s", s.round())
        } else {
            format!("{s:.1}s")
        }
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs()))
            .to_string()
            .replace(' ', "")
    }
}

/// Three significant digits, without exponents in the range people read
/// (latencies in seconds are often below 0.01).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        // log10(0) is −∞: no digits to count.
        "0".into()
    } else if (1e-4..1e9).contains(&a) {
        let decimals = if a >= 1.0 {
            3
        } else {
            (2 - a.log10().floor() as i32).clamp(3, 6) as usize
        };
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}
