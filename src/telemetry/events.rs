//! The lines an operator reads: one per decision that changes anything, one
//! per batch (DEBUG, or INFO with `--log-batches`), a periodic progress
//! line, and a repeated warning while a job stays paused too long.
//!
//! Each line is a sentence (the message) plus structured fields with the
//! same facts, so a person reads the sentence and a log pipeline filters on
//! the fields.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::controller::{Action, Decision, Knobs};
use crate::controller::{fmt_dur, num};

use super::logging::{JOB_SPAN, job_span};

/// The name `action` has in logs and metrics.
pub fn action_str(a: Action) -> &'static str {
    match a {
        Action::Hold => "hold",
        Action::Increase => "increase",
        Action::Decrease => "decrease",
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Clamp => "clamp",
    }
}

/// Run `f` inside the job's span unless the caller already is in one, so
/// helpers called from outside the run loop still label their lines.
fn in_job<R>(job: &str, labels: &BTreeMap<String, String>, f: impl FnOnce() -> R) -> R {
    let current = tracing::Span::current();
    if current.metadata().is_some_and(|m| m.name() == JOB_SPAN) {
        f()
    } else {
        job_span(job, labels).in_scope(f)
    }
}

/// Log one decision: INFO when it changed anything (`Decision::changed`)
/// or starts a hold on growth (`Decision::holds_growth`), DEBUG otherwise.
/// The message is `Decision::summary()`; the fields are the state, the
/// action, each knob before and after, and the causes as structured JSON
/// (signal, value, level, threshold, baseline, ...).
/// Returns whether the line was an INFO line.
pub fn log_decision(d: &Decision, job: &str, labels: &BTreeMap<String, String>) -> bool {
    let causes = serde_json::to_string(&d.causes).unwrap_or_else(|_| "[]".into());
    let windows = serde_json::to_string(&d.windows).unwrap_or_else(|_| "[]".into());
    let changed = d.logged();
    let estimates = d.view.signals_line();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "pacer::decision",
                $lvl,
                state = d.state.as_str(),
                action = action_str(d.action),
                batch_before = d.before.batch_size,
                batch_after = d.knobs.batch_size,
                sleep_before_ms = d.before.sleep.as_millis() as u64,
                sleep_after_ms = d.knobs.sleep.as_millis() as u64,
                workers_before = d.before.workers,
                workers_after = d.knobs.workers,
                causes = causes.as_str(),
                windows = windows.as_str(),
                target_rate = d.view.target_rate.round() as u64,
                estimates = estimates.as_str(),
                "{}",
                d.summary()
            )
        };
    }
    in_job(job, labels, || {
        if changed {
            emit!(tracing::Level::INFO)
        } else {
            emit!(tracing::Level::DEBUG)
        }
    });
    changed
}

/// Log cuts folded by `fold::Fold`: one INFO line, the count as a field.
pub fn log_folded(line: &super::fold::Line, job: &str, labels: &BTreeMap<String, String>) {
    match line {
        super::fold::Line::Decision(d) => {
            log_decision(d, job, labels);
        }
        super::fold::Line::Folded {
            count,
            first_before,
            last,
        } => {
            let causes = serde_json::to_string(&last.causes).unwrap_or_else(|_| "[]".into());
            let estimates = last.view.signals_line();
            in_job(job, labels, || {
                tracing::info!(
                    target: "pacer::decision",
                    state = last.state.as_str(),
                    action = "decrease",
                    folded = *count,
                    batch_before = first_before.batch_size,
                    batch_after = last.knobs.batch_size,
                    sleep_before_ms = first_before.sleep.as_millis() as u64,
                    sleep_after_ms = last.knobs.sleep.as_millis() as u64,
                    workers_before = first_before.workers,
                    workers_after = last.knobs.workers,
                    causes = causes.as_str(),
                    target_rate = last.view.target_rate.round() as u64,
                    estimates = estimates.as_str(),
                    "{}",
                    line.summary()
                )
            });
        }
    }
}

/// One batch as the executor reports it for the log.
#[derive(Debug, Clone)]
pub struct BatchLine<'a> {
    pub worker: u32,
    /// First and last key of the batch, as text (keys may be of any type).
    pub first_key: &'a str,
    pub last_key: &'a str,
    pub batch_size: u32,
    /// Rows the update changed (may be fewer than the keys: the guard).
    pub rows: u64,
    pub duration: Duration,
    /// Attempts before this one that failed and were retried.
    pub retries: u32,
    /// Error class if the batch failed for good.
    pub error: Option<&'a str>,
}

