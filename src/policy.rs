//! The policy file: which rows to fix, how hard pacer may push, and the stop
//! numbers that make it back off.
//!
//! A policy is parsed once, validated completely (every problem reported, not
//! just the first), and from then on treated as trusted, typed data. Unknown
//! keys are errors because a typo in `stop_above` must never silently disable
//! a stop number.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono::{Datelike, NaiveDate, NaiveTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize};

use crate::text::show;

mod error;
mod fleet;
mod load;
mod tree;

pub use error::PolicyError;
pub use fleet::{FleetConfig, FleetTarget, OnTargetFailure, Scope, target_job_name};

/// Prefix of environment variables that override scalar policy keys,
/// e.g. `PACER_POLICY__LIMITS__BATCH_SIZE__MAX=2000`.
pub const ENV_PREFIX: &str = "PACER_POLICY";

/// Longest duration any policy key accepts. Longer is a typo, and it keeps
/// every sum and multiple of durations (deadlines, `worker_after * 4`) far
/// from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Longest `lock_timeout` / `statement_timeout` Postgres accepts: its
/// settings are `int` milliseconds.
pub const MAX_PG_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Postgres built-in signals pacer knows how to read (`postgres = "<name>"`).
pub const POSTGRES_BUILTINS: &[&str] = &[
    "replication_lag_seconds",
    "replication_lag_bytes",
    "logical_slot_lag_bytes",
    "lock_waiters",
    "blocked_by_pacer",
    "ddl_waiting",
    "deadlocks_per_second",
    "wal_bytes_per_second",
    "dead_tuples",
    "connections_used_ratio",
    "oldest_transaction_seconds",
];

/// Simulated counterparts a Prometheus or HTTP signal can name with `sim = "..."`.
pub const SIM_HINTS: &[&str] = &[
    "latency",
    "replication_lag_seconds",
    "replication_lag_bytes",
    "logical_slot_lag_bytes",
    "lock_waiters",
    "blocked_by_pacer",
    "wal_bytes_per_second",
    "error_rate",
    "http",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub job: Job,
    #[serde(default)]
    pub database: Database,
    pub limits: Limits,
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    #[serde(default)]
    pub baseline: BaselineConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default, rename = "signal")]
    pub signals: Vec<Signal>,
    #[serde(default, rename = "window")]
    pub windows: Vec<Window>,
    /// Fleet limits; with `[[target]]`, the policy runs on many databases
    /// (see `fleet` and docs/FLEET.md).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<FleetTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Identity of the job in pacer's tables; resuming means running a policy
    /// with the same name again.
    pub name: String,
    /// Target table, optionally schema-qualified (`public.orders`).
    pub table: String,
    /// Column batches are ordered by; must be unique and NOT NULL.
    pub key: String,
    /// SQL predicate selecting rows that still need work.
    pub pending: String,
    /// SQL applied to one batch; `$1` is the array of the batch's keys.
    pub update: String,
    /// Time zone for `[[window]]` hours and dates (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Extra labels attached to every log line and metric of the job.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A job paused longer than this warns repeatedly (and stops if
    /// `stop_after_max_pause`).
    #[serde(default, with = "humantime_serde::option")]
    pub max_pause: Option<Duration>,
    #[serde(default)]
    pub stop_after_max_pause: bool,
    /// Another job may write the same table at the same time. Off by
    /// default: a second job on a table (or on its partition tree) that
    /// one is already backfilling is refused at start.
    #[serde(default)]
    pub share_table: bool,
    /// The update is idempotent: applied twice to a batch, the second
    /// application changes nothing. On by default, and checked before the
    /// first write (a rolled-back double apply): a run whose update is not
    /// is refused unless this says `false`. A policy key rather than a
    /// flag, because the knowledge must outlive one run: a resumed run, a
    /// standby runner, or a person applying a batch by hand again must not
    /// double-apply without having said so.
    #[serde(default = "default_idempotent")]
    pub idempotent: bool,
    /// Start as a standby (as `pacer run --standby` does): wait, polling,
    /// until the active runner's lease has been expired for
    /// `takeover_after`, then take the job over. A key as well as a flag,
    /// so a service manager can run the same command line everywhere.
    #[serde(default)]
    pub standby: bool,
    /// How long the active runner's lease lasts from each renewal (every
    /// tick); also the `idle_session_timeout` of its control session, so a
    /// frozen or cut-off runner's session ends on the server by itself.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How long a standby waits after the lease expired before it takes
    /// over: a runner whose ticks were merely slow (a brief outage, a
    /// reconnect) renews it again well within this.
    #[serde(default = "default_takeover_after", with = "humantime_serde")]
    pub takeover_after: Duration,
    /// What pacer does about the dead row versions its updates leave in
    /// the table: say so when a pause does not bring a signal down, or
    /// `VACUUM` the table then, or whenever they pile up. Off by default:
    /// a DBA decides when their tables are vacuumed.
    #[serde(default)]
    pub vacuum: VacuumMode,
}

