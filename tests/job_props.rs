//! Properties of the executor's `Job` state machine (proptest), driven by a
//! model table instead of Postgres. The model is the judge, not the Job's
//! own bookkeeping: it counts how many times each row was updated, keeps
//! the progress records and the stored position, refuses commits from a
//! stale epoch, holds row locks for "other sessions", and on a server
//! restart may lose everything committed after the last stored position
//! (asynchronous replication), rows and progress alike.
//!
//! For any sequence of batch results (committed, lock timeout, deadlock,
//! statement timeout, fatal, lost, ambiguous commits resolved either way,
//! rows locked), connection losses and reconnects, restarts, crashes,
//! takeovers by another runner, pauses (controller and HTTP) and stops:
//! - no row is updated twice (the update is unguarded, as in exec_crash);
//! - no new attempt starts while paused or while the link is down;
//! - no attempt is handed out after the Job ended (a fenced Job stands
//!   down), and every attempt carries the Job's current epoch;
//! - the job never finishes `Done` with a row pending;
//! - and, driven to the end without faults (re-running it as the user
//!   would after a stop, a failure or a crash), it ends `Done` with every
//!   pending row updated exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pacer::controller::BatchError;
use pacer::executor::job::{Apply, Chunk, Config, End, Finish, Io, Job, Outcome, StoreIo, Stored};
use pacer::executor::keys::{KeyType, Keys};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Commit,
    LockTimeout,
    Deadlock,
    StatementTimeout,
    Fatal,
    Lost,
    AmbiguousYes,
    AmbiguousNo,
}

#[derive(Debug, Clone)]
enum Op {
    Poll(u8),
    Answer(usize, Answer),
    Tick(u64),
    Pause(bool),
    LocalPause(bool),
    LinkDown,
    LinkUp,
    Restart { lose: bool, committed: u32 },
    Crash { committed: u32 },
    Takeover,
    Lock(i64),
    Unlock(i64),
    Insert(i64),
    Stop,
    ReadFails(bool),
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => Just(Answer::Commit),
        2 => Just(Answer::LockTimeout),
        1 => Just(Answer::Deadlock),
        1 => Just(Answer::StatementTimeout),
        1 => Just(Answer::Fatal),
        1 => Just(Answer::Lost),
        1 => Just(Answer::AmbiguousYes),
        1 => Just(Answer::AmbiguousNo),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (1u8..4).prop_map(Op::Poll),
        12 => (0usize..8, answer()).prop_map(|(i, a)| Op::Answer(i, a)),
        5 => (0u64..4000).prop_map(Op::Tick),
        2 => any::<bool>().prop_map(Op::Pause),
        1 => any::<bool>().prop_map(Op::LocalPause),
        1 => Just(Op::LinkDown),
        2 => Just(Op::LinkUp),
        1 => (any::<bool>(), any::<u32>()).prop_map(|(lose, committed)| Op::Restart { lose, committed }),
        1 => any::<u32>().prop_map(|committed| Op::Crash { committed }),
        1 => Just(Op::Takeover),
        2 => (0i64..60).prop_map(Op::Lock),
        2 => (0i64..60).prop_map(Op::Unlock),
        1 => (0i64..60).prop_map(Op::Insert),
        1 => Just(Op::Stop),
        1 => any::<bool>().prop_map(Op::ReadFails),
    ]
}

#[derive(Debug, Clone)]
struct Row {
    pending: bool,
    applied: u32,
}

/// What the database holds.
#[derive(Debug, Clone)]
struct Db {
    rows: BTreeMap<i64, Row>,
    progress: BTreeSet<i64>,
    saved: (i32, Option<String>),
    epoch: i64,
}

/// One attempt handed out and not answered yet.
#[derive(Debug, Clone)]
struct Flight {
    apply: Apply,
    /// The server incarnation the Job believed in when it handed it out
    /// (a writer compares its server's with it).
    incarnation: i64,
}

