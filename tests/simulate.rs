//! `pacer simulate`: the bound is a real bound, the metrics mean what they
//! say, the demo policy meets its target, and the command's output has the
//! promised shape.

use std::path::Path;
use std::process::Command;

use pacer::policy::Policy;
use pacer::sim::{self, Model, Plant, Scenario, Setup, SimKind, Strategy, Truth};

/// `pacer simulate ARGS`, run from the crate's root.
fn simulate_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pacer"))
        .arg("simulate")
        .args(args)
        .output()
        .unwrap()
}

fn demo() -> Policy {
    Policy::load(Path::new("policies/demo.toml")).expect("demo policy loads")
}

/// The demo policy plus a lock-waiters signal (batch-size sensitive) and
/// optional extra TOML (windows).
fn policy_with(extra: &str) -> Policy {
    let text = std::fs::read_to_string("policies/demo.toml").unwrap();
    let text = format!(
        "{text}\n[[signal]]\nname = \"locks\"\npostgres = \"lock_waiters\"\nslow_above = 2.0\nstop_above = 6.0\nstop_for = \"5s\"\n{extra}"
    );
    Policy::from_toml("test-policy.toml", &text).expect("test policy is valid")
}

fn setup(policy: &Policy, scenario: &str, seed: u64) -> Setup {
    Setup::new(
        policy,
        &Model::builtin(),
        &Scenario::load(scenario).unwrap(),
        seed,
        None,
    )
    .unwrap()
}

/// Replays `rates`/`batches` through a fresh plant: the true values the
/// oracle's choices produce, computed independently of the oracle.
fn replay(s: &Setup, rates: &[f64], batches: &[f64]) -> Vec<sim::Truth> {
    let mut plant = plant_before_start(s);
    (0..rates.len())
        .map(|k| {
            let i = s.trace.start_index + k;
            let c = &s.trace.ticks[i];
            let u = s.model.utilisation(c.live, rates[k], batches[k]);
            let bt = s.model.batch_time(batches[k], u, c);
            plant.advance(&s.model, c, rates[k], batches[k], bt, s.dt())
        })
        .collect()
}

/// The replica backlogs as the no-backfill day left them at the start.
fn plant_before_start(s: &Setup) -> Plant {
    let before = &s.quiet[s.trace.start_index - 1];
    Plant {
        lag_bytes: before.lag_bytes,
        slot_lag_bytes: before.slot_lag_bytes,
    }
}

#[test]
fn oracle_rate_stays_below_every_slow_level_and_is_tight() {
    for scenario in ["business-day", "replica-storm"] {
        let s = setup(&policy_with(""), scenario, 3);
        let o = s.oracle();
        let truths = replay(&s, &o.rates, &o.batches);
        let mut binding = 0;
        for (k, t) in truths.iter().enumerate() {
            let quiet = &s.quiet[s.trace.start_index + k];
            // Judged as the signal's query reads it without noise: the
            // units the levels are written in.
            let read = |kind: &SimKind, t: &Truth| kind.reading_of(kind.value(t), &s.model);
            for (j, kind) in s.kinds.iter().enumerate() {
                let slow = s.levels[j].slow.unwrap();
                if read(kind, quiet) <= slow {
                    assert!(
                        read(kind, t) <= slow * (1.0 + 1e-9),
                        "{scenario} tick {k}: {} reads {} above slow {slow} at the oracle's rate {}",
                        s.levels[j].name,
                        read(kind, t),
                        o.rates[k]
                    );
                }
            }
            // Tight: 2 % more, with the same batch, crosses a slow level
            // unless the knobs' reach was what bound the oracle.
            if !o.knob_bound[k] && o.rates[k] > 0.0 {
                let mut more = o.rates.clone();
                more[k] *= 1.02;
                let t2 = replay(&s, &more[..=k], &o.batches[..=k]);
                let crossed = s
                    .kinds
                    .iter()
                    .enumerate()
                    .any(|(j, kind)| read(kind, &t2[k]) > s.levels[j].slow.unwrap());
                assert!(
                    crossed,
                    "{scenario} tick {k}: the oracle left room at rate {}",
                    o.rates[k]
                );
                binding += 1;
                if binding > 200 {
                    break;
                }
            }
        }
        assert!(
            binding > 0,
            "{scenario}: no tick where a signal bound the oracle"
        );
    }
}

