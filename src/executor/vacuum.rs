//! Dead row versions a backfill leaves behind can hold a signal above its
//! stop after pacer has paused: every updated row has a dead version and a
//! new one elsewhere in the table, and reads that cross the done range pay
//! for both until vacuum has been. Autovacuum comes only at 20 % of the
//! table, so a pause may never end on its own. When the controller says a
//! paused signal does not respond to the pause (`SignalView::
//! unresponsive_for`), pacer looks at the table's dead row versions once
//! per pause: with `[job] vacuum = "off"` it says which command clears
//! them, with `"when-stuck"` it runs `VACUUM` itself when they are many.
//! `"as-it-goes"` also looks every `ROUTINE_EVERY` while the job runs, so
//! they never pile up that far.
//!
//! `Trigger` (when to look) and `worth_vacuuming` (whether the count is
//! worth a VACUUM) are pure; `Watch` is the shell's part, spawned off the
//! tick so that a long VACUUM never delays the controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};
use tracing::Instrument as _;

use crate::controller::{Decision, State};
use crate::policy::VacuumMode;

/// Why to look at the table now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// These signals paused the job and have not come down.
    Stuck(Vec<String>),
    /// `as-it-goes`: the routine look while the job runs.
    Routine,
}

/// How often `as-it-goes` looks while the job runs: a statistics read,
/// and a VACUUM only when the dead versions have piled up again.
pub const ROUTINE_EVERY: Duration = Duration::from_secs(10);

/// Fires once per pause, at the first tick a signal that paused the job
/// has not responded to it (a run of ticks still paused does not fire
/// again; a resume re-arms it), and with `as-it-goes` every
/// `ROUTINE_EVERY` while the job is not paused.
#[derive(Debug, Default)]
pub struct Trigger {
    fired: bool,
    last_routine: Option<Instant>,
}

impl Trigger {
    pub fn observe(&mut self, d: &Decision, now: Instant, mode: VacuumMode) -> Option<Why> {
        if d.state != State::Paused {
            self.fired = false;
            if mode != VacuumMode::AsItGoes {
                return None;
            }
            let due = self
                .last_routine
                .is_none_or(|t| now.saturating_duration_since(t) >= ROUTINE_EVERY);
            if due {
                self.last_routine = Some(now);
                return Some(Why::Routine);
            }
            return None;
        }
        let stuck: Vec<String> = d
            .view
            .signals
            .iter()
            .filter(|s| s.unresponsive_for.is_some())
            .map(|s| s.name.clone())
            .collect();
        if self.fired || stuck.is_empty() {
            return None;
        }
        self.fired = true;
        Some(Why::Stuck(stuck))
    }
}

/// Dead and live row versions of a table (summed over its partitions),
/// from the statistics collector, and how many manual VACUUMs it has had:
/// a skipped table is only a WARNING from the server, so that count tells
/// whether a VACUUM ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadRows {
    pub dead: i64,
    pub live: i64,
    pub vacuums: i64,
}

/// A VACUUM is worth it when the dead versions are a real share of the
/// table (2 % of its live rows; Postgres's own VACUUM skips index cleanup
/// below about 2 % of pages) and not a handful.
pub fn worth_vacuuming(r: DeadRows) -> bool {
    r.dead >= 1000 && r.dead as f64 >= 0.02 * r.live.max(0) as f64
}