struct World {
    db: Db,
    /// The database as of the last stored position: what survives a
    /// failover that loses the asynchronously replicated tail.
    durable: Db,
    incarnation: i64,
    /// Rows locked by other sessions (not data: a restart frees them).
    locked: BTreeSet<i64>,
    job: Job,
    cfg: Config,
    now: Instant,
    flights: Vec<Flight>,
    ctrl_paused: bool,
    local_paused: bool,
    link_up: bool,
    taken_over: bool,
    read_fails: Option<bool>,
    /// Whole-table checks asked for.
    checks: u64,
    batch_size: u32,
    /// Per inserted row: the pass the Job was in when it appeared.
    inserted_in_pass: BTreeMap<i64, i32>,
    /// Rows the Job credited, checked against its own `rows()`.
    credited: u64,
    violations: Vec<String>,
    applies: u64,
}

fn key_of(t: &str) -> i64 {
    t.parse().expect("an i64 key")
}

fn keys_vec(k: &Keys) -> Vec<i64> {
    k.texts().iter().map(|t| key_of(t)).collect()
}

impl World {
    fn new(rows: &[(i64, bool)], read_chunk: u32, batch_size: u32, max_pause: bool) -> World {
        let cfg = Config {
            key_type: KeyType::Int8,
            read_chunk,
            max_retries: 3,
            max_outage: Duration::from_secs(30),
            max_pause: max_pause.then_some(Duration::from_secs(60)),
            stop_after_max_pause: true,
        };
        let db = Db {
            rows: rows
                .iter()
                .map(|&(k, p)| {
                    (
                        k,
                        Row {
                            pending: p,
                            applied: 0,
                        },
                    )
                })
                .collect(),
            progress: BTreeSet::new(),
            saved: (0, None),
            epoch: 1,
        };
        let now = Instant::now();
        let job = Job::new(
            cfg.clone(),
            Stored {
                pass: 0,
                cursor: None,
                next_batch_id: 1,
                incarnation: 1,
            },
            1,
            batch_size,
        );
        let mut w = World {
            durable: db.clone(),
            db,
            incarnation: 1,
            locked: BTreeSet::new(),
            job,
            cfg,
            now,
            flights: Vec::new(),
            ctrl_paused: false,
            local_paused: false,
            link_up: true,
            taken_over: false,
            read_fails: None,
            checks: 0,
            batch_size,
            inserted_in_pass: BTreeMap::new(),
            credited: 0,
            violations: Vec::new(),
            applies: 0,
        };
        w.job.handle_command(now, false, batch_size);
        w
    }

    fn violation(&mut self, v: String) {
        self.violations.push(v);
    }

    /// A new `pacer run` process, from what the database has.
    fn new_process(&mut self) {
        self.db.epoch += 1;
        self.taken_over = false;
        self.local_paused = false;
        self.link_up = true;
        self.flights.clear();
        self.credited = 0;
        self.job = Job::new(
            self.cfg.clone(),
            Stored {
                pass: self.db.saved.0,
                cursor: self.db.saved.1.clone(),
                next_batch_id: self.db.progress.last().map_or(1, |m| m + 1),
                incarnation: self.incarnation,
            },
            self.db.epoch,
            self.batch_size,
        );
        self.job
            .handle_command(self.now, self.ctrl_paused, self.batch_size);
    }

    /// The transaction as the server runs it: incarnation, epoch fence,
    /// locks, the update, the progress record.
    fn commit(&mut self, f: &Flight) -> Outcome {
        if f.incarnation != self.incarnation {
            return Outcome::NewIncarnation;
        }
        if f.apply.epoch != self.db.epoch {
            return Outcome::Fenced;
        }
        let keys = keys_vec(&f.apply.keys);
        let locked: Vec<i64> = keys
            .iter()
            .copied()
            .filter(|k| self.locked.contains(k))
            .collect();
        if !f.apply.lock_free && !locked.is_empty() {
            return Outcome::Failed(BatchError::LockTimeout, "lock timeout".into());
        }
        let free: Vec<i64> = keys
            .iter()
            .copied()
            .filter(|k| !self.locked.contains(k))
            .collect();
        if free.is_empty() {
            return Outcome::Committed {
                rows: 0,
                deferred: Keys::I64(locked),
            };
        }
        if !self.db.progress.insert(f.apply.batch_id) {
            self.violation(format!(
                "progress record {} written twice",
                f.apply.batch_id
            ));
        }
        for k in &free {
            match self.db.rows.get_mut(k) {
                Some(r) => {
                    r.applied += 1;
                    r.pending = false;
                    if r.applied > 1 {
                        let n = r.applied;
                        self.violation(format!("row {k} updated {n} times"));
                    }
                }
                None => self.violation(format!("batch has key {k} that is not in the table")),
            }
        }
        Outcome::Committed {
            rows: free.len() as u64,
            deferred: Keys::I64(locked),
        }
    }

