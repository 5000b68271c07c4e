use serde_json::json;

use crate::cli::{StatusArgs, exit};
use crate::policy::Policy;
use crate::store::{Fail, Store, database_url, runner_app_name};

pub fn run(args: &StatusArgs) -> u8 {
    let policy = match super::load_policy(&args.policy.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = super::block_on(status(&policy));
    match result {
        Ok(None) => {
            if args.json {
                println!("{}", not_started(&policy));
            } else {
                println!("job {} has not started", policy.job.name);
            }
            exit::PENDING
        }
        Ok(Some(v)) => {
            if args.json {
                println!("{v}");
            } else {
                print_text(&v);
            }
            exit::OK
        }
        Err(e) => super::print_error("error: ", &e),
    }
}

/// The JSON `pacer status --json` prints for a job that never started.
pub fn not_started(policy: &Policy) -> serde_json::Value {
    json!({"job": policy.job.name, "state": null, "message": "job has not started"})
}

/// Exactly what `pacer status --json` prints, started or not: `GET /status`
/// serves this, so the API and the CLI cannot drift apart.
pub async fn status_json(policy: &Policy) -> anyhow::Result<serde_json::Value> {
    Ok(status(policy).await?.unwrap_or_else(|| not_started(policy)))
}

/// The job's status as JSON; `None` when the job never started. Reads only
/// pacer's tables: rows left is the count taken at start minus rows done.
pub async fn status(policy: &Policy) -> anyhow::Result<Option<serde_json::Value>> {
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid("no database: set database.url in the policy or DATABASE_URL")
    })?;
    let mut conn = crate::store::connect(&url, "pacer-cli").await?;
    let store = Store::for_policy(policy);
    if !store.exists(&mut conn).await? {
        return Ok(None);
    }
    let job = &policy.job.name;
    let Some(row) = store.job(&mut conn, job).await? else {
        return Ok(None);
    };
    let (rows_done, _) = store.progress_totals(&mut conn, job).await?;
    let recent = store.recent_rows(&mut conn, job, 60.0).await?;
    let alive: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database())",
    )
    .bind(runner_app_name(job))
    .fetch_one(&mut conn)
    .await?;
    let mut state = row.state.clone();
    let mut note = row.message.clone();
    if !alive && matches!(state.as_str(), "running" | "slowing" | "paused") {
        state = "stopped".into();
        note = Some(
            "no runner is alive (the last one died without recording a stop); `pacer run` resumes"
                .into(),
        );
    }
    let rows_pending = row.rows_at_start.map(|n| (n - rows_done).max(0));
    let rate = if alive { recent as f64 / 60.0 } else { 0.0 };
    let eta = match (rows_pending, rate > 0.0) {
        (Some(p), true) => Some((p as f64 / rate).round() as i64),
        _ => None,
    };
    let last = store.decisions(&mut conn, job, 1).await?.into_iter().next();
    let switch = store.switch(&mut conn, job).await?;
    // The estimates and target rate of the last tick, beside its raw
    // readings: what the last decision judged.
    let controller = store.last_view(&mut conn, job).await?;
    let paused_by = switch
        .filter(|s| s.paused)
        .map(|s| json!({"by": s.by, "reason": s.reason, "at": s.at}));
    Ok(Some(json!({
        "job": job,
        "state": state,
        "rows_done": rows_done,
        "rows_pending": rows_pending,
        "rows_at_start": row.rows_at_start,
        "rows_per_second": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta,
        "knobs": row.knobs,
        "last_decision": last,
        "controller": controller,
        "paused_by": paused_by,
        "pass": row.pass,
        "cursor": row.cursor_key,
        "message": note,
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
    })))
}

fn print_text(v: &serde_json::Value) {
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("job {}: {}", s("job"), s("state"));
    println!(
        "  rows done {}, pending ~{} (of {} at start)",
        s("rows_done"),
        s("rows_pending"),
        s("rows_at_start")
    );
    let eta = v["eta_seconds"]
        .as_i64()
        .map(|e| humantime::format_duration(std::time::Duration::from_secs(e as u64)).to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "  rate {} rows/s over the last minute, ETA {eta}",
        s("rows_per_second")
    );
    if let Some(k) = v["knobs"].as_object() {
        println!(
            "  knobs: batch {}, sleep {}, workers {}",
            k.get("batch_size")
                .map(|x| x.to_string())
                .unwrap_or_default(),
            k.get("sleep").and_then(|x| x.as_str()).unwrap_or("-"),
            k.get("workers").map(|x| x.to_string()).unwrap_or_default()
        );
    }
    if let Some(d) = v["last_decision"].as_object() {
        println!(
            "  last decision ({}): {}",
            d.get("at").and_then(|x| x.as_str()).unwrap_or(""),
            d.get("summary").and_then(|x| x.as_str()).unwrap_or("")
        );
    }
    if let Some(c) = v["controller"].as_object() {
        let n = |x: &serde_json::Value| {
            x.as_f64()
                .map(|f| format!("{}", (f * 1000.0).round() / 1000.0))
                .unwrap_or_else(|| "-".into())
        };
        let signals = c
            .get("signals")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .map(|s| {
                        format!(
                            "{} {} (raw {}, delay {})",
                            s["name"].as_str().unwrap_or("?"),
                            n(&s["estimate"]),
                            n(&s["raw"]),
                            s["delay"].as_str().unwrap_or("-")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "  controller: target {} rows/s; estimates {signals}",
            c.get("target_rate")
                .and_then(|x| x.as_f64())
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    if let Some(p) = v["paused_by"].as_object() {
        println!(
            "  paused by {}: {}",
            p.get("by").and_then(|x| x.as_str()).unwrap_or(""),
            p.get("reason").and_then(|x| x.as_str()).unwrap_or("")
        );
    }
    if v["message"].is_string() {
        println!("  {}", s("message"));
    }
}