/// A fixed rate (same batch all day, within the knobs' reach, paused in
/// pause windows), computed independently of the simulator's own runs:
/// (rows done, rows done while every signal was at or below slow).
/// Failed batches are not done, as in the bound.
fn fixed_rate_day(s: &Setup, rate: f64) -> (f64, f64) {
    let mut plant = plant_before_start(s);
    let (mut rows, mut clean) = (0.0, 0.0);
    for i in s.trace.start_index..s.trace.ticks.len() {
        let reach = s.reach(i);
        let c = &s.trace.ticks[i];
        let b = reach.batch_max;
        let r = if reach.paused {
            0.0
        } else {
            let (cap, _) = s.model.knob_rate(c, b, reach.sleep, reach.workers);
            rate.min(cap)
        };
        let u = s.model.utilisation(c.live, r, b);
        let bt = s.model.batch_time(b, u, c);
        let t = plant.advance(&s.model, c, r, b, bt, s.dt());
        let (timeout, deadlock) = s.model.batch_error_odds(b, c.live, reach.workers);
        let done = r * (1.0 - timeout - deadlock) * s.dt();
        rows += done;
        if s.kinds.iter().enumerate().all(|(j, k)| {
            s.levels[j]
                .slow
                .or(s.levels[j].stop)
                .is_none_or(|slow| k.reading_of(k.value(&t), &s.model) <= slow)
        }) {
            clean += done;
        }
    }
    (rows, clean)
}

/// The bound is an upper bound on every scenario: no fixed rate in a sweep
/// does more rows while production stays at or below slow than the
/// instant bound, though fast enough rates beat it in total rows (by
/// crowding production). The sweep covers latency- and lag-bound days.
#[test]
fn no_fixed_rate_does_more_clean_rows_than_the_bound() {
    for scenario in ["business-day", "replica-storm", "steady", "flash-crowds"] {
        let s = setup(&demo(), scenario, 2);
        let o = s.oracle();
        assert!(
            o.rows <= o.instant_rows,
            "{scenario}: the delayed bound is above the instant one"
        );
        let mut beat_bound = 0;
        for step in 0..=60 {
            let rate = 250.0 * step as f64;
            let (rows, clean) = fixed_rate_day(&s, rate);
            assert!(
                clean <= o.instant_rows * (1.0 + 1e-6),
                "{scenario}: fixed {rate} rows/s did {clean:.0} clean rows > bound {:.0}",
                o.instant_rows
            );
            if rows > o.instant_rows {
                beat_bound += 1;
            }
        }
        // The sweep reaches rates that beat the bound in total rows, so it
        // spans the interesting range.
        assert!(
            beat_bound > 0,
            "{scenario}: no fixed rate in the sweep beat the bound"
        );
    }
}