    fn answer(&mut self, i: usize, a: Answer) {
        if self.flights.is_empty() {
            return;
        }
        let f = self.flights.remove(i % self.flights.len());
        // The driver's last check before BEGIN.
        let held = self.ctrl_paused || self.local_paused || !self.link_up;
        if !self.job.confirm(self.now, f.apply.batch_id) {
            return;
        }
        if held {
            self.violation(format!(
                "attempt {} confirmed while paused or the link is down",
                f.apply.batch_id
            ));
        }
        let gate = if f.incarnation != self.incarnation {
            Some(Outcome::NewIncarnation)
        } else if f.apply.epoch != self.db.epoch {
            Some(Outcome::Fenced)
        } else {
            None
        };
        let o = match (gate, a) {
            (Some(g), Answer::Commit | Answer::AmbiguousYes | Answer::AmbiguousNo) => g,
            (_, Answer::Commit) => self.commit(&f),
            (_, Answer::AmbiguousYes) => match self.commit(&f) {
                // Nothing free to apply: rolled back, no COMMIT to lose.
                Outcome::Committed { rows: 0, deferred } => {
                    Outcome::Committed { rows: 0, deferred }
                }
                Outcome::Committed { rows, .. } => Outcome::AmbiguousCommitted { rows },
                other => other,
            },
            (_, Answer::AmbiguousNo) => Outcome::AmbiguousNotCommitted,
            (_, Answer::LockTimeout) => {
                Outcome::Failed(BatchError::LockTimeout, "lock timeout".into())
            }
            (_, Answer::Deadlock) => Outcome::Failed(BatchError::Deadlock, "deadlock".into()),
            (_, Answer::StatementTimeout) => {
                Outcome::Failed(BatchError::StatementTimeout, "statement timeout".into())
            }
            (_, Answer::Fatal) => Outcome::Fatal("check constraint".into()),
            (_, Answer::Lost) => Outcome::Lost("connection reset".into()),
        };
        if let Outcome::Committed { rows, .. } | Outcome::AmbiguousCommitted { rows } = &o {
            self.credited += rows;
        }
        let before = self.job.rows();
        let counted = matches!(
            o,
            Outcome::Committed { .. } | Outcome::AmbiguousCommitted { .. }
        );
        self.job
            .handle_outcome(self.now, f.apply.batch_id, o.clone());
        if !counted && self.job.rows() != before {
            self.violation(format!(
                "rows credited for an attempt that did not commit: {o:?}"
            ));
        }
    }