/// `[job] vacuum`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VacuumMode {
    /// Log the table's dead row versions and the command to clear them.
    #[default]
    Off,
    /// Run `VACUUM (SKIP_LOCKED)` on the table, once per stuck pause.
    WhenStuck,
    /// As `when-stuck`, and also while the job runs, whenever the dead
    /// versions have piled up again (looked at every 10 s), so that they
    /// never get to hold a signal up.
    AsItGoes,
}

fn default_idempotent() -> bool {
    true
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

fn default_takeover_after() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Connection URL; `DATABASE_URL` wins over a missing value. Never logged
    /// unredacted.
    #[serde(default)]
    pub url: Option<String>,
    /// Schema for pacer's own tables.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Replicas whose lag `replication_lag_seconds` reads.
    #[serde(default)]
    pub replicas: Vec<String>,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: None,
            schema: default_schema(),
            replicas: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range<T> {
    pub start: T,
    pub min: T,
    pub max: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationRange {
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub batch_size: Range<u32>,
    pub sleep: DurationRange,
    pub workers: Range<u32>,
    /// Keys fetched per keyset read; reads are narrow so this can be large.
    #[serde(default = "default_read_chunk")]
    pub read_chunk: u32,
    /// Hard ceiling independent of the controller; absent means none.
    #[serde(default)]
    pub max_rows_per_second: Option<u32>,
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// How long the database may stay unreachable (the job paused) before
    /// the run gives up; an outage is a pause, not a failure.
    #[serde(default = "default_max_outage", with = "humantime_serde")]
    pub max_outage: Duration,
    /// `idle_in_transaction_session_timeout` of the worker sessions: how
    /// long the server lets a stalled pacer hold its row locks.
    #[serde(default = "default_idle_in_transaction", with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

/// Tuning of the AIMD controller. Defaults are the recommended values; see
/// `controller` for how each is used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// How often signals are read and a decision is made.
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub tick: Duration,
    /// Additive increase of `batch_size` per calm tick (capped at ×1.2 a tick).
    #[serde(default = "default_batch_step")]
    pub batch_step: u32,
    /// Accepted for older policies and ignored: sleep follows from the
    /// growth bound on the effective rate.
    #[serde(default = "d_50ms", with = "humantime_serde")]
    pub sleep_step: Duration,
    /// Calm spell required before one more worker is added.
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub worker_after: Duration,
    /// Multiplicative decrease of the effective rate for a signal at its stop
    /// level; milder excursions just above `slow_above` cut less.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Minimum time between two decreases, and how long after a decrease
    /// slow readings are attributed to batches started before it.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub cooldown: Duration,
    /// A batch slower than this is a reason to shrink.
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub target_batch_time: Duration,
    /// Calm time required before a paused job resumes.
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub resume_after: Duration,
    /// After a resume, knobs are held (no increase) this long.
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub hold_after_resume: Duration,
    /// How long a signal may be missing before `on_missing` applies.
    #[serde(default = "d_15s", with = "humantime_serde")]
    pub missing_grace: Duration,
    /// Growth of the effective rate per measurement delay while every
    /// signal is calm: at most ×(1 + growth) each time the slowest signal
    /// could have shown the last change (additive near the last cut; down
    /// to half of it as a signal smoothed for its noise nears slow).
    #[serde(default = "default_growth")]
    pub growth: f64,
    /// Time constant of the per-signal estimate (an exponentially weighted
    /// average of new samples) that slow and growth decisions use; a
    /// Prometheus signal smooths over at least half its query's range.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub smoothing: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        toml::from_str("").expect("controller defaults deserialize")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    #[serde(default = "default_prometheus_url")]
    pub url: String,
    /// Bearer token; `PACER_PROMETHEUS_TOKEN` is used when absent.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Extra headers sent with every query (e.g. `X-Scope-OrgID`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often Prometheus scrapes the series pacer queries: part of each
    /// Prometheus signal's measurement delay (with the query's range).
    /// Unset: 15 s (Prometheus's default `scrape_interval`).
    #[serde(default, with = "humantime_serde")]
    pub scrape_interval: Option<Duration>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        toml::from_str("").expect("prometheus defaults deserialize")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInsufficient {
    /// Keep sampling until enough history exists, then start.
    Wait,
    /// Refuse to start with a clear error.
    Refuse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// History used for relative levels (median over this window).
    #[serde(default = "d_15m", with = "humantime_serde")]
    pub window: Duration,
    /// Minimum number of samples a baseline needs.
    #[serde(default = "default_baseline_samples")]
    pub min_samples: u32,
    #[serde(default = "default_on_insufficient")]
    pub on_insufficient: OnInsufficient,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        toml::from_str("").expect("baseline defaults deserialize")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/status` and the control API.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Treat as stop: a throttler that runs blind is not in control.
    Pause,
    /// Neither grow nor shrink while the reading is missing.
    Hold,
    /// Act as if the signal were calm (legitimately empty, e.g. no traffic).
    Ignore,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub name: String,
    #[serde(default)]
    pub prometheus: Option<String>,
    #[serde(default)]
    pub postgres: Option<String>,
    #[serde(default)]
    pub http: Option<String>,
    /// Simulated counterpart for `pacer simulate` (defaults to the built-in
    /// name for Postgres signals).
    #[serde(default)]
    pub sim: Option<String>,
    #[serde(default)]
    pub slow_above: Option<Level>,
    #[serde(default)]
    pub stop_above: Option<Level>,
    #[serde(default, with = "humantime_serde")]
    pub stop_for: Duration,
    #[serde(default = "default_on_missing")]
    pub on_missing: OnMissing,
    /// Per-reading timeout; one slow source never delays the tick.
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub timeout: Duration,
    /// A fixed baseline instead of one measured before the run.
    #[serde(default)]
    pub baseline: Option<f64>,
    /// How late this signal's readings are, when pacer cannot read it from
    /// the query (a recording rule, a query without a range): the data's
    /// age plus the scrape interval.
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// In a fleet: whether the signal feeds its cluster's shared budget or
    /// acts on its own target (default by source: `Signal::fleet_scope`).
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Which kind of source a signal reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    Prometheus(&'a str),
    Postgres(&'a str),
    Http(&'a str),
}

impl Signal {
    pub fn source(&self) -> Option<Source<'_>> {
        match (&self.prometheus, &self.postgres, &self.http) {
            (Some(q), None, None) => Some(Source::Prometheus(q)),
            (None, Some(b), None) => Some(Source::Postgres(b)),
            (None, None, Some(u)) => Some(Source::Http(u)),
            _ => None,
        }
    }

    /// HTTP checks are binary (2xx calm, else stop); they read as 0 or 1.
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }

    /// How far `stop_above` sits past `slow_above`, as a share of slow's
    /// room above the baseline (relative levels, or absolute ones with a
    /// fixed `baseline`) or above zero: the room pacer's overshoot has
    /// before it becomes harm. None when the two levels are of different
    /// kinds (their distance then depends on a baseline not yet measured)
    /// or leave slow no room.
    pub fn band(&self) -> Option<f64> {
        self.band_from().map(|(band, _)| band)
    }

    /// `band` and what slow's distance is measured from, as a warning
    /// names it.
    fn band_from(&self) -> Option<(f64, &'static str)> {
        let (slow, stop, from) = match (self.slow_above?, self.stop_above?) {
            (Level::Times(a), Level::Times(b)) => (a - 1.0, b - 1.0, "the baseline"),
            (Level::Plus(a), Level::Plus(b)) => (a, b, "the baseline"),
            (Level::Absolute(a), Level::Absolute(b)) => match self.baseline.filter(|f| *f < a) {
                Some(f) => (a - f, b - f, "the baseline"),
                None => (a, b, "zero"),
            },
            _ => return None,
        };
        (slow > 0.0).then(|| ((stop - slow) / slow, from))
    }

    /// Whether any level is relative to a baseline that must be measured.
    pub fn needs_baseline(&self) -> bool {
        [self.slow_above, self.stop_above]
            .iter()
            .flatten()
            .any(|l| l.is_relative())
    }

    /// Simulated counterpart: explicit hint, else the Postgres built-in name.
    pub fn sim_kind(&self) -> Option<&str> {
        self.sim
            .as_deref()
            .or(self.postgres.as_deref())
            .or(self.http.as_ref().map(|_| "http"))
    }
}

/// A slow or stop level: an absolute number in the signal's unit, or
/// relative to the signal's baseline (`"baseline * 1.2"`, `"baseline + 0.05"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Absolute(f64),
    Times(f64),
    Plus(f64),
}

impl Level {
    pub fn is_relative(&self) -> bool {
        !matches!(self, Level::Absolute(_))
    }

    /// The numeric threshold; relative levels need a baseline.
    pub fn resolve(&self, baseline: Option<f64>) -> Option<f64> {
        match *self {
            Level::Absolute(v) => Some(v),
            Level::Times(f) => baseline.map(|b| b * f),
            Level::Plus(d) => baseline.map(|b| b + d),
        }
    }

    pub fn parse(text: &str) -> Result<Level, String> {
        let t = text.trim();
        if let Ok(v) = t.parse::<f64>() {
            return finite(v).map(Level::Absolute);
        }
        let lower = t.to_ascii_lowercase();
        let rest = lower.strip_prefix("baseline").ok_or_else(|| {
            format!(
                "{} is neither a number nor \"baseline * FACTOR\" / \"baseline + DELTA\"",
                show(text)
            )
        })?;
        let rest = rest.trim();
        let (op, num) = rest.split_at(rest.find(['*', '+']).ok_or_else(|| {
            format!(
                "{}: expected \"baseline * FACTOR\" or \"baseline + DELTA\"",
                show(text)
            )
        })?);
        let v: f64 = num[1..]
            .trim()
            .parse()
            .map_err(|_| format!("{}: {} is not a number", show(text), show(num[1..].trim())))?;
        let v = finite(v)?;
        if !op.is_empty() {
            return Err(format!(
                "{}: unexpected {} after baseline",
                show(text),
                show(op)
            ));
        }
        Ok(if num.starts_with('*') {
            Level::Times(v)
        } else {
            Level::Plus(v)
        })
    }
}

fn finite(v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number"))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Absolute(v) => write!(f, "{v}"),
            Level::Times(v) => write!(f, "baseline * {v}"),
            Level::Plus(v) => write!(f, "baseline + {v}"),
        }
    }
}

impl Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Level::Absolute(v) => s.serialize_f64(*v),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a number or a string like \"baseline * 1.2\"")
        })? {
            Raw::Int(v) => Ok(Level::Absolute(v as f64)),
            Raw::Num(v) => finite(v)
                .map(Level::Absolute)
                .map_err(serde::de::Error::custom),
            Raw::Text(t) => Level::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub name: String,
    /// Days of week (`mon`..`sun`); empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Calendar dates (`2026-11-27`); empty means any date.
    #[serde(default)]
    pub dates: Vec<String>,
    /// Local start time `HH:MM`; absent means midnight.
    #[serde(default)]
    pub from: Option<String>,
    /// Local end time `HH:MM` (exclusive); before `from` wraps past midnight.
    #[serde(default)]
    pub until: Option<String>,
    /// Overrides the job's time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Pause outright while the window is active.
    #[serde(default)]
    pub pause: bool,
    #[serde(default)]
    pub max_batch_size: Option<u32>,
    #[serde(default)]
    pub max_workers: Option<u32>,
    /// Raises the sleep floor (less pressure).
    #[serde(default, with = "humantime_serde::option")]
    pub min_sleep: Option<Duration>,
}

