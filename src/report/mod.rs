//! `pacer report` and `pacer simulate --report`: from a run's `History`,
//! `timeline.svg` (what happened, at a glance) and `report.md` (the record
//! and runbook for the next person). A real run and a simulation render the
//! same way because both produce a `History`.

pub mod runbook;
pub mod stats;
pub mod timeline;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::history::History;
use crate::policy::Policy;

/// What the report needs beyond the history; all optional so a report can
/// be written from whatever is at hand.
#[derive(Debug, Clone, Default)]
pub struct ReportInfo {
    /// The job's policy: SQL, limits, stop numbers, windows, time zone.
    pub policy: Option<Policy>,
    /// Where the policy file lives, for the commands in the runbook.
    pub policy_path: Option<PathBuf>,
    /// Where the history came from, e.g. `a simulation (scenario
    /// business-day, seed 1)`.
    pub source: Option<String>,
    /// The database URL; only ever printed redacted.
    pub database: Option<String>,
    pub verification: Option<Verification>,
    /// SQL that undoes the job, if the author provided one.
    pub rollback: Option<String>,
    /// How the job ended by its own record (`pacer.jobs`): a run stopped
    /// by a signal, or one that failed, leaves its last sample at the state
    /// it was running in, so the samples alone cannot tell.
    pub ended: Option<Ended>,
}

/// A job's final state and message as its runner wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// `done`, `stopped` or `failed`; any other state is not an end.
    pub state: String,
    pub message: Option<String>,
}

/// The result of `pacer verify`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub passed: bool,
    pub pending_rows: u64,
    /// Anything else verify printed (shown verbatim, redacted).
    pub detail: String,
}

impl ReportInfo {
    /// The time zone times are shown in: the job's, else UTC.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.policy
            .as_ref()
            .and_then(|p| p.job.timezone.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }
}

/// Write `dir/timeline.svg` and `dir/report.md`. Each file is written to a
/// temporary name and renamed into place, so a failed render never leaves a
/// half-written report behind.
pub fn render(history: &History, extra: &ReportInfo, dir: &Path) -> anyhow::Result<()> {
    let mut stats = stats::RunStats::from_history(history);
    if let (Some(s), Some(e)) = (stats.as_mut(), extra.ended.as_ref())
        && matches!(e.state.as_str(), "done" | "stopped" | "failed")
    {
        s.final_state = e.state.clone();
        s.final_message = e.message.clone();
    }
    let svg = timeline::svg(history, stats.as_ref(), extra).context("drawing the timeline")?;
    let md = runbook::markdown(history, stats.as_ref(), extra);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating report directory {}", dir.display()))?;
    write_atomic(&dir.join("timeline.svg"), svg.as_bytes())?;
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp-{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("moving {} into place", path.display())
    })
}