    fn poll(&mut self, n: u8) {
        for _ in 0..n {
            let Some(io) = self.job.poll_io(self.now) else {
                return;
            };
            match io {
                Io::ReadChunk {
                    after,
                    limit,
                    whole_table_first,
                } => {
                    if let Some(lost) = self.read_fails.take() {
                        self.job.handle_read_error(self.now, lost, "read failed");
                        continue;
                    }
                    if whole_table_first {
                        if after.is_some() {
                            self.violation(format!(
                                "whole-table check asked mid-pass, after {after:?}"
                            ));
                        }
                        // The check answers "nothing pending" truthfully, or
                        // (every third time: its bound ran out) not at all.
                        self.checks += 1;
                        if !self.checks.is_multiple_of(3)
                            && self.db.rows.values().all(|r| !r.pending)
                        {
                            let chunk = Chunk {
                                last: None,
                                read: 0,
                                pending: Keys::I64(Vec::new()),
                            };
                            self.job.handle_chunk(self.now, chunk);
                            continue;
                        }
                    }
                    let after = after.map(|t| key_of(&t));
                    let read: Vec<(i64, bool)> = self
                        .db
                        .rows
                        .iter()
                        .filter(|(k, _)| after.is_none_or(|a| **k > a))
                        .take(limit as usize)
                        .map(|(k, r)| (*k, r.pending))
                        .collect();
                    let chunk = Chunk {
                        last: read.last().map(|(k, _)| k.to_string()),
                        read: read.len(),
                        pending: Keys::I64(read.iter().filter(|r| r.1).map(|r| r.0).collect()),
                    };
                    self.job.handle_chunk(self.now, chunk);
                }
                Io::Apply(apply) => {
                    self.applies += 1;
                    if self.ctrl_paused || self.local_paused || !self.link_up {
                        self.violation(format!(
                            "attempt {} handed out while paused or the link is down",
                            apply.batch_id
                        ));
                    }
                    if self.job.end().is_some() {
                        self.violation(format!(
                            "attempt {} handed out after the end {:?}",
                            apply.batch_id,
                            self.job.end()
                        ));
                    }
                    if apply.epoch != self.job.epoch() {
                        self.violation("attempt carries a stale epoch".into());
                    }
                    let incarnation = self.job.incarnation();
                    self.flights.push(Flight { apply, incarnation });
                }
            }
        }
    }

