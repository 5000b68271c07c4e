//! A worker: asks the `Job` what to do, does it on its own connection, and
//! tells the `Job` how it went. Every decision (which keys, retry or not,
//! split, lock-free, set aside, pause, the end) is the Job's; the worker
//! only waits (rate cap, knob sleep, backoffs the Job names), runs the
//! transaction, resolves ambiguous commits, and reports every attempt to
//! the controller. Only workers whose index is below the `workers` knob
//! take batches.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Mutex, watch};
use tracing::Instrument;

use super::batch::{Attempt, Resolved, Writer, resolve_ambiguous};
use super::engine::Engine;
use super::job::{Apply, Io, Outcome};
use super::{Command, Shared};
use crate::controller::{BatchError, BatchOutcome};

pub async fn run(
    idx: u32,
    sh: Arc<Shared>,
    engine: Arc<Mutex<Engine>>,
    mut cmd: watch::Receiver<Command>,
) {
    let mut writer = Writer::new();
    loop {
        let c = *cmd.borrow_and_update();
        if idx >= c.knobs.workers || c.paused {
            if engine.lock().await.job.end().is_some() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), cmd.changed()).await;
            continue;
        }
        let asked = Instant::now();
        let apply = {
            let mut e = engine.lock().await;
            if asked.elapsed() > Duration::from_millis(10) {
                sh.app_limited.store(true, Ordering::Relaxed);
            }
            e.job.handle_local_pause(sh.local_pause.get().is_some());
            match e.job.poll_io(Instant::now()) {
                Some(Io::Apply(a)) => Some(a),
                Some(Io::ReadChunk {
                    after,
                    limit,
                    whole_table_first,
                }) => {
                    // The read runs beside the batches (the Job asks for
                    // it ahead of need): this worker goes on applying the
                    // keys still queued meanwhile.
                    let reader = e.reader.take();
                    drop(e);
                    let (sh, engine) = (sh.clone(), engine.clone());
                    tokio::spawn(
                        async move {
                            let (reader, r) =
                                super::engine::read(&sh, reader, after, limit, whole_table_first)
                                    .await;
                            engine.lock().await.read_done(reader, r);
                            sh.wake.notify_waiters();
                        }
                        .instrument(tracing::Span::current()),
                    );
                    continue;
                }
                None if e.job.end().is_some() => break,
                None => {
                    let now = Instant::now();
                    let wait = e
                        .job
                        .poll_timeout()
                        .map_or(Duration::from_millis(20), |t| {
                            t.saturating_duration_since(now)
                        })
                        .clamp(Duration::from_millis(5), Duration::from_millis(200));
                    // Woken early when a read lands (registered before the
                    // lock is let go, so that wake-up cannot be missed).
                    let woken = sh.wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    drop(e);
                    sh.app_limited.store(true, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = woken => {}
                    }
                    None
                }
            }
        };
        let Some(apply) = apply else { continue };
        // A stop during a long wait for quota drops the attempt unapplied:
        // the stored cursor is still below it, so the next run reads it
        // again.
        let mut stop = sh.stop_rx();
        let stopped = tokio::select! {
            _ = wait_for_quota(&sh, apply.keys.len()) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        // The last word before BEGIN is the Job's: a pause, an outage or a
        // stop that came during the wait takes the attempt back unstarted.
        if !engine
            .lock()
            .await
            .job
            .confirm(Instant::now(), apply.batch_id)
        {
            continue;
        }
        let outcome = if stopped {
            Ok(Outcome::Lost("stopping before the batch started".into()))
        } else {
            attempt(idx, &sh, &mut writer, &apply).await
        };
        let committed = matches!(outcome, Ok(Outcome::Committed { .. }));
        {
            let mut e = engine.lock().await;
            let o = outcome.unwrap_or_else(|msg| {
                e.job.handle_failure(msg);
                Outcome::Lost("cannot tell whether it committed".into())
            });
            e.job.handle_outcome(Instant::now(), apply.batch_id, o);
            e.log_events();
            if e.ended() {
                sh.request_stop();
            }
        }
        let sleep = cmd.borrow().knobs.sleep;
        if committed && !sleep.is_zero() {
            let mut stop = sh.stop_rx();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }
    writer.close().await;
}