/// Log one batch at DEBUG, or INFO when the operator asked for
/// `--log-batches`.
pub fn log_batch(b: &BatchLine<'_>, info: bool) {
    let msg = match b.error {
        None => format!(
            "batch of {} keys ({}..{}) changed {} rows in {} on worker {}",
            b.batch_size,
            b.first_key,
            b.last_key,
            b.rows,
            fmt_dur(b.duration),
            b.worker
        ),
        Some(e) => format!(
            "batch of {} keys ({}..{}) failed with {e} after {} retries on worker {}",
            b.batch_size, b.first_key, b.last_key, b.retries, b.worker
        ),
    };
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "pacer::batch",
                $lvl,
                worker = b.worker,
                first_key = b.first_key,
                last_key = b.last_key,
                batch_size = b.batch_size,
                rows = b.rows,
                duration_ms = b.duration.as_secs_f64() * 1000.0,
                retries = b.retries,
                error = b.error,
                "{msg}"
            )
        };
    }
    if info {
        emit!(tracing::Level::INFO)
    } else {
        emit!(tracing::Level::DEBUG)
    }
}

/// What the periodic progress line (and the progress bar) shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressLine {
    pub rows_done: u64,
    /// Rows still pending, when known (an estimate from the planner is fine).
    pub rows_pending: Option<u64>,
    /// Recent rows per second.
    pub rate: f64,
    /// `running`, `slowing`, `paused`, `done`.
    pub state: String,
    pub knobs: Knobs,
}

impl ProgressLine {
    /// Time left at the recent rate; `None` when paused, unknown or idle.
    pub fn eta(&self) -> Option<Duration> {
        let pending = self.rows_pending?;
        if pending == 0 {
            return Some(Duration::ZERO);
        }
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return None;
        }
        Some(Duration::from_secs_f64(
            (pending as f64 / self.rate).min(1e9),
        ))
    }

    /// `1,234,000 of 8,000,000 rows (15.4 %), 2,345 rows/s, ETA 48m; running, batch 2000, sleep 100ms, 3 workers`.
    pub fn sentence(&self) -> String {
        let mut s = format!("{} rows", group(self.rows_done));
        if let Some(p) = self.rows_pending {
            let total = self.rows_done + p;
            let pct = if total == 0 {
                100.0
            } else {
                self.rows_done as f64 * 100.0 / total as f64
            };
            s = format!(
                "{} of {} rows ({pct:.1} %)",
                group(self.rows_done),
                group(total)
            );
        }
        s.push_str(&format!(
            ", {} rows/s",
            group(self.rate.round().max(0.0) as u64)
        ));
        match self.eta() {
            Some(eta) => s.push_str(&format!(", ETA {}", fmt_dur(round_eta(eta)))),
            None => s.push_str(", ETA unknown"),
        }
        s.push_str(&format!(
            "; {}, batch {}, sleep {}, {} worker{}",
            self.state,
            self.knobs.batch_size,
            fmt_dur(self.knobs.sleep),
            self.knobs.workers,
            if self.knobs.workers == 1 { "" } else { "s" }
        ));
        s
    }
}

/// ETAs to a precision a person can use: seconds under a minute, minutes
/// after that.
fn round_eta(d: Duration) -> Duration {
    if d < Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_secs(d.as_secs() / 60 * 60)
    }
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The periodic INFO progress line.
pub fn log_progress(p: &ProgressLine) {
    tracing::info!(
        target: "pacer::progress",
        rows_done = p.rows_done,
        rows_pending = p.rows_pending,
        rows_per_second = p.rate,
        eta_seconds = p.eta().map(|d| d.as_secs()),
        state = p.state.as_str(),
        batch_size = p.knobs.batch_size,
        sleep_ms = p.knobs.sleep.as_millis() as u64,
        workers = p.knobs.workers,
        "progress: {}",
        p.sentence()
    );
}

/// A signal that has not come down in a pause long enough for pacer's own
/// effect on it to have gone (`SignalView::unresponsive_for`).
pub fn log_unresponsive(s: &crate::controller::SignalView, paused_for: Duration, job: &str) {
    let n = |v: Option<f64>| v.map(num).unwrap_or_else(|| "-".into());
    tracing::warn!(
        target: "pacer::pause",
        signal = %s.name,
        estimate = s.estimate,
        paused_for_seconds = paused_for.as_secs(),
        delay_seconds = s.delay.as_secs(),
        "{} has not come down in {} paused (estimate {}, raw {}; its changes show within {}): \
         what holds it above stop is not this backfill's rate (other load, dead row versions \
         the backfill left for vacuum, or a baseline taken in a quiet spell); job {job} stays \
         paused until it calms down",
        s.name,
        fmt_dur(paused_for),
        n(s.estimate),
        n(s.raw),
        fmt_dur(s.delay)
    );
}

/// The repeated WARN for a job paused longer than `max_pause`.
pub fn log_long_pause(paused_for: Duration, max_pause: Duration, reason: &str, stopping: bool) {
    let tail = if stopping {
        "stopping now (stop_after_max_pause = true)"
    } else {
        "still waiting; `pacer resume` overrides a manual pause, otherwise the stop numbers must calm down"
    };
    tracing::warn!(
        target: "pacer::pause",
        paused_for_seconds = paused_for.as_secs(),
        max_pause_seconds = max_pause.as_secs(),
        reason = reason,
        stopping = stopping,
        "paused for {} (max_pause {}) because {reason}; {tail}",
        fmt_dur(paused_for),
        fmt_dur(max_pause)
    );
}
