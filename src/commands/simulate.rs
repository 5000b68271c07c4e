//! `pacer simulate`: wiring only; the simulator lives in `crate::sim`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::cli::{LogFormat, SimulateArgs, exit};
use crate::controller::Action;
use crate::policy::Policy;
use crate::sim::{self, Model, Scenario};

pub fn run(args: &SimulateArgs, format: LogFormat, level: Option<&str>) -> u8 {
    let policy = match super::load_policy(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    for w in policy.level_warnings() {
        eprintln!("warning: {w}");
    }
    if args.fleet.is_some() && args.report.is_some() {
        eprintln!("error: --report draws one database's run; it does not combine with --fleet");
        return exit::INVALID;
    }
    let inputs = || -> anyhow::Result<(Scenario, Model)> {
        let scenario = Scenario::load(&args.scenario)?;
        let model = match &args.model {
            None => Model::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("model {}: cannot read: {e}", path.display()))?;
                Model::from_toml(&path.display().to_string(), &text)?
            }
        };
        Ok((scenario, model))
    };
    if let Some(shape) = args.fleet {
        return fleet(args, &policy, shape, inputs);
    }
    let outcome = inputs().and_then(|(scenario, model)| {
        sim::simulate_rows(
            &policy,
            &model,
            &scenario,
            args.seed,
            args.duration,
            args.rows,
        )
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            super::print_error(&format!("{}: ", args.policy.policy.display()), &e);
            return exit::INVALID;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&outcome) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot encode the result: {e}");
                return exit::FAILED;
            }
        }
        return write_report(args, &policy, &outcome);
    }
    let tz: Tz = policy.job.timezone.parse().unwrap_or(Tz::UTC);
    let clock = match init_logging(format, level, tz) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pacer: {e:#}");
            return exit::INVALID;
        }
    };
    // Calm growth changes the knobs nearly every tick; those lines are
    // debug, and repeated small cuts are folded into one line per minute,
    // so the pauses, resumes and new causes stay readable.
    let mut fold = crate::telemetry::fold::Fold::default();
    let info = |line: &crate::telemetry::fold::Line, at| {
        clock.set(at);
        let d = match line {
            crate::telemetry::fold::Line::Decision(d) => d,
            crate::telemetry::fold::Line::Folded { last, .. } => last,
        };
        tracing::info!(
            target: "pacer::simulate",
            state = d.state.as_str(),
            target_rate = d.view.target_rate.round() as u64,
            estimates = d.view.signals_line().as_str(),
            "{}",
            line.summary()
        );
    };
    for d in &outcome.log {
        let lines = if d.action == Action::Increase {
            fold.expire(d.at)
        } else {
            fold.push(d)
        };
        for line in &lines {
            info(line, d.at);
        }
        if d.action == Action::Increase {
            clock.set(d.at);
            tracing::debug!(target: "pacer::simulate", state = d.state.as_str(), "{}", d.summary());
        }
    }
    if let Some(last) = outcome.log.last() {
        for line in fold.flush() {
            info(&line, last.at);
        }
    }
    print!("{}", sim::summary_table(&outcome));
    write_report(args, &policy, &outcome)
}

/// Log lines carry the simulated time (in the job's time zone) instead of
/// the wall clock. Kept in one function so the real logging setup can
/// replace it.
fn init_logging(format: LogFormat, level: Option<&str>, tz: Tz) -> anyhow::Result<SimClock> {
    let clock = SimClock {
        at: Arc::new(AtomicI64::new(0)),
        tz,
    };
    let filter = crate::telemetry::logging::filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(clock.clone());
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(clock)
}

/// A tracing timer showing the simulated instant last `set`.
#[derive(Clone)]
struct SimClock {
    at: Arc<AtomicI64>,
    tz: Tz,
}

impl SimClock {
    fn set(&self, at: DateTime<Utc>) {
        self.at.store(at.timestamp_millis(), Ordering::Relaxed);
    }
}

impl tracing_subscriber::fmt::time::FormatTime for SimClock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let at = DateTime::<Utc>::from_timestamp_millis(self.at.load(Ordering::Relaxed))
            .unwrap_or_default();
        write!(
            w,
            "{}",
            at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S%:z")
        )
    }
}

/// Render the simulated run's timeline and runbook, as `pacer report` does
/// for a real one.
fn write_report(args: &SimulateArgs, policy: &Policy, outcome: &sim::Outcome) -> u8 {
    let Some(dir) = &args.report else {
        return exit::OK;
    };
    let info = crate::report::ReportInfo {
        policy: Some(policy.clone()),
        policy_path: Some(args.policy.policy.clone()),
        source: Some(format!(
            "a simulation (scenario {}, seed {})",
            args.scenario, args.seed
        )),
        ..Default::default()
    };
    if let Err(e) = crate::report::render(&outcome.history, &info, dir) {
        eprintln!("pacer: cannot write the report to {}: {e:#}", dir.display());
        return exit::FAILED;
    }
    eprintln!(
        "report written to {} and {}",
        dir.join("timeline.svg").display(),
        dir.join("report.md").display()
    );
    exit::OK
}

/// `pacer simulate --fleet`: the fleet's finishing time against the sum of
/// single runs and the cluster budgets' floor.
fn fleet(
    args: &SimulateArgs,
    policy: &Policy,
    shape: sim::FleetShape,
    inputs: impl FnOnce() -> anyhow::Result<(Scenario, Model)>,
) -> u8 {
    let outcome = inputs().and_then(|(scenario, model)| {
        sim::simulate_fleet(
            policy,
            &model,
            &scenario,
            args.seed,
            args.duration,
            shape,
            args.rows.unwrap_or(1_000_000).max(1),
            args.max_active,
        )
    });
    match outcome {
        Ok(o) if args.json => match serde_json::to_string_pretty(&o) {
            Ok(s) => {
                println!("{s}");
                exit::OK
            }
            Err(e) => {
                eprintln!("cannot encode the result: {e}");
                exit::FAILED
            }
        },
        Ok(o) => {
            print!("{}", sim::fleet_table(&o));
            exit::OK
        }
        Err(e) => {
            super::print_error(&format!("{}: ", args.policy.policy.display()), &e);
            exit::INVALID
        }
    }
}