/// A window's schedule in a form that can be evaluated without re-parsing.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: Tz,
    days: Vec<Weekday>,
    dates: Vec<NaiveDate>,
    from: NaiveTime,
    until: Option<NaiveTime>,
}

impl Schedule {
    /// Whether the window is active at `now` (pure: time is an argument).
    pub fn contains(&self, now: chrono::DateTime<Utc>) -> bool {
        let local = self.tz.from_utc_datetime(&now.naive_utc());
        let (date, time) = (local.date_naive(), local.time());
        let in_time = |d: NaiveDate, t: NaiveTime| {
            let day_ok = self.days.is_empty() || self.days.contains(&d.weekday());
            let date_ok = self.dates.is_empty() || self.dates.contains(&d);
            day_ok && date_ok && t >= self.from
        };
        match self.until {
            None => in_time(date, time),
            Some(until) if until > self.from => in_time(date, time) && time < until,
            // Wraps past midnight: either the evening part today, or the
            // morning part belonging to yesterday's window.
            Some(until) => {
                in_time(date, time)
                    || (time < until
                        && date.pred_opt().is_some_and(|y| {
                            in_time(y, NaiveTime::from_hms_opt(23, 59, 59).unwrap())
                        }))
            }
        }
    }

    /// Seconds since local midnight, used by the simulator's clock display.
    pub fn local_seconds(&self, now: chrono::DateTime<Utc>) -> u32 {
        self.tz
            .from_utc_datetime(&now.naive_utc())
            .time()
            .num_seconds_from_midnight()
    }
}