/// The simulator as rough as production: not what the controller was tuned
/// on. These are the current controller's figures with a margin (a guard
/// against regressions, not the goal: see bench/robustness).
#[test]
fn demo_policy_pauses_for_the_sale_and_keeps_its_stop_numbers_on_business_day() {
    let (policy, model, scenario) = (
        demo(),
        Model::builtin(),
        Scenario::load("business-day").unwrap(),
    );
    for seed in 1..=5 {
        let o = sim::simulate(&policy, &model, &scenario, seed, None).unwrap();
        assert!(
            o.efficiency >= 0.65,
            "seed {seed}: efficiency {}",
            o.efficiency
        );
        assert!(
            o.clean_efficiency <= o.efficiency,
            "seed {seed}: clean rows are a part of all rows"
        );
        assert!(
            o.seconds_above_stop <= 0.01 * o.simulated_seconds,
            "seed {seed}: {} s above stop",
            o.seconds_above_stop
        );
        assert!(
            o.pauses >= 1,
            "seed {seed}: the sale spike did not pause the job"
        );
        let fixed = o
            .fixed_baselines
            .as_ref()
            .expect("simulate runs the fixed loops");
        let (c, a) = (&fixed.conservative, &fixed.aggressive);
        assert!(
            c.efficiency < o.efficiency - 0.2,
            "seed {seed}: conservative {}",
            c.efficiency
        );
        assert!(
            a.seconds_above_stop > 50.0 * o.seconds_above_stop.max(1.0),
            "seed {seed}: aggressive {} s above stop",
            a.seconds_above_stop
        );
    }
}

#[test]
fn a_seed_replays_exactly_and_another_seed_differs() {
    let (policy, model, scenario) = (demo(), Model::builtin(), Scenario::load("steady").unwrap());
    let dur = Some(std::time::Duration::from_secs(1800));
    let a = sim::simulate(&policy, &model, &scenario, 7, dur).unwrap();
    let b = sim::simulate(&policy, &model, &scenario, 7, dur).unwrap();
    let c = sim::simulate(&policy, &model, &scenario, 8, dur).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_eq!(a.log, b.log);
    assert_ne!(a.rows_done, c.rows_done);
}

#[test]
fn seconds_above_stop_counts_only_harm_the_backfill_caused() {
    // The replica-storm day with no backfill keeps lag below stop; the
    // aggressive strategy drives it far above: counted. The business-day
    // sale spike pushes the no-backfill latency above slow but not stop, so
    // time above slow is not all blamed on the backfill either.
    let s = setup(&demo(), "replica-storm", 1);
    let lag = s
        .kinds
        .iter()
        .position(|k| *k == sim::SimKind::LagSeconds)
        .unwrap();
    let stop = s.levels[lag].stop.unwrap();
    assert!(s.quiet.iter().all(|t| t.lag_seconds < stop));
    let (_, aggressive) = sim::fixed_knobs(&s.policy);
    let r = s.run(&Strategy::Fixed(aggressive), false).unwrap();
    assert!(r.seconds_above_stop > 0.5 * s.simulated_seconds());

    // A fixed level the quiet day already exceeds is never blamed.
    let text = std::fs::read_to_string("policies/demo.toml").unwrap();
    let text = text
        .replace("stop_above = 10.0", "stop_above = 0.05")
        .replace("slow_above = 2.0", "slow_above = 0.04");
    let p = Policy::from_toml("low-lag.toml", &text).unwrap();
    let s = setup(&p, "steady", 1);
    let (conservative, _) = sim::fixed_knobs(&p);
    let r = s.run(&Strategy::Fixed(conservative), false).unwrap();
    assert_eq!(
        r.seconds_above_stop, 0.0,
        "lag 0.1 s with no backfill is above 0.05 all day"
    );
}

