//! A standby runner: waits until the active runner's lease has been
//! expired for `[job] takeover_after`, then takes the job over. Postgres is
//! the coordinator: the lease row (`store::lease`) says whether the active
//! runner is alive, the runner lock says who runs, the epoch fences the old
//! runner off. The wait polls with `pg_try_advisory_lock` on an idle
//! connection: a standby blocked in `pg_advisory_lock` would sit in a
//! `Lock` wait for days, and lock signals would count it.
//!
//! What the standby hands back is a connection that holds the runner lock
//! and has claimed the lease; the normal start path does the rest (migrate,
//! probe, bump the epoch, re-check the in-flight batches of the last run
//! from the stored progress, as after a crash).

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use tokio::sync::watch;

use crate::controller::fmt_dur;
use crate::policy::Policy;
use crate::store::lease::Lease;
use crate::store::{Fail, Store};

/// The longest pause between two looks at the lease.
const POLL_CAP: Duration = Duration::from_secs(2);

/// Deadline of one query or connection attempt of the standby.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one look at the job found.
enum Look {
    /// Keep waiting; the text says why (logged when it changes).
    Wait(String),
    /// The runner lock is ours: take the job.
    TakeOver(String),
}

/// How often the standby looks: a few times per `takeover_after`, but at
/// most every 2 s and at least every 200 ms.
fn poll_interval(policy: &Policy) -> Duration {
    (policy.job.takeover_after / 4).clamp(Duration::from_millis(200), POLL_CAP)
}

/// Wait for the job's lease to lapse and take the runner lock. `conn` is
/// the standby's idle connection (named `pacer:<job>:standby`, so a
/// takeover by another standby does not end it); a lost one is replaced.
/// Returns the connection holding the runner lock, renamed to the control
/// connection's name, or `None` when a signal stopped the wait.
pub(super) async fn wait(
    mut conn: Option<PgConnection>,
    url: &str,
    policy: &Policy,
    store: &Store,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<PgConnection>> {
    let job = &policy.job.name;
    let app = crate::store::runner_app_name(job);
    let every = poll_interval(policy);
    tracing::info!(
        job = %job,
        takeover_after = %fmt_dur(policy.job.takeover_after),
        poll = %fmt_dur(every),
        "standby: waiting for the active runner's lease to expire"
    );
    let mut said = String::new();
    let mut failures = 0u32;
    // Since when this standby has been able to watch the lease: after an
    // outage of the database both runners come back, and the active one
    // must get `takeover_after` to renew its lease before it is replaced.
    let mut watching = Instant::now();
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                match tokio::time::timeout(
                    STANDBY_TIMEOUT,
                    crate::store::connect(url, &format!("{app}:standby")),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        watching = Instant::now();
                        conn.insert(c)
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        note(&mut said, format!("database unreachable: {e:#}"));
                        pause(crate::store::backoff(failures, POLL_CAP), stop).await;
                        continue;
                    }
                    Err(_) => {
                        failures += 1;
                        note(
                            &mut said,
                            "database unreachable: connecting timed out".into(),
                        );
                        pause(crate::store::backoff(failures, POLL_CAP), stop).await;
                        continue;
                    }
                }
            }
        };
        match tokio::time::timeout(
            STANDBY_TIMEOUT,
            look(c, policy, store, &app, watching.elapsed()),
        )
        .await
        {
            Ok(Ok(Look::TakeOver(why))) => {
                let Some(mut c) = conn.take() else { continue };
                // Tables of an older version have no lease yet: the normal
                // start claims it once it has migrated them.
                match store.claim_lease(&mut c, job, policy.job.lease).await {
                    Err(e) if !no_lease_columns(&e) => return Err(e),
                    _ => {}
                }
                sqlx::query("SELECT set_config('application_name', $1, false)")
                    .bind(format!("{app}:control"))
                    .execute(&mut c)
                    .await?;
                tracing::warn!(job = %job, "standby: taking over: {why}");
                return Ok(Some(c));
            }
            Ok(Ok(Look::Wait(why))) => {
                failures = 0;
                note(&mut said, why);
            }
            Ok(Err(e)) if e.downcast_ref::<Fail>().is_some() => return Err(e),
            Ok(Err(e)) => {
                // A lock this session may have taken goes with it.
                conn = None;
                note(&mut said, format!("database unreachable: {e:#}"));
            }
            Err(_) => {
                conn = None;
                note(
                    &mut said,
                    format!(
                        "database unreachable: no answer within {}",
                        fmt_dur(STANDBY_TIMEOUT)
                    ),
                );
            }
        }
        pause(every, stop).await;
    }
}

/// Log the standby's state when it changes, not every poll.
fn note(said: &mut String, now: String) {
    if *said != now {
        tracing::info!("standby: {now}");
        *said = now;
    }
}

async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        // A dropped sender (no signal handling) just leaves the sleep.
        Ok(()) = stop.changed() => {}
    }
}

