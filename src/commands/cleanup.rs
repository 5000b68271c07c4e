use sqlx::{AssertSqlSafe, Connection};

use crate::cli::{CleanupArgs, exit};
use crate::policy::Policy;
use crate::store::{Fail, Store, database_url, runner_app_name};

/// `pacer cleanup`: remove the job's control row and progress rows (and,
/// with `--history`, its job row, decisions and samples) in one
/// transaction, after saying what goes. Refuses while a runner is alive,
/// and, without `--force`, for a job that is not done or still has rows
/// pending by the same count `pacer verify` makes.
pub fn run(args: &CleanupArgs) -> u8 {
    let policy = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(code) = super::one_database(&policy, &args.policy, "cleanup") {
        return code;
    }
    let result = super::block_on(cleanup(&policy, args));
    match result {
        Ok(code) => code,
        Err(e) => super::print_error("error: ", &e),
    }
}

/// Tables cleaned, with whether they go only with `--history`. `jobs` is
/// last: `progress` references it.
const TABLES: [(&str, &str, bool); 6] = [
    ("control", "job", false),
    ("heartbeat", "job", false),
    ("progress", "job", false),
    ("decisions", "job", true),
    ("samples", "job", true),
    ("jobs", "name", true),
];

async fn cleanup(policy: &Policy, args: &CleanupArgs) -> anyhow::Result<u8> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    let job = &policy.job.name;
    let mut conn = crate::store::connect(&url, "pacer-cli").await?;
    let store = Store::for_policy(policy);
    if !store.exists(&mut conn).await? {
        println!(
            "nothing to clean up: pacer has no tables in schema {:?}",
            store.schema()
        );
        return Ok(exit::OK);
    }
    let alive: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database())",
    )
    .bind(runner_app_name(job))
    .fetch_one(&mut conn)
    .await?;
    if alive {
        return Err(Fail::failed(format!(
            "job {job:?} is running (a runner is connected); stop it first, even with --force"
        )));
    }
    let state = store.job(&mut conn, job).await?.map(|r| r.state);
    if !args.force {
        if state.as_deref() != Some("done") {
            eprintln!(
                "refusing: job {job:?} is {}, not done; its progress rows are how a resumed run knows what is done. \
                 Finish it with `pacer run`, or pass --force",
                state.as_deref().unwrap_or("not started")
            );
            return Ok(exit::PENDING);
        }
        let v = super::verify::verify(policy).await?;
        let pending = v["rows_pending"].as_i64().unwrap_or(-1);
        if pending != 0 {
            eprintln!(
                "refusing: job {job:?} is done but {pending} rows still match job.pending (`pacer verify` shows them); \
                 run it again or pass --force"
            );
            return Ok(exit::PENDING);
        }
    }

    let mut plan = Vec::new();
    for (table, col, history_only) in TABLES {
        if history_only && !args.history {
            continue;
        }
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(store.t(table))
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            continue;
        }
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE {col} = $1",
            store.t(table)
        )))
        .bind(job)
        .fetch_one(&mut conn)
        .await?;
        plan.push((table, col, n));
    }
    println!(
        "pacer cleanup of job {job:?} in schema {:?} will remove:",
        store.schema()
    );
    for (table, _, n) in &plan {
        println!("  {n} row(s) from {table}");
    }
    if !args.history {
        println!(
            "  (keeping the job row, decision history and samples: `--history` removes them too)"
        );
    }
    let mut tx = conn.begin().await?;
    for (table, col, _) in &plan {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE {col} = $1",
            store.t(table)
        )))
        .bind(job)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    println!("removed.");
    Ok(exit::OK)
}