/// A signal already above stop without the backfill is harm too once the
/// backfill makes it clearly worse; a loop that stays out of it is not.
#[test]
fn making_an_already_bad_signal_worse_is_harm() {
    let text = std::fs::read_to_string("policies/demo.toml")
        .unwrap()
        .replace(
            "stop_above = \"baseline * 1.5\"",
            "stop_above = \"baseline * 1.3\"",
        );
    let p = Policy::from_toml("low-stop.toml", &text).unwrap();
    let s = setup(&p, "business-day", 1);
    let lat = s
        .kinds
        .iter()
        .position(|k| *k == sim::SimKind::Latency)
        .unwrap();
    let stop = s.levels[lat].stop.unwrap();
    let sale = s.quiet[s.trace.start_index..]
        .iter()
        .filter(|t| t.latency > stop)
        .count() as f64
        * s.dt();
    assert!(sale > 600.0, "the sale takes the quiet day above stop");
    let (_, aggressive) = sim::fixed_knobs(&p);
    let r = s.run(&Strategy::Fixed(aggressive), false).unwrap();
    assert!(
        r.seconds_worsened_above_stop >= 0.9 * sale,
        "{} s worsened of {sale} s above stop anyway",
        r.seconds_worsened_above_stop
    );
    assert_eq!(r.seconds_above_stop, s.simulated_seconds());

    // The same loop, paused through the sale, is not charged for it.
    let text = format!(
        "{text}\n[[window]]\nname = \"sale\"\nfrom = \"14:40\"\nuntil = \"15:20\"\npause = true\n"
    );
    let p = Policy::from_toml("low-stop-paused.toml", &text).unwrap();
    let s = setup(&p, "business-day", 1);
    let r = s.run(&Strategy::Fixed(aggressive), false).unwrap();
    assert_eq!(r.seconds_worsened_above_stop, 0.0);
}

/// Lock timeouts and deadlocks happen as batch errors, are reported to the
/// controller like a real run's, and cost the rows of the failed batches.
#[test]
fn lock_timeouts_reach_the_controller_as_batch_errors() {
    let text = sim::DEFAULT_MODEL.replace(
        "timeout_per_row_load = 4.0e-6",
        "timeout_per_row_load = 1.0e-4",
    );
    assert_ne!(text, sim::DEFAULT_MODEL);
    let model = Model::from_toml("lock-prone.toml", &text).unwrap();
    let s = Setup::new(
        &demo(),
        &model,
        &Scenario::load("steady").unwrap(),
        1,
        Some(std::time::Duration::from_secs(1800)),
    )
    .unwrap();
    let r = s.run(&Strategy::Pacer, false).unwrap();
    assert!(r.batch_errors > 10, "{} failed batches", r.batch_errors);
    assert!(
        r.log.iter().any(|d| d.causes.iter().any(|c| matches!(
            c,
            pacer::controller::Cause::BatchError {
                error: pacer::controller::BatchError::LockTimeout,
                ..
            }
        ))),
        "no decision names a lock timeout"
    );
}

#[test]
fn windows_pause_and_cap_pacer_and_the_bound() {
    let p = policy_with(
        "[[window]]\nname = \"lunch\"\nfrom = \"12:00\"\nuntil = \"13:00\"\npause = true\n\
         [[window]]\nname = \"morning\"\nuntil = \"10:00\"\nmax_workers = 1\nmax_batch_size = 1000\n",
    );
    let s = setup(&p, "business-day", 1);
    let o = s.oracle();
    let run = s.run(&Strategy::Pacer, true).unwrap();
    let h = run.history.unwrap();
    assert_eq!(h.samples.len(), s.run_ticks());
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    for (k, sample) in h.samples.iter().enumerate() {
        let start = s.instant(s.trace.start_index + k).with_timezone(&tz);
        let hm = start.format("%H:%M").to_string();
        if ("12:00".."13:00").contains(&hm.as_str()) {
            assert_eq!(
                o.rates[k], 0.0,
                "{hm}: the bound counts rows in a pause window"
            );
            // Batches in flight at 12:00 finish (their rows count when
            // they begin); none begins in the window.
            assert_eq!(
                sample.rows_done,
                h.samples[k - 1].rows_done,
                "{hm}: pacer began a batch in a pause window"
            );
            if hm.as_str() >= "12:01" {
                assert_eq!(
                    sample.rows_per_second, 0.0,
                    "{hm}: pacer ran in a pause window"
                );
            }
        }
        if hm.as_str() < "10:00" {
            assert!(
                sample.knobs.workers <= 1 && sample.knobs.batch_size <= 1000,
                "{hm}: {:?}",
                sample.knobs
            );
            assert!(o.batches[k] <= 1000.0);
        }
    }
    assert!(
        h.pauses.iter().any(|p| p.reason.contains("window lunch")),
        "{:?}",
        h.pauses
    );
}

