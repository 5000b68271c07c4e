//! A fleet: one policy on many databases (see docs/FLEET.md).
//!
//! Each target runs the ordinary single-database executor (`executor::run`)
//! on its own policy (`Policy::for_target`): its own job, progress,
//! exactly-once batches and per-target signals, in its own database. What
//! the targets share is coordinated here and in PostgreSQL, never by a
//! protocol of our own:
//! - which target runs when: `schedule` (pure), recorded in the
//!   coordination database (`fleet_targets`), under an advisory lock that
//!   makes one fleet runner the only one;
//! - how fast a cluster may be written: one `cluster` controller per
//!   `system_identifier`, its rate split among the cluster's running
//!   targets (`budget`);
//! - the fleet-wide pause: the `control` row of the fleet's job name in the
//!   coordination database, as for a single job.

pub mod budget;
pub mod cluster;
mod coord;
mod http;
pub mod schedule;
pub mod status;
mod targets;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::cli::exit;
use crate::controller::{ManualPause, fmt_dur};
use crate::executor::{RunOptions, RunOutcome};
use crate::policy::{FleetTarget, Policy};
use crate::store::{Fail, Store};
use budget::ClusterBudget;
use cluster::ClusterInfo;
use schedule::{Ended, Schedule};

pub use targets::resolve as resolve_targets;

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub policy_path: PathBuf,
    pub accept_policy_change: bool,
    pub log_batches: bool,
}

/// How often the fleet logs its tally while targets run.
const TALLY_EVERY: Duration = Duration::from_secs(30);

