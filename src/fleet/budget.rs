//! One cluster's shared budget: the rate its cluster controller allows,
//! split evenly among the cluster's running targets, and the cluster's
//! pause. Each target's workers take their rows from their share; N
//! targets on one cluster therefore write, together, what one target
//! alone would, and the rate grows at one controller's pace however many
//! targets share it.
//!
//! The pacing is a per-target schedule (a virtual clock advanced by each
//! batch's rows at the current share, GCRA-style) rather than `governor`,
//! whose quota is fixed at construction: this rate changes every tick.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controller::{BatchOutcome, ManualPause};
use crate::executor::Budget;

/// What a cluster's controller reads back from its targets each tick.
#[derive(Debug, Default)]
pub struct Feedback {
    pub batches: Vec<BatchOutcome>,
    /// Some target waited on its share: the budget, not the targets, is
    /// what limits the cluster (the only case in which growing it helps).
    pub budget_bound: bool,
}

#[derive(Debug)]
struct Inner {
    /// Rows/s for the whole cluster; `None` until the cluster's controller
    /// has made its first decision (its targets hold until then: a target
    /// must not write before its cluster's signals are read).
    rate: Option<f64>,
    pause: Option<ManualPause>,
    /// The whole fleet's pause (an operator's, or a failure's under
    /// `on_target_failure = "pause-fleet"`); it wins over the cluster's.
    fleet_pause: Option<ManualPause>,
    /// Each target's schedule (its next free instant) and whether it runs
    /// (a paused target's share goes to the others).
    members: BTreeMap<String, Member>,
    feedback: Feedback,
}

#[derive(Debug)]
pub struct ClusterBudget {
    pub cluster: String,
    inner: Mutex<Inner>,
}