#[test]
fn fixed_baseline_wins_over_the_measured_one() {
    let text = std::fs::read_to_string("policies/demo.toml").unwrap();
    let text = text.replace(
        "on_missing = \"hold\"",
        "on_missing = \"hold\"\nbaseline = 0.2",
    );
    let p = Policy::from_toml("fixed-baseline.toml", &text).unwrap();
    let s = setup(&p, "steady", 1);
    assert!(s.baselines.is_empty(), "{:?}", s.baselines);
    assert!((s.levels[0].slow.unwrap() - 0.24).abs() < 1e-9);

    // Without it, the baseline is the measured median before start: near
    // the model's latency at the scenario's pre-start load.
    let s = setup(&demo(), "steady", 1);
    let b = s.baselines["checkout_p95"];
    let expect = s.model.latency(0.35);
    assert!(
        (b - expect).abs() < 0.05 * expect,
        "baseline {b} vs model {expect}"
    );
}

#[test]
fn a_signal_without_counterpart_is_named() {
    let text = std::fs::read_to_string("policies/demo.toml").unwrap();
    let bad = format!(
        "{text}\n[[signal]]\nname = \"bloat\"\npostgres = \"dead_tuples\"\nstop_above = 1e6\n"
    );
    let p = Policy::from_toml("bloat.toml", &bad).unwrap();
    let e = Setup::new(
        &p,
        &Model::builtin(),
        &Scenario::load("steady").unwrap(),
        1,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"bloat\"") && e.to_string().contains("dead_tuples"),
        "{e}"
    );

    let no_hint = text.replace("sim = \"latency\"\n", "");
    let p = Policy::from_toml("no-hint.toml", &no_hint).unwrap();
    let e = Setup::new(
        &p,
        &Model::builtin(),
        &Scenario::load("steady").unwrap(),
        1,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"checkout_p95\"") && e.to_string().contains("sim = "),
        "{e}"
    );
}

#[test]
fn scenario_files_are_checked() {
    let ok = "name = \"x\"\ndate = \"2026-11-24\"\nstart = \"09:00\"\nduration = \"1h\"\nload = [[\"08:00\", 0.3]]\n";
    assert!(Scenario::from_toml("ok.toml", ok).is_ok());
    let e = Scenario::from_toml(
        "t.toml",
        &ok.replace("\"08:00\", 0.3", "\"8 o'clock\", 0.3"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("t.toml") && e.to_string().contains("8 o'clock"),
        "{e}"
    );
    let e = Scenario::from_toml(
        "t.toml",
        &ok.replace("[[\"08:00\", 0.3]]", "[[\"08:00\", 0.3], [\"07:00\", 0.3]]"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not after"), "{e}");
    let e = Scenario::from_toml("t.toml", &ok.replace("0.3]]", "1.5]]")).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = Scenario::load("no-such-scenario").unwrap_err();
    assert!(e.to_string().contains("business-day"), "{e}");
}

#[test]
fn cli_json_has_the_promised_fields_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::canonicalize("policies/demo.toml").unwrap();
    let scenario = dir.path().join("short.toml");
    std::fs::write(
        &scenario,
        "name = \"short\"\ndate = \"2026-11-24\"\nstart = \"11:00\"\nduration = \"20m\"\nload = [[\"10:00\", 0.35]]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pacer"))
        .current_dir(dir.path())
        .args(["simulate", "--json", "--seed", "3", "--policy"])
        .arg(&policy)
        .arg("--scenario")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "simulated_seconds",
        "rows_done",
        "safe_rows_bound",
        "instant_rows_bound",
        "bound_delay_seconds",
        "efficiency",
        "clean_efficiency",
        "seconds_above_stop",
        "seconds_worsened_above_stop",
        "percent_above_stop",
        "batch_errors",
        "pauses",
        "decisions",
        "fixed_baselines",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["simulated_seconds"], 1200.0);
    let eff = v["rows_done"].as_f64().unwrap() / v["safe_rows_bound"].as_f64().unwrap();
    assert!((v["efficiency"].as_f64().unwrap() - eff).abs() < 1e-9);
    for strat in ["conservative", "aggressive"] {
        for key in [
            "rows_done",
            "efficiency",
            "clean_efficiency",
            "seconds_above_stop",
            "pauses",
        ] {
            assert!(
                v["fixed_baselines"][strat].get(key).is_some(),
                "{strat}.{key}"
            );
        }
    }
}

