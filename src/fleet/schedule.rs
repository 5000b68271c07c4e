//! Which target runs when: a pure state machine (no I/O, no clock), so the
//! fleet limits can be tested exhaustively and read in one place.
//!
//! Rules: canaries (the first `canary` targets) run to completion before
//! any other target starts; at most `max_active_targets` run at once;
//! while the fleet is paused nothing new starts; a failed canary ends the
//! fleet's run whatever `on_target_failure` says (that is what a canary is
//! for: once the other canaries finish, nothing else starts), any other
//! failure pauses the fleet under `pause-fleet` and is passed over under
//! `skip`.

use serde::Serialize;

use crate::policy::OnTargetFailure;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "message")]
pub enum TargetState {
    Waiting,
    Running,
    Done,
    Failed(String),
    /// Stopped by the operator (a signal to the fleet runner) before it
    /// finished; the next run of the fleet takes it up where it stopped.
    Stopped,
}

impl TargetState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Running => "running",
            TargetState::Done => "done",
            TargetState::Failed(_) => "failed",
            TargetState::Stopped => "stopped",
        }
    }
}

/// How one target's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Done,
    Failed(String),
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    states: Vec<TargetState>,
    max_active: usize,
    canary: usize,
    on_failure: OnTargetFailure,
    /// Why the fleet pauses by itself (a failure); `None` when it does not.
    halt: Option<String>,
    stopping: bool,
}

impl Schedule {
    pub fn new(targets: usize, max_active: u32, canary: u32, on_failure: OnTargetFailure) -> Self {
        Schedule {
            states: vec![TargetState::Waiting; targets],
            max_active: max_active.max(1) as usize,
            canary: (canary as usize).min(targets),
            on_failure,
            halt: None,
            stopping: false,
        }
    }

    /// A target an earlier run of the fleet already finished.
    pub fn already_done(&mut self, i: usize) {
        if self.states[i] == TargetState::Waiting {
            self.states[i] = TargetState::Done;
        }
    }

    pub fn states(&self) -> &[TargetState] {
        &self.states
    }

    pub fn active(&self) -> usize {
        self.count(|s| *s == TargetState::Running)
    }

    fn count(&self, f: impl Fn(&TargetState) -> bool) -> usize {
        self.states.iter().filter(|s| f(s)).count()
    }

    /// Targets to start now (marked running), given whether the fleet is
    /// paused by the operator.
    pub fn start(&mut self, paused: bool) -> Vec<usize> {
        if paused || self.halt.is_some() || self.stopping {
            return Vec::new();
        }
        let canaries_done = self.states[..self.canary]
            .iter()
            .all(|s| *s == TargetState::Done);
        let eligible = if canaries_done {
            self.states.len()
        } else {
            self.canary
        };
        let mut room = self.max_active.saturating_sub(self.active());
        let mut out = Vec::new();
        for i in 0..eligible {
            if room == 0 {
                break;
            }
            if self.states[i] == TargetState::Waiting {
                self.states[i] = TargetState::Running;
                out.push(i);
                room -= 1;
            }
        }
        out
    }

    pub fn ended(&mut self, i: usize, how: Ended, name: &str) {
        self.states[i] = match how {
            Ended::Done => TargetState::Done,
            Ended::Stopped => TargetState::Stopped,
            Ended::Failed(msg) => {
                let canary = i < self.canary;
                if canary || self.on_failure == OnTargetFailure::PauseFleet {
                    self.halt.get_or_insert_with(|| {
                        format!(
                            "{} {name} failed ({}): {msg}",
                            if canary { "canary target" } else { "target" },
                            if canary {
                                "a failed canary always pauses the fleet".to_string()
                            } else {
                                "on_target_failure = \"pause-fleet\"".to_string()
                            }
                        )
                    });
                }
                TargetState::Failed(msg)
            }
        };
    }

    /// Why the fleet paused itself, if it did: running targets pause and
    /// nothing new starts until an operator resumes the fleet.
    pub fn halt(&self) -> Option<&str> {
        self.halt.as_deref()
    }

    /// An operator resumed the fleet after a failure paused it: the failed
    /// target stays failed (a later run retries it), the rest go on.
    pub fn clear_halt(&mut self) {
        self.halt = None;
    }

    /// No target starts any more; running ones are being stopped.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Nothing runs and nothing more will start: every target ended, the
    /// fleet is stopping, or a canary did not finish (the others wait for
    /// canaries, so they would wait forever; a later run retries it). A
    /// fleet paused by a failure is not over: an operator may resume it.
    pub fn is_over(&self) -> bool {
        if self.active() > 0 {
            return false;
        }
        let canary_ended_badly = self.states[..self.canary]
            .iter()
            .any(|s| matches!(s, TargetState::Failed(_) | TargetState::Stopped));
        self.stopping || canary_ended_badly || !self.states.contains(&TargetState::Waiting)
    }

