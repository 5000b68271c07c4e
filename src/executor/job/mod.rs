//! The executor's decisions as a pure state machine, the way the controller
//! is one: no sockets, no clock, no async. Time comes in as `now`.
//!
//! Shaped like quinn-proto's `Connection`: the driver feeds what happened
//! through `handle_*(now, …)` and asks what to do next with `poll_*()`.
//! Reading keys is an output (`Io::ReadChunk`) whose answer comes back
//! through `handle_chunk`; applying a batch is an output (`Io::Apply`)
//! whose answer comes back through `handle_outcome`. The same `Job`
//! therefore runs under the Postgres driver (`runner`, `worker`) and under
//! property tests with a model table (`tests/job_props.rs`), where every
//! interleaving of failures, outages, restarts, pauses and stops can be
//! tried in microseconds.
//!
//! It owns: the keyset walk and its frontier (`walk`), the keys set aside
//! because their rows were locked (`aside`), the retry / split / lock-free
//! rules of each batch (`retry`), and whether new batches may start at all
//! (`gate`: pause, in-process pause, outage, `max_pause`, `max_outage`).
//! Here it ties them to server incarnations (a restart discards the
//! in-memory state and resumes from the stored position), to the runner's
//! epoch (a fenced batch means another runner owns the job), and to the
//! end of the run.

mod aside;
mod gate;
mod io;
mod retry;
mod walk;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::controller::fmt_dur;

pub use io::{Apply, Chunk, Config, End, Event, Io, Outcome, StoreIo, Stored};
pub use walk::Finish;

use aside::Aside;
use gate::Gate;
use retry::{Batch, Verdict};
use walk::{PassEnd, Walk};

/// Longest wait between two reads of keys after a read error.
const READ_CAP: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Running {
    batch: u64,
    lock_free: bool,
    generation: u64,
    epoch: i64,
}

#[derive(Debug)]
enum Rebuild {
    /// Waiting for attempts in flight and a live link.
    Waiting,
    /// `LoadPosition` handed out.
    Loading,
}

#[derive(Debug)]
pub struct Job {
    cfg: Config,
    batch_size: u32,
    walk: Walk,
    aside: Aside,
    batches: BTreeMap<u64, Batch>,
    next_batch_no: u64,
    running: HashMap<i64, Running>,
    next_batch_id: i64,
    /// Bumped when the state is rebuilt: answers for an older one are
    /// ignored.
    generation: u64,
    reading: Option<u64>,
    read_errors: u32,
    read_ready: Option<Instant>,
    gate: Gate,
    incarnation: i64,
    epoch: i64,
    rebuild: Option<Rebuild>,
    rows: u64,
    end: Option<End>,
    events: VecDeque<Event>,
}

impl Job {
    pub fn new(cfg: Config, start: Stored, epoch: i64, batch_size: u32) -> Job {
        let empty = cfg.key_type.empty();
        Job {
            walk: Walk::new(empty.clone(), start.pass, start.cursor),
            aside: Aside::new(empty),
            cfg,
            batch_size: batch_size.max(1),
            batches: BTreeMap::new(),
            next_batch_no: 0,
            running: HashMap::new(),
            next_batch_id: start.next_batch_id,
            generation: 0,
            reading: None,
            read_errors: 0,
            read_ready: None,
            gate: Gate::default(),
            incarnation: start.incarnation,
            epoch,
            rebuild: None,
            rows: 0,
            end: None,
            events: VecDeque::new(),
        }
    }

    // ---- inputs ----

    /// The controller's decision of this tick: paused or not, batch size.
    pub fn handle_command(&mut self, now: Instant, paused: bool, batch_size: u32) {
        self.gate.command(now, paused);
        self.batch_size = batch_size.max(1);
    }

    /// A pause asked for in this process (HTTP), honoured at once.
    pub fn handle_local_pause(&mut self, paused: bool) {
        self.gate.local(paused);
    }

    /// The pause switch cannot be read (connection lost, server down):
    /// no new batch from now on.
    pub fn handle_link_down(&mut self, now: Instant, cause: String) {
        self.gate.lose(now, cause);
        if matches!(self.rebuild, Some(Rebuild::Loading)) {
            self.rebuild = Some(Rebuild::Waiting);
        }
    }