#[test]
fn cli_text_logs_decisions_then_a_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_pacer"))
        .args([
            "simulate",
            "--policy",
            "policies/demo.toml",
            "--scenario",
            "business-day",
            "--seed",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let table = String::from_utf8_lossy(&out.stdout);
    // Simulated local time, and the sale-spike pause with its cause.
    assert!(
        log.lines()
            .any(|l| l.contains("2026-11-24 14:") && l.contains("pausing: checkout_p95")),
        "{log}"
    );
    assert!(log.contains("resuming: all signals calm"));
    for row in [
        "rows",
        "efficiency",
        "clean efficiency",
        "% of the day above stop",
        "seconds above stop",
        "pauses",
        "max checkout_p95",
    ] {
        assert!(table.contains(row), "{table}");
    }
    assert!(table.contains("conservative") && table.contains("aggressive"));

    let out = simulate_cli(&["--policy", "policies/demo.toml", "--scenario", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario \"nope\""));
}

/// A hold on growth changes no knob, but `pacer run` logs it (an INFO
/// `holding:` line) and so does the simulator; the history, like the
/// store, keeps only the decisions that changed something.
#[test]
fn holds_on_growth_are_logged_but_not_kept_in_the_history() {
    let out = simulate_cli(&[
        "--policy",
        "policies/demo.toml",
        "--scenario",
        "replica-storm",
    ]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("holding: replica_lag raw") && l.contains("no growth for")),
        "no hold logged:\n{log}"
    );
    let h = sim::history(
        &demo(),
        &Model::builtin(),
        &Scenario::load("replica-storm").unwrap(),
        1,
        None,
    )
    .unwrap();
    assert!(h.decisions.iter().all(|d| d.changed() && !d.holds_growth()));
}