/// A band from slow to stop narrower than this share of slow's room (see
/// `Signal::band`) is worth a warning: on the robustness benchmark's
/// report seeds 66–75, 9 of the 10 cells whose median day spent more than
/// 1 % above stop had a band of a quarter or a third (slow/stop 1.4/1.5 and
/// 1.15/1.2 × baseline), none of the cells with bands of 1.5 (and only one
/// with 1.0, at high noise): the overshoot of one measurement delay, which
/// a flash crowd adds to, crosses a narrow band before the signal shows it.
/// On seeds 76–80, run after this was set, all 6 cells over a stop target
/// had such a band.
pub const NARROW_BAND: f64 = 0.5;

impl Policy {
    /// Levels that are valid but measured to keep their stop number poorly:
    /// printed by `pacer check` and `pacer simulate`, logged when a run
    /// starts.
    pub fn level_warnings(&self) -> Vec<String> {
        self.signals
            .iter()
            .filter_map(|s| {
                let (band, from) = s.band_from().filter(|(b, _)| *b < NARROW_BAND)?;
                let (slow, stop) = (s.slow_above?, s.stop_above?);
                Some(format!(
                    "signal {}: the band from slow_above ({slow}) to stop_above ({stop}) is \
                     {band:.2} of slow_above's distance from {from}, under {NARROW_BAND}: the \
                     overshoot of one measurement delay, more so under a sudden surge, can cross \
                     it before the signal shows it (docs/POLICY.md, \"Choosing levels\"); a \
                     lower slow_above or a higher stop_above keeps the stop number better",
                    show(&s.name)
                ))
            })
            .collect()
    }

