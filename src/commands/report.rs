use crate::cli::{ReportArgs, exit};
use crate::policy::Policy;
use crate::report::{ReportInfo, Verification};
use crate::store::{Fail, Store, database_url};
use crate::telemetry::redact;

/// `pacer report`: the stored history of the policy's job, rendered like a
/// simulation's (`report::render`), with the verification result.
pub fn run(args: &ReportArgs) -> u8 {
    let policy = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = if policy.is_fleet() {
        super::block_on(fleet_report(&policy, args))
    } else {
        super::block_on(report(&policy, args))
    };
    match result {
        Ok(()) if policy.is_fleet() => {
            println!(
                "wrote {} and a directory per started target",
                args.out.join("report.md").display()
            );
            exit::OK
        }
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

/// `pacer report` on a fleet: DIR/report.md, the fleet at a glance (what
/// `pacer status` shows, as a table), and DIR/<target>/ with the report of
/// every target that started, each as `--target` would write it.
async fn fleet_report(policy: &Policy, args: &ReportArgs) -> anyhow::Result<()> {
    let fleet = &policy.job.name;
    let v = crate::fleet::status::status(policy, &args.policy.policy)
        .await?
        .ok_or_else(|| {
            Fail::invalid(format!("fleet {fleet} has not started: nothing to report"))
        })?;
    let targets = crate::fleet::resolve_targets(policy, &args.policy.policy).await?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Fail::failed(format!("cannot create {}: {e}", args.out.display())))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut md = format!(
        "# Fleet {fleet}\n\n{} targets: {} done, {} running ({} of them paused), {} waiting, {} failed, {} stopped.\n\n",
        n("targets_total"),
        n("done"),
        n("running"),
        n("paused"),
        n("waiting"),
        n("failed"),
        n("stopped")
    );
    if let Some(p) = v["paused_by"].as_object() {
        md.push_str(&format!(
            "The fleet is paused by {}: {}.\n\n",
            p.get("by").and_then(|x| x.as_str()).unwrap_or(""),
            p.get("reason").and_then(|x| x.as_str()).unwrap_or("")
        ));
    }
    md.push_str("| target | cluster | state | started | finished | last word | report |\n|---|---|---|---|---|---|---|\n");
    for t in v["targets"].as_array().into_iter().flatten() {
        let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
        let name = s("target");
        let link = match targets.iter().find(|x| x.name == name) {
            Some(ft) if s("state") != "waiting" => {
                let sub = ReportArgs {
                    policy: args.policy.clone(),
                    out: args.out.join(&name),
                };
                match report(&policy.for_target(ft), &sub).await {
                    Ok(()) => format!("[{name}/report.md]({name}/report.md)"),
                    Err(e) => format!("none: {}", crate::text::message_line(&redact::error(&e))),
                }
            }
            Some(_) => "-".to_string(),
            None => "no longer in the policy".to_string(),
        };
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {link} |\n",
            s("cluster"),
            s("state"),
            s("started_at"),
            s("finished_at"),
            s("message").replace('|', "\\|")
        ));
    }
    let path = args.out.join("report.md");
    std::fs::write(&path, md)
        .map_err(|e| Fail::failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}
