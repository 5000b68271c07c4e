//! The simulated run's dispatch: the executor's real `Job` (the same state
//! machine the Postgres driver runs) driven in virtual time. Which keys go
//! into which batch, how many attempts are in flight, the retry / split /
//! lock-free rules, set-aside keys and their sweeps, the pause gate and the
//! end of the run are all the Job's decisions; this module only answers
//! its `Io` requests the way the database would, per the model:
//!
//! - `Io::ReadChunk` from a key space of integers `0..rows` (the simulated
//!   table), pending until applied; answered at once (a read costs no
//!   virtual time).
//! - `Io::Apply` after the model's batch time (lognormal noise), with a
//!   lock timeout (after `limits.lock_timeout`) or a deadlock drawn from
//!   the model's odds, or `Committed`. The row behind a lock timeout stays
//!   locked for a while (exponential, mean `lock_timeout`), so the Job's
//!   lock-free retry finds it locked and sets it aside, and the set-aside
//!   retries meet it until it is released.
//!
//! Workers behave as `executor::worker`'s: only those below the `workers`
//! knob take attempts, one at a time; each waits for the rate cap, asks
//! the Job to confirm, runs the attempt, reports it, and sleeps the `sleep`
//! knob after a committed attempt.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::model::{Conditions, Model};
use super::scenario::normal;
use crate::controller::{BatchError, BatchOutcome, Knobs};
use crate::executor::job::{Apply, Chunk, Config, End, Event, Finish, Io, Job, Outcome, Stored};
use crate::executor::keys::{KeyType, Keys};
use crate::policy::Policy;

/// What the Job decided over the run, for the tests and the summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DispatchStats {
    /// Rows in the simulated table (`None`: more than the run can reach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_rows: Option<u64>,
    /// Attempts handed out by the Job and run.
    pub attempts: u64,
    /// Of those, lock-free ones (after a lock timeout, or set-aside keys).
    pub lock_free_attempts: u64,
    /// Attempts that failed with a lock timeout, and with a deadlock.
    pub lock_timeouts: u64,
    pub deadlocks: u64,
    /// Keys the Job set aside because their rows were locked.
    pub keys_set_aside: u64,
    /// Sweeps from the start after a pass.
    pub sweeps: u64,
    /// Keys applied more than once (a broken dispatch; always 0).
    pub rows_doubled: u64,
    /// How the Job ended, if it did (`finished`, or why it stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Simulated seconds after the start when the Job ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_after_seconds: Option<f64>,
}

/// The simulated table: keys `0..rows`, each pending until applied. The
/// applied keys are kept as disjoint runs, so a table of any size costs
/// memory only for the holes (keys set aside, batches finishing out of
/// order).
#[derive(Debug)]
pub struct KeySpace {
    rows: i64,
    /// Applied runs: start → end (exclusive), disjoint and not adjacent.
    applied: BTreeMap<i64, i64>,
    pub applied_rows: u64,
    pub doubled: u64,
}

impl KeySpace {
    pub fn new(rows: Option<u64>) -> KeySpace {
        KeySpace {
            rows: rows.map_or(i64::MAX / 2, |r| r.min(i64::MAX as u64 / 2) as i64),
            applied: BTreeMap::new(),
            applied_rows: 0,
            doubled: 0,
        }
    }