    /// Read, merge environment overrides, deserialize and validate.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        load::load(path, load::process_env())
    }

    /// As `load`, with the environment passed in as (name, value) pairs:
    /// `PACER_POLICY__*` overrides and `DATABASE_URL` are taken from it,
    /// everything else is ignored. Tests and fuzzers need not touch the
    /// process environment.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Policy, PolicyError> {
        load::load(path, env)
    }

    /// Parse from a string (tests and embedded examples); no env overrides.
    pub fn from_toml(name: &str, text: &str) -> Result<Policy, PolicyError> {
        load::from_text(name, text)
    }

    /// Every check that needs no database, all problems at once.
    pub fn validate(&self, file: &str) -> Result<(), PolicyError> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut err = |k: &str, w: String| p.push((k.to_string(), w));

        let j = &self.job;
        for (k, v) in [
            ("job.name", &j.name),
            ("job.table", &j.table),
            ("job.key", &j.key),
            ("job.pending", &j.pending),
            ("job.update", &j.update),
        ] {
            if v.trim().is_empty() {
                err(k, "must not be empty".into());
            }
        }
        if !j.name.is_empty()
            && !j
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            err(
                "job.name",
                format!(
                    "{} may only contain letters, digits, '-', '_' and '.'",
                    show(&j.name)
                ),
            );
        }
        if j.name.len() > 50 {
            err("job.name", "is longer than 50 characters".into());
        }
        if !j.update.trim().is_empty() && !j.update.contains("$1") {
            err(
                "job.update",
                "must use $1 (the array of the batch's keys), e.g. `WHERE id = ANY($1)`".into(),
            );
        }
        if j.update.contains("$2") {
            err(
                "job.update",
                "only $1 (the batch's keys) is bound; found $2".into(),
            );
        }
        if j.timezone.parse::<Tz>().is_err() {
            err(
                "job.timezone",
                format!(
                    "{} is not an IANA time zone (e.g. \"Europe/Berlin\")",
                    show(&j.timezone)
                ),
            );
        }
        if let Some(mp) = j.max_pause {
            if mp.is_zero() {
                err("job.max_pause", "must be greater than 0".into());
            }
        } else if j.stop_after_max_pause {
            err("job.stop_after_max_pause", "needs job.max_pause".into());
        }
        // Renewed once a tick: a lease shorter than two ticks would lapse
        // between renewals of a healthy runner.
        if j.lease < Duration::from_secs(1) || j.lease < self.controller.tick.saturating_mul(2) {
            err(
                "job.lease",
                "must be at least 1s and at least two controller ticks (it is renewed once a tick)"
                    .into(),
            );
        }
        if self.database.schema.trim().is_empty() {
            err("database.schema", "must not be empty".into());
        }

        let l = &self.limits;
        range_check(&mut err, "limits.batch_size", l.batch_size, |v| {
            v.to_string()
        });
        if l.batch_size.min == 0 {
            err("limits.batch_size", "min must be at least 1".into());
        }
        range_check(&mut err, "limits.workers", l.workers, |v| v.to_string());
        if l.workers.min == 0 {
            err("limits.workers", "min must be at least 1".into());
        }
        if l.workers.max > 64 {
            err(
                "limits.workers",
                format!("max {} is above the supported 64", l.workers.max),
            );
        }
        let s = l.sleep;
        range_check(
            &mut err,
            "limits.sleep",
            Range {
                start: s.start,
                min: s.min,
                max: s.max,
            },
            |v| humantime::format_duration(v).to_string(),
        );
        if l.read_chunk == 0 {
            err("limits.read_chunk", "must be at least 1".into());
        } else if l.read_chunk < l.batch_size.max {
            err(
                "limits.read_chunk",
                format!(
                    "{} is smaller than limits.batch_size.max {}: read more than you write",
                    l.read_chunk, l.batch_size.max
                ),
            );
        }
        if l.max_rows_per_second == Some(0) {
            err(
                "limits.max_rows_per_second",
                "0 would never run; remove the key for no cap".into(),
            );
        }
        if l.max_outage.is_zero() {
            err(
                "limits.max_outage",
                "must be greater than 0: a restart of the primary would end the run".into(),
            );
        }
        if l.idle_in_transaction_timeout.is_zero() {
            err(
                "limits.idle_in_transaction_timeout",
                "0 disables the timeout in Postgres: a stalled pacer could hold row locks forever"
                    .into(),
            );
        }
        if l.lock_timeout.is_zero() {
            err(
                "limits.lock_timeout",
                "0 disables the timeout in Postgres: pacer would queue behind locks".into(),
            );
        }
        if l.statement_timeout.is_zero() {
            err(
                "limits.statement_timeout",
                "0 disables the timeout in Postgres: a batch could hold locks forever".into(),
            );
        }
        if !l.statement_timeout.is_zero() && l.lock_timeout > l.statement_timeout {
            err(
                "limits.lock_timeout",
                "is longer than limits.statement_timeout, so it could never fire".into(),
            );
        }

        let c = &self.controller;
        if c.tick < Duration::from_millis(100) {
            err("controller.tick", "must be at least 100ms".into());
        }
        if !(c.growth > 0.0 && c.growth <= 1.0) {
            err(
                "controller.growth",
                format!("{} must be greater than 0 and at most 1", c.growth),
            );
        }
        if !(c.beta > 0.0 && c.beta < 1.0) {
            err(
                "controller.beta",
                format!("{} must be between 0 and 1 (exclusive)", c.beta),
            );
        }
        if c.batch_step == 0 {
            err("controller.batch_step", "must be at least 1".into());
        }
        if c.target_batch_time.is_zero() {
            err(
                "controller.target_batch_time",
                "must be greater than 0".into(),
            );
        } else if !l.statement_timeout.is_zero() && c.target_batch_time >= l.statement_timeout {
            err(
                "controller.target_batch_time",
                "must be shorter than limits.statement_timeout".into(),
            );
        }

        if self.baseline.min_samples == 0 {
            err("baseline.min_samples", "must be at least 1".into());
        }
        if self.baseline.window.is_zero() {
            err("baseline.window", "must be greater than 0".into());
        }

        let mut names = std::collections::HashSet::new();
        for (i, sig) in self.signals.iter().enumerate() {
            let k = |f: &str| format!("signal[{i}].{f}");
            let label = if sig.name.is_empty() {
                format!("signal[{i}]")
            } else {
                format!(
                    "signal[{i}] ({})",
                    crate::text::elide(&sig.name, crate::text::MAX_VALUE)
                )
            };
            let kk = |f: &str| {
                if f.is_empty() {
                    label.clone()
                } else {
                    format!("{label}.{f}")
                }
            };
            if sig.name.trim().is_empty() {
                err(&k("name"), "must not be empty".into());
            } else if !names.insert(sig.name.clone()) {
                err(
                    &k("name"),
                    format!("{} is used by another signal", show(&sig.name)),
                );
            }
            match sig.source() {
                None => err(
                    &kk(""),
                    "needs exactly one source: prometheus = \"<PromQL>\", postgres = \"<built-in>\" or http = \"<url>\"".into(),
                ),
                Some(Source::Postgres(b)) if !POSTGRES_BUILTINS.contains(&b) => err(
                    &kk("postgres"),
                    format!("unknown built-in {}; known: {}", show(b), POSTGRES_BUILTINS.join(", ")),
                ),
                Some(Source::Prometheus(q)) if q.trim().is_empty() => {
                    err(&kk("prometheus"), "query must not be empty".into())
                }
                // The controller paces growth by each signal's delay: it must
                // know it, from the query's ranges or from the policy.
                Some(Source::Prometheus(q)) if sig.delay.is_none() => {
                    match crate::signals::promql::lookback(q) {
                        Err(e) => err(
                            &kk("prometheus"),
                            format!(
                                "pacer cannot parse the query ({}); add delay = \"<how late its data is>\" to the signal",
                                crate::text::elide(&e, 120)
                            ),
                        ),
                        Ok(None) => err(
                            &kk("delay"),
                            "required: the query has no range selector (a recording rule or a gauge?), so pacer cannot tell how late its data is; e.g. delay = \"1m\"".into(),
                        ),
                        Ok(Some(_)) => {}
                    }
                }
                Some(Source::Http(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    err(&kk("http"), format!("{} must start with http:// or https://", show(u)))
                }
                _ => {}
            }
            if let Some(h) = &sig.sim
                && !SIM_HINTS.contains(&h.as_str())
                && !POSTGRES_BUILTINS.contains(&h.as_str())
            {
                err(
                    &kk("sim"),
                    format!(
                        "unknown simulated counterpart {}; known: {}",
                        show(h),
                        SIM_HINTS.join(", ")
                    ),
                );
            }
            if sig.is_http() {
                if sig.slow_above.is_some() || sig.stop_above.is_some() {
                    err(
                        &kk(""),
                        "an http check has no levels: 2xx is calm, anything else is stop".into(),
                    );
                }
            } else if sig.slow_above.is_none() && sig.stop_above.is_none() {
                err(&kk(""), "needs slow_above or stop_above (or both)".into());
            }
            if let (Some(slow), Some(stop)) = (sig.slow_above, sig.stop_above) {
                let comparable = match (slow, stop) {
                    (Level::Absolute(a), Level::Absolute(b)) => Some((a, b)),
                    (Level::Times(a), Level::Times(b)) => Some((a, b)),
                    (Level::Plus(a), Level::Plus(b)) => Some((a, b)),
                    _ => sig
                        .baseline
                        .and_then(|bl| Some((slow.resolve(Some(bl))?, stop.resolve(Some(bl))?))),
                };
                if let Some((a, b)) = comparable
                    && a > b
                {
                    err(
                        &kk("slow_above"),
                        format!("{slow} is above stop_above {stop}: slow must come before stop"),
                    );
                }
            }
            for (f, lvl) in [
                ("slow_above", sig.slow_above),
                ("stop_above", sig.stop_above),
            ] {
                if let Some(Level::Times(x)) = lvl
                    && x <= 0.0
                {
                    err(&kk(f), format!("baseline factor {x} must be positive"));
                }
            }
            if let Some(b) = sig.baseline
                && !b.is_finite()
            {
                err(&kk("baseline"), "must be a finite number".into());
            }
            if sig.timeout.is_zero() {
                err(&kk("timeout"), "must be greater than 0".into());
            }
        }

        let mut wnames = std::collections::HashSet::new();
        for (i, w) in self.windows.iter().enumerate() {
            let label = if w.name.is_empty() {
                format!("window[{i}]")
            } else {
                format!(
                    "window[{i}] ({})",
                    crate::text::elide(&w.name, crate::text::MAX_VALUE)
                )
            };
            let kk = |f: &str| format!("{label}.{f}");
            if w.name.trim().is_empty() {
                err(&kk("name"), "must not be empty".into());
            } else if !wnames.insert(w.name.clone()) {
                err(
                    &kk("name"),
                    format!("{} is used by another window", show(&w.name)),
                );
            }
            if let Err(e) = w.schedule(&self.job.timezone) {
                let (f, m) = e;
                err(&kk(f), m);
            }
            if !w.pause
                && w.max_batch_size.is_none()
                && w.max_workers.is_none()
                && w.min_sleep.is_none()
            {
                err(
                    &label,
                    "does nothing: set pause = true or one of max_batch_size, max_workers, min_sleep"
                        .into(),
                );
            }
            if let Some(b) = w.max_batch_size
                && b < l.batch_size.min
            {
                err(
                    &kk("max_batch_size"),
                    format!("{b} is below limits.batch_size.min {}", l.batch_size.min),
                );
            }
            if let Some(b) = w.max_workers
                && b < l.workers.min
            {
                err(
                    &kk("max_workers"),
                    format!("{b} is below limits.workers.min {}", l.workers.min),
                );
            }
            if let Some(s) = w.min_sleep
                && s > l.sleep.max
            {
                err(
                    &kk("min_sleep"),
                    format!(
                        "{} is above limits.sleep.max {}",
                        humantime::format_duration(s),
                        humantime::format_duration(l.sleep.max)
                    ),
                );
            }
        }

        for (key, d) in self.durations() {
            if d > MAX_DURATION {
                err(
                    &key,
                    format!(
                        "is longer than the supported {} days",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                );
            }
        }
        for (key, d) in [
            ("limits.lock_timeout", l.lock_timeout),
            ("limits.statement_timeout", l.statement_timeout),
        ] {
            if !d.is_zero() && d < Duration::from_millis(1) {
                err(
                    key,
                    "is under 1ms: Postgres counts whole milliseconds, and 0 disables the timeout"
                        .into(),
                );
            } else if d > MAX_PG_TIMEOUT && d <= MAX_DURATION {
                err(
                    key,
                    format!(
                        "is longer than Postgres accepts ({}, INT_MAX milliseconds)",
                        humantime::format_duration(MAX_PG_TIMEOUT)
                    ),
                );
            }
        }

        self.validate_fleet(&mut err);

        if p.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::new(file, p))
        }
    }

    /// Every duration of the policy with its key, for the checks that
    /// apply to all of them.
    fn durations(&self) -> Vec<(String, Duration)> {
        let (j, l, c) = (&self.job, &self.limits, &self.controller);
        let mut out: Vec<(String, Duration)> = [
            ("limits.sleep.start", l.sleep.start),
            ("limits.sleep.min", l.sleep.min),
            ("limits.sleep.max", l.sleep.max),
            ("limits.lock_timeout", l.lock_timeout),
            ("limits.statement_timeout", l.statement_timeout),
            ("controller.tick", c.tick),
            ("controller.sleep_step", c.sleep_step),
            ("controller.worker_after", c.worker_after),
            ("controller.cooldown", c.cooldown),
            ("controller.target_batch_time", c.target_batch_time),
            ("controller.resume_after", c.resume_after),
            ("controller.hold_after_resume", c.hold_after_resume),
            ("controller.missing_grace", c.missing_grace),
            ("prometheus.timeout", self.prometheus.timeout),
            ("baseline.window", self.baseline.window),
        ]
        .into_iter()
        .map(|(k, d)| (k.to_string(), d))
        .collect();
        out.extend(j.max_pause.map(|d| ("job.max_pause".to_string(), d)));
        out.push(("job.lease".to_string(), j.lease));
        out.push(("job.takeover_after".to_string(), j.takeover_after));
        for (i, s) in self.signals.iter().enumerate() {
            out.push((format!("signal[{i}].stop_for"), s.stop_for));
            out.push((format!("signal[{i}].timeout"), s.timeout));
        }
        for (i, w) in self.windows.iter().enumerate() {
            out.extend(w.min_sleep.map(|d| (format!("window[{i}].min_sleep"), d)));
        }
        out
    }

    /// Hash of what may change between runs (limits, controller, signals,
    /// windows): changes are allowed and logged; a standby must match it.
    pub fn settings_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let v = serde_json::json!({
            "limits": self.limits, "controller": self.controller, "signals": self.signals, "windows": self.windows,
        });
        Sha256::digest(v.to_string().as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Stable fingerprint of what the job does to rows; a resumed run with a
    /// different fingerprint is a different job.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            &self.job.table,
            &self.job.key,
            &self.job.pending,
            &self.job.update,
        ] {
            h.update(part.trim().as_bytes());
            h.update([0u8]);
        }
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The compiled window schedules, in policy order.
    pub fn schedules(&self) -> Vec<Schedule> {
        self.windows
            .iter()
            .map(|w| {
                w.schedule(&self.job.timezone)
                    .expect("windows are validated on load")
            })
            .collect()
    }
}

