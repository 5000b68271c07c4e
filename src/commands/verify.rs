use std::time::Duration;

use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::cli::{VerifyArgs, exit};
use crate::executor::target::Target;
use crate::policy::Policy;
use crate::store::{Fail, Store, database_url};

/// Pause between two counting chunks, so verifying a huge table is a
/// trickle of small index walks rather than one big scan.
const CHUNK_PAUSE: Duration = Duration::from_millis(5);

pub fn run(args: &VerifyArgs) -> u8 {
    let policy = match super::load_policy(&args.policy.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
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
    let chunk = policy.limits.read_chunk.max(1000) as i64;
    let (k, t, p) = (&target.key_q, &target.table_q, &target.pending);
    let coll = target
        .collation
        .as_ref()
        .map(|c| format!(" COLLATE {c}"))
        .unwrap_or_default();
    // Built per condition, not by replacing text: job.pending may contain
    // the very text a replacement would look for.
    let chunk_sql = |cond: &str| {
        format!(
            "SELECT count(*) FILTER (WHERE pend), count(*), (array_agg(k::text ORDER BY k))[count(*)::int] FROM
               (SELECT {k} AS k, coalesce(({p}), false) AS pend FROM {t} WHERE {cond} ORDER BY {k} LIMIT $1) s"
        )
    };
    let first = chunk_sql(&format!("{k} IS NOT NULL"));
    let next = chunk_sql(&format!("{k} > ($2::{}{coll})", target.key_type.sql()));
    let mut cursor: Option<String> = None;
    let mut pending = 0i64;
    let mut total = 0i64;
    let mut boundaries = Vec::new();
    loop {
        let q = if cursor.is_some() { &next } else { &first };
        let mut query =
            sqlx::query_as::<_, (i64, i64, Option<String>)>(AssertSqlSafe(q.clone())).bind(chunk);
        if let Some(c) = &cursor {
            query = query.bind(c.clone());
        }
        let (p_n, n, last) = query.fetch_one(&mut conn).await?;
        pending += p_n;
        total += n;
        if n < chunk || last.is_none() {
            break;
        }
        boundaries.push(last.clone().unwrap_or_default());
        cursor = last;
        tokio::time::sleep(CHUNK_PAUSE).await;
    }
    if target.nullable {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} WHERE {k} IS NULL AND coalesce(({p}), false)"
        )))
        .fetch_one(&mut conn)
        .await?;
        pending += n;
    }
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