    /// Keys after `after`, up to `limit` of them, in key order.
    pub fn read(&self, after: Option<&str>, limit: u32) -> Chunk {
        let from = after
            .and_then(|t| t.parse::<i64>().ok())
            .map_or(0, |k| k + 1)
            .min(self.rows);
        let to = from.saturating_add(limit as i64).min(self.rows);
        let mut runs: Vec<(i64, i64)> = Vec::new();
        let mut cur = from;
        let first = self
            .applied
            .range(..=from)
            .next_back()
            .filter(|(_, e)| **e > from)
            .map(|(s, e)| (*s, *e));
        let rest = self
            .applied
            .range(from.saturating_add(1)..to.max(from + 1))
            .map(|(s, e)| (*s, *e));
        for (s, e) in first.into_iter().chain(rest) {
            if cur >= to {
                break;
            }
            if s > cur {
                runs.push((cur, s.min(to)));
            }
            cur = cur.max(e);
        }
        if cur < to {
            runs.push((cur, to));
        }
        // One run (the usual case: nothing applied ahead of the cursor)
        // stays two numbers.
        let pending = match runs[..] {
            [] => Keys::I64(Vec::new()),
            [(s, e)] => Keys::I64Run(s..e),
            _ => Keys::I64(runs.iter().flat_map(|&(s, e)| s..e).collect()),
        };
        Chunk {
            last: (to > from).then(|| (to - 1).to_string()),
            read: (to - from) as usize,
            pending,
        }
    }

    /// Apply `keys`; returns how many were pending.
    pub fn apply(&mut self, keys: &Keys) -> u64 {
        match keys {
            Keys::I64Run(r) if r.end > r.start => self.apply_run(r.start, r.end),
            Keys::I64Run(_) => 0,
            other => self.apply_list(&other.i64s().expect("bigint keys")),
        }
    }

    /// Apply `keys` (any order); returns how many were pending.
    pub fn apply_list(&mut self, keys: &[i64]) -> u64 {
        let mut done = 0;
        let mut i = 0;
        while i < keys.len() {
            let s = keys[i];
            let mut j = i + 1;
            while j < keys.len() && keys[j] == keys[j - 1] + 1 {
                j += 1;
            }
            done += self.apply_run(s, keys[j - 1] + 1);
            i = j;
        }
        done
    }

    fn apply_run(&mut self, s: i64, e: i64) -> u64 {
        // The usual case: right after the run before it, nothing after.
        if self.applied.range(s..=e).next().is_none()
            && let Some((_, end)) = self.applied.range_mut(..s).next_back()
            && *end == s
        {
            *end = e;
            self.applied_rows += (e - s) as u64;
            return (e - s) as u64;
        }
        let (mut lo, mut hi) = (s, e);
        let mut overlap = 0;
        // Runs that overlap or touch [s, e): merged into one.
        let touching: Vec<(i64, i64)> = self
            .applied
            .range(..=e)
            .rev()
            .take_while(|(_, re)| **re >= s)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in touching {
            overlap += (b.min(e) - a.max(s)).max(0);
            lo = lo.min(a);
            hi = hi.max(b);
            self.applied.remove(&a);
        }
        self.applied.insert(lo, hi);
        self.doubled += overlap as u64;
        let new = (e - s - overlap) as u64;
        self.applied_rows += new;
        new
    }

    /// Every key of the table applied once (checks the runs, not a count).
    pub fn all_applied(&self) -> bool {
        self.applied.len() == 1 && self.applied.get(&0) == Some(&self.rows)
    }
}

/// One tick of the run, as the dispatch saw it.
#[derive(Default)]
pub struct TickOut {
    /// Attempts that ended in the tick (for the controller).
    pub batches: Vec<BatchOutcome>,
    /// Rows of the attempts running in the tick, each attempt's spread
    /// over its duration.
    pub rows: f64,
    /// Worker-seconds in the tick spent in the cycle the knobs' rate
    /// counts (taking an attempt that commits, running it, sleeping after
    /// it): `workers × tick` when every worker runs without a break; less
    /// while held by a pause or the end, or waiting on a lock.
    pub worker_seconds: f64,
    /// The rate cap held an attempt back, or a worker found nothing to do.
    pub app_limited: bool,
}

/// What the tick's knobs and the model say about attempts starting now.
pub struct TickEnv<'a> {
    pub model: &'a Model,
    pub conditions: &'a Conditions,
    pub knobs: Knobs,
    /// The controller's pause (or a pause window).
    pub paused: bool,
    /// Mean seconds of a batch of `knobs.batch_size` rows this tick.
    pub batch_time: f64,
    pub rate_cap: Option<f64>,
}