impl Window {
    /// Compile the schedule; errors name the offending field.
    pub fn schedule(&self, job_tz: &str) -> Result<Schedule, (&'static str, String)> {
        let tz_name = self.timezone.as_deref().unwrap_or(job_tz);
        let tz: Tz = tz_name.parse().map_err(|_| {
            (
                "timezone",
                format!("{} is not an IANA time zone", show(tz_name)),
            )
        })?;
        let days = self
            .days
            .iter()
            .map(|d| {
                d.parse::<Weekday>().map_err(|_| {
                    (
                        "days",
                        format!("{} is not a day (mon, tue, ... sun)", show(d)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dates = self
            .dates
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
                    (
                        "dates",
                        format!("{} is not a date like 2026-11-27", show(d)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let time = |field: &'static str, v: &Option<String>| -> Result<Option<NaiveTime>, _> {
            v.as_deref()
                .map(|t| {
                    NaiveTime::parse_from_str(t, "%H:%M")
                        .map_err(|_| (field, format!("{} is not a time like 09:30", show(t))))
                })
                .transpose()
        };
        let from = time("from", &self.from)?.unwrap_or(NaiveTime::MIN);
        let until = time("until", &self.until)?;
        if until == Some(from) {
            return Err(("until", "equals from: the window would be empty".into()));
        }
        Ok(Schedule {
            tz,
            days,
            dates,
            from,
            until,
        })
    }
}

fn range_check<T: PartialOrd + Copy>(
    err: &mut impl FnMut(&str, String),
    key: &str,
    r: Range<T>,
    show: impl Fn(T) -> String,
) {
    if r.min > r.max {
        err(
            key,
            format!("min {} is greater than max {}", show(r.min), show(r.max)),
        );
    } else if r.start < r.min || r.start > r.max {
        err(
            key,
            format!(
                "start {} is outside min {} ..= max {}",
                show(r.start),
                show(r.min),
                show(r.max)
            ),
        );
    }
}

fn default_timezone() -> String {
    "UTC".into()
}
fn default_schema() -> String {
    "pacer".into()
}
fn default_read_chunk() -> u32 {
    10_000
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_retries() -> u32 {
    5
}
fn default_max_outage() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_idle_in_transaction() -> Duration {
    Duration::from_secs(2)
}
fn default_batch_step() -> u32 {
    100
}
fn default_beta() -> f64 {
    0.5
}
fn default_growth() -> f64 {
    0.5
}
fn default_prometheus_url() -> String {
    "http://127.0.0.1:9090".into()
}
fn default_baseline_samples() -> u32 {
    10
}
fn default_on_insufficient() -> OnInsufficient {
    OnInsufficient::Refuse
}
fn default_on_missing() -> OnMissing {
    OnMissing::Pause
}
fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn d_50ms() -> Duration {
    Duration::from_millis(50)
}
fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn d_2s() -> Duration {
    Duration::from_secs(2)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_15s() -> Duration {
    Duration::from_secs(15)
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_60s() -> Duration {
    Duration::from_secs(60)
}
fn d_15m() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Local wall-clock helper for tests and the simulator: a UTC instant for a
/// local date and time in `tz`.
pub fn local_instant(tz: &str, date: NaiveDate, h: u32, m: u32) -> Option<chrono::DateTime<Utc>> {
    let tz: Tz = tz.parse().ok()?;
    tz.from_local_datetime(&date.and_hms_opt(h, m, 0)?)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
}
