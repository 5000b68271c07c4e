//! The retry, split and lock-free rules of one batch, from the moment it is
//! handed out until all its keys are applied or set aside.
//!
//! - Lock timeout: retried at once as "the rows that are free now"
//!   (lock-free); the locked keys are set aside. A lock timeout even on free
//!   rows sets the whole part aside. Never counted against `max_retries`:
//!   waiting for someone else's lock is not a fault of the batch.
//! - Statement timeout: retried as two halves (shorter transactions).
//! - Deadlock, serialization failure: retried with backoff.
//! - Lost connection, or an ambiguous COMMIT that turned out not to have
//!   committed: an outage, not a fault of the batch, so it is retried
//!   without counting against `max_retries`, only against `max_outage`.
//! - Anything else is fatal: retrying would not help.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Config, Outcome};
use crate::controller::BatchError;
use crate::executor::keys::Keys;

const LOST_CAP: Duration = Duration::from_secs(2);
const FAIL_CAP: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Batch {
    /// Position in the walk; `None` for a retry of set-aside keys.
    pub seq: Option<u64>,
    /// Parts still to apply, the front one next (a split makes two).
    parts: VecDeque<Keys>,
    /// Whether the front part is applied lock-free.
    lock_free: bool,
    from_aside: bool,
    /// The attempt in flight (its progress record's batch id).
    pub running: Option<i64>,
    ready_at: Option<Instant>,
    failures: u32,
    lost_since: Option<Instant>,
    lost_tries: u32,
    pub rows: u64,
    /// Keys found locked, to set aside once the batch is finished.
    pub deferred: Keys,
}

/// What an attempt's outcome means for its batch.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// More to apply (a retry, or the next part).
    Again,
    /// Every key applied or set aside.
    Finished,
    /// The job must stop: this message says why.
    Fail(String),
}

impl Batch {
    pub fn new(seq: Option<u64>, mut keys: Keys, from_aside: bool) -> Batch {
        let deferred = keys.take_front(0);
        Batch {
            seq,
            parts: VecDeque::from([keys]),
            lock_free: from_aside,
            from_aside,
            running: None,
            ready_at: None,
            failures: 0,
            lost_since: None,
            lost_tries: 0,
            rows: 0,
            deferred,
        }
    }

    /// An attempt can start now.
    pub fn ready(&self, now: Instant) -> bool {
        self.running.is_none() && !self.parts.is_empty() && self.ready_at.is_none_or(|t| t <= now)
    }

    /// When the next attempt may start, if it waits on a backoff.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at.filter(|_| self.running.is_none())
    }

    /// Start an attempt as `id`: the keys, lock-free or not, failures so far.
    pub fn start(&mut self, id: i64) -> (Keys, bool, u32) {
        self.running = Some(id);
        let keys = self
            .parts
            .front()
            .cloned()
            .expect("a ready batch has a part");
        (keys, self.lock_free, self.failures)
    }

    /// The attempt in flight came back with `o` (not `Fenced` nor
    /// `NewIncarnation`: those concern the whole job).
    pub fn outcome(&mut self, now: Instant, o: Outcome, cfg: &Config) -> Verdict {
        self.running = None;
        self.ready_at = None;
        match o {
            Outcome::Committed { rows, deferred } => {
                self.rows += rows;
                self.deferred.append(deferred);
                self.next_part()
            }
            Outcome::AmbiguousCommitted { rows } => {
                // Keys it could not lock are unknown here; the walk found
                // keys this pass, so another sweep will catch them.
                self.rows += rows;
                self.next_part()
            }
            Outcome::AmbiguousNotCommitted | Outcome::Lost(_) => {
                let since = *self.lost_since.get_or_insert(now);
                if let Outcome::Lost(msg) = &o
                    && now.duration_since(since) > cfg.max_outage
                {
                    return Verdict::Fail(format!(
                        "the database was unreachable for {} (limits.max_outage): {msg}",
                        humantime::format_duration(Duration::from_secs(
                            now.duration_since(since).as_secs()
                        ))
                    ));
                }
                self.lost_tries += 1;
                self.ready_at = Some(now + crate::store::backoff(self.lost_tries, LOST_CAP));
                Verdict::Again
            }
            Outcome::Failed(BatchError::LockTimeout, _) => {
                if !self.lock_free {
                    // Apply what is free now; set the locked rows aside.
                    self.lock_free = true;
                    return Verdict::Again;
                }
                let part = self.parts.pop_front().expect("the attempt's part");
                self.deferred.append(part);
                self.next_part_kept()
            }
            Outcome::Failed(BatchError::StatementTimeout, msg) => {
                self.failures += 1;
                if self.failures > cfg.max_retries {
                    return Verdict::Fail(self.give_up(&msg));
                }
                let part = self.parts.front().expect("the attempt's part");
                if part.len() > 1 {
                    let mut rest = self.parts.pop_front().expect("checked");
                    let first = rest.take_front(rest.len() / 2);
                    self.parts.push_front(rest);
                    self.parts.push_front(first);
                    self.lock_free = self.from_aside;
                }
                self.ready_at = Some(now + crate::store::backoff(self.failures, FAIL_CAP));
                Verdict::Again
            }
            Outcome::Failed(_, msg) => {
                self.failures += 1;
                if self.failures > cfg.max_retries {
                    return Verdict::Fail(self.give_up(&msg));
                }
                self.ready_at = Some(now + crate::store::backoff(self.failures, FAIL_CAP));
                Verdict::Again
            }
            Outcome::Fatal(msg) => {
                let part = self.parts.front().expect("the attempt's part");
                Verdict::Fail(format!(
                    "job.update failed on the batch of {} keys from {} to {}: {msg}; nothing of this batch was applied",
                    part.len(),
                    part.first_text().unwrap_or_default(),
                    part.last_text().unwrap_or_default()
                ))
            }
            Outcome::Fenced | Outcome::NewIncarnation => {
                debug_assert!(false, "handled by the job");
                Verdict::Again
            }
        }
    }

    /// The front part is done: on to the next, if any.
    fn next_part(&mut self) -> Verdict {
        self.parts.pop_front();
        self.next_part_kept()
    }

    fn next_part_kept(&mut self) -> Verdict {
        self.lock_free = self.from_aside;
        if self.parts.is_empty() {
            Verdict::Finished
        } else {
            Verdict::Again
        }
    }

    /// The same part again at once (our own older fence, see `Job`).
    pub fn again_now(&mut self) {
        self.running = None;
        self.ready_at = None;
    }

    fn give_up(&self, msg: &str) -> String {
        let part = self.parts.front().expect("the attempt's part");
        format!(
            "the batch of {} keys from {} to {} failed {} times (limits.max_retries); last error: {msg}",
            part.len(),
            part.first_text().unwrap_or_default(),
            part.last_text().unwrap_or_default(),
            self.failures
        )
    }
}
