//! Properties of the controller over random signal traces (proptest). Each
//! property is checked against an independent reading of the trace, not
//! against the controller's own bookkeeping.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pacer::controller::{
    Action, BatchError, BatchOutcome, Controller, Decision, Inputs, Knobs, ManualPause, State,
};
use pacer::policy::{Level, OnMissing, Policy, Window};
use pacer::signals::Reading;
use proptest::prelude::*;

const DEMO: &str = include_str!("../policies/demo.toml");

#[derive(Debug, Clone)]
struct Sig {
    slow: f64,
    stop: f64,
    stop_for: u64,
    on_missing: OnMissing,
}

#[derive(Debug, Clone)]
struct Setup {
    batch: (u32, u32, u32),
    sleep_ms: (u64, u64, u64),
    workers: (u32, u32, u32),
    beta: f64,
    cooldown: u64,
    resume_after: u64,
    hold_after_resume: u64,
    missing_grace: u64,
    worker_after: u64,
    target_ms: u64,
    signals: Vec<Sig>,
    window: Option<WindowSpec>,
}

/// A capping window: from minute, until minute (after 10:00), max batch,
/// max workers, min sleep (ms).
type WindowSpec = (u32, u32, Option<u32>, Option<u32>, Option<u64>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Calm,
    Slow,
    Stop,
    Missing,
}

#[derive(Debug, Clone)]
struct Tick {
    /// Per signal: class and a position in [0, 1) within the class's band.
    values: Vec<(Class, f64)>,
    batches: Vec<(u64, u64, Option<BatchError>)>,
    manual: bool,
    app_limited: bool,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap()
}

fn setup() -> impl Strategy<Value = Setup> {
    let range_u32 = |lo: u32, hi: u32| {
        (lo..=hi, lo..=hi, 0.0f64..1.0).prop_map(|(a, b, f)| {
            let (min, max) = (a.min(b), a.max(b));
            (min + ((max - min) as f64 * f) as u32, min, max)
        })
    };
    let sleep = (0u64..=500, 0u64..=5000, 0.0f64..1.0).prop_map(|(a, b, f)| {
        let (min, max) = (a.min(b), a.max(b));
        (min + ((max - min) as f64 * f) as u64, min, max)
    });
    let sig =
        (0.5f64..5.0, 0.0f64..5.0, 0u64..=8, 0u8..3).prop_map(|(slow, extra, stop_for, m)| Sig {
            slow,
            stop: slow + extra,
            stop_for,
            on_missing: [OnMissing::Pause, OnMissing::Hold, OnMissing::Ignore][m as usize],
        });
    let window = proptest::option::of((
        0u32..4,
        1u32..4,
        proptest::option::of(1u32..3000),
        proptest::option::of(1u32..4),
        proptest::option::of(0u64..3000),
    ));
    (
        (range_u32(1, 5000), sleep, range_u32(1, 8)),
        (
            0.2f64..0.9,
            0u64..10,
            1u64..30,
            0u64..30,
            1u64..10,
            0u64..20,
            200u64..2000,
        ),
        proptest::collection::vec(sig, 1..=3),
        window,
    )
        .prop_map(
            |(
                (batch, sleep_ms, workers),
                (beta, cooldown, ra, hold, grace, wa, target),
                signals,
                window,
            )| Setup {
                batch,
                sleep_ms,
                workers,
                beta,
                cooldown,
                resume_after: ra,
                hold_after_resume: hold,
                missing_grace: grace,
                worker_after: wa,
                target_ms: target,
                signals,
                window: window.map(|(from, len, b, w, s)| {
                    let w = if b.is_none() && s.is_none() {
                        w.or(Some(1))
                    } else {
                        w
                    };
                    (from, from + len, b, w, s)
                }),
            },
        )
}

/// Traces are runs of ticks with the same classes, so sustained states occur.
fn trace(n_signals: usize) -> impl Strategy<Value = Vec<Tick>> {
    runs_of(n_signals, 1)
}

/// Values that hold for at least this many ticks and then step: a clean
/// signal. At most two second differences per step are not zero, so the
/// estimator measures no noise in them (the median of its differences is
/// zero).
const CLEAN_RUN: usize = 6;

