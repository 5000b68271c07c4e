use crate::cli::{CheckArgs, exit};
use crate::store::database_url;
use crate::text::message_line;

pub fn run(args: &CheckArgs) -> u8 {
    let p = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    println!(
        "{}: ok (job {:?}, {} signal(s), {} window(s))",
        args.policy.policy.display(),
        p.job.name,
        p.signals.len(),
        p.windows.len()
    );
    for w in p.level_warnings() {
        println!("  warning: {w}");
    }
    if p.is_fleet() {
        match p.file_targets(&args.policy.policy) {
            Ok(Some(t)) => println!(
                "  fleet: {} target(s): {}",
                t.len(),
                t.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(None) => {
                println!("  fleet: targets from fleet.targets_query, listed when the fleet starts")
            }
            Err(e) => {
                eprintln!("{e}");
                return exit::INVALID;
            }
        }
    }
    if args.offline {
        println!("offline: SQL not checked against the database (--offline)");
        return exit::OK;
    }
    if let Err(code) = super::one_database(&p, &args.policy, "check") {
        println!("  (`pacer check --offline` validates a fleet policy without a database)");
        return code;
    }
    if let Ok(Some(si)) =
        super::block_on(async { Ok(crate::signals::prometheus::resolve_scrape_interval(&p).await) })
    {
        println!(
            "  note: Prometheus scrape interval {si}: counted in each Prometheus signal's delay"
        );
    }
    // Whether the latency histograms can resolve the levels (Prometheus).
    if let Ok((warnings, notes)) =
        super::block_on(async { Ok(crate::signals::resolution::check(&p).await) })
    {
        for n in &notes {
            println!("  note: {n}");
        }
        for w in &warnings {
            println!("  warning: {w}");
        }
    }
    let Some(url) = database_url(&p) else {
        println!(
            "offline: no database.url in the policy and no DATABASE_URL; SQL not checked against the database"
        );
        return exit::OK;
    };
    let result = super::block_on(async {
        let mut conn = crate::store::connect(&url, "pacer-cli").await?;
        // Through a transaction-mode pooler nothing below would mean much
        // (nor would `run` start).
        if let Some(problem) = crate::store::pooler::transaction_pooler(&mut conn, &url).await? {
            return Ok(crate::preflight::Report {
                problems: vec![problem],
                ..Default::default()
            });
        }
        crate::preflight::preflight(&mut conn, &p, args.force).await
    });
    match result {
        Ok(report) => {
            // Findings quote database messages and policy SQL: one line
            // each, bounded like every error.
            let line = |kind: &str, s: &str| message_line(&format!("  {kind}: {s}"));
            for n in &report.notes {
                println!("{}", line("ok", n));
            }
            for w in &report.warnings {
                println!("{}", line("warning", w));
            }
            for pr in &report.problems {
                println!("{}", line("problem", pr));
            }
            if report.problems.is_empty() {
                println!("preflight: ok");
                exit::OK
            } else {
                println!("preflight: {} problem(s)", report.problems.len());
                exit::PENDING
            }
        }
        Err(e) => super::print_error("preflight: ", &e),
    }
}