impl ClusterBudget {
    pub fn new(cluster: impl Into<String>) -> Arc<ClusterBudget> {
        Arc::new(ClusterBudget {
            cluster: cluster.into(),
            inner: Mutex::new(Inner {
                rate: None,
                pause: None,
                fleet_pause: None,
                members: BTreeMap::new(),
                feedback: Feedback::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The share of `target`, which starts running on this cluster.
    pub fn join(self: &Arc<Self>, target: &str) -> Arc<Share> {
        self.lock().members.insert(
            target.to_string(),
            Member {
                next: Instant::now(),
                running: true,
            },
        );
        Arc::new(Share {
            budget: self.clone(),
            target: target.to_string(),
        })
    }

    pub fn leave(&self, target: &str) {
        self.lock().members.remove(target);
    }

    /// Targets that run (not paused) on the cluster.
    pub fn active(&self) -> usize {
        self.lock().running()
    }

    pub fn set(&self, rate: f64, pause: Option<ManualPause>) {
        let mut g = self.lock();
        g.rate = Some(rate.max(0.0));
        g.pause = pause;
    }

    pub fn set_fleet_pause(&self, pause: Option<ManualPause>) {
        self.lock().fleet_pause = pause;
    }

    /// Whether the cluster's own signals hold it paused.
    pub fn paused(&self) -> bool {
        self.lock().pause.is_some()
    }

    /// The cluster's rate; 0 before its first decision.
    pub fn rate(&self) -> f64 {
        self.lock().rate.unwrap_or(0.0)
    }

    /// Each running target's share of the rate.
    #[cfg(test)]
    fn share(&self) -> f64 {
        let g = self.lock();
        g.rate.unwrap_or(0.0) / g.running().max(1) as f64
    }

    pub fn take_feedback(&self) -> Feedback {
        std::mem::take(&mut self.lock().feedback)
    }

    /// The wait before `target` may write `rows` at `now`, and whether
    /// they are granted then (see `Budget::acquire`). A batch's cost is
    /// its rows at the current share; a wait never exceeds one batch's
    /// cost at the current share, so a cut of the rate that has since been
    /// lifted does not keep delaying; a wait over `SLICE` (or any wait
    /// while the cluster writes nothing) reserves nothing and is asked
    /// again after it.
    fn acquire_at(&self, target: &str, rows: u64, now: Instant) -> (Duration, bool) {
        let mut g = self.lock();
        let n = g.running().max(1) as f64;
        let Some(rate) = g.rate else {
            return (SLICE, false);
        };
        let share = rate / n;
        if share <= 0.0 {
            return (SLICE, false);
        }
        let cost = Duration::from_secs_f64((rows as f64 / share).min(3600.0));
        let Some(next) = g.members.get_mut(target).map(|m| &mut m.next) else {
            return (Duration::ZERO, true);
        };
        let start = (*next).max(now).min(now + cost);
        let wait = start.saturating_duration_since(now);
        if wait > SLICE {
            g.feedback.budget_bound = true;
            return (SLICE, false);
        }
        *next = start + cost;
        if wait > Duration::from_millis(5) {
            g.feedback.budget_bound = true;
        }
        (wait, true)
    }
}

impl Inner {
    fn running(&self) -> usize {
        self.members.values().filter(|m| m.running).count()
    }
}

#[derive(Debug)]
struct Member {
    next: Instant,
    running: bool,
}

/// Longest single wait on the budget: the rate may change every tick.
const SLICE: Duration = Duration::from_secs(1);

/// A target's hold on its cluster's budget.
#[derive(Debug)]
pub struct Share {
    budget: Arc<ClusterBudget>,
    target: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.leave(&self.target);
    }
}

impl Budget for Share {
    fn acquire(&self, rows: u64) -> (Duration, bool) {
        self.budget.acquire_at(&self.target, rows, Instant::now())
    }

    fn pause(&self) -> Option<ManualPause> {
        let g = self.budget.lock();
        let starting = g.rate.is_none().then(|| ManualPause {
            by: "fleet".into(),
            reason: format!(
                "cluster {}: its controller is starting (reading the cluster's signals)",
                super::short(&self.budget.cluster)
            ),
        });
        g.fleet_pause
            .clone()
            .or_else(|| g.pause.clone())
            .or(starting)
    }

    fn set_running(&self, running: bool) {
        if let Some(m) = self.budget.lock().members.get_mut(&self.target) {
            m.running = running;
        }
    }

    fn observe(&self, batch: &BatchOutcome) {
        self.budget.lock().feedback.batches.push(batch.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows each target may write in `secs` of back-to-back batches.
    fn rows_in(b: &ClusterBudget, targets: &[&str], batch: u64, secs: f64) -> Vec<u64> {
        let t0 = Instant::now();
        targets
            .iter()
            .map(|t| {
                let mut now = t0;
                let mut rows = 0;
                while now.duration_since(t0).as_secs_f64() < secs {
                    let (wait, granted) = b.acquire_at(t, batch, now);
                    now += wait;
                    if granted {
                        rows += batch;
                    }
                }
                rows
            })
            .collect()
    }

    #[test]
    fn targets_split_the_cluster_rate_evenly() {
        let b = ClusterBudget::new("c");
        let _a = b.join("a");
        b.set(1000.0, None);
        let alone = rows_in(&b, &["a"], 100, 10.0);
        let _s = b.join("b");
        let two = rows_in(&b, &["a", "b"], 100, 10.0);
        // One target alone: 1000 rows/s; two together: 500 each.
        assert!((9_900..=10_100).contains(&alone[0]), "{alone:?}");
        for r in &two {
            assert!((4_900..=5_200).contains(r), "{two:?}");
        }
        assert!(b.take_feedback().budget_bound);
        assert!(!b.take_feedback().budget_bound);
    }

    #[test]
    fn a_leaving_target_gives_its_share_back() {
        let b = ClusterBudget::new("c");
        let a = b.join("a");
        let s = b.join("b");
        b.set(1000.0, None);
        assert_eq!(b.share(), 500.0);
        drop(s);
        assert_eq!(b.share(), 1000.0);
        assert_eq!(b.active(), 1);
        // A paused target's share goes to the others too.
        let s = b.join("b");
        s.set_running(false);
        assert_eq!(b.share(), 1000.0);
        s.set_running(true);
        assert_eq!(b.share(), 500.0);
        drop(s);
        drop(a);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn a_cut_that_was_lifted_does_not_keep_delaying() {
        let b = ClusterBudget::new("c");
        let _a = b.join("a");
        let now = Instant::now();
        b.set(1.0, None);
        // 1000 rows at 1 row/s: granted now, the schedule 1000 s ahead.
        assert_eq!(b.acquire_at("a", 1000, now), (Duration::ZERO, true));
        // The next batch is not granted: wait a slice and ask again.
        assert_eq!(b.acquire_at("a", 1000, now), (SLICE, false));
        b.set(10_000.0, None);
        // At the new rate a 1000-row batch costs 0.1 s: no longer wait.
        let (wait, granted) = b.acquire_at("a", 1000, now);
        assert!(granted && wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn a_paused_cluster_grants_nothing_and_lets_go_at_once() {
        let b = ClusterBudget::new("c");
        let _a = b.join("a");
        let now = Instant::now();
        b.set(0.0, None);
        assert_eq!(b.acquire_at("a", 100, now), (SLICE, false));
        assert!(
            !b.take_feedback().budget_bound,
            "a pause is not the budget binding"
        );
        b.set(1000.0, None);
        assert_eq!(b.acquire_at("a", 100, now), (Duration::ZERO, true));
    }

    #[test]
    fn no_decision_yet_means_no_rows_and_pause_is_shared() {
        let b = ClusterBudget::new("c");
        let a = b.join("a");
        assert_eq!(a.acquire(1_000_000), (SLICE, false));
        assert!(a.pause().unwrap().reason.contains("controller is starting"));
        let p = ManualPause {
            by: "fleet".into(),
            reason: "cluster c: replica_lag in stop".into(),
        };
        b.set(10.0, Some(p.clone()));
        assert_eq!(a.pause(), Some(p));
    }
}
