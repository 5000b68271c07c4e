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

use super::batch::{Attempt, Writer, resolve_ambiguous};
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
        if c.paused || idx >= c.knobs.workers {
            let _ = tokio::time::timeout(Duration::from_millis(200), cmd.changed()).await;
            continue;
        }
        let asked = Instant::now();
        let next = {
            let mut d = dispatch.lock().await;
            if asked.elapsed() > Duration::from_millis(10) {
                sh.app_limited.store(true, Ordering::Relaxed);
            }
            d.next(c.knobs.batch_size).await
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
                // The reader's connection: retry with backoff, a few times.
                let n = sh.read_errors.fetch_add(1, Ordering::SeqCst) + 1;
                if n > sh.limits.max_retries {
                    sh.fail(format!(
                        "reading keys failed {n} times: {}",
                        super::target::db_message(&e)
                    ));
                    break;
                }
                tracing::warn!(error = %super::target::db_message(&e), attempt = n, "reading keys failed; retrying");
                tokio::time::sleep(crate::store::backoff(n, Duration::from_secs(5))).await;
                if super::batch::classify(&e).is_lost() {
                    let mut d = dispatch.lock().await;
                    if let Err(e) = d.reconnect(&sh).await {
                        tracing::warn!(error = %e, "reconnecting the reader failed");
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
            _ = stop.wait_for(|s| *s) => break,
        }
        let (rows, deferred) = match apply(
            idx,
            &sh,
            &mut writer,
            &batch.keys,
            batch.pass,
            batch.seq.is_none(),
        )
        .await
        {
            Ok(r) => r,
            Err(msg) => {
                sh.fail(msg);
                break;
            }
        };
        dispatch.lock().await.complete(batch.seq, rows, deferred);
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
/// commits. Returns rows changed and keys set aside, or the message that
/// stops the job.
async fn apply(
    worker: u32,
    sh: &Shared,
    w: &mut Writer,
    keys: &Keys,
    pass: i32,
    was_deferred: bool,
) -> Result<(u64, Keys), String> {
    let mut work = VecDeque::from([keys.clone()]);
    let mut rows_total = 0u64;
    let mut deferred_total = sh.target.key_type.empty();
    let mut failures = 0u32;
    let mut last_err = String::new();
    while let Some(part) = work.pop_front() {
        let mut lock_free = was_deferred;
        loop {
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
                    match resolve_ambiguous(sh, pid, id).await {
                        Ok(Some(rows)) => {
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
                        Ok(None) => {
                            tracing::info!(
                                batch_id = id,
                                "the batch had not committed; retrying it"
                            );
                            report(0, Some(BatchError::ConnectionLost));
                            msg
                        }
                        Err(e) => {
                            return Err(format!("cannot tell whether batch {id} committed: {e}"));
                        }
                    }
                }
                Attempt::Lost(msg) => {
                    report(0, Some(BatchError::ConnectionLost));
                    msg
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
    Ok((rows_total, deferred_total))
}

fn give_up(part: &Keys, failures: u32, msg: &str) -> String {
    format!(
        "the batch of {} keys from {} to {} failed {failures} times (limits.max_retries); last error: {msg}",
        part.len(),
        part.first_text().unwrap_or_default(),
        part.last_text().unwrap_or_default()
    )
}
