//! Looks at the target before anything is written: the double-apply
//! probe of `job.update` and `--dry-run`.

use sqlx::postgres::PgConnection;

use super::target::Target;
use crate::policy::Policy;
use crate::store::Fail;

/// Before the first write: apply one batch twice in a rolled-back
/// transaction. An update that leaves its rows pending is refused (the job
/// would never end); so is a non-idempotent one, unless the policy says
/// `[job] idempotent = false` (exactly-once batches keep it safe, but the
/// user must know they rely on them). Rows that are locked right now, or a
/// probe that hits a transient error, are no reason to refuse a job: the
/// batches themselves cope with both.
pub(super) async fn probe_update(
    ctl: &mut PgConnection,
    policy: &Policy,
    target: &Target,
) -> anyhow::Result<()> {
    use crate::preflight::Probed;
    match crate::preflight::apply_twice(ctl, policy, target).await {
        Ok(Probed::Applied(p)) => {
            if let Some(msg) = crate::preflight::still_pending_problem(&p) {
                return Err(Fail::invalid(msg));
            }
            if let Some(msg) = crate::preflight::not_idempotent_problem(&p, policy) {
                return Err(Fail::invalid(msg));
            }
            if p.second > 0 {
                tracing::warn!(
                    rows = p.second,
                    "job.update is not idempotent (a second application changes rows); accepted ([job] idempotent = false): \
                     pacer applies each batch once, but anyone re-running it by hand would double-apply"
                );
            }
            Ok(())
        }
        Ok(Probed::NothingPending) => Ok(()),
        Ok(Probed::AllLocked { keys }) => {
            tracing::warn!(
                keys,
                "job.update not probed before the first write: every key of the first batch is locked by another session; continuing"
            );
            Ok(())
        }
        Err(e) if e.downcast_ref::<Fail>().is_some() => Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not probe job.update before the first write; continuing");
            Ok(())
        }
    }
}

/// `--dry-run`: reads, estimates and EXPLAINs; writes nothing.
pub(super) async fn dry_run(
    ctl: &mut PgConnection,
    policy: &Policy,
    target: &Target,
) -> anyhow::Result<()> {
    let est = target.estimate_pending(ctl).await?;
    let plan = target
        .explain(ctl, &target.first_read_literal(policy.limits.read_chunk))
        .await?;
    let (_, n, pending) = target
        .read_chunk(ctl, None, policy.limits.read_chunk)
        .await
        .map_err(|e| {
            Fail::invalid(format!(
                "job.pending: reading the first chunk failed: {}",
                super::target::db_message(&e)
            ))
        })?;
    let l = &policy.limits;
    println!(
        "dry run of job {} on {} (key {} {})",
        policy.job.name,
        target.table_q,
        target.key_name,
        target.key_type.sql()
    );
    println!("  pending rows (planner estimate): {est}");
    println!("  first chunk: {n} keys read, {} pending", pending.len());
    println!("  read plan: {}", crate::preflight::plan_summary(&plan));
    println!(
        "  batches: start {} rows, {} worker(s), sleep {}; lock_timeout {}, statement_timeout {}",
        l.batch_size.start,
        l.workers.start,
        humantime::format_duration(l.sleep.start),
        humantime::format_duration(l.lock_timeout),
        humantime::format_duration(l.statement_timeout)
    );
    if let Some(first) = pending.first_text() {
        println!("  first batch would start at key {first}");
    }
    Ok(())
}
