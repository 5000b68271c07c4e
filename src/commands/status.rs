use crate::cli::{StatusArgs, exit};
use crate::store::status::{not_started, status};

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