pub async fn run(
    policy: &Policy,
    opts: &FleetOptions,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<RunOutcome> {
    let fleet = policy.job.name.clone();
    let targets = resolve_targets(policy, &opts.policy_path).await?;
    let store = Store::for_policy(policy);
    let f = policy.fleet.clone().unwrap_or_default();
    let mut coord = match &f.coordination_url {
        Some(url) => Some(coord::Coord::open(url, &store, &fleet).await?),
        None => None,
    };
    // Every target reachable before any target's database is written.
    let ids = cluster_ids(&targets).await?;
    let mut clusters: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        clusters.entry(id.clone()).or_default().push(i);
    }
    tracing::info!(
        target: "pacer::fleet",
        fleet = %fleet,
        targets = targets.len(),
        clusters = clusters.len(),
        max_active_targets = f.max_active_targets,
        canary = f.canary,
        on_target_failure = f.on_target_failure.as_str(),
        "fleet {fleet}: {} targets on {} clusters ({})",
        targets.len(),
        clusters.len(),
        clusters
            .iter()
            .map(|(id, ts)| format!(
                "{}: {}",
                short(id),
                ts.iter().map(|i| targets[*i].name.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut sched = Schedule::new(
        targets.len(),
        f.max_active_targets,
        f.canary,
        f.on_target_failure,
    );
    if let Some(c) = coord.as_mut() {
        let regs: Vec<(String, String)> = targets
            .iter()
            .zip(&ids)
            .map(|(t, id)| (t.name.clone(), id.clone()))
            .collect();
        for r in c.register(&regs).await? {
            if r.state == "done"
                && let Some(i) = targets.iter().position(|t| t.name == r.target)
            {
                sched.already_done(i);
            }
        }
    }

    let (cl_stop_tx, cl_stop) = watch::channel(false);
    let mut budgets: BTreeMap<String, Arc<ClusterBudget>> = BTreeMap::new();
    // Tasks of their own: a cluster's controller and a target's run tick
    // on their own clocks, whatever the fleet's loop is waiting for.
    let mut cluster_tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    for (id, members) in &clusters {
        let budget = ClusterBudget::new(id.clone());
        budgets.insert(id.clone(), budget.clone());
        // Replication lag is read through a target that names replicas.
        let via = members
            .iter()
            .copied()
            .find(|i| !targets[*i].replicas.is_empty())
            .unwrap_or(members[0]);
        let cp = policy.for_cluster(&targets[via], short(id));
        let cluster_signals = policy
            .signals
            .iter()
            .filter(|s| s.fleet_scope() == crate::policy::Scope::Cluster)
            .count();
        if cp.signals.len() < cluster_signals {
            tracing::info!(target: "pacer::fleet", cluster = short(id), "cluster {}: none of its targets names replicas, so replication_lag_seconds does not apply to it", short(id));
        }
        let info = Arc::new(ClusterInfo {
            id: id.clone(),
            policy: cp,
            budget,
        });
        let rx = cl_stop.clone();
        cluster_tasks.spawn(async move {
            let id = info.id.clone();
            (id, cluster::run(info, rx).await)
        });
    }

    let hub = Arc::new(crate::telemetry::hub::MetricsHub::default());
    let fleet_metrics = Arc::new(http::FleetMetrics::new(&fleet));
    hub.add(fleet_metrics.clone());
    let listen = &policy.http.listen;
    let server = crate::telemetry::http::serve(
        listen,
        crate::telemetry::http::token_from_env(),
        hub.clone(),
        Arc::new(http::FleetControl {
            policy: policy.clone(),
            policy_path: opts.policy_path.clone(),
        }),
    )
    .await
    .map_err(|e| e.into_fail(listen))?;

    let started = Instant::now();
    let mut running: JoinSet<(usize, anyhow::Result<RunOutcome>)> = JoinSet::new();
    // Which target a task runs, for a task that panicked.
    let mut task_target = std::collections::HashMap::new();
    let mut stop = stop;
    let mut stop_open = true;
    // The targets' own stop: the process's (SIGINT, SIGTERM), or the
    // fleet's when it must end (a cluster controller failed, another
    // runner took the fleet's lock). Either way a graceful stop: in-flight
    // batches commit, the next run takes each target up where it stopped.
    let (tstop_tx, tstop) = watch::channel(false);
    let mut stopping = false;
    let mut tick = tokio::time::interval(policy.controller.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tally = Instant::now();
    let mut last_pause: Option<ManualPause> = None;
    let mut abort: Option<String> = None;
    // A failure's pause is kept in the fleet's switch once written, so
    // that `pacer status` shows it and `pacer resume` lifts it.
    let mut halt_written = false;
    loop {
        let mut lock_lost = false;
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed(), if stop_open => {
                // A sender gone is no stop request (and must not wake this
                // loop at every turn).
                stop_open = r.is_ok();
                // A request after the stop began goes on to the targets: it
                // ends a wait for an unreachable database to record a
                // target's end (see `executor::run`).
                if stopping && stop_open {
                    tstop_tx.send_replace(true);
                }
            }
            Some(j) = cluster_tasks.join_next() => {
                // A cluster's controller that cannot run leaves its
                // targets without their cluster's signals: the fleet ends.
                let msg = match j {
                    Ok((_, Ok(()))) => None,
                    Ok((id, Err(e))) => Some(format!("cluster {}: {}", short(&id), crate::telemetry::redact::error(&e))),
                    Err(e) => Some(format!("a cluster's controller crashed: {e}")),
                };
                if let Some(msg) = msg {
                    abort.get_or_insert(msg);
                }
            }
            Some(j) = running.join_next_with_id() => {
                let (i, r) = match j {
                    Ok((id, v)) => {
                        task_target.remove(&id);
                        v
                    }
                    Err(e) => {
                        let i = task_target.remove(&e.id()).expect("every task has its target");
                        (i, Err(anyhow::anyhow!("the target's run crashed: {e}")))
                    }
                };
                let t: &FleetTarget = &targets[i];
                let (how, line) = ended(r, *tstop.borrow());
                tracing::info!(target: "pacer::fleet", fleet = %fleet, target = %t.name, "target {}: {line}", t.name);
                sched.ended(i, how, &t.name);
                let st = sched.states()[i].clone();
                if let Some(c) = coord.as_mut() {
                    lock_lost |= c.set(&t.name, st.as_str(), Some(&line)).await.is_err();
                }
            }
        }
        // While the coordination database is down the fleet keeps the
        // pause it had: a switch it cannot read is not a resume.
        let mut switch_known = coord.is_some();
        let switch = match coord.as_mut() {
            Some(c) => match c.switch().await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    switch_known = false;
                    None
                }
                Err(coord::LockLost) => {
                    lock_lost = true;
                    None
                }
            },
            None => None,
        };
        if let Some(h) = sched.halt().map(str::to_string) {
            if halt_written {
                // `pacer resume` after a failure paused the fleet lifts that
                // pause (the failed target stays failed; a later run
                // retries it).
                if switch_known && !switch.as_ref().is_some_and(|s| s.paused) {
                    sched.clear_halt();
                    halt_written = false;
                }
            } else if let Some(c) = coord.as_mut() {
                match c.set_pause(coord::FAILURE_BY, &h).await {
                    Ok(w) => halt_written = w,
                    Err(coord::LockLost) => lock_lost = true,
                }
            }
        }
        if lock_lost {
            abort.get_or_insert_with(|| {
                format!("another pacer took fleet {fleet}'s lock in the coordination database while this one could not reach it")
            });
        }
        if (*stop.borrow() || abort.is_some()) && !stopping {
            stopping = true;
            sched.stop();
            tstop_tx.send_replace(true);
            match &abort {
                Some(why) => {
                    tracing::error!(target: "pacer::fleet", fleet = %fleet, "stopping the fleet: {why}; running targets let their in-flight batches commit")
                }
                None => {
                    tracing::info!(target: "pacer::fleet", fleet = %fleet, "stop requested: starting no target; running targets let their in-flight batches commit")
                }
            }
        }
        let operator = if switch_known {
            switch.filter(|s| s.paused).map(|s| ManualPause {
                by: s.by,
                reason: s.reason,
            })
        } else {
            last_pause.clone()
        };
        let pause = operator.or_else(|| {
            sched.halt().map(|h| ManualPause {
                by: "fleet".into(),
                reason: h.to_string(),
            })
        });
        if pause != last_pause {
            match &pause {
                Some(p) => {
                    tracing::warn!(target: "pacer::fleet", fleet = %fleet, "fleet paused by {}: {}", p.by, p.reason)
                }
                None => tracing::info!(target: "pacer::fleet", fleet = %fleet, "fleet resumed"),
            }
            for b in budgets.values() {
                b.set_fleet_pause(pause.clone());
            }
            last_pause = pause.clone();
        }
        for i in sched.start(pause.is_some()) {
            let t = targets[i].clone();
            if let Some(c) = coord.as_mut()
                && c.set(&t.name, "running", None).await.is_err()
            {
                // Another runner owns the fleet now: start nothing more.
                sched.ended(i, Ended::Stopped, &t.name);
                continue;
            }
            let budget = budgets[&ids[i]].join(&t.name);
            let tp = policy.for_target(&t);
            let ro = RunOptions {
                policy_path: opts.policy_path.clone(),
                accept_policy_change: opts.accept_policy_change,
                dry_run: false,
                log_batches: opts.log_batches,
                standby: false,
                serve_http: false,
                budget: Some(budget),
                metrics_hub: Some(hub.clone()),
            };
            tracing::info!(target: "pacer::fleet", fleet = %fleet, target = %t.name, cluster = short(&ids[i]), "starting target {}", t.name);
            let rx = tstop.clone();
            // The target's own job span labels its lines (`target` is one
            // of its labels); this one covers what comes before it.
            let span = tracing::info_span!("fleet", job = %tp.job.name);
            let task = running.spawn(
                async move {
                    let r = crate::executor::run(&tp, &ro, rx).await;
                    (i, r)
                }
                .instrument(span),
            );
            task_target.insert(task.id(), i);
        }
        fleet_metrics.set_tally(&sched.tally());
        for (id, b) in &budgets {
            fleet_metrics.set_cluster(short(id), b.rate(), b.paused());
        }
        if sched.is_over() {
            break;
        }
        if last_tally.elapsed() >= TALLY_EVERY {
            last_tally = Instant::now();
            tracing::info!(target: "pacer::fleet", fleet = %fleet, "fleet {fleet}: {} after {}", sched.tally(), fmt_dur(started.elapsed()));
        }
    }
    cl_stop_tx.send_replace(true);
    while cluster_tasks.join_next().await.is_some() {}
    if let Err(e) = server.shutdown().await {
        tracing::warn!(error = %e, "stopping the HTTP server");
    }
    let tally = sched.tally();
    let failed: Vec<String> = sched
        .states()
        .iter()
        .zip(&targets)
        .filter_map(|(s, t)| match s {
            schedule::TargetState::Failed(m) => Some(format!("{}: {m}", t.name)),
            _ => None,
        })
        .collect();
    let mut summary = format!(
        "fleet {fleet}: {} targets: {tally} in {}",
        targets.len(),
        fmt_dur(started.elapsed())
    );
    if let Some(e) = &abort {
        summary.push_str(&format!("; stopped: {e}"));
    } else if let Some(h) = sched.halt() {
        summary.push_str(&format!("; {h}"));
    }
    for l in &failed {
        summary.push_str(&format!("\n  failed {l}"));
    }
    let code = if !failed.is_empty() || abort.is_some() {
        exit::FAILED
    } else {
        exit::OK
    };
    if let Some(c) = coord.take() {
        c.close().await;
    }
    Ok(RunOutcome { code, summary })
}

/// Pause or resume a whole fleet: the `control` row of the fleet's job
/// name in the coordination database, which the fleet runner reads every
/// tick and passes on to every target. A fleet of one target without a
/// coordination database pauses that target's own job.
pub async fn set_switch(
    policy: &Policy,
    policy_path: &std::path::Path,
    paused: bool,
    by: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let Some(url) = policy
        .fleet
        .as_ref()
        .and_then(|f| f.coordination_url.clone())
    else {
        let targets = resolve_targets(policy, policy_path).await?;
        let [t] = targets.as_slice() else {
            return Err(Fail::invalid(
                "fleet.coordination_url: needed to pause a fleet of more than one target",
            ));
        };
        return crate::store::control::set_switch(&policy.for_target(t), paused, by, reason).await;
    };
    crate::store::control::set_switch_at(
        &url,
        &Store::for_policy(policy),
        &policy.job.name,
        paused,
        by,
        reason,
    )
    .await
    .map_err(|e| Fail::failed(format!("fleet.coordination_url: {e:#}")))
}

/// A target's end in the schedule's terms, and one line for the log.
fn ended(r: anyhow::Result<RunOutcome>, stop_requested: bool) -> (Ended, String) {
    match r {
        Ok(o) if o.code == exit::OK && stop_requested => (Ended::Stopped, o.summary),
        Ok(o) if o.code == exit::OK => (Ended::Done, o.summary),
        Ok(o) => (Ended::Failed(o.summary.clone()), o.summary),
        Err(e) => {
            let m = crate::telemetry::redact::error(&e);
            (Ended::Failed(m.clone()), m)
        }
    }
}

/// Connections the start-up probe of the targets holds open at once.
const PROBE_CONCURRENCY: usize = 4;

/// Each target's cluster (`system_identifier`), all reachable or none.
async fn cluster_ids(targets: &[FleetTarget]) -> anyhow::Result<Vec<String>> {
    let reads = targets.iter().map(|t| async move {
        let read = async {
            let mut c = crate::store::connect(&t.url, "pacer-fleet").await?;
            let id: String =
                sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
                    .fetch_one(&mut c)
                    .await?;
            let _ = sqlx::Connection::close(c).await;
            anyhow::Ok(id)
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(r) => r.map_err(|e| format!("{}: {}", t.name, crate::telemetry::redact::error(&e))),
            Err(_) => Err(format!("{}: no answer within 10s", t.name)),
        }
    });
    // A few at a time: all at once, a large fleet would take every
    // connection slot of a cluster for a moment (measured: 200 targets on
    // a 50-connection cluster failed with "too many clients").
    let results: Vec<Result<String, String>> = futures::stream::iter(reads)
        .buffered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let bad: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !bad.is_empty() {
        return Err(Fail::failed(format!(
            "cannot reach {} of the fleet's {} targets; nothing started: {}",
            bad.len(),
            targets.len(),
            bad.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(results.into_iter().map(|r| r.expect("checked")).collect())
}

/// A `system_identifier` as logs show it: its last 6 digits tell the
/// clusters of one fleet apart.
pub fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}
