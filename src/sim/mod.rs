//! `pacer simulate`: the real controller against a simulated database in
//! virtual time.
//!
//! The model (`sim/model.toml`) and the scenarios (`sim/scenarios/*.toml`)
//! are data, not code the controller can see: the controller only gets
//! readings through meters that imitate the real sources, with their delay
//! and noise. Because the simulator knows the true state, it can say how
//! close the controller came to the best safe throughput (`safe_rows_bound`)
//! and how long it hurt production (`seconds_above_stop`). See
//! docs/SIMULATOR.md.

mod bound;
mod dispatch;
mod fleet;
mod measure;
mod model;
mod run;
mod scenario;
mod setup;
mod table;

pub use bound::{Oracle, Reach};
pub use dispatch::{DispatchStats, KeySpace};
pub use fleet::{FleetOutcome, FleetShape, FleetTargetOutcome, fleet_table, simulate_fleet};
pub use measure::{Meter, SimKind};
pub use model::{Conditions, DEFAULT_MODEL, Model, Plant, Truth};
pub use run::{RunStats, Strategy};
pub use scenario::{BUILTIN as BUILTIN_SCENARIOS, Scenario, Trace};
pub use setup::Setup;
pub use table::summary_table;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::controller::{Decision, Knobs};
use crate::history::History;
use crate::policy::Policy;