enum Slot {
    /// Free from this instant (after its sleep).
    Idle(Duration),
    /// Waiting for the rate cap until `.1`; taken at `.2`.
    Quota(Apply, Duration, Duration),
    Busy(Flight),
}

struct Flight {
    batch_id: i64,
    begin: Duration,
    end: Duration,
    outcome: Outcome,
    rows: u64,
    error: Option<BatchError>,
}

/// The Job and its simulated workers and table.
pub struct Dispatch {
    job: Job,
    /// Virtual time zero: the backfill's start.
    base: Instant,
    start: DateTime<Utc>,
    dt: Duration,
    table: KeySpace,
    slots: Vec<Slot>,
    /// Rows applied per tick from the current one on, each attempt's rows
    /// spread over its duration.
    rows_bins: VecDeque<f64>,
    /// Worker-seconds per tick spent in the cycle the knobs' rate counts:
    /// from taking an attempt that commits to the end of the sleep after
    /// it (not waiting on a lock, paused, or idle).
    duty_bins: VecDeque<f64>,
    /// Start of the current tick (`[0]` of the bins).
    tick_start: Duration,
    quota_at: Duration,
    /// Rows locked by live transactions (found by a lock timeout), until.
    locked: HashMap<i64, Duration>,
    lock_timeout: Duration,
    noise_sd: f64,
    rng: ChaCha8Rng,
    /// Collect each attempt's outcome for the controller (fixed loops
    /// have none to tell).
    pub report: bool,
    pub stats: DispatchStats,
}

impl Dispatch {
    pub fn new(
        policy: &Policy,
        model: &Model,
        start: DateTime<Utc>,
        table_rows: Option<u64>,
        rng: ChaCha8Rng,
    ) -> Dispatch {
        let l = &policy.limits;
        let cfg = Config {
            key_type: KeyType::Int8,
            // Reads take no virtual time, so the chunk size changes nothing
            // the simulation measures (batches are cut the same way from
            // any chunk at least a batch long); the smallest allowed keeps
            // the keys in hand few.
            read_chunk: l.batch_size.max.max(1),
            max_retries: l.max_retries,
            max_outage: l.max_outage,
            max_pause: policy.job.max_pause,
            stop_after_max_pause: policy.job.stop_after_max_pause,
        };
        let stored = Stored {
            pass: 0,
            cursor: None,
            next_batch_id: 1,
            incarnation: 1,
        };
        Dispatch {
            job: Job::new(cfg, stored, 1, l.batch_size.start),
            base: Instant::now(),
            start,
            dt: policy.controller.tick,
            table: KeySpace::new(table_rows),
            slots: (0..l.workers.max.max(1))
                .map(|_| Slot::Idle(Duration::ZERO))
                .collect(),
            rows_bins: VecDeque::new(),
            duty_bins: VecDeque::new(),
            tick_start: Duration::ZERO,
            quota_at: Duration::ZERO,
            locked: HashMap::new(),
            lock_timeout: l.lock_timeout,
            noise_sd: model.backfill.time_noise,
            rng,
            report: true,
            stats: DispatchStats {
                table_rows,
                ..Default::default()
            },
        }
    }

    /// Rows applied so far (each once).
    pub fn rows(&self) -> u64 {
        self.table.applied_rows
    }

    pub fn ended(&self) -> bool {
        self.job.end().is_some()
    }

    fn at(&self, t: Duration) -> Instant {
        self.base + t
    }

    fn wall(&self, t: Duration) -> DateTime<Utc> {
        self.start + chrono::Duration::from_std(t).unwrap_or_default()
    }

