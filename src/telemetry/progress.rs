//! The live progress bar on a terminal, and the rate it shows.
//!
//! Log lines and the bar share stderr. The bar registers itself here while
//! it is showing; the log writer (`logging::StderrWriter`) then writes each
//! line through `ProgressBar::suspend`, which clears the bar, prints the line
//! and redraws the bar below it, so neither garbles the other.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{ProgressLine, group};
use crate::controller::fmt_dur;

/// The bar currently showing, if any, with its view's id.
static BAR: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Run `write` (which prints a log line) with the bar cleared around it.
pub fn write_around_bar<R>(write: impl FnOnce() -> R) -> R {
    let bar = BAR
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|(_, b)| b.clone()));
    match bar {
        Some(b) if !b.is_finished() && !b.is_hidden() => b.suspend(write),
        _ => write(),
    }
}

/// A progress bar for `pacer run`: rows done of total, rate, ETA, state and
/// the current knobs.
pub struct ProgressView {
    id: u64,
    bar: ProgressBar,
}

impl ProgressView {
    /// A bar on stderr, only when stderr is a terminal: piped output and log
    /// files get the periodic progress line instead.
    pub fn stderr_if_terminal() -> Option<ProgressView> {
        std::io::stderr()
            .is_terminal()
            .then(|| ProgressView::with_target(ProgressDrawTarget::stderr()))
    }

    /// A bar drawing to any target (tests use an in-memory terminal).
    pub fn with_target(target: ProgressDrawTarget) -> ProgressView {
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {elapsed_precise} [{bar:30.cyan/blue}] {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = BAR.lock() {
            *g = Some((id, bar.clone()));
        }
        ProgressView { id, bar }
    }

    /// Redraw with fresh numbers.
    pub fn update(&self, p: &ProgressLine) {
        if let Some(pending) = p.rows_pending {
            self.bar.set_length(p.rows_done + pending);
        }
        self.bar.set_position(p.rows_done);
        self.bar.set_message(bar_message(p));
        self.bar.tick();
    }

    /// Leave the final state on screen and stop routing logs around the bar.
    pub fn finish(self, message: &str) {
        self.bar.finish_with_message(message.to_string());
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        if let Ok(mut g) = BAR.lock()
            && g.as_ref().is_some_and(|(id, _)| *id == self.id)
        {
            *g = None;
        }
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}

/// `1,234,000/8,000,000 rows · 2,345 rows/s · ETA 48m · running · batch 2000 · sleep 100ms · 3 workers`.
pub fn bar_message(p: &ProgressLine) -> String {
    let rows = match p.rows_pending {
        Some(pending) => format!(
            "{}/{} rows",
            group(p.rows_done),
            group(p.rows_done + pending)
        ),
        None => format!("{} rows", group(p.rows_done)),
    };
    let eta = p.eta().map_or("?".to_string(), |d| {
        fmt_dur(Duration::from_secs(d.as_secs()))
    });
    format!(
        "{rows} · {} rows/s · ETA {eta} · {} · batch {} · sleep {} · {} worker{}",
        group(p.rate.round().max(0.0) as u64),
        p.state,
        p.knobs.batch_size,
        fmt_dur(p.knobs.sleep),
        p.knobs.workers,
        if p.knobs.workers == 1 { "" } else { "s" }
    )
}

/// Rows per second over a sliding window of progress observations: smooth
/// enough to read, recent enough to show a slow-down within a minute.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window: Duration,
    points: VecDeque<(DateTime<Utc>, u64)>,
}

impl RateMeter {
    pub fn new(window: Duration) -> RateMeter {
        RateMeter {
            window,
            points: VecDeque::new(),
        }
    }

    /// Record the total rows done at `at`.
    pub fn observe(&mut self, at: DateTime<Utc>, rows_done: u64) {
        self.points.push_back((at, rows_done));
        // Keep one point at or before the window start so the rate spans
        // the whole window.
        while self.points.len() > 2 {
            let second = self.points[1].0;
            if (at - second).to_std().unwrap_or_default() >= self.window {
                self.points.pop_front();
            } else {
                break;
            }
        }
    }

    /// Rows per second across the window; 0 until two observations exist.
    pub fn rate(&self) -> f64 {
        match (self.points.front(), self.points.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                let secs = (*t1 - *t0).num_milliseconds() as f64 / 1000.0;
                r1.saturating_sub(*r0) as f64 / secs
            }
            _ => 0.0,
        }
    }
}

/// Whether a periodic line is due: at most one per `every`.
#[derive(Debug, Clone)]
pub struct Every {
    every: Duration,
    last: Option<DateTime<Utc>>,
}

impl Every {
    pub fn new(every: Duration) -> Every {
        Every { every, last: None }
    }

    /// True the first time and then once `every` has passed since the last true.
    pub fn due(&mut self, now: DateTime<Utc>) -> bool {
        let due = self
            .last
            .is_none_or(|l| (now - l).to_std().unwrap_or_default() >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}
