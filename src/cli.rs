//! Command-line interface: argument definitions only; each command's work
//! lives in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, documented in README.md and docs/EXECUTOR.md.
pub mod exit {
    /// Success (also: a graceful stop on SIGINT/SIGTERM).
    pub const OK: u8 = 0;
    /// `verify` found rows still pending; `check` preflight found problems;
    /// `status`: the job has not started.
    pub const PENDING: u8 = 1;
    /// Invalid policy, flags or SQL: fix the input and retry.
    pub const INVALID: u8 = 2;
    /// Runtime failure: database unreachable, retries exhausted, another runner.
    pub const FAILED: u8 = 3;
    /// Stopped because the job stayed paused longer than `job.max_pause`.
    pub const MAX_PAUSE: u8 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "pacer",
    version,
    about = "Run long PostgreSQL backfills during business hours without hurting live traffic",
    long_about = "pacer runs a policy's backfill in small keyset batches while a feedback \
controller watches production health (latency from Prometheus, replication lag and lock \
waits from Postgres) and adjusts batch size, sleep and workers; it pauses by itself when \
the policy's stop numbers are crossed and resumes when production is calm.\n\n\
Start with `pacer simulate --policy policies/demo.toml` (no database needed)."
)]
pub struct Cli {
    /// Log format: human-readable text or JSON lines.
    #[arg(long, global = true, env = "PACER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level filter (overrides RUST_LOG), e.g. `info`, `debug`, `pacer=debug`.
    #[arg(long, global = true, env = "PACER_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct PolicyArg {
    /// Policy file (TOML). Scalar keys can be overridden with
    /// PACER_POLICY__<SECTION>__<KEY> environment variables.
    #[arg(long, short = 'p', value_name = "FILE")]
    pub policy: PathBuf,
    /// In a fleet policy ([fleet], [[target]]): act on this target's
    /// database only (status, pause, resume, verify, report, cleanup).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy offline; with a reachable database, also preflight the SQL.
    Check(CheckArgs),
    /// Rehearse a policy against a simulated database in virtual time.
    Simulate(SimulateArgs),
    /// Run (or resume) the policy's backfill against the database.
    Run(RunArgs),
    /// Pause a job: it stops taking batches within one tick.
    Pause(PauseArgs),
    /// Resume a paused job with the knobs it had.
    Resume(ResumeArgs),
    /// Show a job's state, progress, rate, ETA, knobs and last decision.
    Status(StatusArgs),
    /// Count rows still pending (in throttled chunks) and show sample rows.
    Verify(VerifyArgs),
    /// Write timeline.svg and report.md from a job's stored history.
    Report(ReportArgs),
    /// Remove what pacer keeps for a finished, verified job.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Directory for timeline.svg and report.md (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Also remove the job row, its decision history and per-tick samples
    /// (after this `pacer report` has nothing to draw).
    #[arg(long)]
    pub history: bool,
    /// Clean up even if the job is not finished or rows are still pending.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Resume even though job.pending/job.update changed since the job started.
    #[arg(long)]
    pub accept_policy_change: bool,
    /// Read, estimate and EXPLAIN; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log every batch at INFO (default DEBUG).
    #[arg(long)]
    pub log_batches: bool,
    /// Start as a standby: wait (polling, holding nothing) until the active
    /// runner's lease has been expired for `[job] takeover_after`, then take
    /// the job over. Same as `[job] standby = true`.
    #[arg(long)]
    pub standby: bool,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Why, for the logs and `pacer status`.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Only validate the file; do not connect to the database.
    #[arg(long)]
    pub offline: bool,
    /// Accept a sparse `pending` filter on a large table.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Scenario: business-day, replica-storm, steady, or a scenario file
    /// (see sim/scenarios/ for the format).
    #[arg(long, default_value = "business-day", value_name = "NAME|PATH")]
    pub scenario: String,
    /// Model parameters file instead of the built-in sim/model.toml.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Seed for the simulated noise; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object with the results instead of logs and a table.
    #[arg(long)]
    pub json: bool,
    /// Simulated duration (default: the scenario's own length).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Rows pending in the simulated table (default: more than the day can
    /// reach); the run ends, as a real one does, once they are all done.
    #[arg(long, value_name = "N")]
    pub rows: Option<u64>,
    /// Also write DIR/timeline.svg and DIR/report.md for the simulated run.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Simulate a fleet of TARGETS databases on CLUSTERS clusters (e.g.
    /// `100x10`) under the policy's [fleet] limits, one shared budget per
    /// cluster; target sizes span two decades below --rows (default
    /// 1000000).
    #[arg(long, value_name = "TARGETSxCLUSTERS")]
    pub fleet: Option<crate::sim::FleetShape>,
    /// With --fleet: targets running at once (default: the policy's
    /// fleet.max_active_targets, else 4).
    #[arg(long, value_name = "N", requires = "fleet")]
    pub max_active: Option<u32>,
}