    /// Run tick `j` of the backfill (virtual `[j·dt, (j+1)·dt)`): feed the
    /// Job the tick's command and let the workers run.
    pub fn tick(&mut self, j: usize, env: &TickEnv) -> TickOut {
        let t0 = self.dt * j as u32;
        let t1 = t0 + self.dt;
        self.tick_start = t0;
        let now = self.at(t0);
        self.job.handle_tick(now);
        self.job
            .handle_command(now, env.paused, env.knobs.batch_size);
        let mut done = Vec::new();
        let mut limited = false;
        let workers = env.knobs.workers as usize;
        let mut ending: Vec<(Duration, usize)> = Vec::new();
        let mut t = t0;
        loop {
            // Attempts ended by `t`, in the order they end.
            ending.clear();
            for (i, s) in self.slots.iter().enumerate() {
                if let Slot::Busy(f) = s
                    && f.end <= t
                {
                    ending.push((f.end, i));
                }
            }
            ending.sort_unstable();
            for &(_, idx) in &ending {
                let o = self.finish(idx, env);
                if self.report {
                    done.push(o);
                }
            }
            // Start what can start at `t`, worker by worker, and find the
            // next thing that happens before the tick's end.
            let mut waiting = false;
            let mut next = t1;
            for idx in 0..self.slots.len() {
                if let Slot::Quota(_, begin, _) = &self.slots[idx]
                    && *begin <= t
                {
                    self.begin(idx, t, env);
                }
                let runs = idx < workers && !env.paused;
                if let Slot::Idle(free) = self.slots[idx]
                    && free <= t
                    && runs
                {
                    match self.take(idx, t, env) {
                        Some(l) => limited |= l,
                        None => {
                            if self.job.end().is_none() {
                                waiting = true;
                                limited = true;
                            }
                        }
                    }
                }
                match &self.slots[idx] {
                    Slot::Busy(f) => next = next.min(f.end),
                    Slot::Quota(_, b, _) => next = next.min(*b),
                    Slot::Idle(free) if *free > t && runs => next = next.min(*free),
                    Slot::Idle(_) => {}
                }
            }
            self.events();
            if waiting && let Some(w) = self.job.poll_timeout() {
                let w = w.saturating_duration_since(self.base);
                next = next.min(w.max(t + Duration::from_millis(5)));
            }
            if next >= t1 {
                break;
            }
            t = next;
        }
        self.events();
        if self.stats.end.is_none()
            && let Some(end) = self.job.end()
        {
            self.stats.end = Some(match end {
                End::Finished(Finish::Done) => "finished".into(),
                End::Finished(Finish::Stuck { keys }) => format!("stuck on {keys} keys"),
                End::Failed(msg) => format!("failed: {msg}"),
                End::Stopped => "stopped".into(),
                End::MaxPause => "paused longer than job.max_pause".into(),
                End::StoodDown(msg) => format!("stood down: {msg}"),
            });
            self.stats.ended_after_seconds = Some(t1.as_secs_f64());
        }
        TickOut {
            batches: done,
            rows: self.rows_bins.pop_front().unwrap_or(0.0),
            worker_seconds: self.duty_bins.pop_front().unwrap_or(0.0),
            app_limited: limited,
        }
    }

    /// Worker `idx` asks the Job for work at `t`: reads are answered at
    /// once; an attempt waits for the rate cap, then begins. `None`: the
    /// Job had nothing; `Some(limited)`: an attempt, held by the cap or not.
    fn take(&mut self, idx: usize, t: Duration, env: &TickEnv) -> Option<bool> {
        loop {
            match self.job.poll_io(self.at(t))? {
                // The simulated table answers a read at once, so the
                // whole-table check would save nothing here.
                Io::ReadChunk { after, limit, .. } => {
                    let chunk = self.table.read(after.as_deref(), limit);
                    self.job.handle_chunk(self.at(t), chunk);
                }
                Io::Apply(a) => {
                    let mut begin = t;
                    if let Some(cap) = env.rate_cap.filter(|c| *c > 0.0) {
                        begin = t.max(self.quota_at);
                        self.quota_at = begin + Duration::from_secs_f64(a.keys.len() as f64 / cap);
                    }
                    let limited = begin > t;
                    self.slots[idx] = Slot::Quota(a, begin, t);
                    if !limited {
                        self.begin(idx, t, env);
                    }
                    return Some(limited);
                }
            }
        }
    }

