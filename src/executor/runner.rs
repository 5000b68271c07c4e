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
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::Instrument as _;

use super::engine::Engine;
use super::job::{self, End, Finish, Job, StoreIo, Stored};
use super::target::Target;
use super::{Command, Shared};
use crate::cli::exit;
use crate::controller::{Controller, Inputs, ManualPause, State, fmt_dur};
use crate::policy::Policy;
use crate::store::jobs::NewJob;
use crate::store::{Fail, Store, database_url, runner_app_name};
use crate::telemetry::http::{self, HttpError, HttpServer};
use crate::telemetry::{JobTelemetry, TelemetryOptions};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy_path: PathBuf,
    pub accept_policy_change: bool,
    pub dry_run: bool,
    /// Batch lines at INFO instead of DEBUG.
    pub log_batches: bool,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub code: u8,
    /// The one-line summary printed at the end.
    pub summary: String,
}

/// How long a new run waits for an earlier run's backends to go away.
const STALE_WAIT: Duration = Duration::from_secs(15);

/// Deadline of one coordinator query or connection attempt: a half-open
/// connection must not stall the tick, since the tick is what enforces a
/// pause.
const CTL_TIMEOUT: Duration = Duration::from_secs(3);

/// Who holds a lock that was taken when we tried but free when we looked.
const HOLDER_UNKNOWN: &str = "holder unknown";

/// Longest wait between two reconnection attempts during an outage.
const RECONNECT_CAP: Duration = Duration::from_secs(2);

/// How long the coordinator lets its own previous control session keep
/// the runner lock before ending it (see `Link::reconnect`).
const OWN_SESSION_GRACE: Duration = Duration::from_secs(5);

/// The coordinator's connection: it holds the runner lock and reads the
/// pause switch, so while it is down the job is paused.
struct Link {
    conn: Option<PgConnection>,
    /// Backend PID of the last connection, to tell our own lingering
    /// session from another runner holding the lock.
    pid: i32,
    /// The server incarnation that PID belongs to: a PID of an earlier
    /// incarnation is never waited on or ended.
    incarnation: i64,
    down: Option<Down>,
    /// The target table whose lock the run holds with the runner lock
    /// (`None` with `[job] share_table = true`).
    table: Option<String>,
    /// The job epoch taken with the runner lock (fencing): the job's row
    /// is written only while it still carries it.
    epoch: i64,
}

struct Down {
    since: Instant,
    /// Plain words for the user: `database unreachable: ...`.
    cause: String,
    tries: u32,
    next_try: Instant,
}

impl Down {
    /// A new cause is logged once, not once per attempt.
    fn set_cause(&mut self, cause: String) {
        if cause != self.cause {
            tracing::warn!(cause = %cause, tries = self.tries, "still paused: the database cannot be used");
            self.cause = cause;
        }
    }
}

enum Reconnect {
    StillDown,
    Up { incarnation: i64 },
    StandDown(String),
}

impl Link {
    fn lose(&mut self, cause: String) {
        if let Some(c) = self.conn.take() {
            // Dropped, not closed: a close could hang on a half-open socket.
            drop(c);
        }
        match &mut self.down {
            Some(d) => d.set_cause(cause),
            None => {
                tracing::warn!(cause = %cause, "pausing: pacer cannot read its pause switch; no new batches until it can");
                let now = Instant::now();
                self.down = Some(Down {
                    since: now,
                    cause,
                    tries: 0,
                    next_try: now,
                });
            }
        }
    }

