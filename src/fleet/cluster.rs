//! One cluster's controller: the cluster signals (replication, WAL,
//! Prometheus latency; `Signal::fleet_scope`) sampled once for all of
//! the cluster's targets, stepped through the same pure `Controller` a
//! single job runs, its knobs turned into one rate (`View::target_rate`)
//! that the cluster's running targets share (`ClusterBudget`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use super::budget::ClusterBudget;
use crate::controller::{Action, Controller, Inputs, ManualPause, State};
use crate::policy::Policy;

/// What the fleet runner knows of one cluster.
pub struct ClusterInfo {
    /// `system_identifier` of the cluster (primary and replicas share it).
    pub id: String,
    /// The cluster's policy (`Policy::for_cluster`): its signals read
    /// through one of its targets' databases.
    pub policy: Policy,
    pub budget: Arc<ClusterBudget>,
}

/// Step the cluster's controller every tick until `stop`; the budget
/// carries its rate and pause to the targets.
pub async fn run(info: Arc<ClusterInfo>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let policy = &info.policy;
    let url = policy
        .database
        .url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("cluster {} has no database", info.id))?;
    let app = format!("pacer-fleet:{}", info.id);
    // Pacer's tables on the database the signals read through: the
    // replication-lag heartbeat writes there.
    let mut conn = crate::store::connect(&url, &app).await?;
    crate::store::Store::for_policy(policy)
        .migrate(&mut conn)
        .await?;
    drop(conn);
    let pool = crate::signals::postgres::small_pool(
        crate::store::parse_url(&url)?.application_name(&format!("{app}:signals")),
    );
    let ctx = crate::signals::Context { pool: Some(pool) };
    let baselines: BTreeMap<String, f64> = if policy.signals.iter().any(|s| s.needs_baseline()) {
        crate::signals::capture_baselines(policy, &ctx).await?
    } else {
        BTreeMap::new()
    };
    let sampler = crate::signals::build_sampler(policy, &ctx).await?;
    let mut controller = Controller::new(policy, &baselines)?;
    let mut tick = tokio::time::interval(policy.controller.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let short = super::short(&info.id);
    tracing::info!(
        target: "pacer::fleet",
        cluster = short,
        system_identifier = %info.id,
        "cluster {short}: shared budget started; its signals: {}",
        if sampler.is_empty() { "none (the limits alone bound it)".to_string() } else { sampler.names().join(", ") }
    );
    let mut last_state = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let readings = sampler.sample().await;
        let fb = info.budget.take_feedback();
        let inputs = Inputs {
            readings,
            batches: fb.batches,
            manual_pause: None,
            // Grow the shared rate only while it is what holds the
            // targets back (quinn's app-limited guard, for a cluster).
            app_limited: !fb.budget_bound,
        };
        let d = controller.step(Utc::now(), &inputs);
        let paused = d.state == State::Paused;
        let pause = paused.then(|| ManualPause {
            by: "fleet".into(),
            reason: format!(
                "cluster {}: {}",
                short,
                d.causes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        info.budget.set(d.view.target_rate, pause);
        // Calm growth moves the knobs nearly every tick: those lines are
        // debug, as a single job's are; cuts, pauses and resumes are info.
        let growth = d.action == Action::Increase && last_state == Some(d.state);
        if d.changed() || last_state != Some(d.state) {
            let line = format!(
                "cluster {short}: {} ({} rows/s shared by {} running)",
                d.summary(),
                crate::controller::num(d.view.target_rate),
                info.budget.active()
            );
            if growth {
                tracing::debug!(target: "pacer::fleet", cluster = short, state = d.state.as_str(), rate = d.view.target_rate, "{line}");
            } else {
                tracing::info!(
                    target: "pacer::fleet",
                    cluster = short,
                    state = d.state.as_str(),
                    rate = d.view.target_rate,
                    targets = info.budget.active(),
                    signals = %d.view.signals_line(),
                    "{line}"
                );
            }
        }
        last_state = Some(d.state);
    }
}