    /// Reconnected and the runner lock re-taken, on server `incarnation`
    /// with the new `epoch`.
    pub fn handle_link_up(&mut self, _now: Instant, incarnation: i64, epoch: i64) {
        self.gate.up();
        self.epoch = epoch;
        if incarnation != self.incarnation {
            self.restarted();
        }
    }

    /// Another runner owns the job (the lock could not be re-taken).
    pub fn handle_stand_down(&mut self, msg: String) {
        self.set_end(End::StoodDown(msg));
    }

    /// The driver cannot go on (a worker crashed; whether a batch
    /// committed cannot be told within `max_outage`).
    pub fn handle_failure(&mut self, msg: String) {
        self.set_end(End::Failed(msg));
    }

    /// SIGINT/SIGTERM: no new batches; attempts in flight finish.
    pub fn handle_stop(&mut self) {
        self.set_end(End::Stopped);
    }

    /// Timers: `max_outage`, `max_pause`. Call at least once a tick.
    pub fn handle_tick(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if let Some(d) = &self.gate.down {
            let out = now.duration_since(d.since);
            if out > self.cfg.max_outage {
                let msg = format!(
                    "the database was unreachable for {} (limits.max_outage {}): {}",
                    fmt_dur(Duration::from_secs(out.as_secs())),
                    fmt_dur(self.cfg.max_outage),
                    d.cause
                );
                self.set_end(End::Failed(msg));
                return;
            }
        }
        if let (Some(max), Some(since), true) = (
            self.cfg.max_pause,
            self.gate.paused_since(),
            self.cfg.stop_after_max_pause,
        ) && now.duration_since(since) >= max
        {
            self.set_end(End::MaxPause);
        }
    }

    /// The answer to `Io::ReadChunk`.
    pub fn handle_chunk(&mut self, _now: Instant, chunk: Chunk) {
        if self.reading.take() != Some(self.generation) {
            return;
        }
        self.read_errors = 0;
        self.walk
            .chunk(chunk.last, chunk.read, self.cfg.read_chunk, chunk.pending);
    }

    /// `Io::ReadChunk` failed. A lost connection is an outage (bounded by
    /// `max_outage`); other errors count against `max_retries`. Returns
    /// the number of failures in a row.
    pub fn handle_read_error(&mut self, now: Instant, lost: bool, msg: &str) -> u32 {
        if self.reading.take() != Some(self.generation) {
            return 0;
        }
        self.read_errors += 1;
        let n = self.read_errors;
        if !lost && n > self.cfg.max_retries {
            self.set_end(End::Failed(format!("reading keys failed {n} times: {msg}")));
        }
        self.read_ready = Some(now + crate::store::backoff(n, READ_CAP));
        n
    }

    /// Just before attempt `batch_id` begins (after the driver's own waits,
    /// such as the rate cap): whether it may still start. A pause, an
    /// outage, a restart or the end that came meanwhile takes it back
    /// unstarted (no failure counted), so nothing begins once a pause is
    /// known, however long the driver held the attempt.
    pub fn confirm(&mut self, _now: Instant, batch_id: i64) -> bool {
        if self.end.is_none() && self.rebuild.is_none() && self.gate.held().is_none() {
            return true;
        }
        if let Some(run) = self.running.remove(&batch_id)
            && run.generation == self.generation
        {
            if self.end.is_some() || self.rebuild.is_some() {
                // Dropped unapplied: the stored cursor is below it.
                self.batches.remove(&run.batch);
            } else if let Some(b) = self.batches.get_mut(&run.batch) {
                b.again_now();
            }
        }
        false
    }