/// `n_dead_tup`, `n_live_tup` and `vacuum_count` of `table` (a `regclass`
/// text), or summed over all its leaf partitions.
pub async fn dead_rows(conn: &mut PgConnection, table: &str) -> Result<DeadRows, sqlx::Error> {
    let r = sqlx::query(
        "SELECT coalesce(sum(s.n_dead_tup), 0)::int8 AS dead, coalesce(sum(s.n_live_tup), 0)::int8 AS live,
                coalesce(sum(s.vacuum_count), 0)::int8 AS vacuums
           FROM pg_stat_user_tables s
          WHERE s.relid = $1::regclass
             OR s.relid IN (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await?;
    Ok(DeadRows {
        dead: r.try_get("dead")?,
        live: r.try_get("live")?,
        vacuums: r.try_get("vacuums")?,
    })
}

/// Whether this session's role may VACUUM `table`: its owner (or a
/// member of the owner's role), the database's owner, or a superuser.
/// Postgres skips a table the role may not vacuum with only a WARNING, so
/// pacer asks first and says so.
pub async fn may_vacuum(conn: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_has_role(c.relowner, 'USAGE')
             OR pg_has_role(d.datdba, 'USAGE')
             OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
           FROM pg_class c, pg_database d
          WHERE c.oid = $1::regclass AND d.datname = current_database()",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
}

/// `VACUUM (SKIP_LOCKED)`: a table autovacuum (or anyone) is vacuuming
/// already is left to it rather than waited for. No statement timeout:
/// a vacuum cut short would have to start over; pacer's session ends
/// with pacer (`client_connection_check_interval`), and the vacuum with it.
/// Whether it vacuumed, by the table's count of manual VACUUMs.
pub async fn vacuum(conn: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
    let before = dead_rows(conn, table).await?;
    Ok(vacuum_counted(conn, table, before).await?.is_some())
}

/// `vacuum` after `before` was read: the counts after it, or `None` when
/// the table was skipped.
async fn vacuum_counted(
    conn: &mut PgConnection,
    table: &str,
    before: DeadRows,
) -> Result<Option<DeadRows>, sqlx::Error> {
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query(AssertSqlSafe(format!("VACUUM (SKIP_LOCKED) {table}")))
        .execute(&mut *conn)
        .await?;
    let after = dead_rows(conn, table).await?;
    Ok((after.vacuums > before.vacuums).then_some(after))
}

/// The shell's side: watches each tick's decision and, when `Trigger`
/// fires, looks at the table (and vacuums it, unless `off`) in a task of
/// its own, on a session of its own.
pub struct Watch {
    mode: VacuumMode,
    url: String,
    job: String,
    table: String,
    trigger: Trigger,
    task: Option<tokio::task::JoinHandle<()>>,
    looks: Arc<tokio::sync::Mutex<Looks>>,
}

/// What one look leaves for the next.
#[derive(Default)]
struct Looks {
    /// Kept from one look to the next (`as-it-goes` looks every 10 s);
    /// dropped after an error, so the next look connects again.
    session: Option<PgConnection>,
    /// The role may not vacuum the table: said once, not every look.
    denied: bool,
}

impl Watch {
    pub fn new(mode: VacuumMode, url: &str, job: &str, table: &str) -> Watch {
        Watch {
            mode,
            url: url.to_string(),
            job: job.to_string(),
            table: table.to_string(),
            trigger: Trigger::default(),
            task: None,
            looks: Default::default(),
        }
    }

    /// Call every tick, after the controller's step.
    pub fn tick(&mut self, d: &Decision) {
        let Some(why) = self.trigger.observe(d, Instant::now(), self.mode) else {
            return;
        };
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            if matches!(why, Why::Stuck(_)) {
                tracing::info!(table = %self.table, "a VACUUM pacer started is still running");
            }
            return;
        }
        let (mode, url, job, table, looks) = (
            self.mode,
            self.url.clone(),
            self.job.clone(),
            self.table.clone(),
            self.looks.clone(),
        );
        self.task = Some(tokio::spawn(
            async move {
                let mut looks = looks.lock().await;
                if let Err(e) = look(mode, &url, &job, &table, &why, &mut looks).await {
                    looks.session = None;
                    tracing::warn!(table = %table, error = %e, "looking at the table's dead row versions failed");
                }
            }
            .in_current_span(),
        ));
    }
}

/// One look, on the kept session (connected first if there is none).
async fn look(
    mode: VacuumMode,
    url: &str,
    job: &str,
    table: &str,
    why: &Why,
    looks: &mut Looks,
) -> anyhow::Result<()> {
    let conn = match &mut looks.session {
        Some(c) => c,
        // Not the runner's application_name: a later run waits for
        // backends of that name to go before it writes, and this one
        // writes nothing.
        None => looks.session.insert(
            crate::store::connect(url, &crate::store::app_name("pacer-vacuum", job)).await?,
        ),
    };
    let before = dead_rows(conn, table).await?;
    let stuck = match why {
        Why::Stuck(names) => Some(names.join(", ")),
        Why::Routine => None,
    };
    if !worth_vacuuming(before) {
        if let Some(stuck) = &stuck {
            tracing::info!(
                table,
                dead_rows = before.dead,
                live_rows = before.live,
                "{table} has {} dead row versions ({} live): too few to be what holds {stuck} up; not vacuuming",
                before.dead,
                before.live
            );
        }
        return Ok(());
    }
    let share = 100.0 * before.dead as f64 / before.live.max(1) as f64;
    if mode == VacuumMode::Off {
        if let Some(stuck) = &stuck {
            tracing::warn!(
                table,
                dead_rows = before.dead,
                live_rows = before.live,
                "{table} has {} dead row versions ({share:.0} % of its live rows) that vacuum has not \
                 cleaned yet; reads that cross them may be what holds {stuck} up. `VACUUM {table}` \
                 (or job.vacuum = \"when-stuck\" in the policy, for pacer to run it) clears them",
                before.dead
            );
        }
        return Ok(());
    }
    if looks.denied {
        return Ok(());
    }
    if !may_vacuum(conn, table).await? {
        looks.denied = true;
        tracing::warn!(
            table,
            dead_rows = before.dead,
            "{table} has {} dead row versions, but pacer's role does not own it and may not \
             VACUUM it (job.vacuum): ask its owner to run `VACUUM {table}`",
            before.dead
        );
        return Ok(());
    }
    let because = match &stuck {
        Some(stuck) => format!("{stuck} has not come down in the pause"),
        None => "job.vacuum = \"as-it-goes\"".to_string(),
    };
    tracing::info!(
        table,
        dead_rows = before.dead,
        "vacuuming {table}: {} dead row versions ({share:.0} % of its live rows) and {because}",
        before.dead
    );
    let t0 = Instant::now();
    let Some(after) = vacuum_counted(conn, table, before).await? else {
        tracing::info!(
            table,
            dead_rows = before.dead,
            "did not vacuum {table}: another VACUUM of it (autovacuum's or someone's) holds the \
             table, and pacer leaves the work to that one rather than queue behind it"
        );
        return Ok(());
    };
    let took = t0.elapsed();
    tracing::info!(
        table,
        dead_rows_before = before.dead,
        dead_rows_after = after.dead,
        seconds = took.as_secs_f64(),
        "vacuumed {table} in {}: dead row versions {} → {}",
        crate::controller::fmt_dur(took),
        before.dead,
        after.dead
    );
    if cleaned_little(before, after) {
        tracing::warn!(
            table,
            dead_rows_before = before.dead,
            dead_rows_after = after.dead,
            "the VACUUM of {table} left most of its dead row versions: a transaction, prepared \
             transaction or replication slot older than them still needs them (the \
             oldest_transaction_seconds signal shows the first)"
        );
    }
    Ok(())
}

/// A VACUUM that left at least half the dead versions did not get to
/// them: something older than them holds the horizon back (a long
/// transaction, a replication slot).
/// Vacuuming again will not help; a person has to look.
pub fn cleaned_little(before: DeadRows, after: DeadRows) -> bool {
    after.dead >= 1000 && 2 * after.dead >= before.dead
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{SignalView, View};

    fn decision(state: State, stuck: &[&str]) -> Decision {
        Decision::holding(
            state,
            View {
                target_rate: 0.0,
                signals: ["p95", "lag"]
                    .iter()
                    .map(|n| SignalView {
                        name: n.to_string(),
                        raw: Some(1.0),
                        estimate: Some(1.0),
                        delay: Duration::from_secs(20),
                        unresponsive_for: stuck.contains(n).then_some(Duration::from_secs(60)),
                        noise: None,
                        within_noise: false,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn fires_once_per_stuck_pause() {
        let mut t = Trigger::default();
        let now = Instant::now();
        let mut obs =
            |state, stuck: &[&str]| t.observe(&decision(state, stuck), now, VacuumMode::WhenStuck);
        assert_eq!(obs(State::Running, &[]), None);
        assert_eq!(obs(State::Paused, &[]), None);
        assert_eq!(
            obs(State::Paused, &["p95"]),
            Some(Why::Stuck(vec!["p95".to_string()]))
        );
        assert_eq!(obs(State::Paused, &["p95"]), None);
        assert_eq!(obs(State::Paused, &["p95", "lag"]), None);
        // A resume re-arms it; the next stuck pause fires again.
        assert_eq!(obs(State::Running, &[]), None);
        assert_eq!(
            obs(State::Paused, &["p95", "lag"]),
            Some(Why::Stuck(vec!["p95".to_string(), "lag".to_string()]))
        );
    }

    #[test]
    fn as_it_goes_looks_every_ten_seconds_while_not_paused() {
        let mut t = Trigger::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mode = VacuumMode::AsItGoes;
        let running = decision(State::Running, &[]);
        assert_eq!(t.observe(&running, at(0), mode), Some(Why::Routine));
        assert_eq!(t.observe(&running, at(9), mode), None);
        assert_eq!(t.observe(&running, at(10), mode), Some(Why::Routine));
        assert_eq!(
            t.observe(&decision(State::Slowing, &[]), at(20), mode),
            Some(Why::Routine)
        );
        // Paused: no routine look, but a stuck signal still fires.
        assert_eq!(t.observe(&decision(State::Paused, &[]), at(40), mode), None);
        assert_eq!(
            t.observe(&decision(State::Paused, &["p95"]), at(41), mode),
            Some(Why::Stuck(vec!["p95".to_string()]))
        );
        assert_eq!(t.observe(&running, at(42), mode), Some(Why::Routine));
        // Off and when-stuck never look while running.
        let mut t = Trigger::default();
        assert_eq!(t.observe(&running, at(0), VacuumMode::Off), None);
        assert_eq!(t.observe(&running, at(100), VacuumMode::WhenStuck), None);
    }

    #[test]
    fn a_vacuum_that_left_half_says_so() {
        let d = |dead| DeadRows {
            dead,
            live: 1_000_000,
            vacuums: 0,
        };
        assert!(!cleaned_little(d(160_701), d(0)));
        assert!(!cleaned_little(d(160_701), d(80_000)));
        assert!(cleaned_little(d(160_701), d(80_351)));
        assert!(cleaned_little(d(160_701), d(160_701)));
        // A handful left is not worth a word.
        assert!(!cleaned_little(d(1_500), d(999)));
    }

    #[test]
    fn worth_it_only_for_a_real_share_of_the_table() {
        let r = |dead, live| {
            worth_vacuuming(DeadRows {
                dead,
                live,
                vacuums: 0,
            })
        };
        assert!(r(120_000, 1_000_000));
        assert!(r(20_000, 1_000_000));
        assert!(!r(19_999, 1_000_000));
        assert!(!r(999, 0));
        assert!(r(1_000, 0));
        assert!(r(1_000, 50_000));
        assert!(!r(1_000, 50_001));
    }
}