/// One look: is the job's runner alive, and may this standby replace it?
async fn look(
    c: &mut PgConnection,
    policy: &Policy,
    store: &Store,
    app: &str,
    watched: Duration,
) -> anyhow::Result<Look> {
    let job = &policy.job.name;
    let lease = if store.exists(c).await? {
        let mine = crate::store::schema_version();
        match store.applied_schema_version(c).await? {
            Some(v) if v != mine => return other_version(c, policy, store, v, mine).await,
            _ => store.lease(c, job).await?,
        }
    } else {
        None
    };
    if let Some(l) = lease.as_ref().filter(|l| l.expired_for.is_some()) {
        check_same_job(l, policy)?;
    }
    let expired_for = lease.as_ref().and_then(|l| l.expired_for);
    let holder = lease
        .as_ref()
        .and_then(|l| l.holder.clone())
        .unwrap_or_else(|| "no runner yet".into());
    let takeover_after = policy.job.takeover_after.as_secs_f64();
    match expired_for {
        // Released (the runner ended cleanly) or never taken: whoever takes
        // the runner lock first runs the job.
        None => match super::locks::try_runner_lock(c, store, job).await? {
            None => Ok(Look::TakeOver(format!(
                "the job's lease is free (last holder: {holder})"
            ))),
            Some(h) => Ok(Look::Wait(format!(
                "another runner is starting the job ({h})"
            ))),
        },
        Some(e) if e < 0.0 => Ok(Look::Wait(format!(
            "the active runner ({holder}) holds the lease"
        ))),
        Some(e) if e.min(watched.as_secs_f64()) < takeover_after => Ok(Look::Wait(format!(
            "the active runner's lease ({holder}) expired; taking over after {} unless it renews it",
            fmt_dur(policy.job.takeover_after)
        ))),
        Some(e) => {
            // The old runner is frozen, cut off or dead. Its backends go
            // first: the control session (if the server has not ended it:
            // idle_session_timeout) holds the runner lock, the workers'
            // sessions would make the start wait for them.
            let ended = end_old_backends(c, app).await?;
            let took = super::locks::try_runner_lock(c, store, job).await?;
            match took {
                None => Ok(Look::TakeOver(format!(
                    "the lease of {holder} expired {} ago (takeover_after {}); ended {ended} backend(s) of the old runner",
                    fmt_dur(Duration::try_from_secs_f64(e.max(0.0)).unwrap_or_default()),
                    fmt_dur(policy.job.takeover_after)
                ))),
                Some(h) => Ok(Look::Wait(format!(
                    "the lease of {holder} expired; waiting for the old runner's session to end ({h})"
                ))),
            }
        }
    }
}

/// pacer's tables are at another schema version: another pacer version
/// made them. A standby must not take the job over from a runner of that
/// version (refused, exit 2); but when none runs it (the lease released,
/// or a version without leases and the runner lock free), this one starts
/// the job as `pacer run` would, migrating the tables: after an upgrade,
/// every replica of a deployment may be a standby.
async fn other_version(
    c: &mut PgConnection,
    policy: &Policy,
    store: &Store,
    theirs: i64,
    mine: i64,
) -> anyhow::Result<Look> {
    let job = &policy.job.name;
    let refuse = |why: String| {
        Err(Fail::invalid(format!(
            "standby refused: {why}, and pacer's tables in schema {:?} are at schema version {theirs}, this pacer's is {mine}: \
             it runs another pacer version. A standby only takes over from the same version; stop the active runner \
             (gracefully: it releases its lease), then start this version",
            store.schema()
        )))
    };
    let held = match store.lease(c, job).await {
        Ok(l) => l.and_then(|l| l.expired_for.map(|_| l.holder.unwrap_or_default())),
        // Tables of a version without leases: the runner lock decides.
        Err(e) if no_lease_columns(&e) => None,
        Err(e) => return Err(e),
    };
    if let Some(holder) = held {
        return refuse(format!("job {job:?} is held by runner {holder}"));
    }
    match super::locks::try_runner_lock(c, store, job).await? {
        None => Ok(Look::TakeOver(format!(
            "the job is not running (pacer's tables at schema version {theirs}; this pacer migrates them to {mine})"
        ))),
        Some(h) => refuse(format!("job {job:?} is being run ({h})")),
    }
}

/// The error of a query on the lease columns in tables that predate them.
fn no_lease_columns(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|code| code == "42703")
    })
}

/// A standby with another policy would not continue the job but start a
/// different one on its rows: refuse, naming what differs.
fn check_same_job(l: &Lease, policy: &Policy) -> anyhow::Result<()> {
    let job = &policy.job.name;
    let fp = policy.fingerprint();
    if l.fingerprint != fp {
        return Err(Fail::invalid(format!(
            "standby refused: job {job:?} is run with another job.table/key/pending/update \
             (policy fingerprint {} there, {fp} here); a standby must run the same policy as the active runner",
            l.fingerprint
        )));
    }
    let settings = policy.settings_hash();
    if l.settings_hash != settings {
        return Err(Fail::invalid(format!(
            "standby refused: job {job:?} is run with other [limits], [controller], [[signal]] or [[window]] settings \
             (settings hash {} there, {settings} here); a standby must run the same policy as the active runner",
            l.settings_hash
        )));
    }
    Ok(())
}

/// End the backends of the runner being replaced: its workers
/// (`pacer:<job>`) and its control session (`pacer:<job>:control`), never
/// this session or another standby's. Needs `pg_signal_backend` unless they
/// run as the same role (`pacer check` says so).
async fn end_old_backends(c: &mut PgConnection, app: &str) -> anyhow::Result<i64> {
    let t0 = Instant::now();
    let r: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND application_name IN ($1, $1 || ':control')",
    )
    .bind(app)
    .fetch_one(&mut *c)
    .await;
    match r {
        Ok(n) => {
            if n > 0 {
                tracing::info!(backends = n, took = ?t0.elapsed(), "standby: ended the old runner's backends");
            }
            Ok(n)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            Err(Fail::failed(format!(
                "standby cannot take over: ending the old runner's backends was refused ({}); \
                 the role pacer connects as needs pg_signal_backend (GRANT pg_signal_backend TO <role>) \
                 or must be the role the old runner connected as",
                e.message()
            )))
        }
        Err(e) => Err(e.into()),
    }
}