    /// The answer to `Io::Apply` number `batch_id`.
    pub fn handle_outcome(&mut self, now: Instant, batch_id: i64, outcome: Outcome) {
        let Some(run) = self.running.remove(&batch_id) else {
            return;
        };
        if run.generation != self.generation {
            // Handed out before a restart: the stored position decides.
            return;
        }
        match outcome {
            Outcome::NewIncarnation => {
                self.restarted();
                return;
            }
            Outcome::Fenced if run.epoch < self.epoch || self.gate.down.is_some() => {
                // Fenced by our own later acquisition of the runner lock
                // (after an outage; while the link is down the new epoch
                // may be being taken right now, and if another runner took
                // the lock instead, re-taking it fails and the job stands
                // down then): not applied, try again as ourselves.
                if let Some(b) = self.batches.get_mut(&run.batch) {
                    b.again_now();
                }
                return;
            }
            Outcome::Fenced => {
                self.set_end(End::StoodDown(format!(
                    "another pacer took over the job (its epoch moved past {}, the one this runner took); \
                     standing down: one runner per job",
                    run.epoch
                )));
                self.batches.clear();
                return;
            }
            _ => {}
        }
        if run.lock_free && matches!(outcome, Outcome::AmbiguousCommitted { .. }) {
            self.walk.unsure();
        }
        let Some(b) = self.batches.get_mut(&run.batch) else {
            return;
        };
        let before = b.rows;
        let verdict = b.outcome(now, outcome, &self.cfg);
        let gained = b.rows - before;
        self.rows += gained;
        self.walk.rows_changed(gained);
        match verdict {
            Verdict::Again => {
                if self.end.is_some() {
                    // Stopping: dropped unapplied; the stored cursor is
                    // below it, so the next run reads it again.
                    self.batches.remove(&run.batch);
                }
            }
            Verdict::Finished => {
                let b = self.batches.remove(&run.batch).expect("present above");
                self.batch_finished(now, b);
            }
            Verdict::Fail(msg) => {
                self.batches.remove(&run.batch);
                self.set_end(End::Failed(msg));
            }
        }
    }

    /// The answer to `StoreIo::LoadPosition`: start again from what the
    /// (new) server has, as after a crash.
    pub fn handle_position(&mut self, _now: Instant, stored: Stored) {
        if !matches!(self.rebuild, Some(Rebuild::Loading)) {
            return;
        }
        let empty = self.cfg.key_type.empty();
        self.walk = Walk::new(empty.clone(), stored.pass, stored.cursor.clone());
        self.aside = Aside::new(empty);
        self.batches.clear();
        self.running.clear();
        self.next_batch_id = stored.next_batch_id;
        self.incarnation = stored.incarnation;
        self.generation += 1;
        self.reading = None;
        self.read_ready = None;
        self.read_errors = 0;
        self.rows = 0;
        self.rebuild = None;
        self.events.push_back(Event::Reloaded {
            pass: stored.pass,
            cursor: stored.cursor,
        });
    }

    // ---- outputs ----

    /// The next read or attempt to run, if any may start now.
    pub fn poll_io(&mut self, now: Instant) -> Option<Io> {
        loop {
            if self.end.is_some() || self.rebuild.is_some() || self.gate.held().is_some() {
                return None;
            }
            // Retries first: a batch already started is finished first.
            if let Some((&no, _)) = self.batches.iter().find(|(_, b)| b.ready(now)) {
                return Some(self.start(no));
            }
            let bs = self.batch_size as usize;
            let may_read = self.reading.is_none() && self.read_ready.is_none_or(|t| t <= now);
            if may_read && self.walk.read_ahead(bs, self.cfg.read_chunk) {
                self.reading = Some(self.generation);
                return Some(Io::ReadChunk {
                    after: self.walk.read_cursor(),
                    limit: self.cfg.read_chunk,
                    // Keys set aside are pending rows too, so the check
                    // would find them; asked only when none are.
                    whole_table_first: self.walk.sweep_start() && self.aside.is_empty(),
                });
            }
            if self.walk.wants_read(bs) {
                return None;
            }
            if let Some((seq, keys)) = self.walk.take(bs) {
                let no = self.add_batch(Batch::new(Some(seq), keys, false));
                return Some(self.start(no));
            }
            if let Some(keys) = self.aside.take(now, bs) {
                let no = self.add_batch(Batch::new(None, keys, true));
                return Some(self.start(no));
            }
            if !self.batches.is_empty() || !self.aside.is_empty() || !self.walk.drained() {
                return None;
            }
            match self.walk.end_pass() {
                PassEnd::Finished(f) => {
                    self.set_end(End::Finished(f));
                    return None;
                }
                PassEnd::Sweep {
                    pass,
                    found,
                    changed,
                } => self.events.push_back(Event::Sweep {
                    pass,
                    found,
                    changed,
                }),
            }
        }
    }