    /// One reconnection attempt if its backoff has passed: connect, check
    /// the server is a primary, re-take the runner lock and take a new
    /// epoch (the Job learns it from `handle_link_up`).
    async fn reconnect(&mut self, url: &str, app: &str, store: &Store, job: &str) -> Reconnect {
        let Some(d) = &mut self.down else {
            return Reconnect::StillDown;
        };
        if Instant::now() < d.next_try {
            return Reconnect::StillDown;
        }
        d.tries += 1;
        d.next_try = Instant::now() + crate::store::backoff(d.tries, RECONNECT_CAP);
        let attempt = async {
            let mut c = crate::store::connect(url, &format!("{app}:control")).await?;
            let (pid, inc): (i32, i64) = sqlx::query_as(super::batch::INCARNATION_SQL)
                .fetch_one(&mut c)
                .await?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await?;
            anyhow::Ok((c, pid, inc, standby))
        };
        let (mut c, pid, inc, standby) = match tokio::time::timeout(CTL_TIMEOUT, attempt).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                d.set_cause(format!("database unreachable: {}", plain_any(&e)));
                return Reconnect::StillDown;
            }
            Err(_) => {
                d.set_cause(format!(
                    "database unreachable: no answer within {}",
                    fmt_dur(CTL_TIMEOUT)
                ));
                return Reconnect::StillDown;
            }
        };
        if standby {
            d.set_cause("database unreachable: the server is a standby (in recovery); waiting for a primary".into());
            return Reconnect::StillDown;
        }
        match try_runner_lock(&mut c, store, job).await {
            Ok(None) => {
                if let Some(table) = &self.table {
                    match try_table_lock(&mut c, table).await {
                        Ok(None) => {}
                        Ok(Some(holder)) => {
                            return Reconnect::StandDown(format!(
                                "while the database was unreachable another pacer job took table {table} ({holder}); \
                                 standing down: one job per table"
                            ));
                        }
                        Err(e) => {
                            d.set_cause(format!("database unreachable: {}", plain_any(&e)));
                            return Reconnect::StillDown;
                        }
                    }
                }
            }
            Ok(Some(holder))
                if holder.contains(&format!("pid {} ", self.pid)) || holder == HOLDER_UNKNOWN =>
            {
                // Our previous session has not ended yet (or ended between
                // the two queries: no holder found; a genuine other runner
                // is named on the next attempt). It ends by itself when
                // pacer dropped a working socket, but not when the network
                // half-opened: the server keeps it, and the runner lock with
                // it. After a grace it is ended, like an ambiguous commit's
                // backend; only on the same server incarnation.
                if holder != HOLDER_UNKNOWN
                    && inc == self.incarnation
                    && d.since.elapsed() > OWN_SESSION_GRACE
                {
                    let _ = tokio::time::timeout(
                        CTL_TIMEOUT,
                        sqlx::query("SELECT pg_terminate_backend($1)")
                            .bind(self.pid)
                            .execute(&mut c),
                    )
                    .await;
                    d.set_cause(format!(
                        "control connection lost: ending the previous control session (pid {}), which still holds the runner lock",
                        self.pid
                    ));
                } else {
                    d.set_cause("control connection lost: waiting for the previous session to release the runner lock".into());
                }
                return Reconnect::StillDown;
            }
            Ok(Some(holder)) => {
                return Reconnect::StandDown(format!(
                    "while the database was unreachable another pacer took over job {job:?} ({holder}); \
                     standing down: one runner per job"
                ));
            }
            Err(e) => {
                d.set_cause(format!("database unreachable: {}", plain_any(&e)));
                return Reconnect::StillDown;
            }
        }
        // Every acquisition of the runner lock takes a new epoch: a runner
        // that held the job before, this one included, commits nothing
        // more under the old one. Attempts fenced by this very bump come
        // back while the link is still down: the Job applies them again
        // under the new epoch.
        let bumped =
            tokio::time::timeout(2 * CTL_TIMEOUT, store.bump_epoch(&mut c, job, CTL_TIMEOUT)).await;
        let new_epoch = match bumped {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                d.set_cause(format!(
                    "control connection lost: taking a new job epoch failed: {}",
                    plain_any(&e)
                ));
                return Reconnect::StillDown;
            }
            Err(_) => {
                d.set_cause(format!(
                    "control connection lost: taking a new job epoch took longer than {}",
                    fmt_dur(2 * CTL_TIMEOUT)
                ));
                return Reconnect::StillDown;
            }
        };
        let outage = d.since.elapsed();
        tracing::info!(
            outage = %fmt_dur(Duration::from_millis(outage.as_millis() as u64)),
            epoch = new_epoch,
            "database reachable again; runner lock re-taken"
        );
        self.conn = Some(c);
        self.pid = pid;
        self.incarnation = inc;
        self.epoch = new_epoch;
        self.down = None;
        Reconnect::Up { incarnation: inc }
    }

    /// At the end of a run: a plain connection to record the outcome,
    /// trying until `limit` since the outage began.
    async fn wait_until_up(
        &mut self,
        url: &str,
        app: &str,
        limit: Duration,
    ) -> Option<PgConnection> {
        let since = self.down.as_ref().map_or_else(Instant::now, |d| d.since);
        let mut n = 0;
        loop {
            let c = tokio::time::timeout(
                CTL_TIMEOUT,
                crate::store::connect(url, &format!("{app}:control")),
            )
            .await;
            if let Ok(Ok(c)) = c {
                return Some(c);
            }
            if since.elapsed() > limit {
                return None;
            }
            n += 1;
            tokio::time::sleep(crate::store::backoff(n, RECONNECT_CAP)).await;
        }
    }
}

fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .is_some_and(|e| super::batch::classify(e).is_lost())
    })
}

fn plain(e: &anyhow::Error) -> String {
    plain_any(e)
}

/// An error in plain words (see `batch::plain_error`).
fn plain_any(e: &anyhow::Error) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) {
        Some(s) => super::batch::plain_error(s),
        None => {
            let raw = format!("{e:#}");
            let lower = raw.to_lowercase();
            if lower.contains("connection refused") {
                format!("connection refused (the server is down or restarting): {raw}")
            } else if lower.contains("starting up") || lower.contains("shutting down") {
                format!("the server is restarting: {raw}")
            } else {
                raw
            }
        }
    }
}

/// What the (new) server has, for the Job to start again from: the stored
/// cursor and pass, the next progress record id, the server's incarnation;
/// with the rows done so far.
async fn restart_from_store(
    c: &mut PgConnection,
    store: &Store,
    job: &str,
) -> anyhow::Result<(Stored, i64)> {
    let row = store.job(c, job).await?.ok_or_else(|| {
        Fail::failed(format!(
            "job {job:?} is missing from pacer's tables after the restart"
        ))
    })?;
    let (done, next_id) = store.progress_totals(c, job).await?;
    let (_, inc): (i32, i64) = sqlx::query_as(super::batch::INCARNATION_SQL)
        .fetch_one(&mut *c)
        .await?;
    let stored = Stored {
        pass: row.pass,
        cursor: row.cursor_key,
        next_batch_id: next_id,
        incarnation: inc,
    };
    Ok((stored, done))
}