    /// The attempt waiting in slot `idx` begins at `t` if the Job still
    /// confirms it; its outcome is drawn from the model now.
    fn begin(&mut self, idx: usize, t: Duration, env: &TickEnv) {
        let Slot::Quota(a, _, taken) = std::mem::replace(&mut self.slots[idx], Slot::Idle(t))
        else {
            return;
        };
        if !self.job.confirm(self.at(t), a.batch_id) {
            return;
        }
        let keys = &a.keys;
        let m = env.model;
        let n = keys.len();
        let batch = env.knobs.batch_size.max(1) as f64;
        let overhead = m.backfill.batch_overhead;
        let per_row = (env.batch_time - overhead).max(0.0) / batch;
        let mean_time = |rows: usize| overhead + per_row * rows as f64;
        self.stats.attempts += 1;
        let draw: f64 = self.rng.random();
        let noise =
            (self.noise_sd * normal(&mut self.rng) - self.noise_sd * self.noise_sd / 2.0).exp();
        let (p_timeout, p_deadlock) =
            m.batch_error_odds(n as f64, env.conditions.live, env.knobs.workers as f64);
        let (duration, outcome, rows, error) = if a.lock_free {
            self.stats.lock_free_attempts += 1;
            // SKIP LOCKED: the rows still held are deferred, the rest applied.
            self.locked.retain(|_, until| *until > t);
            let list = keys.i64s().expect("the simulated table has bigint keys");
            let (free, held): (Vec<i64>, Vec<i64>) =
                list.iter().partition(|k| !self.locked.contains_key(k));
            if draw < p_deadlock && !free.is_empty() {
                self.stats.deadlocks += 1;
                (
                    Duration::from_secs_f64(mean_time(free.len()) * 0.5),
                    Outcome::Failed(BatchError::Deadlock, "deadlock detected".into()),
                    0,
                    Some(BatchError::Deadlock),
                )
            } else {
                let rows = self.table.apply_list(&free);
                (
                    Duration::from_secs_f64(mean_time(free.len()) * noise),
                    Outcome::Committed {
                        rows,
                        deferred: Keys::I64(held),
                    },
                    rows,
                    None,
                )
            }
        } else if draw < p_timeout {
            // A live transaction holds one of the rows past lock_timeout,
            // and keeps it a while longer.
            let k = keys
                .text(self.rng.random_range(0..n.max(1)))
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or_default();
            let hold: f64 = -self.rng.random::<f64>().max(1e-12).ln();
            let until = t
                + self.lock_timeout
                + Duration::from_secs_f64(hold * self.lock_timeout.as_secs_f64());
            self.locked.insert(k, until);
            self.stats.lock_timeouts += 1;
            (
                self.lock_timeout,
                Outcome::Failed(
                    BatchError::LockTimeout,
                    "canceling statement due to lock timeout".into(),
                ),
                0,
                Some(BatchError::LockTimeout),
            )
        } else if draw < p_timeout + p_deadlock {
            self.stats.deadlocks += 1;
            (
                Duration::from_secs_f64(mean_time(n) * 0.5),
                Outcome::Failed(BatchError::Deadlock, "deadlock detected".into()),
                0,
                Some(BatchError::Deadlock),
            )
        } else {
            let rows = self.table.apply(keys);
            (
                Duration::from_secs_f64(mean_time(n) * noise),
                Outcome::Committed {
                    rows,
                    deferred: Keys::I64(Vec::new()),
                },
                rows,
                None,
            )
        };
        let t0 = self.tick_start;
        if rows > 0 {
            spread(
                &mut self.rows_bins,
                t0,
                self.dt,
                t,
                t + duration,
                rows as f64,
            );
        }
        // The knobs' rate counts a batch's time and the sleep after it.
        let cycle_end = if matches!(outcome, Outcome::Committed { .. }) {
            t + duration + env.knobs.sleep
        } else {
            t
        };
        // (A wait for the rate cap that began in an earlier tick counts
        // from this one.)
        let from = taken.max(t0);
        let secs = (cycle_end - from).as_secs_f64();
        spread(&mut self.duty_bins, t0, self.dt, from, cycle_end, secs);
        self.slots[idx] = Slot::Busy(Flight {
            batch_id: a.batch_id,
            begin: t,
            end: t + duration,
            outcome,
            rows,
            error,
        });
    }