    /// The coordinator's tick: timers, the controller's command, the
    /// store's work, saving the position.
    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.job.handle_tick(self.now);
        self.job
            .handle_command(self.now, self.ctrl_paused, self.batch_size);
        self.job.handle_local_pause(self.local_paused);
        if !self.link_up {
            return;
        }
        if let Some(StoreIo::LoadPosition) = self.job.poll_store() {
            let stored = Stored {
                pass: self.db.saved.0,
                cursor: self.db.saved.1.clone(),
                next_batch_id: self.db.progress.last().map_or(1, |m| m + 1),
                incarnation: self.incarnation,
            };
            self.credited = 0;
            self.job.handle_position(self.now, stored);
        }
        if let Some(pos) = self.job.position() {
            self.db.saved = pos;
            self.durable = self.db.clone();
        }
    }

    fn finished_check(&mut self) {
        if self.job.rows() != self.credited {
            let (a, b) = (self.job.rows(), self.credited);
            self.violation(format!(
                "the Job counts {a} rows, the model saw {b} committed"
            ));
        }
        if !self.job.is_finished() {
            return;
        }
        match self.job.end().cloned() {
            Some(End::Finished(Finish::Done)) => {
                let pass = self.job.position().map_or(0, |p| p.0);
                let pending: Vec<i64> = self
                    .db
                    .rows
                    .iter()
                    .filter(|(k, r)| {
                        r.pending && self.inserted_in_pass.get(k).is_none_or(|p| *p < pass)
                    })
                    .map(|(k, _)| *k)
                    .collect();
                if !pending.is_empty() {
                    self.violation(format!("finished Done with rows pending: {pending:?}"));
                }
            }
            Some(End::Finished(Finish::Stuck { keys })) => {
                self.violation(format!(
                    "Stuck ({keys} keys) although the update clears pending"
                ));
            }
            _ => {}
        }
    }

    fn step(&mut self, op: &Op) {
        if self.job.is_finished() && matches!(self.job.end(), Some(End::Finished(_))) {
            // The run is over and recorded; the process has exited.
            return;
        }
        match op {
            Op::Poll(n) => self.poll(*n),
            Op::Answer(i, a) => self.answer(*i, *a),
            Op::Tick(ms) => self.tick(*ms),
            Op::Pause(p) => {
                self.ctrl_paused = *p;
                self.job.handle_command(self.now, *p, self.batch_size);
            }
            Op::LocalPause(p) => {
                self.local_paused = *p;
                self.job.handle_local_pause(*p);
            }
            Op::LinkDown => {
                self.link_up = false;
                self.job
                    .handle_link_down(self.now, "control connection lost".into());
            }
            Op::LinkUp => {
                if self.link_up {
                    return;
                }
                self.link_up = true;
                if self.taken_over {
                    self.job.handle_stand_down("another pacer took over".into());
                } else {
                    self.db.epoch += 1;
                    self.job
                        .handle_link_up(self.now, self.incarnation, self.db.epoch);
                }
            }
            Op::Restart { lose, committed } => {
                // Attempts in flight either committed just before the
                // crash or not; their answers never arrive intact.
                let flights = std::mem::take(&mut self.flights);
                let mut answers = Vec::new();
                for (i, f) in flights.iter().enumerate() {
                    let did = committed >> (i % 32) & 1 == 1;
                    let o = if did {
                        let _ = self.commit(f);
                        Outcome::NewIncarnation
                    } else if i % 2 == 0 {
                        Outcome::Lost("the server closed the connection".into())
                    } else {
                        Outcome::NewIncarnation
                    };
                    answers.push((f.apply.batch_id, o));
                }
                if *lose {
                    self.db = self.durable.clone();
                }
                self.incarnation += 1;
                self.locked.clear();
                self.link_up = false;
                self.job
                    .handle_link_down(self.now, "the server is restarting".into());
                for (id, o) in answers {
                    self.job.handle_outcome(self.now, id, o);
                }
            }
            Op::Crash { committed } => {
                let flights = std::mem::take(&mut self.flights);
                for (i, f) in flights.iter().enumerate() {
                    if committed >> (i % 32) & 1 == 1 {
                        let _ = self.commit(f);
                    }
                }
                self.new_process();
            }
            Op::Takeover => {
                self.db.epoch += 1;
                self.taken_over = true;
            }
            Op::Lock(k) => {
                self.locked.insert(*k);
            }
            Op::Unlock(k) => {
                self.locked.remove(k);
            }
            Op::Insert(k) => {
                if !self.db.rows.contains_key(k) {
                    self.db.rows.insert(
                        *k,
                        Row {
                            pending: true,
                            applied: 0,
                        },
                    );
                    let pass = self.job.position().map_or(i32::MAX, |p| p.0);
                    self.inserted_in_pass.insert(*k, pass);
                }
            }
            Op::Stop => self.job.handle_stop(),
            Op::ReadFails(lost) => self.read_fails = Some(*lost),
        }
        self.finished_check();
        if self.job.is_finished() && !matches!(self.job.end(), Some(End::Finished(_))) {
            // Stopped, failed, stood down: the user runs it again.
            if self.link_up
                && !matches!(self.job.end(), Some(End::StoodDown(_)))
                && let Some(pos) = self.job.position()
            {
                self.db.saved = pos;
                self.durable = self.db.clone();
            }
            self.new_process();
        }
    }

    /// No more faults: run to the end, re-running after any non-`Done`
    /// ending as the user would.
    fn drain(&mut self) -> Result<(), String> {
        self.ctrl_paused = false;
        self.local_paused = false;
        self.locked.clear();
        self.read_fails = None;
        if !self.link_up {
            self.step(&Op::LinkUp);
        }
        for _ in 0..20_000 {
            if self.job.is_finished() {
                match self.job.end() {
                    Some(End::Finished(Finish::Done)) => return Ok(()),
                    other => return Err(format!("drain ended with {other:?}")),
                }
            }
            while !self.flights.is_empty() {
                self.answer(0, Answer::Commit);
            }
            self.tick(100);
            self.poll(50);
            self.finished_check();
            if self.job.is_finished() && !matches!(self.job.end(), Some(End::Finished(_))) {
                self.step(&Op::Tick(0));
            }
        }
        Err("the job did not finish".into())
    }
}

