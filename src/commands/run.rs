use crate::cli::{RunArgs, exit};
use crate::executor::{RunOptions, run as run_job};

/// Logs go to stderr, as text or JSON lines; `--log-level` wins over RUST_LOG.
/// A multi-threaded runtime sized for a CLI.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub fn run(args: &RunArgs) -> u8 {
    let mut policy = match super::load_policy(&crate::cli::PolicyArg {
        target: None,
        ..args.policy.clone()
    }) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    let opts = RunOptions {
        policy_path: args.policy.policy.clone(),
        accept_policy_change: args.accept_policy_change,
        dry_run: args.dry_run,
        log_batches: args.log_batches,
        standby: args.standby,
        serve_http: true,
        budget: None,
        metrics_hub: None,
    };
    if let Some(t) = &args.policy.target {
        eprintln!(
            "error: --target {}: `pacer run` runs the whole fleet, each target under its cluster's shared budget; a target run alone would lose the cluster's signals",
            crate::text::show(t)
        );
        return exit::INVALID;
    }
    if policy.is_fleet() && (args.dry_run || args.standby) {
        eprintln!(
            "error: --{} is for a single database; a fleet policy ([fleet], [[target]]) runs each target itself",
            if args.dry_run { "dry-run" } else { "standby" }
        );
        return exit::INVALID;
    }
    rt.block_on(async move {
        for w in policy.level_warnings() {
            tracing::warn!("{w}");
        }
        // Part of each Prometheus signal's delay, which paces growth: read
        // once at start, so a run follows the Prometheus it actually reads.
        if let Some(si) = crate::signals::prometheus::resolve_scrape_interval(&policy).await {
            tracing::info!(scrape_interval = %si, "Prometheus scrape interval");
            policy.prometheus.scrape_interval = Some(si.value());
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                n += 1;
                if n > 1 {
                    tracing::warn!(
                        "already stopping: in-flight batches still commit; a wait for an unreachable \
                         database to record the stop is skipped"
                    );
                }
                // Every request notifies the run (`send_replace` marks the
                // value changed even when it is the same): a second one ends
                // a wait for the database at the end of the run.
                stop_tx.send_replace(true);
            }
        });
        let outcome = if policy.is_fleet() {
            let fo = crate::fleet::FleetOptions {
                policy_path: opts.policy_path.clone(),
                accept_policy_change: opts.accept_policy_change,
                log_batches: opts.log_batches,
            };
            crate::fleet::run(&policy, &fo, stop_rx).await
        } else {
            run_job(&policy, &opts, stop_rx).await
        };
        match outcome {
            Ok(o) => {
                println!("{}", o.summary);
                o.code
            }
            Err(e) => super::print_error("error: ", &e),
        }
    })
}
