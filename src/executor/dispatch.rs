//! Hands out batches in key order and tracks which are done.
//!
//! One keyset walk ("pass") reads keys after a cursor, in chunks, and slices
//! the pending ones into batches of the current `batch_size` at the moment a
//! worker asks, so a knob change applies to the very next batch. Batches get
//! sequence numbers in key order; the resume cursor (`frontier`) is the last
//! key of the longest prefix of completed batches, i.e. the highest key below
//! which every batch is done, whatever order concurrent workers finish in.
//!
//! Keys whose rows were locked by someone else are set aside (`deferred`) and
//! retried with backoff once the walk is through. A walk that found pending
//! rows is followed by another from the start (a sweep), which catches rows
//! inserted behind the cursor and anything set aside when a run died; the
//! job is done only when a whole sweep finds nothing pending.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;

use super::keys::Keys;
use super::target::Target;

/// A batch of keys to apply in one transaction.
#[derive(Debug)]
pub struct Batch {
    pub keys: Keys,
    /// Position in the walk; `None` for a retry of set-aside keys.
    pub seq: Option<u64>,
    pub pass: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// A whole sweep found nothing pending.
    Done,
    /// A sweep found pending rows, but applying the update changed none of
    /// them: the update does not clear `pending`.
    Stuck { keys: u64 },
}

#[derive(Debug)]
pub enum Next {
    Batch(Batch),
    /// Nothing to hand out now (batches in flight, or set-aside keys
    /// backing off); ask again after this long.
    Wait(Duration),
    Finished(Finish),
}

pub struct Dispatch {
    target: Arc<Target>,
    reader: PgConnection,
    read_chunk: u32,
    pass: i32,
    read_cursor: Option<String>,
    exhausted: bool,
    queue: Keys,
    next_seq: u64,
    /// Batches handed out in this pass, by seq: (last key, done).
    inflight: BTreeMap<u64, (String, bool)>,
    frontier: Option<String>,
    deferred: Keys,
    deferred_inflight: usize,
    deferred_round: u32,
    deferred_ready: Option<Instant>,
    pass_keys: u64,
    pass_rows: u64,
    /// The pass was resumed after a restart: keys found before the restart
    /// are unknown, so another sweep is always needed.
    resumed_mid_pass: bool,
    finished: Option<Finish>,
}

impl Dispatch {
    pub fn new(
        target: Arc<Target>,
        reader: PgConnection,
        read_chunk: u32,
        pass: i32,
        cursor: Option<String>,
    ) -> Dispatch {
        let queue = target.key_type.empty();
        let deferred = target.key_type.empty();
        Dispatch {
            target,
            reader,
            read_chunk,
            pass,
            resumed_mid_pass: cursor.is_some(),
            read_cursor: cursor.clone(),
            frontier: cursor,
            exhausted: false,
            queue,
            next_seq: 0,
            inflight: BTreeMap::new(),
            deferred,
            deferred_inflight: 0,
            deferred_round: 0,
            deferred_ready: None,
            pass_keys: 0,
            pass_rows: 0,
            finished: None,
        }
    }

    /// Replace the reader's connection after it broke.
    pub async fn reconnect(&mut self, sh: &super::Shared) -> anyhow::Result<()> {
        self.reader = crate::store::connect(&sh.url, &sh.app_name).await?;
        Ok(())
    }

    /// (pass, resume cursor) to persist.
    pub fn position(&self) -> (i32, Option<String>) {
        (self.pass, self.frontier.clone())
    }

    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    /// The next batch of at most `batch_size` keys.
    pub async fn next(&mut self, batch_size: u32) -> Result<Next, sqlx::Error> {
        let batch_size = batch_size.max(1) as usize;
        loop {
            if let Some(f) = &self.finished {
                return Ok(Next::Finished(f.clone()));
            }
            if self.queue.len() < batch_size && !self.exhausted {
                let (last, n, pending) = self
                    .target
                    .read_chunk(
                        &mut self.reader,
                        self.read_cursor.as_deref(),
                        self.read_chunk,
                    )
                    .await?;
                if n < self.read_chunk as usize {
                    self.exhausted = true;
                }
                if last.is_some() {
                    self.read_cursor = last;
                }
                self.pass_keys += pending.len() as u64;
                self.queue.append(pending);
                if self.queue.is_empty() && self.inflight.is_empty() {
                    self.frontier = self.read_cursor.clone();
                }
                continue;
            }
            if !self.queue.is_empty() {
                let keys = self.queue.take_front(batch_size);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.inflight
                    .insert(seq, (keys.last_text().unwrap_or_default(), false));
                return Ok(Next::Batch(Batch {
                    keys,
                    seq: Some(seq),
                    pass: self.pass,
                }));
            }
            if !self.deferred.is_empty() {
                let now = Instant::now();
                match self.deferred_ready {
                    Some(t) if t > now => {
                        return Ok(Next::Wait((t - now).min(Duration::from_millis(200))));
                    }
                    _ => {
                        let keys = self.deferred.take_front(batch_size);
                        self.deferred_inflight += 1;
                        return Ok(Next::Batch(Batch {
                            keys,
                            seq: None,
                            pass: self.pass,
                        }));
                    }
                }
            }
            if !self.inflight.is_empty() || self.deferred_inflight > 0 {
                return Ok(Next::Wait(Duration::from_millis(20)));
            }
            // The pass is complete.
            if self.pass_keys == 0 && !self.resumed_mid_pass {
                self.finished = Some(Finish::Done);
            } else if self.pass > 0
                && self.pass_keys > 0
                && self.pass_rows == 0
                && !self.resumed_mid_pass
            {
                self.finished = Some(Finish::Stuck {
                    keys: self.pass_keys,
                });
            } else {
                tracing::info!(
                    pass = self.pass,
                    pending_found = self.pass_keys,
                    rows_changed = self.pass_rows,
                    "pass complete; sweeping again from the start for rows inserted behind the cursor or set aside"
                );
                self.pass += 1;
                self.read_cursor = None;
                self.frontier = None;
                self.exhausted = false;
                self.next_seq = 0;
                self.pass_keys = 0;
                self.pass_rows = 0;
                self.resumed_mid_pass = false;
            }
        }
    }

    /// A batch is finished: `rows` changed, `deferred` keys set aside.
    pub fn complete(&mut self, seq: Option<u64>, rows: u64, deferred: Keys) {
        self.pass_rows += rows;
        match seq {
            Some(s) => {
                if let Some(e) = self.inflight.get_mut(&s) {
                    e.1 = true;
                }
                while let Some(entry) = self.inflight.first_entry() {
                    if !entry.get().1 {
                        break;
                    }
                    let (last, _) = entry.remove();
                    self.frontier = Some(last);
                }
                if self.inflight.is_empty() && self.queue.is_empty() {
                    self.frontier = self.read_cursor.clone();
                }
            }
            None => {
                self.deferred_inflight = self.deferred_inflight.saturating_sub(1);
                if deferred.is_empty() {
                    self.deferred_round = 0;
                }
            }
        }
        if !deferred.is_empty() {
            self.deferred_round += 1;
            let wait = crate::store::backoff(self.deferred_round, Duration::from_secs(5));
            tracing::info!(
                keys = deferred.len(),
                first = deferred.first_text().unwrap_or_default(),
                retry_in = ?wait,
                "rows locked by another session: set aside, will retry"
            );
            self.deferred_ready = Some(Instant::now() + wait);
            self.deferred.append(deferred);
        }
    }
}