fn table() -> impl Strategy<Value = Vec<(i64, bool)>> {
    proptest::collection::btree_map(0i64..60, proptest::bool::weighted(0.7), 0..40)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("JOB_PROPS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn exactly_once_under_any_faults(
        rows in table(),
        read_chunk in 1u32..8,
        batch_size in 1u32..6,
        max_pause in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let mut w = World::new(&rows, read_chunk, batch_size, max_pause);
        for op in &ops {
            w.step(op);
            prop_assert!(w.violations.is_empty(), "after {:?}: {:?}", op, w.violations);
        }
        let drained = w.drain();
        prop_assert!(w.violations.is_empty(), "drain: {:?}", w.violations);
        prop_assert!(drained.is_ok(), "{:?}", drained);
        let final_pass = w.job.position().map_or(0, |p| p.0);
        for (k, r) in &w.db.rows {
            let late = w.inserted_in_pass.get(k).is_some_and(|p| *p >= final_pass);
            if late {
                // Inserted behind the cursor during the final sweep.
                prop_assert!(r.applied <= 1, "row {} updated {} times", k, r.applied);
                continue;
            }
            let was_pending = rows.iter().any(|(rk, p)| rk == k && *p) || w.inserted_in_pass.contains_key(k);
            prop_assert_eq!(r.applied, u32::from(was_pending), "row {} (pending at start or inserted: {})", k, was_pending);
            prop_assert!(!r.pending, "row {} still pending", k);
        }
    }
}

fn all_pending(n: i64) -> Vec<(i64, bool)> {
    (0..n).map(|k| (k, true)).collect()
}

/// The switch unreadable and an HTTP pause, with attempts in flight: those
/// finish, nothing new starts however long it lasts, and nothing is lost.
#[test]
fn a_pause_with_no_connection_stops_new_attempts_at_once() {
    let mut w = World::new(&all_pending(20), 4, 2, false);
    w.poll(4);
    assert!(!w.flights.is_empty(), "attempts in flight");
    w.step(&Op::LinkDown);
    w.step(&Op::LocalPause(true));
    while !w.flights.is_empty() {
        w.answer(0, Answer::Commit);
    }
    let applies = w.applies;
    for _ in 0..20 {
        w.tick(1000);
        w.poll(5);
    }
    assert_eq!(w.applies, applies, "no attempt while held");
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    w.drain().unwrap();
    assert!(w.db.rows.values().all(|r| r.applied == 1));
}

/// Another runner bumped the epoch: the attempt in flight is refused by
/// the database, the Job stands down and hands out nothing more.
#[test]
fn a_fenced_attempt_stands_the_job_down() {
    let mut w = World::new(&all_pending(20), 8, 3, false);
    w.poll(3);
    let n = w.flights.len();
    assert!(n >= 1);
    w.db.epoch += 1;
    w.answer(0, Answer::Commit);
    assert!(
        matches!(w.job.end(), Some(End::StoodDown(_))),
        "{:?}",
        w.job.end()
    );
    w.poll(5);
    assert_eq!(w.flights.len(), n - 1, "nothing new after standing down");
    while !w.flights.is_empty() {
        w.answer(0, Answer::Commit);
    }
    assert!(
        w.db.rows.values().all(|r| r.applied == 0),
        "a stale epoch committed"
    );
    assert!(w.job.is_finished());
    assert_eq!(
        w.job.position(),
        None,
        "a runner that stood down records nothing"
    );
}

/// Our own re-acquisition of the runner lock after an outage fences our
/// older attempts: they are tried again under the new epoch, not a reason
/// to stand down.
#[test]
fn our_own_new_epoch_retries_older_attempts() {
    let mut w = World::new(&all_pending(10), 8, 5, false);
    w.poll(2);
    assert_eq!(w.flights.len(), 1);
    w.step(&Op::LinkDown);
    w.step(&Op::LinkUp);
    w.answer(0, Answer::Commit);
    assert_eq!(w.job.end(), None);
    w.poll(1);
    assert_eq!(w.flights.len(), 1);
    assert_eq!(w.flights[0].apply.epoch, w.db.epoch);
    w.drain().unwrap();
    assert!(w.db.rows.values().all(|r| r.applied == 1));
}
