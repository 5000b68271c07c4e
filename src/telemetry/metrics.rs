//! The job's numbers for Prometheus (`GET /metrics`), so a dashboard can put
//! what pacer does next to the signals it reacts to.
//!
//! Every metric carries the job as the const label `pacer_job` plus the
//! policy's `[job] labels`. The job label is not called `job` because
//! Prometheus sets `job` to the scrape job's name and would rename ours to
//! `exported_job`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::events::action_str;
use crate::controller::{Action, BatchError, BatchOutcome, Cause, Decision, SignalLevels};
use crate::history::SignalInfo;
use crate::signals::Reading;

/// Content type of `Metrics::encode`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `Metrics::encode_classic`'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states `pacer_state` reports, one series each (1 = current).
pub const STATES: &[&str] = &["running", "slowing", "paused", "done"];

/// Label names pacer uses itself; a policy label may not reuse one.
const RESERVED: &[&str] = &[
    "job",
    "instance",
    "pacer_job",
    "state",
    "reason",
    "signal",
    "class",
    "outcome",
    "action",
    "le",
    "version",
];

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error(
        "[job] labels: {0:?} is not a valid metric label name (letters, digits and `_`, not starting with a digit or `__`)"
    )]
    BadLabel(String),
    #[error("[job] labels: {0:?} is a label pacer sets itself; choose another name")]
    ReservedLabel(String),
}

/// The job's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    rows_done: Counter,
    rows_pending: Gauge,
    batch_size: Gauge,
    sleep_seconds: FloatGauge,
    workers: Gauge,
    state: Family<Labels, Gauge>,
    pauses: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    batches: Family<Labels, Counter>,
    batch_duration: Histogram,
    batch_rows: Counter,
    retries: Family<Labels, Counter>,
    signal_value: Family<Labels, FloatGauge>,
    signal_missing: Family<Labels, Gauge>,
    signal_slow: Family<Labels, FloatGauge>,
    signal_stop: Family<Labels, FloatGauge>,
    signal_baseline: Family<Labels, FloatGauge>,
    signal_estimate: Family<Labels, FloatGauge>,
    signal_delay: Family<Labels, FloatGauge>,
    signal_noise: Family<Labels, FloatGauge>,
    target_rate: FloatGauge,
}

/// Check `[job] labels` before they become label names.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), MetricsError> {
    for k in labels.keys() {
        let mut chars = k.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with("__");
        if !ok {
            return Err(MetricsError::BadLabel(k.clone()));
        }
        if RESERVED.contains(&k.as_str()) {
            return Err(MetricsError::ReservedLabel(k.clone()));
        }
    }
    Ok(())
}