    /// Done, running, waiting, failed, stopped.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for s in &self.states {
            match s {
                TargetState::Waiting => t.waiting += 1,
                TargetState::Running => t.running += 1,
                TargetState::Done => t.done += 1,
                TargetState::Failed(_) => t.failed += 1,
                TargetState::Stopped => t.stopped += 1,
            }
        }
        t
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub done: usize,
    pub running: usize,
    pub waiting: usize,
    pub failed: usize,
    pub stopped: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} done, {} running, {} waiting, {} failed",
            self.done, self.running, self.waiting, self.failed
        )?;
        if self.stopped > 0 {
            write!(f, ", {} stopped", self.stopped)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canaries_finish_before_anyone_else_starts() {
        let mut s = Schedule::new(5, 3, 1, OnTargetFailure::Skip);
        assert_eq!(s.start(false), vec![0]);
        assert_eq!(s.start(false), Vec::<usize>::new());
        s.ended(0, Ended::Done, "t0");
        assert_eq!(s.start(false), vec![1, 2, 3]);
        s.ended(2, Ended::Done, "t2");
        assert_eq!(s.start(false), vec![4]);
        assert!(!s.is_over());
        for i in [1, 3, 4] {
            s.ended(i, Ended::Done, "t");
        }
        assert!(s.is_over());
        assert_eq!(s.tally().done, 5);
    }

    #[test]
    fn a_failed_canary_ends_the_fleet_even_under_skip() {
        let mut s = Schedule::new(4, 2, 2, OnTargetFailure::Skip);
        assert_eq!(s.start(false), vec![0, 1]);
        s.ended(0, Ended::Failed("boom".into()), "t0");
        assert!(s.halt().unwrap().contains("canary target t0 failed"));
        assert!(s.start(false).is_empty());
        // The other canary still finishes; then the fleet is over, with
        // the rest never started.
        assert!(!s.is_over());
        s.ended(1, Ended::Done, "t1");
        s.clear_halt();
        assert!(s.start(false).is_empty());
        assert!(s.is_over());
        assert_eq!(s.tally().waiting, 2);
    }

    #[test]
    fn skip_goes_on_and_pause_fleet_does_not() {
        let mut s = Schedule::new(3, 1, 0, OnTargetFailure::Skip);
        assert_eq!(s.start(false), vec![0]);
        s.ended(0, Ended::Failed("x".into()), "t0");
        assert_eq!(s.halt(), None);
        assert_eq!(s.start(false), vec![1]);

        let mut s = Schedule::new(3, 1, 0, OnTargetFailure::PauseFleet);
        s.start(false);
        s.ended(0, Ended::Failed("x".into()), "t0");
        assert!(s.halt().unwrap().contains("pause-fleet"));
        assert!(s.start(false).is_empty());
        s.clear_halt();
        assert_eq!(s.start(false), vec![1]);
    }

    #[test]
    fn a_paused_or_stopping_fleet_starts_nothing() {
        let mut s = Schedule::new(2, 2, 0, OnTargetFailure::Skip);
        assert!(s.start(true).is_empty());
        s.stop();
        assert!(s.start(false).is_empty());
        assert!(s.is_over());
    }

    proptest! {
        /// Whatever ends how, and whenever the operator pauses: never more
        /// than max_active run, no non-canary runs before every canary is
        /// done, a target starts at most once, and the fleet ends.
        #[test]
        fn limits_hold(
            n in 1usize..12,
            max_active in 1u32..5,
            canary in 0u32..4,
            skip in any::<bool>(),
            script in proptest::collection::vec((any::<bool>(), 0u8..3, any::<prop::sample::Index>()), 1..80),
        ) {
            let canary = canary.min(n as u32);
            let on = if skip { OnTargetFailure::Skip } else { OnTargetFailure::PauseFleet };
            let mut s = Schedule::new(n, max_active, canary, on);
            let mut starts = vec![0u32; n];
            let mut steps = 0;
            for (paused, how, pick) in script.iter().cycle() {
                steps += 1;
                if steps > 2000 || s.is_over() { break; }
                for i in s.start(*paused) {
                    starts[i] += 1;
                    if i >= canary as usize {
                        prop_assert!(s.states()[..canary as usize].iter().all(|x| *x == TargetState::Done));
                    }
                }
                prop_assert!(s.active() <= max_active as usize);
                let running: Vec<usize> = (0..n).filter(|i| s.states()[*i] == TargetState::Running).collect();
                if running.is_empty() {
                    if s.halt().is_some() { s.clear_halt(); }
                    continue;
                }
                let i = running[pick.index(running.len())];
                let end = match how { 0 => Ended::Done, 1 => Ended::Failed("f".into()), _ => Ended::Stopped };
                s.ended(i, end, "t");
            }
            prop_assert!(starts.iter().all(|c| *c <= 1));
        }
    }
}