/// Hash of what may change between runs (limits, controller, signals,
/// windows): changes are allowed and logged.
fn settings_hash(p: &Policy) -> String {
    use sha2::{Digest, Sha256};
    let v = serde_json::json!({
        "limits": p.limits, "controller": p.controller, "signals": p.signals, "windows": p.windows,
    });
    Sha256::digest(v.to_string().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
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
    // The control connection (pacer's own tables, one small write a tick)
    // is named apart from the workers, so `pacer:<job>` in pg_stat_activity
    // means exactly the backends writing the target table.
    let mut ctl = crate::store::connect(&url, &format!("{app}:control")).await?;
    if let Some(problem) = crate::store::pooler::transaction_pooler(&mut ctl, &url).await? {
        return Err(Fail::invalid(problem));
    }
    let target = Arc::new(Target::resolve(&mut ctl, policy).await?);
    if opts.dry_run {
        return dry_run(&mut ctl, policy, &target).await;
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
    let server = serve_http(policy, &telemetry, local_pause.clone()).await?;
    // The runner lock comes first: a second `pacer run` of a running job
    // must touch nothing (no migration, no probe on live rows) before it
    // learns it is not the runner.
    let store = Store::for_policy(policy);
    take_runner_lock(&mut ctl, &store, &job).await?;
    if !policy.job.share_table {
        take_table_lock(&mut ctl, &target.table_q).await?;
    }
    wait_for_stale_backends(&mut ctl, &app).await?;
    store.migrate(&mut ctl).await?;
    probe_update(&mut ctl, policy, &target).await?;

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(
            crate::store::parse_url(&url)?.application_name(&format!("pacer-signals:{job}")),
        );

    // Job identity: create, or resume with the same fingerprint.
    let fingerprint = policy.fingerprint();
    let settings = settings_hash(policy);
    let row = match store.job(&mut ctl, &job).await? {
        Some(row) => {
            if row.fingerprint != fingerprint {
                if !opts.accept_policy_change {
                    return Err(Fail::invalid(format!(
                        "job {job:?}: job.pending or job.update (or table/key) changed since the job started \
                         (fingerprint {} → {fingerprint}); rows already done were done with the old SQL. \
                         Re-run with --accept-policy-change if that is intended, or use a new job.name",
                        row.fingerprint
                    )));
                }
                tracing::warn!(job = %job, old = %row.fingerprint, new = %fingerprint, "accepting changed pending/update (--accept-policy-change)");
                store
                    .accept_change(
                        &mut ctl,
                        &job,
                        &fingerprint,
                        &policy.job.pending,
                        &policy.job.update,
                    )
                    .await?;
            }
            if row.state == "done" {
                let (rows, _) = store.progress_totals(&mut ctl, &job).await?;
                let when = row.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                return Ok(RunOutcome {
                    code: exit::OK,
                    summary: format!(
                        "job {job} is already complete ({rows} rows, finished {when}); nothing to do. \
                         `pacer verify` checks for rows still pending; a new backfill needs a new job.name"
                    ),
                });
            }
            if row.settings_hash != settings {
                tracing::info!(job = %job, "limits/controller/signals/windows changed since the last run; using the new ones");
            }
            tracing::info!(job = %job, pass = row.pass, cursor = ?row.cursor_key, state = %row.state, "resuming");
            row
        }
        None => {
            let ctx = crate::signals::Context {
                pool: Some(pool.clone()),
            };
            let baselines = crate::signals::capture_baselines(policy, &ctx)
                .await
                .map_err(|e| Fail::invalid(format!("{e:#}")))?;
            let (count, exact) = target
                .count_pending(&mut ctl, Duration::from_secs(60))
                .await?;
            tracing::info!(job = %job, pending = count, exact, "new job");
            store
                .create_job(
                    &mut ctl,
                    &NewJob {
                        name: &job,
                        fingerprint: &fingerprint,
                        settings_hash: &settings,
                        table_name: &policy.job.table,
                        key_column: &policy.job.key,
                        pending_sql: &policy.job.pending,
                        update_sql: &policy.job.update,
                        baselines: &baselines,
                        rows_at_start: Some(count),
                    },
                )
                .await?;
            store
                .job(&mut ctl, &job)
                .await?
                .ok_or_else(|| Fail::failed("job row vanished after insert"))?
        }
    };
    store.mark_started(&mut ctl, &job, &settings).await?;
    // Before the progress totals are read: batches of a runner that lost
    // the job commit before this (or not at all), so the next batch id and
    // rows done below include them.
    let epoch = store
        .bump_epoch(&mut ctl, &job, policy.limits.statement_timeout)
        .await?;

    let sampler =
        crate::signals::build_sampler(policy, &crate::signals::Context { pool: Some(pool) })
            .await
            .map_err(|e| Fail::invalid(format!("{e:#}")))?;
    let mut controller =
        Controller::new(policy, &row.baselines).map_err(|e| Fail::invalid(e.to_string()))?;
    if let Some(k) = row.knobs {
        controller = controller.with_knobs(k);
    }
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
    };
    let mut unrecorded: Vec<crate::controller::Decision> = Vec::new();
    loop {
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
                    // A new incarnation makes the Job discard its state.
                    engine
                        .lock()
                        .await
                        .job
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
        // As after a crash: batches acknowledged by an old server
        // incarnation may be gone (asynchronous replication), so the Job
        // trusts nothing in memory; the stored cursor and progress records
        // are. It asks for them once no attempt is in flight.
        let load = engine.lock().await.job.poll_store();
        if let (Some(StoreIo::LoadPosition), Some(c)) = (load, link.conn.as_mut()) {
            // The reader reconnects at once, as at the start: its backend
            // is what tells `pacer status` a runner is alive while paused.
            let reloaded = async {
                let r = restart_from_store(c, &store, &job).await?;
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
            match store.set_paused(c, &job, true, &lp.by, &lp.reason).await {
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
            .or(local);
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
            match store.record_decision(c, &job, d).await {
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
        if let Err(e) = store
            .record_sample(
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
            )
            .await
        {
            tracing::warn!(error = %e, "recording the tick's sample failed");
            if is_lost(&e) {
                link.lose(format!("control connection lost: {e:#}"));
                continue;
            }
        }
        if let Err(e) = store
            .save_position(
                c,
                &job,
                link.epoch,
                state.as_str(),
                pass,
                cursor.as_deref(),
                &decision.knobs,
            )
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
        let _ = server.shutdown().await;
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
        None => match link
            .wait_until_up(&url, &app, policy.limits.max_outage)
            .await
        {
            Some(c) => c,
            None => {
                let _ = server.shutdown().await;
                let cause = link.down.map(|d| d.cause).unwrap_or_default();
                let why = match &end {
                    Some(End::Failed(msg)) => msg.clone(),
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
            store
                .save_position(&mut ctl, &job, epoch, "done", pass, None, &knobs)
                .await?;
            store
                .finish(&mut ctl, &job, epoch, "done", "complete")
                .await?;
            // The timeline ends with the job's end, not its last tick.
            let last = store
                .record_sample(
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
                )
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
                store
                    .save_position(
                        &mut ctl,
                        &job,
                        epoch,
                        "stopped",
                        *pass,
                        cursor.as_deref(),
                        &knobs,
                    )
                    .await?;
            }
            store.finish(&mut ctl, &job, epoch, "stopped", why).await?;
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
    if let Err(e) = server.shutdown().await {
        tracing::warn!(error = %e, "stopping the HTTP server");
    }
    let _ = sqlx::Connection::close(ctl).await;
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
            store
                .save_position(ctl, job, epoch, state, *pass, cursor.as_deref(), knobs)
                .await?;
        }
        store.finish(ctl, job, epoch, state, message).await
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
    .map_err(|e| match e {
        HttpError::Bind { .. } => Fail::failed(e.to_string()),
        HttpError::WeakToken { .. } => Fail::invalid(format!("[http] listen = {listen:?}: {e}")),
        _ => Fail::invalid(e.to_string()),
    })
}

/// Before the first write: apply one batch twice in a rolled-back
/// transaction. An update that leaves its rows pending is refused (the job
/// would never end); so is a non-idempotent one, unless the policy says
/// `[job] idempotent = false` (exactly-once batches keep it safe, but the
/// user must know they rely on them). Rows that are locked right now, or a
/// probe that hits a transient error, are no reason to refuse a job: the
/// batches themselves cope with both.
async fn probe_update(
    ctl: &mut PgConnection,
    policy: &Policy,
    target: &Target,
) -> anyhow::Result<()> {
    use crate::preflight::Probed;
    match crate::preflight::apply_twice(ctl, policy, target).await {
        Ok(Probed::Applied(p)) => {
            if let Some(msg) = crate::preflight::still_pending_problem(&p) {
                return Err(Fail::invalid(msg));
            }
            if let Some(msg) = crate::preflight::not_idempotent_problem(&p, policy) {
                return Err(Fail::invalid(msg));
            }
            if p.second > 0 {
                tracing::warn!(
                    rows = p.second,
                    "job.update is not idempotent (a second application changes rows); accepted ([job] idempotent = false): \
                     pacer applies each batch once, but anyone re-running it by hand would double-apply"
                );
            }
            Ok(())
        }
        Ok(Probed::NothingPending) => Ok(()),
        Ok(Probed::AllLocked { keys }) => {
            tracing::warn!(
                keys,
                "job.update not probed before the first write: every key of the first batch is locked by another session; continuing"
            );
            Ok(())
        }
        Err(e) if e.downcast_ref::<Fail>().is_some() => Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not probe job.update before the first write; continuing");
            Ok(())
        }
    }
}

/// One runner per job: a session advisory lock held by the control
/// connection for the whole run (released by Postgres if the runner dies).
async fn take_runner_lock(ctl: &mut PgConnection, store: &Store, job: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALE_WAIT;
    loop {
        let holder = try_runner_lock(ctl, store, job).await?;
        let Some(holder) = holder else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(Fail::failed(format!(
                "job {job:?} is already being run by another pacer ({holder}); one runner per job"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One job per table: two jobs with different names on one table would
/// each apply their update to the same rows (138,900 of 200,000 rows
/// applied twice with a non-idempotent update, measured). The lock is on
/// the root of a partition tree, so a job on a partition and one on its
/// parent exclude each other too. Held by the control connection with the
/// runner lock; `[job] share_table = true` skips it.
async fn take_table_lock(ctl: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    match try_table_lock(ctl, table).await? {
        None => Ok(()),
        Some(holder) => Err(Fail::failed(format!(
            "table {table} is already being backfilled by another pacer job ({holder}); two jobs on one table \
             can apply their updates to the same rows: wait for it, or set [job] share_table = true if both may write it"
        ))),
    }
}

/// One attempt at the table lock: `None` when taken, else who holds it.
async fn try_table_lock(ctl: &mut PgConnection, table: &str) -> anyhow::Result<Option<String>> {
    let key: String = sqlx::query_scalar(
        "SELECT 'pacer:table:' || coalesce(pg_partition_root($1::regclass), $1::regclass)::oid::text",
    )
    .bind(table)
    .fetch_one(&mut *ctl)
    .await?;
    try_advisory_lock(ctl, &key).await
}

/// One attempt at the runner lock: `None` when taken, else who holds it
/// (`pid N (application, address)`).
async fn try_runner_lock(
    ctl: &mut PgConnection,
    store: &Store,
    job: &str,
) -> anyhow::Result<Option<String>> {
    try_advisory_lock(ctl, &format!("pacer:{}:{job}", store.schema())).await
}

/// One attempt at the session advisory lock named `key`: `None` when
/// taken, else who holds it (`pid N (application, address)`).
async fn try_advisory_lock(ctl: &mut PgConnection, key: &str) -> anyhow::Result<Option<String>> {
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1)::bigint)")
        .bind(key)
        .fetch_one(&mut *ctl)
        .await?;
    if got {
        return Ok(None);
    }
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(format('pid %s (%s, %s)', a.pid, a.application_name, a.client_addr), ', ')
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() AND l.objid = (hashtext($1)::bigint & 4294967295)::oid",
    )
    .bind(key)
    .fetch_one(&mut *ctl)
    .await
    .unwrap_or(None);
    Ok(Some(holder.unwrap_or_else(|| HOLDER_UNKNOWN.into())))
}

/// Refuse to start while backends of an earlier run still live (a killed
/// runner's transaction may still be committing); wait a little first.
async fn wait_for_stale_backends(ctl: &mut PgConnection, app: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALE_WAIT;
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
        )
        .bind(app)
        .fetch_all(&mut *ctl)
        .await?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Fail::failed(format!(
                "backends of an earlier run of this job are still alive (application_name {app:?}, pids {pids:?}); \
                 wait for them to finish or end them with pg_terminate_backend, then run again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--dry-run`: reads, estimates and EXPLAINs; writes nothing.
async fn dry_run(
    ctl: &mut PgConnection,
    policy: &Policy,
    target: &Target,
) -> anyhow::Result<RunOutcome> {
    let est = target.estimate_pending(ctl).await?;
    let plan = target
        .explain(ctl, &target.first_read_literal(policy.limits.read_chunk))
        .await?;
    let (_, n, pending) = target
        .read_chunk(ctl, None, policy.limits.read_chunk)
        .await
        .map_err(|e| {
            Fail::invalid(format!(
                "job.pending: reading the first chunk failed: {}",
                super::target::db_message(&e)
            ))
        })?;
    let l = &policy.limits;
    println!(
        "dry run of job {} on {} (key {} {})",
        policy.job.name,
        target.table_q,
        target.key_name,
        target.key_type.sql()
    );
    println!("  pending rows (planner estimate): {est}");
    println!("  first chunk: {n} keys read, {} pending", pending.len());
    println!("  read plan: {}", crate::preflight::plan_summary(&plan));
    println!(
        "  batches: start {} rows, {} worker(s), sleep {}; lock_timeout {}, statement_timeout {}",
        l.batch_size.start,
        l.workers.start,
        humantime::format_duration(l.sleep.start),
        humantime::format_duration(l.lock_timeout),
        humantime::format_duration(l.statement_timeout)
    );
    if let Some(first) = pending.first_text() {
        println!("  first batch would start at key {first}");
    }
    Ok(RunOutcome {
        code: exit::OK,
        summary: "dry run: nothing written".into(),
    })
}
