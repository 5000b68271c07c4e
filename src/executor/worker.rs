//! A worker: takes the next batch, waits for the rate cap, applies it with
//! retries, reports every attempt to the controller, sleeps, repeats. Only
//! workers whose index is below the `workers` knob take batches.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Mutex, watch};

use super::batch::{Attempt, Resolved, Writer, resolve_ambiguous};
use super::dispatch::{Dispatch, Next};
use super::keys::Keys;
use super::{Command, Shared};
use crate::controller::{BatchError, BatchOutcome};

pub async fn run(
    idx: u32,
    sh: Arc<Shared>,
    dispatch: Arc<Mutex<Dispatch>>,
    mut cmd: watch::Receiver<Command>,
) {
    let mut writer = Writer::new();
    loop {
        if sh.stopping() {
            break;
        }
        let c = *cmd.borrow_and_update();
        if c.paused || sh.held() || idx >= c.knobs.workers {
            let _ = tokio::time::timeout(Duration::from_millis(200), cmd.changed()).await;
            continue;
        }
        let asked = Instant::now();
        let (next, generation) = {
            let mut d = dispatch.lock().await;
            if asked.elapsed() > Duration::from_millis(10) {
                sh.app_limited.store(true, Ordering::Relaxed);
            }
            // Held while waiting for the lock: the pause wins.
            if sh.held() {
                continue;
            }
            // A half-open reader connection must not hold the dispatch
            // (and so every worker) forever; the reader is reconnected.
            let next = super::batch::within(
                super::batch::client_deadline(&sh.limits),
                "reading keys",
                d.next(c.knobs.batch_size),
            )
            .await;
            if matches!(next, Ok(Next::Batch(_))) {
                sh.busy.fetch_add(1, Ordering::SeqCst);
            }
            (next, sh.generation.load(Ordering::SeqCst))
        };
        let batch = match next {
            Ok(Next::Batch(b)) => b,
            Ok(Next::Wait(d)) => {
                sh.app_limited.store(true, Ordering::Relaxed);
                tokio::time::sleep(d).await;
                continue;
            }
            Ok(Next::Finished(f)) => {
                sh.finish(f);
                break;
            }
            Err(e) => {
                // The reader's connection. A lost connection is an outage,
                // which the coordinator turns into a pause and bounds by
                // limits.max_outage; other errors get max_retries.
                let lost = super::batch::classify(&e).is_lost();
                let n = sh.read_errors.fetch_add(1, Ordering::SeqCst) + 1;
                if !lost && n > sh.limits.max_retries {
                    sh.fail(format!(
                        "reading keys failed {n} times: {}",
                        super::target::db_message(&e)
                    ));
                    break;
                }
                tracing::warn!(error = %super::batch::plain_error(&e), attempt = n, "reading keys failed; retrying");
                tokio::time::sleep(crate::store::backoff(n, Duration::from_secs(2))).await;
                if lost {
                    let mut d = dispatch.lock().await;
                    let deadline = super::batch::client_deadline(&sh.limits);
                    match tokio::time::timeout(deadline, d.reconnect(&sh)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %format!("{e:#}"), "reconnecting the reader failed")
                        }
                        Err(_) => tracing::debug!("reconnecting the reader timed out"),
                    }
                }
                continue;
            }
        };
        sh.read_errors.store(0, Ordering::SeqCst);
        // A stop during a long wait for quota drops the batch unapplied: the
        // saved cursor is still below it, so the next run reads it again.
        let mut stop = sh.stop_rx();
        tokio::select! {
            _ = wait_for_quota(&sh, batch.keys.len()) => {}
            _ = stop.wait_for(|s| *s) => {
                sh.busy.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
        let applied = apply(
            idx,
            &sh,
            &mut writer,
            &batch.keys,
            batch.pass,
            batch.seq.is_none(),
            generation,
        )
        .await;
        let (rows, deferred) = match applied {
            Ok(Some(r)) => r,
            Ok(None) => {
                // Dropped unapplied (a stop, or a rebuilt dispatch state):
                // the stored cursor is below it, so it is read again.
                sh.busy.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            Err(msg) => {
                sh.busy.fetch_sub(1, Ordering::SeqCst);
                sh.fail(msg);
                break;
            }
        };
        {
            let mut d = dispatch.lock().await;
            if sh.generation.load(Ordering::SeqCst) == generation {
                d.complete(batch.seq, rows, deferred);
            }
            sh.busy.fetch_sub(1, Ordering::SeqCst);
        }
        let sleep = cmd.borrow().knobs.sleep;
        if !sleep.is_zero() {
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

/// Apply one batch to the end: retries, lock-free splitting, ambiguous
/// commits. Returns rows changed and keys set aside; `None` when the batch
/// was dropped unapplied (stopping, or the server restarted and the
/// dispatch state is rebuilt); or the message that stops the job. A lost
/// connection is an outage, not a failure of the batch: it does not count
/// against `max_retries`, only against `max_outage`.
async fn apply(
    worker: u32,
    sh: &Shared,
    w: &mut Writer,
    keys: &Keys,
    pass: i32,
    was_deferred: bool,
    generation: u64,
) -> Result<Option<(u64, Keys)>, String> {
    let mut lost_since: Option<Instant> = None;
    let mut lost_tries = 0u32;
    let mut work = VecDeque::from([keys.clone()]);
    let mut rows_total = 0u64;
    let mut deferred_total = sh.target.key_type.empty();
    let mut failures = 0u32;
    let mut last_err = String::new();
    while let Some(part) = work.pop_front() {
        let mut lock_free = was_deferred;
        loop {
            if sh.stopping() || sh.generation.load(Ordering::SeqCst) != generation {
                return Ok(None);
            }
            let id = sh.next_batch_id.fetch_add(1, Ordering::SeqCst);
            let started = Utc::now();
            let t0 = Instant::now();
            let attempt = w.attempt(sh, &part, id, pass, lock_free).await;
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
                        retries: failures,
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
            let err = match attempt {
                Attempt::Committed { rows, deferred } => {
                    report(rows, None);
                    rows_total += rows;
                    sh.rows_done.fetch_add(rows, Ordering::Relaxed);
                    deferred_total.append(deferred);
                    break;
                }
                Attempt::Ambiguous { pid, msg } => {
                    tracing::warn!(batch_id = id, error = %msg, "connection lost during COMMIT; checking whether the batch committed");
                    let resolved = loop {
                        match resolve_ambiguous(sh, pid, id).await {
                            Ok(r) => break r,
                            Err(e) => {
                                let since = *lost_since.get_or_insert_with(Instant::now);
                                if sh.stopping() {
                                    return Ok(None);
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
                            rows_total += rows;
                            sh.rows_done.fetch_add(rows, Ordering::Relaxed);
                            // Keys it could not lock are unknown here; the sweep catches them.
                            break;
                        }
                        Resolved::NotCommitted => {
                            tracing::info!(
                                batch_id = id,
                                "the batch had not committed; retrying it"
                            );
                            report(0, Some(BatchError::ConnectionLost));
                            lost_tries += 1;
                            tokio::time::sleep(crate::store::backoff(
                                lost_tries,
                                Duration::from_secs(2),
                            ))
                            .await;
                            continue;
                        }
                        Resolved::NewIncarnation => return Ok(None),
                    }
                }
                Attempt::NewIncarnation => return Ok(None),
                Attempt::Fenced { epoch } => {
                    if epoch != 0 && sh.epoch.load(Ordering::SeqCst) == epoch {
                        // Nobody in this process moved the epoch: another
                        // runner took the job. The batch was rolled back.
                        sh.stand_down(
                            crate::store::jobs::Fenced {
                                job: sh.job.clone(),
                                epoch,
                            }
                            .to_string(),
                        );
                        return Ok(None);
                    }
                    // This runner re-took the runner lock after an outage
                    // (a new epoch, or one being taken): the batch is
                    // applied again under the new epoch, not counted.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Attempt::Lost(msg) => {
                    report(0, Some(BatchError::ConnectionLost));
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > sh.max_outage() {
                        return Err(format!(
                            "the database was unreachable for {} (limits.max_outage): {msg}",
                            humantime::format_duration(Duration::from_secs(
                                since.elapsed().as_secs()
                            ))
                        ));
                    }
                    lost_tries += 1;
                    if lost_tries == 1 {
                        tracing::warn!(error = %msg, "connection lost; retrying the batch once the database is back");
                    }
                    tokio::time::sleep(crate::store::backoff(lost_tries, Duration::from_secs(2)))
                        .await;
                    continue;
                }
                Attempt::Retry(BatchError::LockTimeout, msg) => {
                    report(0, Some(BatchError::LockTimeout));
                    if !lock_free {
                        // Apply what is free now; set the locked rows aside.
                        lock_free = true;
                        continue;
                    }
                    tracing::debug!(error = %msg, "lock timeout even on free rows; setting the batch aside");
                    deferred_total.append(part.clone());
                    break;
                }
                Attempt::Retry(BatchError::StatementTimeout, msg) => {
                    report(0, Some(BatchError::StatementTimeout));
                    failures += 1;
                    if failures > sh.limits.max_retries {
                        return Err(give_up(&part, failures, &msg));
                    }
                    if part.len() > 1 {
                        // Shorter transactions: retry as two halves.
                        let mut a = part.clone();
                        let first = a.take_front(part.len() / 2);
                        work.push_front(a);
                        work.push_front(first);
                        tokio::time::sleep(crate::store::backoff(
                            failures,
                            Duration::from_secs(10),
                        ))
                        .await;
                        break;
                    }
                    msg
                }
                Attempt::Retry(kind, msg) => {
                    report(0, Some(kind));
                    msg
                }
                Attempt::Fatal(msg) => {
                    return Err(format!(
                        "job.update failed on the batch of {} keys from {} to {}: {msg}; nothing of this batch was applied",
                        part.len(),
                        part.first_text().unwrap_or_default(),
                        part.last_text().unwrap_or_default()
                    ));
                }
            };
            failures += 1;
            last_err = err;
            if failures > sh.limits.max_retries {
                return Err(give_up(&part, failures, &last_err));
            }
            tracing::warn!(error = %last_err, attempt = failures, "batch failed; retrying");
            tokio::time::sleep(crate::store::backoff(failures, Duration::from_secs(10))).await;
        }
    }
    let _ = last_err;
    Ok(Some((rows_total, deferred_total)))
}

fn give_up(part: &Keys, failures: u32, msg: &str) -> String {
    format!(
        "the batch of {} keys from {} to {} failed {failures} times (limits.max_retries); last error: {msg}",
        part.len(),
        part.first_text().unwrap_or_default(),
        part.last_text().unwrap_or_default()
    )
}
