//! Everything the run loop (or the simulator) reports about one job, behind
//! one object, so the loop calls one method per event and the log line, the
//! metrics, the progress bar and the long-pause alarm stay consistent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::events::{self, BatchLine, ProgressLine};
use super::metrics::{Metrics, MetricsError};
use super::pause_watch::{PauseVerdict, PauseWatch, WARN_EVERY};
use super::progress::{Every, ProgressView, RateMeter};
use crate::controller::{BatchError, BatchOutcome, Decision, Knobs, SignalLevels};
use crate::policy::Policy;
use crate::signals::Reading;

/// How chatty the job's telemetry is.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// Batch lines at INFO instead of DEBUG (`--log-batches`).
    pub log_batches: bool,
    /// Interval of the INFO progress line.
    pub progress_every: Duration,
    /// Window of the rate shown in progress lines and the bar.
    pub rate_window: Duration,
    /// Show the progress bar when stderr is a terminal.
    pub progress_bar: bool,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        TelemetryOptions {
            log_batches: false,
            progress_every: Duration::from_secs(30),
            rate_window: Duration::from_secs(60),
            progress_bar: true,
        }
    }
}

pub struct JobTelemetry {
    job: String,
    labels: BTreeMap<String, String>,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    signals: Vec<String>,
    opts: TelemetryOptions,
    rate: RateMeter,
    progress_every: Every,
    pause_watch: PauseWatch,
    bar: Option<ProgressView>,
    /// Repeated small cuts, folded into one line per minute per cause.
    fold: std::sync::Mutex<super::fold::Fold>,
    /// Signals already reported as not responding to the current pause.
    unresponsive: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl JobTelemetry {
    /// For `policy`'s job; fails only on `[job] labels` that cannot be metric labels.
    pub fn new(policy: &Policy, opts: TelemetryOptions) -> Result<JobTelemetry, MetricsError> {
        let job = policy.job.name.clone();
        let labels = policy.job.labels.clone();
        let metrics = Arc::new(Metrics::new(&job, &labels)?);
        let bar = if opts.progress_bar {
            ProgressView::stderr_if_terminal()
        } else {
            None
        };
        Ok(JobTelemetry {
            span: super::logging::job_span(&job, &labels),
            signals: policy.signals.iter().map(|s| s.name.clone()).collect(),
            rate: RateMeter::new(opts.rate_window),
            progress_every: Every::new(opts.progress_every),
            pause_watch: PauseWatch::new(
                policy.job.max_pause,
                policy.job.stop_after_max_pause,
                WARN_EVERY,
            ),
            job,
            labels,
            metrics,
            opts,
            bar,
            fold: Default::default(),
            unresponsive: Default::default(),
        })
    }

    /// The span that labels every line of the job: run the job's tasks
    /// inside it (`tracing::Instrument::instrument(fut, t.span().clone())`).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The registry `/metrics` serves (`http::serve(.., t.metrics(), ..)`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The signals' resolved levels, once baselines are known.
    pub fn levels(&self, levels: &[SignalLevels]) {
        self.metrics.set_signal_levels(levels);
    }

    /// One tick's readings, in policy order.
    pub fn readings(&self, readings: &[Reading]) {
        self.metrics
            .observe_readings(self.signals.iter().map(String::as_str), readings);
    }

    /// Log the decision (INFO when it changed something; repeated small
    /// cuts folded per minute) and update metrics.
    pub fn decision(&self, d: &Decision) {
        let cut = d.changed() && d.action != crate::controller::Action::Increase;
        let lines = match self.fold.lock() {
            Ok(mut fold) if cut => fold.push(d),
            Ok(mut fold) => fold.expire(d.at),
            Err(_) => Vec::new(),
        };
        for line in &lines {
            events::log_folded(line, &self.job, &self.labels);
        }
        if !cut || self.fold.is_poisoned() {
            events::log_decision(d, &self.job, &self.labels);
        }
        self.unresponsive_check(d);
        self.metrics.observe_decision(d);
    }

    /// A WARN once per pause for each signal that does not respond to it
    /// (`SignalView::unresponsive_for`): waiting may never end, and what
    /// holds the signal up is for a person to find.
    fn unresponsive_check(&self, d: &Decision) {
        let Ok(mut seen) = self.unresponsive.lock() else {
            return;
        };
        if d.state != crate::controller::State::Paused {
            seen.clear();
            return;
        }
        for s in &d.view.signals {
            if let Some(paused_for) = s.unresponsive_for
                && seen.insert(s.name.clone())
            {
                self.span
                    .in_scope(|| events::log_unresponsive(s, paused_for, &self.job));
            }
        }
    }

    /// One finished batch attempt.
    pub fn batch(&self, line: &BatchLine<'_>, outcome: &BatchOutcome) {
        self.span
            .in_scope(|| events::log_batch(line, self.opts.log_batches));
        self.metrics.observe_batch(outcome);
    }

    /// A failed attempt that will be retried.
    pub fn retry(&self, class: BatchError) {
        self.metrics.observe_retry(class);
    }

    /// Progress from the store: feeds the metrics and the bar every call,
    /// and logs the progress line once per `progress_every`. Returns the
    /// line it computed.
    pub fn progress(
        &mut self,
        now: DateTime<Utc>,
        rows_done: u64,
        rows_pending: Option<u64>,
        state: &str,
        knobs: Knobs,
    ) -> ProgressLine {
        self.rate.observe(now, rows_done);
        let line = ProgressLine {
            rows_done,
            rows_pending,
            rate: self.rate.rate(),
            state: state.to_string(),
            knobs,
        };
        self.metrics.set_progress(rows_done, rows_pending);
        if let Some(bar) = &self.bar {
            bar.update(&line);
        }
        if self.progress_every.due(now) {
            self.span.in_scope(|| events::log_progress(&line));
        }
        line
    }

    /// Call every tick with when the current pause began (`None` while
    /// running) and why; warns every few minutes past `max_pause`. On
    /// `Stop`, the caller exits with `cli::exit::MAX_PAUSE`.
    pub fn pause_check(
        &mut self,
        now: DateTime<Utc>,
        paused_since: Option<DateTime<Utc>>,
        reason: &str,
    ) -> PauseVerdict {
        let verdict = self.pause_watch.observe(now, paused_since);
        let max = self.pause_watch_max();
        match verdict {
            PauseVerdict::Warn { paused_for } => {
                self.span
                    .in_scope(|| events::log_long_pause(paused_for, max, reason, false));
            }
            PauseVerdict::Stop { paused_for } => {
                self.span
                    .in_scope(|| events::log_long_pause(paused_for, max, reason, true));
            }
            PauseVerdict::Quiet => {}
        }
        verdict
    }

    fn pause_watch_max(&self) -> Duration {
        self.pause_watch.max_pause().unwrap_or_default()
    }

    /// The job is finished: state `done` in the metrics, final bar message.
    pub fn finish(mut self, message: &str) {
        // Cuts still folded are part of the run's story.
        let folded = self.fold.lock().map(|mut f| f.flush()).unwrap_or_default();
        for line in &folded {
            events::log_folded(line, &self.job, &self.labels);
        }
        self.metrics.set_state("done");
        if let Some(bar) = self.bar.take() {
            bar.finish(message);
        }
        self.span
            .in_scope(|| tracing::info!(target: "pacer::progress", "{message}"));
    }
}
