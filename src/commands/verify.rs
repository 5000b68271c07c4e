use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::cli::{VerifyArgs, exit};
use crate::executor::target::Target;
use crate::policy::Policy;
use crate::store::{Fail, Store, database_url};

pub fn run(args: &VerifyArgs) -> u8 {
    let policy = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(code) = super::one_database(&policy, &args.policy, "verify") {
        return code;
    }
    let result = super::block_on(verify(&policy));
    match result {
        Ok(v) => {
            if args.json {
                println!("{v}");
            } else {
                print_text(&v);
            }
            if v["rows_pending"].as_i64() == Some(0) {
                exit::OK
            } else {
                exit::PENDING
            }
        }
        Err(e) => super::print_error("error: ", &e),
    }
}

pub async fn verify(policy: &Policy) -> anyhow::Result<serde_json::Value> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    let mut conn = crate::store::connect(&url, "pacer-cli").await?;
    let target = Target::resolve(&mut conn, policy).await?;
    let chunk = crate::executor::tally::chunk(&policy.limits);
    let (k, t) = (&target.key_q, &target.table_q);
    let coll = target
        .collation
        .as_ref()
        .map(|c| format!(" COLLATE {c}"))
        .unwrap_or_default();
    let walked = target.tally_pending(&mut conn, chunk, None).await?;
    let (pending, total, boundaries) = (walked.pending, walked.rows, walked.boundaries);
    let store = Store::for_policy(policy);
    let rows_by_pacer = if store.exists(&mut conn).await? {
        store.progress_totals(&mut conn, &policy.job.name).await?.0
    } else {
        0
    };
    let sample = |order: &str, from: Option<&String>| {
        let cond = match from {
            Some(_) => format!("WHERE {k} >= ($1::{}{coll})", target.key_type.sql()),
            None => String::new(),
        };
        format!(
            "SELECT row_to_json(x)::text FROM (SELECT * FROM {t} {cond} ORDER BY {k} {order} LIMIT 3) x"
        )
    };
    let mut samples = serde_json::Map::new();
    for (name, order, from) in [
        ("oldest", "ASC", None),
        ("middle", "ASC", boundaries.get(boundaries.len() / 2)),
        ("newest", "DESC", None),
    ] {
        if name == "middle" && from.is_none() {
            continue;
        }
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sample(order, from)));
        if let Some(f) = from {
            q = q.bind(f.clone());
        }
        let rows: Vec<serde_json::Value> = q
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect();
        samples.insert(name.into(), rows.into());
    }
    Ok(json!({
        "job": policy.job.name,
        "table": target.table_q,
        "rows_checked": total,
        "rows_pending": pending,
        "rows_done_by_pacer": rows_by_pacer,
        "samples": samples,
    }))
}

fn print_text(v: &serde_json::Value) {
    println!(
        "job {} on {}: {} rows checked, {} still match pending, {} rows changed by pacer",
        v["job"].as_str().unwrap_or(""),
        v["table"].as_str().unwrap_or(""),
        v["rows_checked"],
        v["rows_pending"],
        v["rows_done_by_pacer"]
    );
    if let Some(s) = v["samples"].as_object() {
        for (name, rows) in s {
            println!("  {name} rows:");
            for r in rows.as_array().into_iter().flatten() {
                println!("    {r}");
            }
        }
    }
    if v["rows_pending"].as_i64() == Some(0) {
        println!("verify: ok, no rows pending");
    } else {
        println!("verify: rows still pending; `pacer run` continues the job");
    }
}