#[test]
fn history_has_a_sample_per_tick_and_the_decisions() {
    let (policy, model, scenario) = (
        demo(),
        Model::builtin(),
        Scenario::load("business-day").unwrap(),
    );
    let dur = Some(std::time::Duration::from_secs(3600));
    let h = sim::history(&policy, &model, &scenario, 1, dur).unwrap();
    assert_eq!(h.job, "demo");
    assert_eq!(h.samples.len(), 3600);
    assert_eq!(
        h.signals
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["checkout_p95", "replica_lag"]
    );
    assert!(h.signals[0].baseline.is_some() && h.signals[0].slow.is_some());
    assert!(!h.decisions.is_empty() && h.decisions.iter().all(|d| d.changed()));
    let last = h.samples.last().unwrap();
    assert!(last.rows_done > 0 && last.signals["checkout_p95"].is_some());
    assert!(
        h.samples
            .windows(2)
            .all(|w| w[0].at < w[1].at && w[0].rows_done <= w[1].rows_done)
    );

    let e = sim::simulate(
        &policy,
        &model,
        &scenario,
        1,
        Some(std::time::Duration::from_secs(30 * 86_400)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("7 days"), "{e}");
}

#[test]
fn cli_report_writes_a_timeline_and_a_runbook() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pacer"))
        .args([
            "simulate",
            "--policy",
            "policies/demo.toml",
            "--json",
            "--report",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let text: String = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join(" ");
    for series in [
        "checkout_p95",
        "replica_lag",
        "batch size",
        "workers",
        "rows/s",
    ] {
        assert!(text.contains(series), "{series} missing from the chart");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("a simulation (scenario business-day, seed 1)"),
        "{md}"
    );
    assert!(md.contains("checkout_p95"), "{md}");
}

/// Lock contention grows with rows held per transaction: the controller
/// must answer with smaller batches and more workers, not only more sleep,
/// and so beat a fixed loop at the start knobs by a wide margin.
#[test]
fn lock_bound_policy_shrinks_batches_and_beats_the_fixed_loop() {
    let out = simulate_cli(&["--policy", "tests/fixtures/lock-bound.toml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eff = o["efficiency"].as_f64().unwrap();
    let conservative = o["fixed_baselines"]["conservative"]["efficiency"]
        .as_f64()
        .unwrap();
    assert!(
        eff > 3.0 * conservative,
        "pacer {eff} vs conservative {conservative}"
    );
    // On the rough simulator a few seconds above stop slip through (batch
    // noise, Poisson counts); the target is at most 1 % of the day.
    let pct = o["percent_above_stop"].as_f64().unwrap();
    assert!(pct <= 1.0, "{pct} % of the day above stop");
}

/// The simulated run dispatches through the executor's real `Job`, not a
/// model of it: on a table of known size with lock timeouts, each timed-out
/// batch is retried lock-free at once and its locked row set aside and
/// retried until it is free (the Job's rules), a sweep from the start
/// follows the first pass, every key is applied exactly once, and the run
/// ends when the Job finds nothing pending; nothing runs after that.
#[test]
fn the_simulated_run_dispatches_through_the_job() {
    let text = sim::DEFAULT_MODEL.replace(
        "timeout_per_row_load = 4.0e-6",
        "timeout_per_row_load = 1.0e-4",
    );
    let model = Model::from_toml("lock-prone.toml", &text).unwrap();
    let mut s = Setup::new(
        &demo(),
        &model,
        &Scenario::load("steady").unwrap(),
        3,
        Some(std::time::Duration::from_secs(3600)),
    )
    .unwrap();
    let rows = 2_000_000;
    s.table_rows = Some(rows);
    let (_, aggressive) = sim::fixed_knobs(&s.policy);
    for strategy in [Strategy::Pacer, Strategy::Fixed(aggressive)] {
        let r = s.run(&strategy, true).unwrap();
        let d = &r.dispatch;
        assert_eq!(d.end.as_deref(), Some("finished"), "{strategy:?}: {d:?}");
        assert_eq!(r.rows_done, rows, "{strategy:?}: {d:?}");
        assert_eq!(d.rows_doubled, 0, "{strategy:?}: a key applied twice");
        assert!(d.lock_timeouts > 10, "{strategy:?}: {d:?}");
        assert_eq!(
            r.batch_errors,
            d.lock_timeouts + d.deadlocks,
            "{strategy:?}: {d:?}"
        );
        // A lock timeout is never retried as it was: lock-free, and the
        // row still held is set aside (again while it stays locked).
        assert!(
            d.lock_free_attempts >= d.lock_timeouts,
            "{strategy:?}: {d:?}"
        );
        assert!(d.keys_set_aside >= d.lock_timeouts, "{strategy:?}: {d:?}");
        assert!(d.sweeps >= 1, "{strategy:?}: {d:?}");
        let ended = d.ended_after_seconds.unwrap();
        assert!(ended < 3000.0, "{strategy:?}: ended after {ended}s");
        let h = r.history.unwrap();
        let after: Vec<_> = h.samples.iter().skip(ended.ceil() as usize + 1).collect();
        assert!(!after.is_empty());
        assert!(
            after
                .iter()
                .all(|x| x.rows_per_second == 0.0 && x.rows_done == rows),
            "{strategy:?}: rows after the end"
        );
    }
}

/// A simulated fleet keeps the fleet's limits and cannot beat its budgets:
/// it never finishes before the slowest cluster could have written all of
/// its rows, nor after the targets one by one would have; never more
/// targets at once than allowed; canaries finish before anyone else starts.
#[test]
fn a_simulated_fleet_keeps_its_limits_and_its_budgets() {
    let policy = Policy::from_toml(
        "fleet.toml",
        &format!(
            "{}\n[fleet]\nmax_active_targets = 3\ncanary = 2\ncoordination_url = \"postgres://h/c\"\n\
             [[target]]\nname = \"a\"\nurl = \"postgres://h/a\"\n[[target]]\nname = \"b\"\nurl = \"postgres://h/b\"\n",
            std::fs::read_to_string("policies/demo.toml").unwrap()
        ),
    )
    .unwrap();
    for (scenario, seed) in [("steady", 3), ("replica-storm", 11)] {
        let o = sim::simulate_fleet(
            &policy,
            &Model::builtin(),
            &Scenario::load(scenario).unwrap(),
            seed,
            Some(std::time::Duration::from_secs(3 * 3600)),
            "24x4".parse().unwrap(),
            200_000,
            None,
        )
        .unwrap();
        assert_eq!(o.max_active_targets, 3);
        assert!(o.peak_active <= 3 && o.peak_active > 1, "{o:?}");
        let finish = o.finish_seconds.expect("the fleet finishes in 3 h");
        let floor = o.budget_seconds.unwrap();
        let serial = o.serial_seconds.unwrap();
        assert!(
            finish >= floor - 1.0,
            "{scenario}: {finish} < floor {floor}"
        );
        assert!(finish <= serial, "{scenario}: {finish} > serial {serial}");
        assert_eq!(o.rows_done, o.rows_total);
        let canaries_done = o.per_target[..2]
            .iter()
            .map(|t| t.finished.unwrap())
            .fold(0.0, f64::max);
        for t in &o.per_target[2..] {
            assert!(
                t.started.unwrap() >= canaries_done,
                "{t:?} before the canaries"
            );
        }
        for t in &o.per_target {
            assert!(t.finished.unwrap() >= t.started.unwrap());
            assert!(t.rows >= 2_000 && t.rows <= 200_000, "{t:?}");
        }
    }
    let out = simulate_cli(&[
        "--policy",
        "policies/demo.toml",
        "--fleet",
        "8x2",
        "--rows",
        "50000",
        "--duration",
        "1h",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "8 targets on 2 clusters",
        "budget floor",
        "sum of single runs",
        "fleet / floor",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let out = simulate_cli(&["--policy", "policies/demo.toml", "--fleet", "2x8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more clusters than targets"));
}

/// A rehearsal of a policy whose stop sits close above slow says so before
/// the day, on stderr (stdout stays the table, or the JSON); the demo
/// policy's band (1.5) gets no warning.
#[test]
fn simulate_warns_of_a_narrow_band() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("policies/demo.toml").unwrap();
    let narrow = text.replacen(
        "slow_above = \"baseline * 1.2\"",
        "slow_above = \"baseline * 1.4\"",
        1,
    );
    assert_ne!(narrow, text, "fixture lost its slow level");
    let path = dir.path().join("narrow.toml");
    std::fs::write(&path, narrow).unwrap();
    for (policy, warned) in [
        ("policies/demo.toml", false),
        (path.to_str().unwrap(), true),
    ] {
        let out = simulate_cli(&["--policy", policy, "--duration", "2m", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains(
                "warning: signal \"checkout_p95\": the band from slow_above (baseline * 1.4) \
                 to stop_above (baseline * 1.5) is 0.25"
            ),
            warned,
            "{policy}: {stderr}"
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is the JSON alone");
    }
}