/// Runs of `min_len` ticks or more with the same classes.
fn runs_of(n_signals: usize, min_len: usize) -> impl Strategy<Value = Vec<Tick>> {
    let class = prop_oneof![
        5 => Just(Class::Calm),
        2 => Just(Class::Slow),
        2 => Just(Class::Stop),
        1 => Just(Class::Missing),
    ];
    let segment = (
        proptest::collection::vec((class, 0.0f64..1.0), n_signals),
        min_len..25,
        proptest::collection::vec(
            (
                10u64..3000,
                1u64..5000,
                proptest::option::weighted(
                    0.1,
                    prop_oneof![
                        Just(BatchError::LockTimeout),
                        Just(BatchError::Deadlock),
                        Just(BatchError::StatementTimeout)
                    ],
                ),
            ),
            0..3,
        ),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.2),
    );
    proptest::collection::vec(segment, 1..30).prop_map(|segs| {
        let mut out = Vec::new();
        for (values, len, batches, manual, app_limited) in segs {
            for _ in 0..len {
                out.push(Tick {
                    values: values.clone(),
                    batches: batches.clone(),
                    manual,
                    app_limited,
                });
            }
        }
        out
    })
}

fn policy(s: &Setup) -> Policy {
    let mut p = Policy::from_toml("demo.toml", DEMO).unwrap();
    let l = &mut p.limits;
    l.batch_size.start = s.batch.0;
    l.batch_size.min = s.batch.1;
    l.batch_size.max = s.batch.2;
    l.sleep.start = Duration::from_millis(s.sleep_ms.0);
    l.sleep.min = Duration::from_millis(s.sleep_ms.1);
    l.sleep.max = Duration::from_millis(s.sleep_ms.2);
    l.workers.start = s.workers.0;
    l.workers.min = s.workers.1;
    l.workers.max = s.workers.2;
    let c = &mut p.controller;
    c.beta = s.beta;
    c.cooldown = Duration::from_secs(s.cooldown);
    c.resume_after = Duration::from_secs(s.resume_after);
    c.hold_after_resume = Duration::from_secs(s.hold_after_resume);
    c.missing_grace = Duration::from_secs(s.missing_grace);
    c.worker_after = Duration::from_secs(s.worker_after);
    c.target_batch_time = Duration::from_millis(s.target_ms);
    let template = p.signals[1].clone();
    p.signals = s
        .signals
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut x = template.clone();
            x.name = format!("s{i}");
            x.slow_above = Some(Level::Absolute(g.slow));
            x.stop_above = Some(Level::Absolute(g.stop));
            x.stop_for = Duration::from_secs(g.stop_for);
            x.on_missing = g.on_missing;
            x
        })
        .collect();
    p.job.timezone = "UTC".into();
    p.windows = s
        .window
        .iter()
        .map(|&(from, until, b, w, sl)| Window {
            name: "cap".into(),
            days: vec![],
            dates: vec![],
            from: Some(format!("10:{from:02}")),
            until: Some(format!("10:{until:02}")),
            timezone: None,
            pause: false,
            max_batch_size: b.map(|b| b.max(s.batch.1)),
            max_workers: w.map(|w| w.max(s.workers.1)),
            min_sleep: sl
                .map(|x| Duration::from_millis(x).min(Duration::from_millis(s.sleep_ms.2))),
        })
        .collect();
    p.validate("generated").unwrap();
    p
}

/// The value a class stands for: calm ≤ slow < slow-band ≤ stop < stop-band.
fn value(sig: &Sig, (class, pos): (Class, f64)) -> Option<f64> {
    match class {
        Class::Calm => Some(sig.slow * pos),
        Class::Slow if sig.stop > sig.slow => {
            Some(sig.slow + (sig.stop - sig.slow) * pos.max(1e-6))
        }
        Class::Slow => Some(sig.slow * pos),
        Class::Stop => Some(sig.stop * (1.0 + pos) + 1e-6),
        Class::Missing => None,
    }
}

struct Run {
    decisions: Vec<Decision>,
    /// Per tick, per signal: the value fed in.
    values: Vec<Vec<Option<f64>>>,
    /// Per tick, per signal: the controller's estimate after the tick.
    estimates: Vec<Vec<Option<f64>>>,
    /// Per tick: effective rate of the knobs before and after, both with
    /// the controller's time per row after the tick, and the most the
    /// growth bound allows for one tick.
    rates: Vec<(f64, f64, f64)>,
    /// Per resume: (tick, rate of the knobs at the pause, rate resumed at,
    /// the slowest rate the limits allow).
    resumes: Vec<(usize, f64, f64, f64)>,
}

