//! The run loop: preflight, job identity and resume, then one controller
//! tick after another until the `Job` ends (done, failed, stopped, stood
//! down). The coordinator is the Job's driver for everything that is not a
//! batch: it holds the control connection (runner lock, pause switch) and
//! tells the Job when it is lost or back, and on which server incarnation;
//! it feeds the controller's decision to the Job, serves `poll_store` (the
//! stored position after a restart), saves `Job::position` every tick, and
//! records the Job's end. It decides nothing about batches itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::Instrument as _;

use super::engine::Engine;
use super::identity::Opened;
use super::job::{self, End, Finish, Job, StoreIo, Stored};
use super::link::{CTL_TIMEOUT, Link, Reconnect, bounded, is_lost, plain, restart_from_store};
use super::locks::{take_runner_lock, take_table_lock, wait_for_stale_backends};
use super::probe::{dry_run, probe_update};
use super::target::Target;
use super::{Command, Shared};
use crate::cli::exit;
use crate::controller::{Controller, Inputs, ManualPause, State, fmt_dur};
use crate::policy::Policy;
use crate::store::{Fail, Store, database_url, runner_app_name};
use crate::telemetry::http::{self, HttpServer};
use crate::telemetry::{JobTelemetry, TelemetryOptions};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy_path: PathBuf,
    pub accept_policy_change: bool,
    pub dry_run: bool,
    /// Batch lines at INFO instead of DEBUG.
    pub log_batches: bool,
    /// Wait as a standby until the active runner's lease lapses (also
    /// `[job] standby`).
    pub standby: bool,
    /// Serve `[http] listen`. Off for a fleet's targets: the fleet runner
    /// answers for all of them.
    pub serve_http: bool,
    /// A rate shared with other jobs (a fleet cluster's budget).
    pub budget: Option<Arc<dyn super::Budget>>,
    /// Where the job's metrics are served from when it serves no HTTP of
    /// its own (a fleet's `/metrics`).
    pub metrics_hub: Option<Arc<crate::telemetry::hub::MetricsHub>>,
}

impl std::fmt::Debug for dyn super::Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Budget")
    }
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub code: u8,
    /// The one-line summary printed at the end.
    pub summary: String,
}

