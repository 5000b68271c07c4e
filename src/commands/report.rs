use crate::cli::{ReportArgs, exit};
use crate::policy::Policy;
use crate::report::{ReportInfo, Verification};
use crate::store::{Fail, Store, database_url};
use crate::telemetry::redact;

/// `pacer report`: the stored history of the policy's job, rendered like a
/// simulation's (`report::render`), with the verification result.
pub fn run(args: &ReportArgs) -> u8 {
    let policy = match super::load_policy(&args.policy.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = super::block_on(report(&policy, args));
    match result {
        Ok(()) => {
            println!(
                "wrote {} and {}",
                args.out.join("timeline.svg").display(),
                args.out.join("report.md").display()
            );
            exit::OK
        }
        Err(e) => super::print_error("error: ", &e),
    }
}

async fn report(policy: &Policy, args: &ReportArgs) -> anyhow::Result<()> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    let mut conn = crate::store::connect(&url, "pacer-cli").await?;
    let store = Store::for_policy(policy);
    let job = &policy.job.name;
    let row = if store.exists(&mut conn).await? {
        store.job(&mut conn, job).await?
    } else {
        None
    };
    let Some(row) = row else {
        return Err(Fail::invalid(format!(
            "job {job:?} has no history in schema {:?} of {} (not started, or removed by `pacer cleanup --history`)",
            store.schema(),
            redact::url(&url)
        )));
    };
    let history = store.history(&mut conn, policy, &row.baselines).await?;
    let _ = sqlx::Connection::close(conn).await;
    // The same count `pacer verify` makes; a report without it still helps.
    let verification = match super::verify::verify(policy).await {
        Ok(v) => {
            let pending = v["rows_pending"].as_i64().unwrap_or(-1);
            Some(Verification {
                passed: pending == 0,
                pending_rows: pending.max(0) as u64,
                detail: format!(
                    "{} rows checked on {}, {} changed by pacer",
                    v["rows_checked"],
                    v["table"].as_str().unwrap_or(""),
                    v["rows_done_by_pacer"]
                ),
            })
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "verification failed; the report says so");
            None
        }
    };
    let info = ReportInfo {
        policy: Some(policy.clone()),
        policy_path: Some(args.policy.policy.clone()),
        source: Some(format!(
            "pacer's tables (schema {}) of {}, job state {}",
            store.schema(),
            redact::url(&url),
            row.state
        )),
        database: Some(url.clone()),
        verification,
        rollback: None,
        ended: Some(crate::report::Ended {
            state: row.state.clone(),
            message: row.message.clone(),
        }),
    };
    crate::report::render(&history, &info, &args.out).map_err(|e| {
        Fail::failed(format!(
            "cannot write the report to {}: {e:#}",
            args.out.display()
        ))
    })
}
