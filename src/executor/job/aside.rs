//! Keys set aside because someone else held their rows: retried, lock-free,
//! with backoff (100 ms doubling to 5 s) until they are done. They are
//! never skipped: a pass does not end while any are left.

use std::time::{Duration, Instant};

use crate::executor::keys::Keys;

/// Longest wait before set-aside keys are tried again.
const CAP: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Aside {
    keys: Keys,
    /// Retries of set-aside keys handed out and not finished.
    pub inflight: usize,
    round: u32,
    ready: Option<Instant>,
}

impl Aside {
    pub fn new(empty: Keys) -> Aside {
        Aside {
            keys: empty,
            inflight: 0,
            round: 0,
            ready: None,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.inflight == 0
    }

    /// Set `keys` aside; returns how long until they are tried again.
    pub fn add(&mut self, now: Instant, keys: Keys) -> Duration {
        self.round += 1;
        let wait = crate::store::backoff(self.round, CAP);
        self.ready = Some(now + wait);
        self.keys.append(keys);
        wait
    }

    /// When waiting set-aside keys can be tried again (`None`: none wait,
    /// or they can be tried now).
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready.filter(|_| !self.keys.is_empty())
    }

    /// Up to `n` keys to retry, if their backoff has passed.
    pub fn take(&mut self, now: Instant, n: usize) -> Option<Keys> {
        if self.keys.is_empty() || self.ready.is_some_and(|t| t > now) {
            return None;
        }
        self.inflight += 1;
        Some(self.keys.take_front(n))
    }

    /// A retry finished; `clean` when none of its keys was locked again.
    pub fn finished(&mut self, clean: bool) {
        self.inflight = self.inflight.saturating_sub(1);
        if clean {
            self.round = 0;
        }
    }
}