pub async fn run(
    policy: &Policy,
    opts: &RunOptions,
    mut stop_signal: watch::Receiver<bool>,
) -> anyhow::Result<RunOutcome> {
    let job = policy.job.name.clone();
    let url = database_url(policy).ok_or_else(|| {
        Fail::invalid(
            "no database: set database.url in the policy or the DATABASE_URL environment variable",
        )
    })?;
    let app = runner_app_name(&job);
    let standby = (opts.standby || policy.job.standby) && !opts.dry_run;
    // The control connection (pacer's own tables, one small write a tick)
    // is named apart from the workers, so `pacer:<job>` in pg_stat_activity
    // means exactly the backends writing the target table. A standby's is
    // named apart from both until it takes over: a takeover ends the old
    // runner's backends by these names, never a waiting standby's.
    let ctl_name = if standby {
        format!("{app}:standby")
    } else {
        format!("{app}:control")
    };
    let mut ctl = crate::store::connect(&url, &ctl_name).await?;
    if let Some(problem) = crate::store::pooler::transaction_pooler(&mut ctl, &url).await? {
        return Err(Fail::invalid(problem));
    }
    let target = Arc::new(Target::resolve(&mut ctl, policy).await?);
    if opts.dry_run {
        dry_run(&mut ctl, policy, &target).await?;
        return Ok(RunOutcome {
            code: exit::OK,
            summary: "dry run: nothing written".into(),
        });
    }
    let store = Store::for_policy(policy);
    if standby {
        match super::standby::wait(Some(ctl), &url, policy, &store, &mut stop_signal).await? {
            Some(c) => ctl = c,
            None => {
                return Ok(RunOutcome {
                    code: exit::OK,
                    summary: format!(
                        "job {job}: standby stopped by signal before taking over; nothing done"
                    ),
                });
            }
        }
    }
    let mut telemetry = JobTelemetry::new(
        policy,
        TelemetryOptions {
            log_batches: opts.log_batches,
            ..TelemetryOptions::default()
        },
    )
    .map_err(|e| Fail::invalid(format!("job.labels: {e}")))?;
    // Before the first write: an operator who cannot reach /pause must
    // learn it now, not in the middle of a backfill.
    let local_pause: Arc<super::LocalPause> = Default::default();
    if let Some(hub) = &opts.metrics_hub {
        hub.add(telemetry.metrics());
    }
    let server = match opts.serve_http {
        true => Some(serve_http(policy, &telemetry, local_pause.clone()).await?),
        false => None,
    };
    // The runner lock comes first: a second `pacer run` of a running job
    // must touch nothing (no migration, no probe on live rows) before it
    // learns it is not the runner.
    take_runner_lock(&mut ctl, &store, &job).await?;
    if !policy.job.share_table {
        take_table_lock(&mut ctl, &target.table_q).await?;
    }
    wait_for_stale_backends(&mut ctl, &app).await?;
    store.migrate(&mut ctl).await?;
    // A standby watching the lease must see the job taken from now on.
    store.claim_lease(&mut ctl, &job, policy.job.lease).await?;
    probe_update(&mut ctl, policy, &target).await?;

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(
            crate::store::parse_url(&url)?.application_name(&format!("pacer-signals:{job}")),
        );

    let settings = policy.settings_hash();
    let row = match super::identity::open(
        &mut ctl,
        &store,
        policy,
        &target,
        opts.accept_policy_change,
        &pool,
    )
    .await?
    {
        Opened::Job(row) => *row,
        Opened::Done(summary) => {
            return Ok(RunOutcome {
                code: exit::OK,
                summary,
            });
        }
    };
    store.mark_started(&mut ctl, &job, &settings).await?;
    // Before the progress totals are read: batches of a runner that lost
    // the job commit before this (or not at all), so the next batch id and
    // rows done below include them.
    let epoch = store
        .bump_epoch(&mut ctl, &job, policy.limits.statement_timeout)
        .await?;
    store
        .renew_lease(&mut ctl, &job, epoch, policy.job.lease)
        .await?;
    crate::store::lease::arm_idle_timeout(&mut ctl, policy.job.lease).await;

    let sampler =
        crate::signals::build_sampler(policy, &crate::signals::Context { pool: Some(pool) })
            .await
            .map_err(|e| Fail::invalid(format!("{e:#}")))?;
    let mut controller =
        Controller::new(policy, &row.baselines).map_err(|e| Fail::invalid(e.to_string()))?;
    if let Some(k) = row.knobs {
        controller = controller.with_knobs(k);
    }
    let before = crate::signals::warmup::readings_before(
        policy,
        &controller.history_wanted(),
        policy.controller.tick,
    )
    .await;
    controller.prime(&before);
    telemetry.levels(controller.levels());
    let metrics = telemetry.metrics();

    let (mut rows_before, next_id) = store.progress_totals(&mut ctl, &job).await?;
    let (ctl_pid, incarnation): (i32, i64) = sqlx::query_as(super::batch::INCARNATION_SQL)
        .fetch_one(&mut ctl)
        .await?;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let mut shared = Shared::new(
        url.clone(),
        app.clone(),
        store.clone(),
        job.clone(),
        target.clone(),
        policy.limits.clone(),
        out_tx,
    );
    shared.log_batches = opts.log_batches;
    shared.budget = opts.budget.clone();
    shared.local_pause = local_pause.clone();
    shared.incarnation.store(incarnation, Ordering::SeqCst);
    let sh = Arc::new(shared);
    let reader = crate::store::connect(&url, &app).await?;
    // The Job holds every batch until the first tick has read the pause
    // switch: a job paused before it started must not write a single batch.
    let the_job = Job::new(
        job::Config {
            key_type: target.key_type,
            read_chunk: policy.limits.read_chunk,
            max_retries: policy.limits.max_retries,
            max_outage: policy.limits.max_outage,
            max_pause: policy.job.max_pause,
            stop_after_max_pause: policy.job.stop_after_max_pause,
        },
        Stored {
            pass: row.pass,
            cursor: row.cursor_key.clone(),
            next_batch_id: next_id,
            incarnation,
        },
        epoch,
        controller.knobs().batch_size,
    );
    let engine = Arc::new(Mutex::new(Engine {
        job: the_job,
        reader: Some(reader),
        end_logged: false,
    }));
    let (cmd_tx, cmd_rx) = watch::channel(Command {
        knobs: controller.knobs(),
        paused: true,
    });
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..policy.limits.workers.max {
        workers.spawn(
            super::worker::run(i, sh.clone(), engine.clone(), cmd_rx.clone())
                .instrument(telemetry.span().clone()),
        );
    }
    tracing::info!(job = %job, table = %target.table_q, key = %target.key_name, knobs = ?controller.knobs(), "running");

    let started = Instant::now();
    let mut tick = tokio::time::interval(policy.controller.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state;
    let mut paused_since: Option<DateTime<Utc>> = None;
    let mut pause_reason = String::new();
    let signal_names: Vec<&str> = policy.signals.iter().map(|s| s.name.as_str()).collect();
    let mut stopped_by_signal = false;
    let mut last_switch: Option<bool> = None;
    let mut link = Link {
        conn: Some(ctl),
        pid: ctl_pid,
        incarnation,
        down: None,
        table: (!policy.job.share_table).then(|| target.table_q.clone()),
        epoch,
        lease: policy.job.lease,
    };
    let mut unrecorded: Vec<crate::controller::Decision> = Vec::new();
    let mut vacuum = super::vacuum::Watch::new(policy.job.vacuum, &url, &job, &target.table_q);
    loop {
        // A loss found after the tick's decision (writing its records)
        // holds the workers now, as its WARN says, not from the next tick:
        // that tick may reconnect at once, and the pause decision never
        // comes (the log then says "database reachable again" instead).
        if let Some(d) = &link.down {
            engine
                .lock()
                .await
                .job
                .handle_link_down(Instant::now(), d.cause.clone());
        }
        tokio::select! {
            _ = tick.tick() => {}
            r = workers.join_next(), if !workers.is_empty() => {
                if let Some(Err(e)) = r {
                    tracing::error!(error = %e, "stopping the job: a worker crashed");
                    engine.lock().await.job.handle_failure(format!("a worker crashed: {e}"));
                    sh.request_stop();
                }
                if !workers.is_empty() { continue; }
            }
            _ = stop_signal.changed(), if !stopped_by_signal => {
                if *stop_signal.borrow() {
                    stopped_by_signal = true;
                    tracing::info!(job = %job, "stop requested: no new batches; letting in-flight batches commit");
                    engine.lock().await.job.handle_stop();
                    sh.request_stop();
                }
                continue;
            }
        }
        let now = Utc::now();
        let readings = sampler.sample().await;
        telemetry.readings(&readings);
        let mut batches = Vec::new();
        let mut retries = std::collections::BTreeMap::new();
        while let Ok(b) = out_rx.try_recv() {
            metrics.observe_batch(&b);
            if let Some(budget) = &opts.budget {
                budget.observe(&b);
            }
            if let Some(class) = b.error {
                telemetry.retry(class);
                *retries.entry(class.as_str()).or_insert(0u64) += 1;
            }
            batches.push(b);
        }
        // The pause switch must be readable before any batch is taken:
        // when it is not, the workers hold at once (fail-safe) and the
        // coordinator reconnects, re-takes the runner lock and checks the
        // server has not restarted before they go on.
        if link.conn.is_none() && !sh.stopping() {
            match link.reconnect(&url, &app, &store, &job).await {
                Reconnect::StillDown => {}
                Reconnect::Up { incarnation } => {
                    // The reader's idle connection took the same path as
                    // the control session that was lost: replace it now,
                    // or the next read would find it dead only after its
                    // client deadline (a half-open path: 7 s and more).
                    let fresh =
                        tokio::time::timeout(CTL_TIMEOUT, crate::store::connect(&url, &app))
                            .await
                            .ok()
                            .and_then(Result::ok);
                    let mut e = engine.lock().await;
                    e.reader = fresh;
                    // A new incarnation makes the Job discard its state.
                    e.job
                        .handle_link_up(Instant::now(), incarnation, link.epoch);
                }
                Reconnect::StandDown(msg) => {
                    // Batches in hand are dropped, not retried: another
                    // runner owns the job now.
                    engine.lock().await.job.handle_stand_down(msg);
                    sh.request_stop();
                }
            }
        }
        let switch = match link.conn.as_mut() {
            Some(c) => match tokio::time::timeout(CTL_TIMEOUT, store.switch(c, &job)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    link.lose(format!("control connection lost: {}", plain(&e)));
                    None
                }
                Err(_) => {
                    link.lose(format!(
                        "control connection lost: reading the pause switch took longer than {}",
                        fmt_dur(CTL_TIMEOUT)
                    ));
                    None
                }
            },
            None => None,
        };
        // The lease says "alive" to a standby: renewed every tick, only
        // under this runner's epoch, and never once it stood down.
        let standing_down = matches!(engine.lock().await.job.end(), Some(End::StoodDown(_)));
        if let Some(c) = link.conn.as_mut().filter(|_| !standing_down) {
            match tokio::time::timeout(
                CTL_TIMEOUT,
                store.renew_lease(c, &job, link.epoch, link.lease),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) if crate::store::jobs::Fenced::is(&e) => {
                    engine.lock().await.job.handle_stand_down(e.to_string());
                    sh.request_stop();
                }
                Ok(Err(e)) => {
                    if is_lost(&e) {
                        link.lose(format!("control connection lost: {}", plain(&e)));
                    } else {
                        tracing::warn!(error = %e, "renewing the lease failed (renewed again next tick)");
                    }
                }
                Err(_) => link.lose(format!(
                    "control connection lost: renewing the lease took longer than {}",
                    fmt_dur(CTL_TIMEOUT)
                )),
            }
        }
        // As after a crash: batches acknowledged by an old server
        // incarnation may be gone (asynchronous replication), so the Job
        // trusts nothing in memory; the stored cursor and progress records
        // are. It asks for them once no attempt is in flight.
        let load = engine.lock().await.job.poll_store();
        if let (Some(StoreIo::LoadPosition), Some(c)) = (load, link.conn.as_mut()) {
            // The reader reconnects at once, as at the start: its backend
            // is what tells `pacer status` a runner is alive while paused.
            let reloaded = async {
                let r = bounded(restart_from_store(c, &store, &job)).await?;
                let reader = tokio::time::timeout(CTL_TIMEOUT, crate::store::connect(&url, &app))
                    .await
                    .map_err(|_| anyhow::anyhow!("connecting the reader timed out"))??;
                anyhow::Ok((r, reader))
            };
            match reloaded.await {
                Ok(((stored, done), reader)) => {
                    let mut e = engine.lock().await;
                    sh.incarnation.store(stored.incarnation, Ordering::SeqCst);
                    sh.restart_seen.store(false, Ordering::SeqCst);
                    e.reader = Some(reader);
                    e.job.handle_position(Instant::now(), stored);
                    e.log_events();
                    drop(e);
                    rows_before = done;
                    tracing::warn!(
                        job = %job,
                        rows_done = done,
                        "the database server restarted (pg_postmaster_start_time changed): in-memory dispatch state discarded; \
                         resuming from the stored cursor and progress, as after a crash"
                    );
                }
                Err(e) => link.lose(format!("control connection lost: {e:#}")),
            }
        }
        // Fail-safe: from the moment the switch cannot be read, the Job
        // hands out no batch; it also bounds the outage (max_outage).
        let restarting = {
            let mut e = engine.lock().await;
            if let Some(d) = &link.down {
                e.job.handle_link_down(Instant::now(), d.cause.clone());
            }
            e.job.handle_local_pause(sh.local_pause.get().is_some());
            e.job.handle_tick(Instant::now());
            e.log_events();
            e.job.restarting()
        };
        // A pause asked for over HTTP while the store could not be written
        // is stored as soon as it can be, so it survives this process.
        let local = sh.local_pause.get();
        if let (Some(lp), Some(c)) = (&local, link.conn.as_mut())
            && !switch.as_ref().is_some_and(|s| s.paused)
        {
            match bounded(store.set_paused(c, &job, true, &lp.by, &lp.reason)).await {
                Ok(()) => sh.local_pause.clear_if(lp),
                Err(e) => link.lose(format!("control connection lost: {e:#}")),
            }
        } else if let Some(lp) = &local
            && switch.as_ref().is_some_and(|s| s.paused)
        {
            sh.local_pause.clear_if(lp);
        }
        let outage = link.down.as_ref().map(|d| ManualPause {
            by: "pacer".into(),
            reason: d.cause.clone(),
        });
        let rebuilding = restarting.then(|| ManualPause {
            by: "pacer".into(),
            reason: "the database server restarted; waiting for in-flight batches before resuming from the stored progress".into(),
        });
        let manual = outage
            .or(rebuilding)
            .or_else(|| {
                switch.as_ref().filter(|s| s.paused).map(|s| ManualPause {
                    by: s.by.clone(),
                    reason: s.reason.clone(),
                })
            })
            .or(local)
            .or_else(|| opts.budget.as_ref().and_then(|b| b.pause()));
        let now_paused = switch.as_ref().is_some_and(|s| s.paused);
        if link.conn.is_some()
            && (last_switch.is_some_and(|p| p != now_paused)
                || (last_switch.is_none() && now_paused))
        {
            let s = switch.as_ref();
            tracing::info!(
                job = %job,
                paused = now_paused,
                by = s.map(|s| s.by.as_str()).unwrap_or(""),
                reason = s.map(|s| s.reason.as_str()).unwrap_or(""),
                "pause switch {}",
                if now_paused { "on" } else { "off" }
            );
        }
        if link.conn.is_some() {
            last_switch = Some(now_paused);
        }
        let sample_signals: serde_json::Value = signal_names
            .iter()
            .zip(&readings)
            .map(|(n, r)| (n.to_string(), serde_json::json!(r.value)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let inputs = Inputs {
            readings,
            batches,
            manual_pause: manual,
            app_limited: sh.app_limited.swap(false, Ordering::Relaxed),
        };
        let decision = controller.step(now, &inputs);
        // The Job and the workers hear of a pause before anyone else (the
        // log, the decisions table): once it is announced, it holds.
        let paused = decision.state == State::Paused;
        if let Some(b) = &opts.budget {
            b.set_running(!paused);
        }
        engine
            .lock()
            .await
            .job
            .handle_command(Instant::now(), paused, decision.knobs.batch_size);
        cmd_tx.send_replace(Command {
            knobs: decision.knobs,
            paused,
        });
        telemetry.decision(&decision);
        vacuum.tick(&decision);
        if decision.changed() {
            // Decisions made while the store was unreachable (the outage's
            // own pause) are recorded once it is back.
            unrecorded.push(decision.clone());
        }
        // Nothing is recorded once another runner owns the job.
        let standing_down = matches!(engine.lock().await.job.end(), Some(End::StoodDown(_)));
        while let (Some(d), Some(c)) = (
            unrecorded.first(),
            link.conn.as_mut().filter(|_| !standing_down),
        ) {
            match bounded(store.record_decision(c, &job, d)).await {
                Ok(()) => {
                    unrecorded.remove(0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording the decision failed");
                    if is_lost(&e) {
                        link.lose(format!("control connection lost: {e:#}"));
                    } else {
                        unrecorded.remove(0);
                    }
                }
            }
        }
        state = decision.state;
        if state == State::Paused {
            if paused_since.is_none() {
                paused_since = Some(now);
                pause_reason = decision
                    .causes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
            }
        } else {
            paused_since = None;
        }
        // The long-pause warnings are telemetry's; the stop after
        // job.max_pause is the Job's. Once it has ended, no WARN per tick.
        let (job_rows, position, stood_down) = {
            let mut e = engine.lock().await;
            if e.job.end().is_none() {
                let _ = telemetry.pause_check(now, paused_since, &pause_reason);
            }
            e.job.handle_tick(Instant::now());
            if e.ended() {
                sh.request_stop();
            }
            (
                e.job.rows(),
                e.job.position(),
                matches!(e.job.end(), Some(End::StoodDown(_))),
            )
        };
        let rows_done = rows_before as u64 + job_rows;
        let pending = row
            .rows_at_start
            .map(|n| (n.max(0) as u64).saturating_sub(rows_done));
        let line = telemetry.progress(now, rows_done, pending, state.as_str(), decision.knobs);
        // Nothing is saved on a new server incarnation until the Job's
        // state has been rebuilt from what that server has.
        let Some(((pass, cursor), c)) = position.filter(|_| !stood_down).zip(link.conn.as_mut())
        else {
            if workers.is_empty() {
                break;
            }
            continue;
        };
        if let Err(e) = bounded(store.record_sample(
            c,
            &job,
            &crate::store::samples::NewSample {
                at: now,
                state: state.as_str(),
                knobs: &decision.knobs,
                rows_done,
                rows_per_second: line.rate,
                signals: &sample_signals,
                retries: &retries,
                view: Some(&decision.view),
            },
        ))
        .await
        {
            tracing::warn!(error = %e, "recording the tick's sample failed");
            if is_lost(&e) {
                link.lose(format!("control connection lost: {e:#}"));
                continue;
            }
        }
        if let Err(e) = bounded(store.save_position(
            c,
            &job,
            link.epoch,
            state.as_str(),
            pass,
            cursor.as_deref(),
            &decision.knobs,
        ))
        .await
        {
            if crate::store::jobs::Fenced::is(&e) {
                engine.lock().await.job.handle_stand_down(e.to_string());
                sh.request_stop();
            } else {
                tracing::warn!(error = %e, "saving the position failed (it is saved again next tick)");
                if is_lost(&e) {
                    link.lose(format!("control connection lost: {e:#}"));
                }
            }
        }
        if workers.is_empty() {
            break;
        }
    }

    let elapsed = started.elapsed();
    let (trips, attempts) = sh.trips.get();
    tracing::info!(
        round_trips = trips,
        batches = attempts,
        per_batch = format!("{:.2}", trips as f64 / attempts.max(1) as f64),
        one_statement = sh.one_statement.get() == Some(&true),
        "round trips of the workers and the reader (batch attempts and key reads; connecting not counted)"
    );
    let (end, position, rows_now) = {
        let e = engine.lock().await;
        (e.job.end().cloned(), e.job.position(), e.job.rows())
    };
    if let Some(End::StoodDown(msg)) = &end {
        // The job belongs to the other runner now: record nothing.
        let _ = shutdown(server).await;
        return Ok(RunOutcome {
            code: exit::FAILED,
            summary: format!("job {job}: {msg}"),
        });
    }
    // The end is recorded on the database, which may be down right now:
    // wait for it (within max_outage) rather than lose the outcome. Only
    // under this runner's epoch: the connection may not hold the runner
    // lock any more, and another runner may own the job by now.
    let epoch = link.epoch;
    let mut ctl = match link.conn.take() {
        Some(c) => c,
        None => match wait_to_record(
            &mut link,
            &url,
            &app,
            policy.limits.max_outage,
            &job,
            &mut stop_signal,
        )
        .await
        {
            Ok(c) => c,
            Err(gave_up) => {
                let _ = shutdown(server).await;
                let cause = link.down.map(|d| d.cause).unwrap_or_default();
                let why = match &end {
                    Some(End::Failed(msg)) => msg.clone(),
                    _ if gave_up == GaveUp::StopRequested => format!(
                        "a stop request ended the wait for the database to record how the run ended ({cause})"
                    ),
                    _ => format!(
                        "the database was unreachable for {} (limits.max_outage {}): {cause}",
                        fmt_dur(elapsed.min(policy.limits.max_outage)),
                        fmt_dur(policy.limits.max_outage)
                    ),
                };
                return Ok(RunOutcome {
                    code: exit::FAILED,
                    summary: format!(
                        "job {job} failed: {why}. The outcome could not be recorded; committed progress is intact. \
                         Resume with `pacer run --policy {}` once the database is back",
                        opts.policy_path.display()
                    ),
                });
            }
        },
    };

    // Everything is committed or rolled back; record the end.
    let total_done = rows_before as u64 + rows_now;
    // No position while the state is being rebuilt after a restart: the
    // stored one stands, and only the state is recorded.
    let pass = position.as_ref().map_or(row.pass, |p| p.0);
    let max_pause_exceeded = matches!(end, Some(End::MaxPause));
    let knobs = controller.knobs();
    let rate = rows_now as f64 / elapsed.as_secs_f64().max(1e-3);
    let left = row.rows_at_start.map(|n| (n - total_done as i64).max(0));
    let resume = format!("pacer run --policy {}", opts.policy_path.display());
    let outcome = match &end {
        Some(End::Failed(msg)) => {
            let unrecorded = record_end(
                &store,
                &mut ctl,
                &job,
                epoch,
                ("failed", msg),
                position.as_ref(),
                &knobs,
            )
            .await;
            RunOutcome {
                code: exit::FAILED,
                summary: format!(
                    "job {job} failed: {msg}. {total_done} rows done (progress intact); fix the cause and resume with `{resume}`{unrecorded}"
                ),
            }
        }
        Some(End::Finished(Finish::Done)) => {
            bounded(store.save_position(&mut ctl, &job, epoch, "done", pass, None, &knobs)).await?;
            bounded(store.finish(&mut ctl, &job, epoch, "done", "complete")).await?;
            // The timeline ends with the job's end, not its last tick.
            let last = bounded(store.record_sample(
                &mut ctl,
                &job,
                &crate::store::samples::NewSample {
                    at: Utc::now(),
                    state: "done",
                    knobs: &knobs,
                    rows_done: total_done,
                    rows_per_second: 0.0,
                    signals: &serde_json::json!({}),
                    retries: &Default::default(),
                    view: None,
                },
            ))
            .await;
            if let Err(e) = last {
                tracing::warn!(error = %e, "recording the final sample failed");
            }
            RunOutcome {
                code: exit::OK,
                summary: format!(
                    "job {job} done: {rows_now} rows in this run ({total_done} in total) in {} ({rate:.0} rows/s); \
                     a final sweep found nothing pending",
                    fmt_dur(elapsed)
                ),
            }
        }
        Some(End::Finished(Finish::Stuck { keys })) => {
            let msg = format!(
                "{keys} rows still match job.pending after job.update was applied to them, and the update changed none: \
                 the update does not clear the pending condition"
            );
            let unrecorded = record_end(
                &store,
                &mut ctl,
                &job,
                epoch,
                ("failed", &msg),
                position.as_ref(),
                &knobs,
            )
            .await;
            RunOutcome {
                code: exit::FAILED,
                summary: format!("job {job} failed: {msg}{unrecorded}"),
            }
        }
        _ => {
            let why = if max_pause_exceeded {
                "stopped after job.max_pause"
            } else if stopped_by_signal {
                "stopped by signal"
            } else {
                "stopped"
            };
            if let Some((pass, cursor)) = &position {
                bounded(store.save_position(
                    &mut ctl,
                    &job,
                    epoch,
                    "stopped",
                    *pass,
                    cursor.as_deref(),
                    &knobs,
                ))
                .await?;
            }
            bounded(store.finish(&mut ctl, &job, epoch, "stopped", why)).await?;
            let left = left
                .map(|n| format!("~{n}"))
                .unwrap_or_else(|| "unknown".into());
            RunOutcome {
                code: if max_pause_exceeded {
                    exit::MAX_PAUSE
                } else {
                    exit::OK
                },
                summary: format!(
                    "job {job} {why}: {total_done} rows done, {left} left; resume with `{resume}`"
                ),
            }
        }
    };
    if outcome.code == exit::OK && matches!(end, Some(End::Finished(Finish::Done))) {
        telemetry.finish(&outcome.summary);
    }
    if let Err(e) = shutdown(server).await {
        tracing::warn!(error = %e, "stopping the HTTP server");
    }
    // A standby may take over at once: this runner is gone.
    if let Err(e) = bounded(store.release_lease(&mut ctl, &job, epoch)).await {
        tracing::warn!(error = %e, "releasing the lease failed (a standby takes over once it expires)");
    }
    // Closing sends a goodbye and waits for nothing we need: bounded, as a
    // silent path would hold the exit.
    let _ = tokio::time::timeout(CTL_TIMEOUT, sqlx::Connection::close(ctl)).await;
    Ok(outcome)
}

/// Record a failed run's end. The failure is what the user must see: a
/// store that cannot be written now (the same fault, often) is reported
/// after it, never instead of it. Returns the text to append.
async fn record_end(
    store: &Store,
    ctl: &mut PgConnection,
    job: &str,
    epoch: i64,
    (state, message): (&str, &str),
    position: Option<&(i32, Option<String>)>,
    knobs: &crate::controller::Knobs,
) -> String {
    let result = async {
        if let Some((pass, cursor)) = position {
            bounded(store.save_position(ctl, job, epoch, state, *pass, cursor.as_deref(), knobs))
                .await?;
        }
        bounded(store.finish(ctl, job, epoch, state, message)).await
    }
    .await;
    match result {
        Ok(()) => String::new(),
        Err(e) => {
            let e = crate::text::message_line(&format!("{e:#}"));
            tracing::warn!(error = %e, "recording the failure failed");
            format!(" (recording the failure in pacer's tables failed too: {e})")
        }
    }
}

async fn shutdown(server: Option<HttpServer>) -> anyhow::Result<()> {
    match server {
        Some(s) => s.shutdown().await,
        None => Ok(()),
    }
}

/// Serve `/metrics`, `/status` and the control API on `[http] listen`. A
/// refused or taken address is an error naming `[http] listen`: exit 2 for
/// a configuration the operator must change (no token for a non-loopback
/// address, weak token, unresolvable name), 3 when the address is in use.
async fn serve_http(
    policy: &Policy,
    t: &JobTelemetry,
    local_pause: Arc<super::LocalPause>,
) -> anyhow::Result<HttpServer> {
    let listen = &policy.http.listen;
    http::serve(
        listen,
        http::token_from_env(),
        t.metrics(),
        Arc::new(super::control::StoreControl::new(policy).with_local_pause(local_pause)),
    )
    .await
    .map_err(|e| e.into_fail(listen))
}

/// Waits, within `limits.max_outage`, for the database to come back so the
/// run's end can be recorded, and says so: a run that has stopped taking
/// batches and then sits silent for up to half an hour looks hung, and an
/// operator kills it. A stop request (after the one that ended the run,
/// if one did) ends the wait: every committed batch is safe, and the next
/// `pacer run` resumes after the last one.
async fn wait_to_record(
    link: &mut Link,
    url: &str,
    app: &str,
    limit: std::time::Duration,
    job: &str,
    stop_signal: &mut watch::Receiver<bool>,
) -> Result<PgConnection, GaveUp> {
    let left = link
        .down
        .as_ref()
        .map_or(limit, |d| limit.saturating_sub(d.since.elapsed()));
    // Past max_outage already (the outage ended the run): one last try,
    // nothing to wait for.
    if !left.is_zero() {
        tracing::warn!(
            job = %job,
            "the database is unreachable: waiting up to {} (limits.max_outage) to record how the run ended; \
             every committed batch is safe. A SIGINT/SIGTERM now exits without recording it \
             (the next `pacer run` resumes after the last committed batch)",
            fmt_dur(left)
        );
    }
    tokio::select! {
        c = link.wait_until_up(url, app, limit) => c.ok_or(GaveUp::MaxOutage),
        // A dropped sender (no signal handler) is no request: the branch
        // is disabled, and the wait runs its course.
        Ok(()) = stop_signal.changed() => Err(GaveUp::StopRequested),
    }
}

/// Why `wait_to_record` gave up on the database.
#[derive(Debug, PartialEq)]
enum GaveUp {
    MaxOutage,
    StopRequested,
}