fn run(s: &Setup, ticks: &[Tick]) -> (Policy, Run) {
    let p = policy(s);
    let mut c = Controller::new(&p, &BTreeMap::new()).unwrap();
    let mut decisions = Vec::new();
    let mut values = Vec::new();
    let mut estimates = Vec::new();
    let mut rates = Vec::new();
    let mut resumes = Vec::new();
    let mut at_pause: Option<Knobs> = None;
    let per_tick = (1.0 + p.controller.growth).powf(1.0 / c.growth_delay().as_secs_f64().max(1.0));
    for (i, t) in ticks.iter().enumerate() {
        let now = t0() + chrono::Duration::seconds(i as i64);
        let vals: Vec<Option<f64>> = s
            .signals
            .iter()
            .zip(&t.values)
            .map(|(g, v)| value(g, *v))
            .collect();
        let inputs = Inputs {
            readings: vals
                .iter()
                .map(|v| match v {
                    Some(x) => Reading::value(*x, now),
                    None => Reading::missing("test: no data", now),
                })
                .collect(),
            batches: t
                .batches
                .iter()
                .map(|&(ms, rows, error)| BatchOutcome {
                    started: now - chrono::Duration::milliseconds(ms as i64),
                    duration: Duration::from_millis(ms),
                    rows,
                    error,
                })
                .collect(),
            manual_pause: t.manual.then(|| ManualPause {
                by: "test".into(),
                reason: "prop".into(),
            }),
            app_limited: t.app_limited,
        };
        let d = c.step(now, &inputs);
        let (r0, r1) = (c.rate_of(&d.before), c.rate_of(&d.knobs));
        rates.push((r0, r1, r0 * per_tick));
        if d.action == Action::Pause {
            at_pause = Some(d.before);
        }
        if d.action == Action::Resume
            && let Some(k) = at_pause
        {
            let l = &p.limits;
            let floor = Knobs {
                batch_size: l.batch_size.min,
                sleep: l.sleep.max,
                workers: l.workers.min,
            };
            resumes.push((i, c.rate_of(&k), r1, c.rate_of(&floor)));
        }
        estimates.push(c.estimates());
        decisions.push(d);
        values.push(vals);
    }
    (
        p,
        Run {
            decisions,
            values,
            estimates,
            rates,
            resumes,
        },
    )
}