    /// The attempt in slot `idx` ended: tell the Job, then the worker
    /// sleeps the knob after a committed attempt.
    fn finish(&mut self, idx: usize, env: &TickEnv) -> BatchOutcome {
        let Slot::Busy(f) = std::mem::replace(&mut self.slots[idx], Slot::Idle(Duration::ZERO))
        else {
            unreachable!("finish is called on a busy slot")
        };
        let committed = matches!(f.outcome, Outcome::Committed { .. });
        self.job
            .handle_outcome(self.at(f.end), f.batch_id, f.outcome);
        let sleep = if committed {
            env.knobs.sleep
        } else {
            Duration::ZERO
        };
        self.slots[idx] = Slot::Idle(f.end + sleep);
        BatchOutcome {
            started: self.wall(f.begin),
            duration: f.end - f.begin,
            rows: f.rows,
            error: f.error,
        }
    }

    fn events(&mut self) {
        while let Some(e) = self.job.poll_event() {
            match e {
                Event::SetAside { keys, .. } => self.stats.keys_set_aside += keys as u64,
                Event::Sweep { .. } => self.stats.sweeps += 1,
                Event::Restarted | Event::Reloaded { .. } => {}
            }
        }
        self.stats.rows_doubled = self.table.doubled;
    }
}

/// Spread `amount` over `[from, to)` into per-tick `bins` (`[0]` is the
/// tick starting at `t0`, which `from` is in).
fn spread(
    bins: &mut VecDeque<f64>,
    t0: Duration,
    dt: Duration,
    from: Duration,
    to: Duration,
    amount: f64,
) {
    let dt = dt.as_secs_f64();
    let (a, b) = ((from - t0).as_secs_f64(), (to - t0).as_secs_f64());
    let len = b - a;
    let mut s = a;
    let mut i = 0usize;
    loop {
        let edge = (i + 1) as f64 * dt;
        if bins.len() <= i {
            bins.push_back(0.0);
        }
        if len <= 0.0 {
            bins[i] += amount;
            return;
        }
        let e = b.min(edge);
        if e > s {
            bins[i] += amount * (e - s) / len;
        }
        if b <= edge {
            return;
        }
        s = s.max(edge);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_space_reads_pending_keys_and_counts_each_once() {
        let mut t = KeySpace::new(Some(10));
        let c = t.read(None, 4);
        assert_eq!(c.read, 4);
        assert_eq!(c.last.as_deref(), Some("3"));
        assert_eq!(c.pending, Keys::I64Run(0..4));
        assert_eq!(t.apply_list(&[0, 1, 3]), 3);
        assert_eq!(t.apply(&Keys::I64Run(5..7)), 2);
        let c = t.read(None, 10);
        assert_eq!(c.pending, Keys::I64(vec![2, 4, 7, 8, 9]));
        let c = t.read(Some("5"), 10);
        assert_eq!(c.read, 4);
        assert_eq!(c.pending, Keys::I64Run(7..10));
        assert_eq!(t.apply_list(&[1, 2]), 1);
        assert_eq!(t.doubled, 1);
        assert_eq!(t.apply_list(&[4, 7, 8, 9]), 4);
        assert!(t.all_applied());
        assert_eq!(t.applied_rows, 10);
        assert_eq!(t.read(Some("9"), 5).read, 0);
        assert_eq!(t.read(Some("2"), 5).pending, Keys::I64(vec![]));
    }
}
