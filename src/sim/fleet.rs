//! A fleet in virtual time: many targets of different sizes on a few
//! clusters, under the fleet's limits (`fleet::schedule`, the same state
//! machine the real fleet runner uses) and one shared budget per cluster.
//!
//! Each cluster is one simulated database driven by the real controller
//! through the scenario (`Setup::run`, a seed of its own): what it could
//! write, tick by tick, is its budget, and the cluster's running targets
//! split it evenly, as `fleet::budget` does. Two simplifications, both
//! stated in the report: a cluster's controller runs through the whole day
//! (its rate does not restart from the start knobs when a cluster idles
//! between targets), and a target finishing mid-tick hands the rest of
//! its share to nobody.

use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{Model, Scenario};
use crate::fleet::schedule::{Ended, Schedule};
use crate::policy::{OnTargetFailure, Policy};

/// The shape of a simulated fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetShape {
    pub targets: usize,
    pub clusters: usize,
}

impl std::str::FromStr for FleetShape {
    type Err = String;

    /// `100x10`: 100 targets on 10 clusters.
    fn from_str(s: &str) -> Result<FleetShape, String> {
        let bad = || format!("{s:?}: expected TARGETSxCLUSTERS, e.g. 100x10");
        let (t, c) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let targets: usize = t.trim().parse().map_err(|_| bad())?;
        let clusters: usize = c.trim().parse().map_err(|_| bad())?;
        if targets == 0 || clusters == 0 {
            return Err(format!("{s:?}: needs at least one target and one cluster"));
        }
        if clusters > targets {
            return Err(format!("{s:?}: more clusters than targets"));
        }
        if targets > 100_000 || clusters > 1_000 {
            return Err(format!("{s:?}: at most 100000 targets on 1000 clusters"));
        }
        Ok(FleetShape { targets, clusters })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetTargetOutcome {
    pub name: String,
    pub cluster: usize,
    pub rows: u64,
    /// Seconds from the fleet's start; `None`: not reached in the day.
    pub started: Option<f64>,
    pub finished: Option<f64>,
    /// Seconds this target would take alone on its cluster from the start.
    pub alone_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetOutcome {
    pub job: String,
    pub scenario: String,
    pub seed: u64,
    pub targets: usize,
    pub clusters: usize,
    pub max_active_targets: u32,
    pub canary: u32,
    pub rows_total: u64,
    pub rows_done: u64,
    pub simulated_seconds: f64,
    /// When the last target finished; `None` if some did not in the day.
    pub finish_seconds: Option<f64>,
    /// Every target run alone, one after the other: the sum of single runs.
    pub serial_seconds: Option<f64>,
    /// The budget's floor: the slowest cluster writing all of its targets'
    /// rows at its whole budget from the start (no fleet limit can beat it).
    pub budget_seconds: Option<f64>,
    /// Most targets running at once, as the schedule allowed.
    pub peak_active: usize,
    pub per_target: Vec<FleetTargetOutcome>,
}

/// Simulate the fleet: cluster budgets from the real controller on the
/// scenario, targets scheduled by the fleet's rules.
#[allow(clippy::too_many_arguments)]
pub fn simulate_fleet(
    policy: &Policy,
    model: &Model,
    scenario: &Scenario,
    seed: u64,
    duration: Option<std::time::Duration>,
    shape: FleetShape,
    max_rows: u64,
    max_active: Option<u32>,
) -> anyhow::Result<FleetOutcome> {
    let f = policy.fleet.clone().unwrap_or_default();
    let max_active = max_active.unwrap_or(f.max_active_targets).max(1);
    let canary = f.canary.min(shape.targets as u32);
    // One database's policy: every signal, as the cluster sees them all.
    let mut one = policy.clone();
    one.fleet = None;
    one.targets = Vec::new();

    // Sizes log-uniform over two decades below max_rows: fleets are mostly
    // small tenants and a few large ones.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x000f_1ee7);
    let min_rows = (max_rows / 100).max(1) as f64;
    let sizes: Vec<u64> = (0..shape.targets)
        .map(|_| {
            let u: f64 = rng.random();
            (min_rows * (max_rows as f64 / min_rows).powf(u)).round() as u64
        })
        .collect();
    let cluster_of = |i: usize| i % shape.clusters;

    // Each cluster's capacity per tick: rows its controller's run wrote.
    let mut capacity: Vec<Vec<f64>> = Vec::with_capacity(shape.clusters);
    let mut grid: Vec<f64> = Vec::new();
    for c in 0..shape.clusters {
        let h = super::history(
            &one,
            model,
            scenario,
            seed.wrapping_add(7919 * c as u64),
            duration,
        )?;
        let t0 = h.samples.first().map(|s| s.at);
        let mut cap = Vec::with_capacity(h.samples.len());
        let mut last = 0u64;
        let mut times = Vec::with_capacity(h.samples.len());
        for s in &h.samples {
            cap.push(s.rows_done.saturating_sub(last) as f64);
            last = s.rows_done;
            times.push(
                t0.map(|t| (s.at - t).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(0.0),
            );
        }
        if grid.is_empty() || times.len() < grid.len() {
            grid = times;
        }
        capacity.push(cap);
    }
    let steps = grid.len();
    let time_to = |c: usize, rows: f64| -> Option<f64> {
        let mut acc = 0.0;
        for k in 0..steps {
            acc += capacity[c][k];
            if acc >= rows {
                return Some(grid[k]);
            }
        }
        None
    };
    let alone: Vec<Option<f64>> = (0..shape.targets)
        .map(|i| time_to(cluster_of(i), sizes[i] as f64))
        .collect();
    let serial_seconds = alone.iter().copied().sum::<Option<f64>>();
    let budget_seconds = (0..shape.clusters)
        .map(|c| {
            let rows: f64 = (0..shape.targets)
                .filter(|i| cluster_of(*i) == c)
                .map(|i| sizes[i] as f64)
                .sum();
            time_to(c, rows)
        })
        .try_fold(0.0f64, |m, t| t.map(|t| m.max(t)));

    let mut sched = Schedule::new(shape.targets, max_active, canary, OnTargetFailure::Skip);
    let mut left: Vec<f64> = sizes.iter().map(|r| *r as f64).collect();
    let mut started = vec![None; shape.targets];
    let mut finished = vec![None; shape.targets];
    let mut peak = 0;
    let mut running: Vec<Vec<usize>> = vec![Vec::new(); shape.clusters];
    for k in 0..steps {
        for i in sched.start(false) {
            started[i] = Some(grid[k]);
            running[cluster_of(i)].push(i);
        }
        peak = peak.max(sched.active());
        for (c, members) in running.iter_mut().enumerate() {
            if members.is_empty() {
                continue;
            }
            let share = capacity[c][k] / members.len() as f64;
            members.retain(|&i| {
                left[i] -= share;
                if left[i] <= 0.0 {
                    finished[i] = Some(grid[k]);
                    sched.ended(i, Ended::Done, "");
                    false
                } else {
                    true
                }
            });
        }
        if sched.is_over() {
            break;
        }
    }
    let rows_done: u64 = sizes
        .iter()
        .zip(&left)
        .map(|(s, l)| (*s as f64 - l.max(0.0)).round() as u64)
        .sum();
    let finish_seconds = finished
        .iter()
        .copied()
        .try_fold(0.0f64, |m, t| t.map(|t| m.max(t)));
    Ok(FleetOutcome {
        job: policy.job.name.clone(),
        scenario: scenario.name.clone(),
        seed,
        targets: shape.targets,
        clusters: shape.clusters,
        max_active_targets: max_active,
        canary,
        rows_total: sizes.iter().sum(),
        rows_done,
        simulated_seconds: grid.last().copied().unwrap_or(0.0),
        finish_seconds,
        serial_seconds,
        budget_seconds,
        peak_active: peak,
        per_target: (0..shape.targets)
            .map(|i| FleetTargetOutcome {
                name: format!("t{:03}", i + 1),
                cluster: cluster_of(i),
                rows: sizes[i],
                started: started[i],
                finished: finished[i],
                alone_seconds: alone[i],
            })
            .collect(),
    })
}

/// The fleet's result for a terminal.
pub fn fleet_table(o: &FleetOutcome) -> String {
    let d = |s: Option<f64>| {
        s.map(|s| crate::controller::fmt_dur(std::time::Duration::from_secs_f64(s)))
            .unwrap_or_else(|| "not in the day".into())
    };
    let mut out = format!(
        "fleet {} on {}: {} targets on {} clusters, {} rows (seed {}), max_active_targets {}, canary {}\n",
        o.job,
        o.scenario,
        o.targets,
        o.clusters,
        o.rows_total,
        o.seed,
        o.max_active_targets,
        o.canary
    );
    out.push_str(&format!(
        "  finished            {}  ({} of {} rows done; at most {} targets at once)\n",
        d(o.finish_seconds),
        o.rows_done,
        o.rows_total,
        o.peak_active
    ));
    out.push_str(&format!(
        "  budget floor        {}  (the slowest cluster writing all its rows at its whole budget)\n",
        d(o.budget_seconds)
    ));
    out.push_str(&format!(
        "  sum of single runs  {}  (each target alone on its cluster, one after another)\n",
        d(o.serial_seconds)
    ));
    if let (Some(f), Some(b), Some(s)) = (o.finish_seconds, o.budget_seconds, o.serial_seconds) {
        out.push_str(&format!(
            "  fleet / floor {:.2}, fleet / serial {:.2}\n",
            f / b.max(1e-9),
            f / s.max(1e-9)
        ));
    }
    out.push_str(
        "  (each cluster's budget is its controller's run through the day; see docs/FLEET.md, \"Simulating a fleet\")\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_refuse_nonsense() {
        assert_eq!(
            "100x10".parse::<FleetShape>(),
            Ok(FleetShape {
                targets: 100,
                clusters: 10
            })
        );
        for bad in ["100", "0x1", "3x5", "ax2", "100x0"] {
            assert!(bad.parse::<FleetShape>().is_err(), "{bad}");
        }
    }
}