/// The hard `max_rows_per_second` cap. A batch larger than one second of
/// quota takes its permits in one-second slices, so it still passes.
async fn wait_for_quota(sh: &Shared, rows: usize) {
    if let Some(b) = &sh.budget {
        loop {
            let (wait, granted) = b.acquire(rows as u64);
            if wait > Duration::from_millis(5) {
                sh.app_limited.store(true, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            if granted {
                break;
            }
        }
    }
    let Some(lim) = &sh.governor else { return };
    let cap = sh.limits.max_rows_per_second.unwrap_or(u32::MAX).max(1);
    let t0 = Instant::now();
    let mut left = rows as u32;
    while left > 0 {
        let n = left.min(cap);
        if let Some(nz) = NonZeroU32::new(n) {
            let _ = lim.until_n_ready(nz).await;
        }
        left -= n;
    }
    if t0.elapsed() > Duration::from_millis(5) {
        sh.app_limited.store(true, Ordering::Relaxed);
    }
}

/// Run one attempt and say how it went, in the Job's terms (`Err`: the job
/// must stop with this message); report it to
/// the controller and the batch log. An ambiguous COMMIT is resolved here
/// (the old backend's PID is this connection's business), for as long as
/// `limits.max_outage`.
async fn attempt(worker: u32, sh: &Shared, w: &mut Writer, a: &Apply) -> Result<Outcome, String> {
    let started = Utc::now();
    let t0 = Instant::now();
    let part = &a.keys;
    let report = |rows: u64, error: Option<BatchError>| {
        let duration = t0.elapsed();
        let (first, last) = (
            part.first_text().unwrap_or_default(),
            part.last_text().unwrap_or_default(),
        );
        crate::telemetry::log_batch(
            &crate::telemetry::BatchLine {
                worker,
                first_key: &first,
                last_key: &last,
                batch_size: part.len() as u32,
                rows,
                duration,
                retries: a.retries,
                error: error.as_ref().map(BatchError::as_str),
            },
            sh.log_batches,
        );
        let _ = sh.outcomes.send(BatchOutcome {
            started,
            duration,
            rows,
            error,
        });
    };
    let id = a.batch_id;
    Ok(
        match w.attempt(sh, part, id, a.pass, a.lock_free, a.epoch).await {
            Attempt::Committed { rows, deferred } => {
                report(rows, None);
                Outcome::Committed { rows, deferred }
            }
            Attempt::Ambiguous { pid, msg } => {
                tracing::warn!(batch_id = id, error = %msg, "connection lost during COMMIT; checking whether the batch committed");
                let since = Instant::now();
                let resolved = loop {
                    match resolve_ambiguous(sh, pid, id).await {
                        Ok(r) => break r,
                        Err(e) => {
                            if sh.stopping() {
                                return Ok(Outcome::Lost(format!("{e:#}")));
                            }
                            if since.elapsed() > sh.max_outage() {
                                return Err(format!(
                                    "cannot tell whether batch {id} committed: {e:#}"
                                ));
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                match resolved {
                    Resolved::Committed(rows) => {
                        tracing::info!(
                            batch_id = id,
                            rows,
                            "the batch had committed; not applying it again"
                        );
                        report(rows, None);
                        Outcome::AmbiguousCommitted { rows }
                    }
                    Resolved::NotCommitted => {
                        tracing::info!(batch_id = id, "the batch had not committed; retrying it");
                        report(0, Some(BatchError::ConnectionLost));
                        Outcome::AmbiguousNotCommitted
                    }
                    Resolved::NewIncarnation => Outcome::NewIncarnation,
                }
            }
            Attempt::NewIncarnation => Outcome::NewIncarnation,
            // Rolled back, nothing applied: whose epoch moved is the Job's call.
            Attempt::Fenced { .. } => {
                report(0, None);
                Outcome::Fenced
            }
            Attempt::Lost(msg) => {
                report(0, Some(BatchError::ConnectionLost));
                if a.retries == 0 {
                    tracing::warn!(error = %msg, "connection lost; retrying the batch once the database is back");
                }
                Outcome::Lost(msg)
            }
            Attempt::Retry(kind, msg) => {
                report(0, Some(kind));
                if kind != BatchError::LockTimeout {
                    tracing::warn!(error = %msg, attempt = a.retries + 1, "batch failed; retrying");
                }
                Outcome::Failed(kind, msg)
            }
            Attempt::Fatal(msg) => Outcome::Fatal(msg),
        },
    )
}
