//! A realistic run history for report and telemetry tests: the real
//! controller, driven tick by tick over a small deterministic model of a
//! business day (lunch peak, a replica stall, a manual pause, a gap in the
//! latency metric, lock timeouts during a sale). The simulator (src/sim)
//! produces richer ones; this keeps these tests independent of it.

#![allow(dead_code)]

pub mod capture;
pub mod expo;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pacer::controller::{BatchError, BatchOutcome, Controller, Inputs, ManualPause, State};
use pacer::history::{History, Sample, SignalInfo};
use pacer::policy::Policy;
use pacer::signals::Reading;

pub const SECRET: &str = "hunter2-SECRET";

/// The demo policy plus a lunch window capping workers, and a database URL
/// with a password that must never show up in output.
pub fn policy() -> Policy {
    let demo = std::fs::read_to_string("policies/demo.toml").expect("policies/demo.toml");
    let text = format!(
        "{demo}\n[job.labels]\ntenant = \"acme\"\n\n[[window]]\nname = \"lunch\"\nfrom = \"12:00\"\nuntil = \"13:00\"\nmax_workers = 2\n"
    );
    let text = text.replace(
        "[limits]",
        &format!("[database]\nurl = \"postgres://app:{SECRET}@db.internal:5432/shop\"\n\n[limits]"),
    );
    Policy::from_toml("demo-test.toml", &text).expect("test policy parses")
}

pub fn start() -> DateTime<Utc> {
    // 09:00 in Berlin on a Tuesday.
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0).unwrap()
}

/// Local (Berlin, UTC+1 in November) hour as a fraction.
fn local_hour(t: DateTime<Utc>) -> f64 {
    let secs = (t - start()).num_seconds() as f64;
    9.0 + secs / 3600.0
}

fn bump(h: f64, centre: f64, width: f64) -> f64 {
    let x = (h - centre) / width;
    (-x * x).exp()
}

/// Run the controller over `hours` of simulated time, one tick a second.
pub fn business_day(hours: f64) -> (Policy, History) {
    let policy = policy();
    let mut baselines = BTreeMap::new();
    baselines.insert("checkout_p95".to_string(), 0.33);
    let mut ctl = Controller::new(&policy, &baselines).expect("controller");
    let signals: Vec<SignalInfo> = ctl
        .levels()
        .iter()
        .map(|l| SignalInfo {
            name: l.name.clone(),
            slow: l.slow,
            stop: l.stop,
            baseline: l.baseline,
        })
        .collect();

    let total_rows: u64 = 62_000_000;
    let mut rows_done: u64 = 1_250_000; // resumed from an earlier session
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f64 / 10_000.0 - 0.5
    };
    let mut lat_ema = 0.31;
    let mut lag = 0.0f64;
    let mut rate_prev = 0.0f64;
    let mut samples = Vec::new();
    let mut decisions = Vec::new();
    let mut retries: BTreeMap<String, u64> = BTreeMap::new();
    let ticks = (hours * 3600.0) as i64;
    let mut done = false;

    for i in 0..ticks {
        let now = start() + chrono::Duration::seconds(i);
        let h = local_hour(now);
        let sale = (14.0..14.25).contains(&h);
        let live = 0.35 + 0.30 * bump(h, 12.5, 0.7) + if sale { 0.30 } else { 0.0 };
        let util = live + rate_prev / 6000.0;
        let lat = 0.30 * (1.0 + 1.2 * (util - 0.6).max(0.0)) * (1.0 + 0.04 * noise());
        lat_ema += 0.1 * (lat - lat_ema);
        let stalled = (12.15..12.22).contains(&h);
        // Replay keeps up with 4500 rows/s; a stalled replica falls one
        // second behind per second.
        lag = if stalled {
            lag + 1.0
        } else {
            (lag + (rate_prev - 4500.0) / 4500.0).max(0.0)
        };
        let lat_missing = (15.5..15.52).contains(&h);
        let readings = vec![
            if lat_missing {
                Reading::missing("empty result from Prometheus", now)
            } else {
                Reading::value(lat_ema, now)
            },
            Reading::value(lag, now),
        ];
        let manual = (13.5..13.67).contains(&h).then(|| ManualPause {
            by: "alice".into(),
            reason: "sale prep".into(),
        });
        let k = ctl.knobs();
        let per_row = 0.00015 * (1.0 + util);
        let bt = per_row * k.batch_size as f64;
        let mut batches = Vec::new();
        let paused = ctl.is_paused() || done;
        if !paused {
            let lock = sale && k.batch_size > 800 && i % 5 == 0;
            batches.push(BatchOutcome {
                started: now - chrono::Duration::milliseconds(500),
                duration: Duration::from_secs_f64(bt),
                rows: k.batch_size as u64,
                error: lock.then_some(BatchError::LockTimeout),
            });
            if lock {
                *retries.entry("lock_timeout".into()).or_default() += 1;
            }
        }
        let d = ctl.step(
            now,
            &Inputs {
                readings: readings.clone(),
                batches,
                manual_pause: manual,
                app_limited: false,
            },
        );
        let rate = if d.state == State::Paused || done {
            0.0
        } else {
            (d.knobs.rate(bt) * (1.0 + 0.1 * noise())).max(0.0)
        };
        rate_prev = rate;
        rows_done = (rows_done + rate as u64).min(total_rows);
        if rows_done == total_rows {
            done = true;
        }
        if d.changed() {
            decisions.push(d.clone());
        }
        let mut sig = BTreeMap::new();
        for (s, r) in signals.iter().zip(&readings) {
            sig.insert(s.name.clone(), r.value);
        }
        samples.push(
            Sample {
                at: now,
                state: if done {
                    "done".into()
                } else {
                    d.state.as_str().into()
                },
                knobs: d.knobs,
                rows_per_second: rate,
                rows_done,
                signals: sig,
                estimates: Default::default(),
                target_rate: None,
            }
            .with_view(&d.view),
        );
        if done {
            break;
        }
    }
    let pauses = History::pauses_from_decisions(&decisions);
    let history = History {
        job: policy.job.name.clone(),
        signals,
        samples,
        decisions,
        pauses,
        retries,
    };
    (policy, history)
}