/// The result of `pacer simulate`: the pacer run, the two fixed strategies
/// on the same trace, and the bound they are measured against.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub job: String,
    pub scenario: String,
    pub seed: u64,
    pub start: DateTime<Utc>,
    /// The policy's `job.timezone`, in which windows and the scenario apply.
    pub timezone: String,
    pub simulated_seconds: f64,
    pub rows_done: u64,
    /// The most rows a controller that knew the true safe rate, one
    /// measurement delay late, could have done without pushing any signal
    /// above its slow level.
    pub safe_rows_bound: u64,
    /// The same without the delay (what an all-knowing oracle could do).
    pub instant_rows_bound: u64,
    /// The measurement delay given to the bound, seconds.
    pub bound_delay_seconds: f64,
    /// rows_done / safe_rows_bound.
    pub efficiency: f64,
    /// Rows done while every signal was at or below slow, over the bound:
    /// efficiency that was not earned by crowding production.
    pub clean_efficiency: f64,
    /// Seconds the backfill caused harm: a signal above stop that would not
    /// have been without it, or one already above stop made ≥ 5 % worse.
    pub seconds_above_stop: f64,
    /// Of those, the seconds made worse while already above stop.
    pub seconds_worsened_above_stop: f64,
    /// seconds_above_stop as a percentage of the simulated time.
    pub percent_above_stop: f64,
    pub seconds_above_slow: f64,
    /// Failed batches (lock timeouts, deadlocks), retried later.
    pub batch_errors: u64,
    pub pauses: u64,
    /// Decisions that changed something (each is a log line).
    pub decisions: u64,
    /// The same decisions by action.
    pub actions: BTreeMap<String, u64>,
    pub max_signals: BTreeMap<String, f64>,
    /// Baselines measured before start (fixed `baseline` keys are not listed).
    pub baselines: BTreeMap<String, f64>,
    pub levels: Vec<LevelInfo>,
    /// What the executor's `Job` decided in the pacer run (the simulator
    /// dispatches through it): attempts, lock-free retries, keys set
    /// aside, sweeps, how and when it ended.
    pub dispatch: DispatchStats,
    /// The fixed strategies on the same day (absent from `simulate_pacer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_baselines: Option<FixedBaselines>,
    /// The decisions that changed a knob, and the holds on growth: the
    /// lines `pacer simulate` logs.
    #[serde(skip)]
    pub log: Vec<Decision>,
    #[serde(skip)]
    pub history: History,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelInfo {
    pub signal: String,
    pub sim: String,
    pub slow: Option<f64>,
    pub stop: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FixedBaselines {
    /// `start` knobs, one worker, never adapting.
    pub conservative: RunStats,
    /// `max` knobs (`min` sleep), never adapting.
    pub aggressive: RunStats,
}

/// The fixed strategies' knobs for `policy`.
pub fn fixed_knobs(policy: &Policy) -> (Knobs, Knobs) {
    let l = &policy.limits;
    (
        Knobs {
            batch_size: l.batch_size.start,
            sleep: l.sleep.start,
            workers: 1.max(l.workers.min),
        },
        Knobs {
            batch_size: l.batch_size.max,
            sleep: l.sleep.min,
            workers: l.workers.max,
        },
    )
}

/// Simulate `policy` on `scenario` with the noise of `seed`: pacer and the
/// two fixed strategies.
pub fn simulate(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<Duration>,
) -> anyhow::Result<Outcome> {
    simulate_rows(policy, model, scenario, seed, duration, None)
}

/// As `simulate`, on a table of `rows` pending rows (`None`: more than the
/// day can reach): the runs end once the Job has done them all.
pub fn simulate_rows(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<Duration>,
    rows: Option<u64>,
) -> anyhow::Result<Outcome> {
    simulate_with(policy, model, scenario, seed, duration, true, rows)
}

/// As `simulate`, pacer alone (benchmarks compare with fixed loops of
/// their own).
pub fn simulate_pacer(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<Duration>,
) -> anyhow::Result<Outcome> {
    simulate_with(policy, model, scenario, seed, duration, false, None)
}

fn simulate_with(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<Duration>,
    with_fixed: bool,
    rows: Option<u64>,
) -> anyhow::Result<Outcome> {
    let mut setup = Setup::new(policy, model, scenario, seed, duration)?;
    setup.table_rows = rows;
    let oracle = setup.oracle();
    let bound = oracle.rows.round();
    // As documented: rows_done / safe_rows_bound, both as reported.
    let eff = |rows: u64| {
        if bound > 0.0 {
            rows as f64 / bound
        } else {
            0.0
        }
    };
    let mut pacer = setup.run(&Strategy::Pacer, true)?;
    pacer.efficiency = eff(pacer.rows_done);
    pacer.clean_efficiency = eff(pacer.clean_rows);
    let fixed_baselines = if with_fixed {
        let (cons, aggr) = fixed_knobs(policy);
        let mut conservative = setup.run(&Strategy::Fixed(cons), false)?;
        let mut aggressive = setup.run(&Strategy::Fixed(aggr), false)?;
        for s in [&mut conservative, &mut aggressive] {
            s.efficiency = eff(s.rows_done);
            s.clean_efficiency = eff(s.clean_rows);
        }
        Some(FixedBaselines {
            conservative,
            aggressive,
        })
    } else {
        None
    };
    let simulated_seconds = setup.simulated_seconds();
    Ok(Outcome {
        job: policy.job.name.clone(),
        scenario: scenario.name.clone(),
        seed,
        start: setup.start,
        timezone: policy.job.timezone.clone(),
        simulated_seconds,
        rows_done: pacer.rows_done,
        safe_rows_bound: bound as u64,
        instant_rows_bound: oracle.instant_rows.round() as u64,
        bound_delay_seconds: oracle.delay,
        efficiency: pacer.efficiency,
        clean_efficiency: pacer.clean_efficiency,
        seconds_above_stop: pacer.seconds_above_stop,
        seconds_worsened_above_stop: pacer.seconds_worsened_above_stop,
        percent_above_stop: 100.0 * pacer.seconds_above_stop / simulated_seconds.max(1.0),
        seconds_above_slow: pacer.seconds_above_slow,
        batch_errors: pacer.batch_errors,
        pauses: pacer.pauses,
        decisions: pacer.decisions,
        actions: pacer.actions.clone(),
        max_signals: pacer.max_signals.clone(),
        baselines: setup.baselines.clone(),
        levels: setup
            .levels
            .iter()
            .zip(&policy.signals)
            .map(|(l, s)| LevelInfo {
                signal: l.name.clone(),
                sim: s.sim_kind().unwrap_or_default().to_string(),
                slow: l.slow,
                stop: l.stop,
            })
            .collect(),
        dispatch: pacer.dispatch.clone(),
        log: std::mem::take(&mut pacer.log),
        history: pacer.history.take().unwrap_or_default(),
        fixed_baselines,
    })
}

/// Only the run's history, for `pacer simulate --report` and other renderers.
pub fn history(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<Duration>,
) -> anyhow::Result<History> {
    let setup = Setup::new(policy, model, scenario, seed, duration)?;
    Ok(setup
        .run(&Strategy::Pacer, true)?
        .history
        .unwrap_or_default())
}