/// Every signal `judged` that has been above stop for its `stop_for` is
/// paused on at that tick.
fn sustained_stop_pauses(
    s: &Setup,
    r: &Run,
    judged: impl Fn(&Sig) -> bool,
) -> Result<(), TestCaseError> {
    for (j, g) in s.signals.iter().enumerate().filter(|(_, g)| judged(g)) {
        let mut above_since: Option<usize> = None;
        for (i, vals) in r.values.iter().enumerate() {
            match vals[j] {
                Some(v) if v > g.stop => {
                    let since = *above_since.get_or_insert(i);
                    if (i - since) as u64 >= g.stop_for {
                        prop_assert_eq!(
                            r.decisions[i].state,
                            State::Paused,
                            "tick {}: s{} above stop {} since tick {} (stop_for {}s) but {:?}",
                            i,
                            j,
                            g.stop,
                            since,
                            g.stop_for,
                            r.decisions[i]
                        );
                    }
                }
                _ => above_since = None,
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn knobs_stay_within_limits_and_window_caps(s in setup(), ticks in trace(3)) {
        let (p, r) = run(&s, &ticks);
        let l = &p.limits;
        let c = Controller::new(&p, &BTreeMap::new()).unwrap();
        for d in &r.decisions {
            let k = d.knobs;
            prop_assert!((l.batch_size.min..=l.batch_size.max).contains(&k.batch_size), "{d:?}");
            prop_assert!((l.workers.min..=l.workers.max).contains(&k.workers), "{d:?}");
            prop_assert!(k.sleep >= l.sleep.min && k.sleep <= l.sleep.max, "{d:?}");
            let (caps, _) = c.caps_at(d.at);
            if let Some(b) = caps.max_batch_size { prop_assert!(k.batch_size <= b, "window batch cap {b}: {d:?}"); }
            if let Some(w) = caps.max_workers { prop_assert!(k.workers <= w, "window worker cap {w}: {d:?}"); }
            if let Some(sl) = caps.min_sleep { prop_assert!(k.sleep >= sl, "window sleep floor: {d:?}"); }
        }
    }

    /// On a clean signal stop is never later than the plain rule: above
    /// stop for `stop_for` pauses at that tick.
    #[test]
    fn sustained_stop_pauses_at_that_tick(s in setup(), ticks in runs_of(3, CLEAN_RUN)) {
        let (_, r) = run(&s, &ticks);
        sustained_stop_pauses(&s, &r, |_| true)?;
    }

    /// On any signal, noisy or not, `stop_for = 0` asks for the plain rule
    /// alone: a reading above stop pauses at once.
    #[test]
    fn stop_for_zero_pauses_on_any_reading_above_stop(s in setup(), ticks in trace(3)) {
        let (_, r) = run(&s, &ticks);
        sustained_stop_pauses(&s, &r, |g| g.stop_for == 0)?;
    }

    /// Slow and growth decisions judge the estimate: while any signal's
    /// estimate is above its slow level, the effective rate never rises.
    #[test]
    fn no_growth_while_an_estimate_is_above_slow(s in setup(), ticks in trace(3)) {
        let (_, r) = run(&s, &ticks);
        for (i, d) in r.decisions.iter().enumerate() {
            // Signals read this tick (a missing one is judged by its own rule).
            let slow = s.signals.iter().enumerate().any(|(j, g)| {
                r.values[i][j].is_some() && r.estimates[i][j].is_some_and(|e| e > g.slow)
            });
            let (r0, r1, _) = r.rates[i];
            if slow && d.state != State::Paused {
                prop_assert!(r1 <= r0 * (1.0 + 1e-9), "tick {i}: rate {r0} → {r1} while slow: {d:?}");
            }
        }
    }

    /// No single decision (a knob step, a new worker, a resume) raises the
    /// effective rate by more than the growth bound for one tick.
    #[test]
    fn no_tick_raises_the_rate_beyond_the_growth_bound(s in setup(), ticks in trace(3)) {
        let (_, r) = run(&s, &ticks);
        for (i, d) in r.decisions.iter().enumerate() {
            // A resume starts from zero; its own rule (min of the last calm
            // rate and β × the rate at the pause) is checked below.
            if d.action == Action::Resume {
                continue;
            }
            let (r0, r1, bound) = r.rates[i];
            // (1e-6: knob durations are whole nanoseconds.)
            prop_assert!(r1 <= bound * (1.0 + 1e-6) || r1 <= r0, "tick {i}: rate {r0} → {r1}, bound {bound}: {d:?}");
        }
    }

    #[test]
    fn missing_beyond_grace_acts_per_on_missing(s in setup(), ticks in trace(3)) {
        let (_, r) = run(&s, &ticks);
        for (j, g) in s.signals.iter().enumerate() {
            let mut missing_since: Option<usize> = None;
            for (i, vals) in r.values.iter().enumerate() {
                if vals[j].is_some() { missing_since = None; continue; }
                let since = *missing_since.get_or_insert(i);
                let d = &r.decisions[i];
                let beyond = (i - since) as u64 >= s.missing_grace;
                // (A batch-level hiccup may trade batch for sleep at the
                // same rate: growth is of the rate.)
                let (r0, r1, _) = r.rates[i];
                let rose = r1 > r0 * (1.0 + 1e-6);
                match g.on_missing {
                    OnMissing::Pause if beyond => prop_assert_eq!(d.state, State::Paused, "tick {}: {:?}", i, d),
                    // Within grace, or on_missing = hold: never grow.
                    OnMissing::Pause | OnMissing::Hold => prop_assert!(!rose, "tick {i}: {d:?}"),
                    OnMissing::Ignore if !beyond => prop_assert!(!rose, "tick {i}: {d:?}"),
                    OnMissing::Ignore => {}
                }
            }
        }
    }

    #[test]
    fn resume_only_after_calm_and_below_the_rate_at_the_pause(s in setup(), ticks in trace(3)) {
        let (p, r) = run(&s, &ticks);
        // Independent notion of calm: every signal present and ≤ slow, or
        // missing beyond grace with on_missing = ignore.
        let mut missing_since = vec![None::<usize>; s.signals.len()];
        let calm: Vec<bool> = r.values.iter().enumerate().map(|(i, vals)| {
            // Every signal's tracker must advance: no short-circuit.
            let each: Vec<bool> = s.signals.iter().enumerate().map(|(j, g)| match vals[j] {
                Some(_) => {
                    missing_since[j] = None;
                    r.estimates[i][j].is_some_and(|e| e <= g.slow && e <= g.stop)
                }
                None => {
                    let since = *missing_since[j].get_or_insert(i);
                    g.on_missing == OnMissing::Ignore && (i - since) as u64 >= s.missing_grace
                }
            }).collect();
            each.iter().all(|&c| c)
        }).collect();
        let c = Controller::new(&p, &BTreeMap::new()).unwrap();
        let mut hold_until: Option<usize> = None;
        for (i, d) in r.decisions.iter().enumerate() {
            if d.action == Action::Resume {
                let need = s.resume_after as usize;
                prop_assert!(i >= need, "resumed at tick {i} before {need} ticks existed");
                prop_assert!(calm[i - need..=i].iter().all(|&c| c), "tick {i}: resumed without {need}s of calm");
                prop_assert!(!ticks[i].manual, "resumed while manually paused");
                // The pause that ended here, and what it remembered.
                let start = (0..i).rev().find(|&k| r.decisions[k].action == Action::Pause).unwrap();
                let signal_pause = r.decisions[start].causes.iter().any(|c| matches!(c,
                    pacer::controller::Cause::Signal { .. } | pacer::controller::Cause::Missing { .. }));
                if signal_pause {
                    // min(last calm rate, β × rate at the pause), or lower
                    // after a repeated trip.
                    let (_, paused_at, resumed, floor) = r.resumes.iter().find(|x| x.0 == i).copied().unwrap();
                    prop_assert!(resumed <= (s.beta * paused_at).max(floor) * (1.0 + 1e-6),
                        "tick {i}: resumed at {resumed} rows/s, paused at {paused_at}");
                } else {
                    // A manual or window pause resumes as it was, even
                    // after a resume moments before.
                    let (caps, _) = c.caps_at(d.at);
                    let expected = r.decisions[start].before.clamp(&p.limits, &caps);
                    prop_assert_eq!(d.knobs, expected, "tick {}: resumed with other knobs than at the pause", i);
                }
                hold_until = Some(i + s.hold_after_resume as usize);
            } else if let Some(h) = hold_until
                && i < h
                && d.state != State::Paused
            {
                let (r0, r1, _) = r.rates[i];
                prop_assert!(r1 <= r0 * (1.0 + 1e-6), "tick {i}: grew during hold after resume: {d:?}");
            }
        }
    }

    #[test]
    fn manual_pause_pauses_immediately(s in setup(), ticks in trace(2)) {
        let (_, r) = run(&s, &ticks);
        for (i, d) in r.decisions.iter().enumerate() {
            if ticks[i].manual {
                prop_assert_eq!(d.state, State::Paused);
            }
        }
    }

    #[test]
    fn same_inputs_same_decisions(s in setup(), ticks in trace(3)) {
        let (_, a) = run(&s, &ticks);
        let (_, b) = run(&s, &ticks);
        prop_assert_eq!(a.decisions, b.decisions);
    }
}

/// The same cause pausing again during the hold after a resume makes the
/// next resume start lower, so the job cannot cycle at the same knobs; one
/// `beta` lower, not two: the rate at that pause is already the resume's.
#[test]
fn repeated_trip_during_hold_resumes_lower() {
    let s = Setup {
        batch: (1000, 10, 5000),
        sleep_ms: (100, 0, 5000),
        workers: (2, 1, 4),
        beta: 0.5,
        cooldown: 5,
        resume_after: 5,
        hold_after_resume: 30,
        missing_grace: 5,
        worker_after: 10,
        target_ms: 1000,
        signals: vec![Sig {
            slow: 1.0,
            stop: 2.0,
            stop_for: 0,
            on_missing: OnMissing::Pause,
        }],
        window: None,
    };
    let tick = |c: Class| Tick {
        values: vec![(c, 0.5)],
        batches: vec![(200, 1000, None)],
        manual: false,
        app_limited: false,
    };
    // (Calm long enough for the estimate to be judged: half its 10 s τ.)
    let mut ticks = vec![tick(Class::Calm); 8];
    ticks.push(tick(Class::Stop)); // pause
    ticks.extend(vec![tick(Class::Calm); 6]); // resume after 5 s calm
    ticks.push(tick(Class::Stop)); // same cause during the hold
    ticks.extend(vec![tick(Class::Calm); 6]);
    let (_, r) = run(&s, &ticks);
    let resumes: Vec<&Decision> = r
        .decisions
        .iter()
        .filter(|d| d.action == Action::Resume)
        .collect();
    assert_eq!(resumes.len(), 2, "{:#?}", r.decisions);
    let (a, b) = (resumes[0].knobs, resumes[1].knobs);
    // Every batch took 200 ms for 1,000 rows: what a row costs.
    let rate = |k: Knobs| k.rate(0.0002 * k.batch_size as f64);
    let paused_at = r.decisions[8].before;
    assert!(
        rate(a) <= rate(paused_at) * 0.5 * 1.05,
        "first resume at ≤ beta × the rate at the pause: {paused_at:?} then {a:?}"
    );
    assert!(
        rate(b) <= rate(a) * 0.5 * 1.05 && rate(b) >= rate(a) * 0.5 * 0.95,
        "second resume at ~beta × those knobs: {a:?} then {b:?}"
    );
}