    /// Work on pacer's own tables, for the coordinator.
    pub fn poll_store(&mut self) -> Option<StoreIo> {
        if matches!(self.rebuild, Some(Rebuild::Waiting))
            && self.running.is_empty()
            && self.gate.down.is_none()
            && self.end.is_none()
        {
            self.rebuild = Some(Rebuild::Loading);
            return Some(StoreIo::LoadPosition);
        }
        None
    }

    /// When `poll_io` may have something new without any input (a backoff
    /// ends).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.batches
            .values()
            .filter_map(Batch::ready_at)
            .chain(self.aside.ready_at())
            .chain(self.read_ready.filter(|_| self.reading.is_none()))
            .min()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- state ----

    /// (pass, cursor) to save, unless nothing may be saved right now (the
    /// server restarted and the state is not rebuilt yet, or another
    /// runner owns the job).
    pub fn position(&self) -> Option<(i32, Option<String>)> {
        if self.rebuild.is_some() || matches!(self.end, Some(End::StoodDown(_))) {
            return None;
        }
        Some(self.walk.position())
    }

    /// Why no new batch may start now (outage, pause, restart), if so.
    pub fn held(&self) -> Option<String> {
        if self.rebuild.is_some() {
            return Some(
                "the database server restarted; waiting for in-flight batches before resuming from the stored progress"
                    .into(),
            );
        }
        self.gate.held()
    }

    /// The outage in progress: since when, and its cause in plain words.
    pub fn outage(&self) -> Option<(Instant, &str)> {
        self.gate.down.as_ref().map(|d| (d.since, d.cause.as_str()))
    }

    pub fn restarting(&self) -> bool {
        self.rebuild.is_some()
    }

    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Ended, and no attempt is in flight any more.
    pub fn is_finished(&self) -> bool {
        self.end.is_some() && self.running.is_empty()
    }

    /// Rows committed since the start or since the state was rebuilt.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    pub fn set_aside(&self) -> usize {
        self.aside.len()
    }

    pub fn incarnation(&self) -> i64 {
        self.incarnation
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    // ---- internals ----

    fn add_batch(&mut self, b: Batch) -> u64 {
        let no = self.next_batch_no;
        self.next_batch_no += 1;
        self.batches.insert(no, b);
        no
    }

    fn start(&mut self, no: u64) -> Io {
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let b = self.batches.get_mut(&no).expect("a known batch");
        let (keys, lock_free, retries) = b.start(id);
        self.running.insert(
            id,
            Running {
                batch: no,
                lock_free,
                generation: self.generation,
                epoch: self.epoch,
            },
        );
        Io::Apply(Apply {
            batch_id: id,
            keys,
            pass: self.walk.pass,
            lock_free,
            epoch: self.epoch,
            retries,
        })
    }

    fn batch_finished(&mut self, now: Instant, b: Batch) {
        let clean = b.deferred.is_empty();
        match b.seq {
            Some(seq) => self.walk.complete(seq),
            None => self.aside.finished(clean),
        }
        if !clean {
            let keys = b.deferred.len();
            let first = b.deferred.first_text().unwrap_or_default();
            let retry_in = self.aside.add(now, b.deferred);
            self.events.push_back(Event::SetAside {
                keys,
                first,
                retry_in,
            });
        }
    }

    fn restarted(&mut self) {
        if self.rebuild.is_some() {
            return;
        }
        self.rebuild = Some(Rebuild::Waiting);
        // Batches not in flight are simply forgotten: the stored position
        // is below them.
        let running: std::collections::HashSet<u64> =
            self.running.values().map(|r| r.batch).collect();
        self.batches.retain(|no, _| running.contains(no));
        self.events.push_back(Event::Restarted);
    }

    /// The first end wins, except that a failure or a stand-down overrides
    /// a stop in progress.
    fn set_end(&mut self, e: End) {
        let replace = match (&self.end, &e) {
            (None, _) => true,
            (Some(End::Failed(_) | End::StoodDown(_)), _) => false,
            (Some(_), End::Failed(_) | End::StoodDown(_)) => true,
            _ => false,
        };
        if replace {
            self.end = Some(e);
        }
    }
}