impl Metrics {
    pub fn new(job: &str, labels: &BTreeMap<String, String>) -> Result<Metrics, MetricsError> {
        validate_labels(labels)?;
        let consts = std::iter::once((Cow::Borrowed("pacer_job"), Cow::Owned(job.to_string())))
            .chain(
                labels
                    .iter()
                    .map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone()))),
            )
            .collect::<Vec<_>>();
        let mut registry = Registry::with_prefix_and_labels("pacer", consts.into_iter());

        let m = Metrics {
            registry: Registry::default(),
            rows_done: Counter::default(),
            rows_pending: Gauge::default(),
            batch_size: Gauge::default(),
            sleep_seconds: FloatGauge::default(),
            workers: Gauge::default(),
            state: Family::default(),
            pauses: Family::default(),
            decisions: Family::default(),
            batches: Family::default(),
            // 5 ms .. ~82 s: a healthy batch is well under a second, a
            // pathological one hits statement_timeout.
            batch_duration: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            batch_rows: Counter::default(),
            retries: Family::default(),
            signal_value: Family::default(),
            signal_missing: Family::default(),
            signal_slow: Family::default(),
            signal_stop: Family::default(),
            signal_baseline: Family::default(),
            signal_estimate: Family::default(),
            signal_delay: Family::default(),
            signal_noise: Family::default(),
            target_rate: FloatGauge::default(),
        };
        // A gauge set to 1 rather than an OpenMetrics `info`, which the
        // classic text parser (promtool, older scrapers) rejects.
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        registry.register("build_info", "pacer version", build);
        registry.register(
            "rows_done",
            "Rows the backfill has completed (from the progress record)",
            m.rows_done.clone(),
        );
        registry.register(
            "rows_pending",
            "Rows still to do (estimate)",
            m.rows_pending.clone(),
        );
        registry.register(
            "batch_size",
            "Rows per write transaction now",
            m.batch_size.clone(),
        );
        registry.register_with_unit(
            "sleep",
            "Pause between a worker's batches now",
            Unit::Seconds,
            m.sleep_seconds.clone(),
        );
        registry.register(
            "workers",
            "Concurrent write transactions now",
            m.workers.clone(),
        );
        registry.register(
            "state",
            "1 for the job's current state (running, slowing, paused, done), 0 for the others",
            m.state.clone(),
        );
        registry.register(
            "pauses",
            "Pauses by reason (stop:<signal>, missing:<signal>, manual, window:<name>)",
            m.pauses.clone(),
        );
        registry.register(
            "decisions",
            "Controller decisions by action",
            m.decisions.clone(),
        );
        registry.register(
            "batches",
            "Batches by outcome (ok or an error class)",
            m.batches.clone(),
        );
        registry.register_with_unit(
            "batch_duration",
            "Duration of successful batches",
            Unit::Seconds,
            m.batch_duration.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows changed by successful batches",
            m.batch_rows.clone(),
        );
        registry.register("retries", "Batch retries by error class", m.retries.clone());
        registry.register(
            "signal_value",
            "Last reading of each signal (NaN while missing)",
            m.signal_value.clone(),
        );
        registry.register(
            "signal_missing",
            "1 while a signal has no reading",
            m.signal_missing.clone(),
        );
        registry.register(
            "signal_slow_level",
            "Level above which pacer slows down",
            m.signal_slow.clone(),
        );
        registry.register(
            "signal_stop_level",
            "Level above which pacer pauses",
            m.signal_stop.clone(),
        );
        registry.register(
            "signal_baseline",
            "Baseline that relative levels multiply",
            m.signal_baseline.clone(),
        );
        registry.register(
            "signal_estimate",
            "Smoothed estimate of each signal that slow and growth decisions judge (NaN before the first reading)",
            m.signal_estimate.clone(),
        );
        registry.register_with_unit(
            "signal_delay",
            "How long a change of rate takes to show fully in each signal",
            Unit::Seconds,
            m.signal_delay.clone(),
        );
        registry.register(
            "signal_noise",
            "Measured noise of each signal, one standard deviation of a reading (NaN until measured; 0 on a clean signal)",
            m.signal_noise.clone(),
        );
        registry.register(
            "target_rate_rows_per_second",
            "Rows/s the controller's knobs aim at (0 while paused)",
            m.target_rate.clone(),
        );
        for s in STATES {
            m.state
                .get_or_create(&vec![("state", s.to_string())])
                .set(0);
        }
        Ok(Metrics { registry, ..m })
    }

    /// The exposition text for `GET /metrics` (OpenMetrics, ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics (curl, promtool, older scrapers): counters' HELP
    /// and TYPE carry the `_total` name their samples have, and the
    /// OpenMetrics-only `# UNIT` and `# EOF` lines are dropped.
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }

    /// Publish each signal's resolved levels once the baselines are known.
    pub fn set_signal_levels(&self, levels: &[SignalLevels]) {
        for l in levels {
            self.set_levels(&l.name, l.slow, l.stop, l.baseline);
        }
    }

    /// Same as `set_signal_levels`, from a history's signal list.
    pub fn set_signal_infos(&self, infos: &[SignalInfo]) {
        for l in infos {
            self.set_levels(&l.name, l.slow, l.stop, l.baseline);
        }
    }

    fn set_levels(&self, name: &str, slow: Option<f64>, stop: Option<f64>, baseline: Option<f64>) {
        let key = signal_key(name);
        for (fam, v) in [
            (&self.signal_slow, slow),
            (&self.signal_stop, stop),
            (&self.signal_baseline, baseline),
        ] {
            match v {
                Some(v) => {
                    fam.get_or_create(&key).set(v);
                }
                None => {
                    fam.remove(&key);
                }
            }
        }
    }

    /// Last readings, by signal name in the same order as `readings`.
    pub fn observe_readings<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        readings: &[Reading],
    ) {
        for (name, r) in names.into_iter().zip(readings) {
            let key = signal_key(name);
            self.signal_value
                .get_or_create(&key)
                .set(r.value.unwrap_or(f64::NAN));
            self.signal_missing
                .get_or_create(&key)
                .set(i64::from(r.value.is_none()));
        }
    }

    /// Knobs, state, decision counts, and a pause count per reason when the
    /// decision pauses.
    pub fn observe_decision(&self, d: &Decision) {
        self.set_knobs(&d.knobs);
        self.target_rate.set(d.view.target_rate);
        for v in &d.view.signals {
            let key = signal_key(&v.name);
            self.signal_estimate
                .get_or_create(&key)
                .set(v.estimate.unwrap_or(f64::NAN));
            self.signal_delay
                .get_or_create(&key)
                .set(v.delay.as_secs_f64());
            self.signal_noise
                .get_or_create(&key)
                .set(v.noise.unwrap_or(f64::NAN));
        }
        self.set_state(d.state.as_str());
        self.decisions
            .get_or_create(&vec![("action", action_str(d.action).to_string())])
            .inc();
        if d.action == Action::Pause {
            let mut reasons: Vec<String> = d.causes.iter().filter_map(pause_reason).collect();
            reasons.dedup();
            if reasons.is_empty() {
                reasons.push("other".into());
            }
            for r in reasons {
                self.pauses.get_or_create(&vec![("reason", r)]).inc();
            }
        }
    }

    pub fn set_knobs(&self, k: &crate::controller::Knobs) {
        self.batch_size.set(i64::from(k.batch_size));
        self.sleep_seconds.set(k.sleep.as_secs_f64());
        self.workers.set(i64::from(k.workers));
    }

    /// `running`, `slowing`, `paused` or `done`.
    pub fn set_state(&self, state: &str) {
        for s in STATES {
            self.state
                .get_or_create(&vec![("state", s.to_string())])
                .set(i64::from(*s == state));
        }
    }

    /// One finished batch attempt. Successful batches feed the duration
    /// histogram; failed ones count under their error class.
    pub fn observe_batch(&self, b: &BatchOutcome) {
        let outcome = b.error.map_or("ok", |e| e.as_str());
        self.batches
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        if b.error.is_none() {
            self.batch_duration.observe(b.duration.as_secs_f64());
            self.batch_rows.inc_by(b.rows);
        }
    }

    /// A batch attempt that failed and will be retried.
    pub fn observe_retry(&self, class: BatchError) {
        self.retries
            .get_or_create(&vec![("class", class.as_str().to_string())])
            .inc();
    }

    /// Progress from the store: rows done (a counter that only moves
    /// forward, so `rate()` works across restarts) and rows pending.
    pub fn set_progress(&self, rows_done: u64, rows_pending: Option<u64>) {
        let cur = self.rows_done.get();
        if rows_done > cur {
            self.rows_done.inc_by(rows_done - cur);
        }
        if let Some(p) = rows_pending {
            self.rows_pending.set(i64::try_from(p).unwrap_or(i64::MAX));
        }
    }
}

