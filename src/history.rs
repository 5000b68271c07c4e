//! What happened during a run, in a form both a real run (from pacer's
//! tables) and a simulation produce, so one report renders either.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::controller::{Decision, Knobs};

/// One point of the timeline, typically one per controller tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    /// `running`, `slowing`, `paused`, `done`.
    pub state: String,
    pub knobs: Knobs,
    /// Backfill throughput over the last interval.
    pub rows_per_second: f64,
    pub rows_done: u64,
    /// Signal values by name; `None` = missing.
    pub signals: BTreeMap<String, Option<f64>>,
    /// The controller's smoothed estimate of each signal, by name: what its
    /// slow and growth decisions judged. Empty where not recorded.
    #[serde(default)]
    pub estimates: BTreeMap<String, Option<f64>>,
    /// Rows/s the knobs aimed at (0 while paused); `None` where not recorded.
    #[serde(default)]
    pub target_rate: Option<f64>,
}

impl Sample {
    /// The estimates and target rate of a controller view.
    pub fn with_view(mut self, view: &crate::controller::View) -> Sample {
        self.estimates = view
            .signals
            .iter()
            .map(|s| (s.name.clone(), s.estimate))
            .collect();
        self.target_rate = Some(view.target_rate);
        self
    }
}

/// Resolved levels of one signal, for drawing its slow/stop lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalInfo {
    pub name: String,
    pub slow: Option<f64>,
    pub stop: Option<f64>,
    pub baseline: Option<f64>,
}

/// A pause band: from, to (None = still paused at the end), and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub job: String,
    pub signals: Vec<SignalInfo>,
    pub samples: Vec<Sample>,
    /// Decisions that changed something (see `Decision::changed`).
    pub decisions: Vec<Decision>,
    pub pauses: Vec<Pause>,
    /// Batch retries by error class (`lock_timeout`, `deadlock`, ...).
    pub retries: BTreeMap<String, u64>,
}

impl History {
    /// Derive pause bands from the decisions, so every producer gets them
    /// the same way.
    pub fn pauses_from_decisions(decisions: &[Decision]) -> Vec<Pause> {
        use crate::controller::Action;
        let mut out: Vec<Pause> = Vec::new();
        for d in decisions {
            match d.action {
                Action::Pause => out.push(Pause {
                    from: d.at,
                    to: None,
                    reason: d
                        .causes
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
                Action::Resume => {
                    if let Some(p) = out.last_mut().filter(|p| p.to.is_none()) {
                        p.to = Some(d.at);
                    }
                }
                _ => {}
            }
        }
        out
    }
}
