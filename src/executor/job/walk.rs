//! One keyset walk ("pass") over the table: the read cursor, the keys read
//! but not yet handed out, the batches handed out in key order and the
//! frontier, and the rule that says when the run is over.
//!
//! Batches get sequence numbers in key order; the frontier is the last key
//! of the longest prefix of completed batches, so a resume from it never
//! passes an uncommitted batch whatever order concurrent workers finish in.

use std::collections::BTreeMap;

use crate::executor::keys::Keys;

/// How a run of sweeps ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// A whole sweep found nothing pending.
    Done,
    /// A sweep found pending rows, but applying the update changed none of
    /// them: the update does not clear `pending`.
    Stuck { keys: u64 },
}

/// What a completed pass leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum PassEnd {
    Finished(Finish),
    /// Another sweep from the start: rows inserted behind the cursor, keys
    /// set aside when a run died, or keys whose fate is unknown.
    Sweep {
        pass: i32,
        found: u64,
        changed: u64,
    },
}

#[derive(Debug)]
pub struct Walk {
    pub pass: i32,
    read_cursor: Option<String>,
    exhausted: bool,
    queue: Keys,
    next_seq: u64,
    /// Batches handed out in this pass, by seq: (last key, done).
    handed: BTreeMap<u64, (String, bool)>,
    frontier: Option<String>,
    found: u64,
    changed: u64,
    /// The pass cannot prove the table clean (resumed from a stored
    /// cursor: keys found before are unknown; or see `unsure`), so another
    /// sweep is always needed.
    resumed_mid_pass: bool,
}

impl Walk {
    pub fn new(empty: Keys, pass: i32, cursor: Option<String>) -> Walk {
        Walk {
            pass,
            resumed_mid_pass: cursor.is_some(),
            read_cursor: cursor.clone(),
            frontier: cursor,
            exhausted: false,
            queue: empty,
            next_seq: 0,
            handed: BTreeMap::new(),
            found: 0,
            changed: 0,
        }
    }

    /// (pass, resume cursor) to persist.
    pub fn position(&self) -> (i32, Option<String>) {
        (self.pass, self.frontier.clone())
    }

    /// Whether a chunk must be read before handing out `batch_size` keys.
    pub fn wants_read(&self, batch_size: usize) -> bool {
        !self.exhausted && self.queue.len() < batch_size
    }

    /// Whether to read the next chunk now, ahead of need: less than half a
    /// chunk beyond the next batch is queued (and less than a whole chunk,
    /// so a chunk just read is used before the next is asked for), so the
    /// read runs while the batches still queued are applied, rather than
    /// between two of them. Always when `wants_read`.
    pub fn read_ahead(&self, batch_size: usize, chunk: u32) -> bool {
        let chunk = chunk as usize;
        let low = batch_size.max((batch_size + chunk / 2).min(chunk));
        !self.exhausted && self.queue.len() < low
    }

    /// Nothing of this sweep (a pass after the first) has been read yet
    /// (a chunk either moves the cursor or exhausts the pass, so nothing is
    /// queued, handed out or found either): a whole-table check may stand
    /// in for the keyset walk.
    pub fn sweep_start(&self) -> bool {
        self.pass > 0 && self.read_cursor.is_none() && !self.exhausted
    }

    pub fn read_cursor(&self) -> Option<String> {
        self.read_cursor.clone()
    }

    /// A chunk read after the cursor: `read` keys in all, the last of
    /// them `last`, `pending` those matching `job.pending`.
    pub fn chunk(&mut self, last: Option<String>, read: usize, limit: u32, pending: Keys) {
        if read < limit as usize {
            self.exhausted = true;
        }
        if last.is_some() {
            self.read_cursor = last;
        }
        self.found += pending.len() as u64;
        self.queue.append(pending);
        if self.queue.is_empty() && self.handed.is_empty() {
            self.frontier = self.read_cursor.clone();
        }
    }

    /// The next walk batch of at most `batch_size` keys, with its seq.
    pub fn take(&mut self, batch_size: usize) -> Option<(u64, Keys)> {
        if self.queue.is_empty() {
            return None;
        }
        let keys = self.queue.take_front(batch_size);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.handed
            .insert(seq, (keys.last_text().unwrap_or_default(), false));
        Some((seq, keys))
    }

    /// Batch `seq` is finished (its keys applied or set aside).
    pub fn complete(&mut self, seq: u64) {
        if let Some(e) = self.handed.get_mut(&seq) {
            e.1 = true;
        }
        while let Some(entry) = self.handed.first_entry() {
            if !entry.get().1 {
                break;
            }
            let (last, _) = entry.remove();
            self.frontier = Some(last);
        }
        if self.handed.is_empty() && self.queue.is_empty() {
            self.frontier = self.read_cursor.clone();
        }
    }

    /// Keys of this pass may have been set aside without the Job knowing
    /// which (a lock-free batch whose COMMIT answer was lost): this pass
    /// cannot prove anything, so another sweep follows.
    pub fn unsure(&mut self) {
        self.resumed_mid_pass = true;
    }

    pub fn rows_changed(&mut self, rows: u64) {
        self.changed += rows;
    }

    /// Everything read has been handed out and every batch is finished.
    pub fn drained(&self) -> bool {
        self.exhausted && self.queue.is_empty() && self.handed.is_empty()
    }

    /// Called once the walk is drained and nothing else (set-aside keys)
    /// is left: the end, or another sweep from the start.
    pub fn end_pass(&mut self) -> PassEnd {
        if self.found == 0 && !self.resumed_mid_pass {
            return PassEnd::Finished(Finish::Done);
        }
        if self.pass > 0 && self.found > 0 && self.changed == 0 && !self.resumed_mid_pass {
            return PassEnd::Finished(Finish::Stuck { keys: self.found });
        }
        let end = PassEnd::Sweep {
            pass: self.pass,
            found: self.found,
            changed: self.changed,
        };
        self.pass += 1;
        self.read_cursor = None;
        self.frontier = None;
        self.exhausted = false;
        self.next_seq = 0;
        self.found = 0;
        self.changed = 0;
        self.resumed_mid_pass = false;
        end
    }
}
