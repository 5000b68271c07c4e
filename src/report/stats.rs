//! The numbers a report states about a run, computed once from its history
//! so the chart and the runbook agree.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::history::{History, Pause};

/// Window of the moving average behind `peak_rate`: a single fast tick is
/// noise, a minute at that rate is a fact about the run.
pub const PEAK_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub duration: Duration,
    /// Rows done during the history (last minus first progress record).
    pub rows: u64,
    /// Rows done at the end, including work from before this history.
    pub rows_done_end: u64,
    pub avg_rate: f64,
    /// Highest rows/s averaged over `PEAK_WINDOW`.
    pub peak_rate: f64,
    pub paused: Duration,
    pub slowing: Duration,
    /// Pause bands, from the history or derived from its decisions.
    pub pauses: Vec<Pause>,
    pub signals: Vec<SignalStats>,
    pub decisions_by_action: BTreeMap<String, u64>,
    /// State at the last sample.
    pub final_state: String,
    /// Why the job ended, when its own record says (`ReportInfo::ended`).
    pub final_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignalStats {
    pub name: String,
    pub max: Option<f64>,
    pub above_slow: Duration,
    pub above_stop: Duration,
    pub missing: Duration,
}

impl RunStats {
    /// `None` for a history without samples: there is nothing to report on.
    pub fn from_history(h: &History) -> Option<RunStats> {
        let first = h.samples.first()?;
        let last = h.samples.last()?;
        let start = first.at;
        let end = last.at.max(start);
        let duration = (end - start).to_std().unwrap_or_default();
        let rows = last.rows_done.saturating_sub(first.rows_done);
        let secs = duration.as_secs_f64();
        let avg_rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };

        // Time each sample stands for: until the next sample.
        let spans: Vec<Duration> = h
            .samples
            .windows(2)
            .map(|w| (w[1].at - w[0].at).to_std().unwrap_or_default())
            .chain(std::iter::once(Duration::ZERO))
            .collect();

        let mut paused = Duration::ZERO;
        let mut slowing = Duration::ZERO;
        for (s, d) in h.samples.iter().zip(&spans) {
            match s.state.as_str() {
                "paused" => paused += *d,
                "slowing" => slowing += *d,
                _ => {}
            }
        }

        // Peak: moving average over PEAK_WINDOW, weighted by sample spans.
        let mut peak_rate: f64 = 0.0;
        let mut lo = 0;
        let mut acc_rows = 0.0;
        let mut acc_time = 0.0;
        for hi in 0..h.samples.len() {
            let d = spans[hi].as_secs_f64();
            acc_rows += h.samples[hi].rows_per_second * d;
            acc_time += d;
            while lo < hi && acc_time - spans[lo].as_secs_f64() >= PEAK_WINDOW.as_secs_f64() {
                acc_rows -= h.samples[lo].rows_per_second * spans[lo].as_secs_f64();
                acc_time -= spans[lo].as_secs_f64();
                lo += 1;
            }
            if acc_time >= PEAK_WINDOW.as_secs_f64().min(secs) && acc_time > 0.0 {
                peak_rate = peak_rate.max(acc_rows / acc_time);
            }
        }
        if peak_rate == 0.0 {
            peak_rate = h
                .samples
                .iter()
                .map(|s| s.rows_per_second)
                .fold(0.0, f64::max);
        }

        let signals = h
            .signals
            .iter()
            .map(|info| {
                let mut st = SignalStats {
                    name: info.name.clone(),
                    max: None,
                    above_slow: Duration::ZERO,
                    above_stop: Duration::ZERO,
                    missing: Duration::ZERO,
                };
                for (s, d) in h.samples.iter().zip(&spans) {
                    match s.signals.get(&info.name).copied().flatten() {
                        Some(v) => {
                            st.max = Some(st.max.map_or(v, |m: f64| m.max(v)));
                            if info.slow.is_some_and(|l| v > l) {
                                st.above_slow += *d;
                            }
                            if info.stop.is_some_and(|l| v > l) {
                                st.above_stop += *d;
                            }
                        }
                        None => st.missing += *d,
                    }
                }
                st
            })
            .collect();

        let mut decisions_by_action = BTreeMap::new();
        for d in &h.decisions {
            *decisions_by_action
                .entry(crate::telemetry::events::action_str(d.action).to_string())
                .or_insert(0) += 1;
        }
        let pauses = if h.pauses.is_empty() {
            History::pauses_from_decisions(&h.decisions)
        } else {
            h.pauses.clone()
        };
        Some(RunStats {
            start,
            end,
            duration,
            rows,
            rows_done_end: last.rows_done,
            avg_rate,
            peak_rate,
            paused,
            slowing,
            pauses,
            signals,
            decisions_by_action,
            final_state: last.state.clone(),
            final_message: None,
        })
    }

    /// How long a pause lasted; an open pause lasts until the end of the history.
    pub fn pause_length(&self, p: &Pause) -> Duration {
        (p.to.unwrap_or(self.end) - p.from)
            .to_std()
            .unwrap_or_default()
    }
}
