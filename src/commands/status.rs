use crate::cli::{StatusArgs, exit};
use crate::store::status::{not_started, status};

pub fn run(args: &StatusArgs) -> u8 {
    let policy = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if policy.is_fleet() {
        return fleet(&policy, args);
    }
    let not_started_text = format!("job {} has not started", policy.job.name);
    show(
        super::block_on(status(&policy)),
        args.json,
        || (not_started(&policy), not_started_text),
        print_text,
    )
}

/// Print a status (JSON or text), or what says it has not started (exit 1).
fn show(
    result: anyhow::Result<Option<serde_json::Value>>,
    json: bool,
    not_started: impl FnOnce() -> (serde_json::Value, String),
    print: fn(&serde_json::Value),
) -> u8 {
    match result {
        Ok(None) => {
            let (v, text) = not_started();
            if json {
                println!("{v}");
            } else {
                println!("{text}");
            }
            exit::PENDING
        }
        Ok(Some(v)) => {
            if json {
                println!("{v}");
            } else {
                print(&v);
            }
            exit::OK
        }
        Err(e) => super::print_error("error: ", &e),
    }
}

/// `eta_seconds` of a status, for people.
fn eta_text(v: &serde_json::Value) -> String {
    v["eta_seconds"]
        .as_i64()
        .map(|e| humantime::format_duration(std::time::Duration::from_secs(e as u64)).to_string())
        .unwrap_or_else(|| "-".into())
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
    let eta = eta_text(v);
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
    if let Ok(c) = serde_json::from_value::<crate::controller::View>(v["controller"].clone()) {
        println!(
            "  controller: target {:.0} rows/s; estimates {}",
            c.target_rate,
            c.signals_line()
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

/// `pacer status` on a fleet policy without `--target`.
fn fleet(policy: &crate::policy::Policy, args: &StatusArgs) -> u8 {
    let name = &policy.job.name;
    show(
        super::block_on(crate::fleet::status::status(policy, &args.policy.policy)),
        args.json,
        || {
            (
                serde_json::json!({"fleet": name, "state": "not started"}),
                format!("fleet {name} has not started"),
            )
        },
        print_fleet,
    )
}

fn print_fleet(v: &serde_json::Value) {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let eta = eta_text(v);
    println!(
        "fleet {}: {} targets: {} done, {} running{}, {} waiting, {} failed{}; ETA {eta}{}",
        v["fleet"].as_str().unwrap_or(""),
        n("targets_total"),
        n("done"),
        n("running"),
        if n("paused") > 0 {
            format!(" ({} paused)", n("paused"))
        } else {
            String::new()
        },
        n("waiting"),
        n("failed"),
        if n("stopped") > 0 {
            format!(", {} stopped", n("stopped"))
        } else {
            String::new()
        },
        if v["runner_alive"] == true {
            ""
        } else {
            " (no fleet runner is running)"
        }
    );
    if let Some(p) = v["paused_by"].as_object() {
        println!(
            "  paused by {}: {}",
            p.get("by").and_then(|x| x.as_str()).unwrap_or(""),
            p.get("reason").and_then(|x| x.as_str()).unwrap_or("")
        );
    }
    for t in v["targets"].as_array().into_iter().flatten() {
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
        let job = &t["job"];
        let progress = if job.is_object() {
            let eta = eta_text(job);
            format!(
                "  {} rows done, ~{} pending, {} rows/s, ETA {eta}{}",
                job["rows_done"],
                job["rows_pending"],
                job["rows_per_second"],
                job["paused_by"]["reason"]
                    .as_str()
                    .map(|r| format!("; paused: {r}"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        };
        let msg = t["job_error"]
            .as_str()
            .or(t["message"].as_str())
            .map(|m| format!("  {m}"))
            .unwrap_or_default();
        println!(
            "  {:<12} cluster {:<7} {:<8}{progress}{msg}",
            s("target"),
            s("cluster"),
            s("state"),
        );
    }
}
