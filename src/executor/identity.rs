//! Job identity at start: a new job is created (baselines captured, rows
//! pending counted); a known one resumes only with the same `pending` and
//! `update` (or `--accept-policy-change`), and a finished one is not run
//! again.

use sqlx::postgres::PgConnection;

use super::tally::{self, COUNT_LIMIT};
use super::target::Target;
use crate::policy::Policy;
use crate::store::jobs::{JobRow, NewJob};
use crate::store::{Fail, Store};

pub(super) enum Opened {
    /// Run it: the job's row as stored.
    Job(Box<JobRow>),
    /// Already complete; nothing to run (what to tell the user).
    Done(String),
}

pub(super) async fn open(
    ctl: &mut PgConnection,
    store: &Store,
    policy: &Policy,
    target: &Target,
    accept_policy_change: bool,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Opened> {
    let job = &policy.job.name;
    let settings = policy.settings_hash();
    let fingerprint = policy.fingerprint();
    let row = match store.job(ctl, job).await? {
        Some(mut row) => {
            if row.fingerprint != fingerprint {
                if !accept_policy_change {
                    return Err(Fail::invalid(format!(
                        "job {job:?}: job.pending or job.update (or table/key) changed since the job started \
                         (fingerprint {} → {fingerprint}); rows already done were done with the old SQL. \
                         Re-run with --accept-policy-change if that is intended, or use a new job.name",
                        row.fingerprint
                    )));
                }
                tracing::warn!(job = %job, old = %row.fingerprint, new = %fingerprint, "accepting changed pending/update (--accept-policy-change)");
                store
                    .accept_change(
                        ctl,
                        job,
                        &fingerprint,
                        &policy.job.pending,
                        &policy.job.update,
                    )
                    .await?;
            }
            if row.state == "done" {
                let (rows, _) = store.progress_totals(ctl, job).await?;
                // Claimed above: nothing runs, so a standby need not wait.
                let e = row_epoch(store, ctl, job).await;
                let _ = store.release_lease(ctl, job, e).await;
                let when = row.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                return Ok(Opened::Done(format!(
                    "job {job} is already complete ({rows} rows, finished {when}); nothing to do. \
                         `pacer verify` checks for rows still pending; a new backfill needs a new job.name"
                )));
            }
            if row.settings_hash != settings {
                tracing::info!(job = %job, "limits/controller/signals/windows changed since the last run; using the new ones");
            }
            add_missing_baselines(ctl, store, policy, pool, &mut row).await?;
            tracing::info!(job = %job, pass = row.pass, cursor = ?row.cursor_key, state = %row.state, "resuming");
            row
        }
        None => {
            let ctx = crate::signals::Context {
                pool: Some(pool.clone()),
            };
            let baselines = crate::signals::capture_baselines(policy, &ctx)
                .await
                .map_err(|e| Fail::invalid(format!("{e:#}")))?;
            // Counted as `pacer verify` counts, a trickle of small index
            // reads (`tally`), not one `count(*)`: a full scan at full
            // speed, in parallel workers, just before the first batch is
            // the very load pacer exists to avoid. Past the limit, the
            // planner's estimate.
            let chunk = tally::chunk(&policy.limits);
            let t = target.tally_pending(ctl, chunk, Some(COUNT_LIMIT)).await?;
            let (count, exact) = if t.complete {
                (t.pending, true)
            } else {
                (target.estimate_pending(ctl).await?, false)
            };
            tracing::info!(job = %job, pending = count, exact, "new job");
            store
                .create_job(
                    ctl,
                    &NewJob {
                        name: job,
                        fingerprint: &fingerprint,
                        settings_hash: &settings,
                        table_name: &policy.job.table,
                        key_column: &policy.job.key,
                        pending_sql: &policy.job.pending,
                        update_sql: &policy.job.update,
                        baselines: &baselines,
                        rows_at_start: Some(count),
                    },
                )
                .await?;
            store
                .job(ctl, job)
                .await?
                .ok_or_else(|| Fail::failed("job row vanished after insert"))?
        }
    };
    Ok(Opened::Job(Box::new(row)))
}

/// A signal with a relative level added to the policy after the job
/// started has no stored baseline: measure it now, before any batch of this
/// run (we hold the runner lock, so no pacer is writing), and store it with
/// the others. The ones the job started with are kept: a resumed run
/// compares against the same normal as before.
async fn add_missing_baselines(
    ctl: &mut PgConnection,
    store: &Store,
    policy: &Policy,
    pool: &sqlx::PgPool,
    row: &mut JobRow,
) -> anyhow::Result<()> {
    let mut missing = policy.clone();
    missing
        .signals
        .retain(|s| s.needs_baseline() && !row.baselines.contains_key(&s.name));
    if missing.signals.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.signals.iter().map(|s| s.name.as_str()).collect();
    tracing::warn!(
        job = %row.name,
        signals = %names.join(", "),
        "measuring the baseline of signal(s) added since the job started; if a run stopped \
         less than baseline.window ago, its load is part of this baseline"
    );
    let ctx = crate::signals::Context {
        pool: Some(pool.clone()),
    };
    let measured = crate::signals::capture_baselines(&missing, &ctx)
        .await
        .map_err(|e| Fail::invalid(format!("{e:#}")))?;
    row.baselines.extend(measured);
    store.set_baselines(ctl, &row.name, &row.baselines).await?;
    Ok(())
}

/// The job's current epoch (for releasing a lease claimed before any was
/// taken); 0 when it cannot be read, which releases nothing.
async fn row_epoch(store: &Store, ctl: &mut PgConnection, job: &str) -> i64 {
    store
        .lease(ctl, job)
        .await
        .ok()
        .flatten()
        .map_or(0, |l| l.epoch)
}