/// OpenMetrics text → classic text format; see `Metrics::encode_classic`.
pub fn classic(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn signal_key(name: &str) -> Labels {
    vec![("signal", name.to_string())]
}

/// The `reason` label of a pause cause; bounded by the policy (signal and
/// window names), never free text such as a manual pause's message.
fn pause_reason(c: &Cause) -> Option<String> {
    match c {
        Cause::Signal { signal, level, .. } if *level == "stop" => Some(format!("stop:{signal}")),
        Cause::Missing { signal, .. } => Some(format!("missing:{signal}")),
        Cause::Manual { .. } => Some("manual".into()),
        Cause::Window { window } => Some(format!("window:{window}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::controller::{SignalView, State, View};

    /// The target rate and estimates follow each decision's view, including
    /// back down to 0 when a pause comes.
    #[test]
    fn target_rate_and_estimates_follow_the_decisions() {
        let m = Metrics::new("j", &BTreeMap::new()).unwrap();
        let d = |state, target_rate, estimate| {
            Decision::holding(
                state,
                View {
                    target_rate,
                    signals: vec![SignalView {
                        name: "p95".into(),
                        raw: Some(1.0),
                        estimate: Some(estimate),
                        delay: Duration::from_millis(1500),
                        unresponsive_for: None,
                        noise: Some(0.125),
                        within_noise: false,
                    }],
                },
            )
        };
        m.observe_decision(&d(State::Running, 4321.5, 0.25));
        let text = m.encode();
        assert!(
            text.contains("pacer_target_rate_rows_per_second{pacer_job=\"j\"} 4321.5"),
            "{text}"
        );
        assert!(
            text.contains("pacer_signal_estimate{pacer_job=\"j\",signal=\"p95\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("pacer_signal_delay_seconds{pacer_job=\"j\",signal=\"p95\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("pacer_signal_noise{pacer_job=\"j\",signal=\"p95\"} 0.125"),
            "{text}"
        );
        m.observe_decision(&d(State::Paused, 0.0, 0.5));
        let text = m.encode();
        assert!(
            text.contains("pacer_target_rate_rows_per_second{pacer_job=\"j\"} 0.0"),
            "{text}"
        );
        assert!(
            text.contains("pacer_signal_estimate{pacer_job=\"j\",signal=\"p95\"} 0.5"),
            "{text}"
        );
    }
}
