//! Fuzzing the policy loader from the shipped policies: mutated files
//! (keys deleted, duplicated, renamed; values of the wrong type; huge,
//! negative, NaN and overflowing numbers and durations; huge strings;
//! unicode and control characters; broken TOML) and `PACER_POLICY__*`
//! overrides.
//!
//! Whatever the input: no panic; every error line is at most 300
//! characters and names the file and a key (or the line of a TOML syntax
//! error, or the variable of a malformed override); no override value
//! marked secret is ever shown. A policy that loads can build a controller,
//! step it through hostile readings and batch outcomes, and set up and run
//! a short simulated day.
//!
//! Generation is cheap on purpose: the strategies draw small integers and
//! the test body builds the text from them, so 10,000 file cases and 2,000
//! override cases run in seconds in the debug profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pacer::controller::{BatchError, BatchOutcome, Controller, Inputs, ManualPause};
use pacer::policy::{Policy, PolicyError};
use pacer::signals::Reading;
use pacer::sim::{Model, Scenario, Setup, Strategy as SimStrategy};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Marks override values that must never appear in output.
const SECRET: &str = "hunter2s3cr3t";

const FILE_CASES: u32 = 10_000;
const ENV_CASES: u32 = 2_000;

/// The shipped policies, written once into a temp dir: (path, text).
fn seeds() -> &'static [(PathBuf, String)] {
    static SEEDS: OnceLock<(tempfile::TempDir, Vec<(PathBuf, String)>)> = OnceLock::new();
    &SEEDS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
            let mut out = Vec::new();
            let mut names: Vec<_> = std::fs::read_dir(src)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            names.sort();
            for p in names {
                let text = std::fs::read_to_string(&p).unwrap();
                let copy = dir.path().join(p.file_name().unwrap());
                std::fs::write(&copy, &text).unwrap();
                out.push((copy, text));
            }
            assert!(out.len() >= 3, "expected the shipped policies as seeds");
            (dir, out)
        })
        .1
}

/// Values a mutated key may get, as TOML source.
fn toml_value(i: usize, n: usize) -> String {
    let long = |c: char| c.to_string().repeat(n);
    match i % 40 {
        0 => "-1".into(),
        1 => "0".into(),
        2 => "nan".into(),
        3 => "inf".into(),
        4 => "-inf".into(),
        5 => "1e308".into(),
        6 => "18446744073709551615".into(),
        7 => "9223372036854775807".into(),
        8 => "-9223372036854775808".into(),
        9 => "4294967296".into(),
        10 => "3.14".into(),
        11 => "true".into(),
        12 => "[]".into(),
        13 => "{}".into(),
        14 => "[1, \"a\", 2.5]".into(),
        15 => "{ start = 1, min = 2, max = 0 }".into(),
        16 => "\"18446744073709551615s\"".into(),
        17 => "\"-5s\"".into(),
        18 => "\"0s\"".into(),
        19 => "\"1ns\"".into(),
        20 => "\"500us\"".into(),
        21 => "\"99999999999999999999999h\"".into(),
        22 => "\"366days\"".into(),
        23 => "\"24days 20h 31m 23s 647ms\"".into(),
        24 => "\"1 parsec\"".into(),
        25 => "\"\"".into(),
        26 => format!("\"{}\"", long('x')),
        27 => format!("\"{}\"", long('é')),
        28 => "\"a\\nINFO forged\\u001b[2J\\u202e\"".into(),
        29 => "\"\\u0000\\u0007\\t\"".into(),
        30 => "\"baseline * -1\"".into(),
        31 => "\"baseline * nan\"".into(),
        32 => "\"baseline + 1e400\"".into(),
        33 => "\"baseline\"".into(),
        34 => "\"2s\"".into(),
        35 => "\"100ms\"".into(),
        36 => "1".into(),
        37 => "1e-320".into(),
        38 => "2026-11-27".into(),
        _ => format!("'{}'", long('🦀')),
    }
}

/// Text an override may carry (raw, as the environment gives it).
fn env_value(i: usize, n: usize) -> String {
    match i % 24 {
        0 => "-1".into(),
        1 => "0".into(),
        2 => "NaN".into(),
        3 => "inf".into(),
        4 => "18446744073709551616".into(),
        5 => "4294967295".into(),
        6 => "3.14".into(),
        7 => "true".into(),
        8 => "yes".into(),
        9 => "18446744073709551615s".into(),
        10 => "500us".into(),
        11 => "400days".into(),
        12 => "".into(),
        13 => " ".into(),
        14 => "x".repeat(n),
        15 => "a\nINFO forged\u{1b}[2J".into(),
        16 => SECRET.into(),
        17 => format!("{SECRET} with spaces"),
        18 => format!("postgres://u:{SECRET}@h/db"),
        19 => "wait".into(),
        20 => "baseline * 1.5".into(),
        21 => "2s".into(),
        22 => "Europe/Berlin".into(),
        _ => "200".into(),
    }
}

/// Keys overrides aim at: real ones, ones inside arrays of tables, and
/// malformed names.
fn env_name(i: usize, junk: usize) -> String {
    const KEYS: &[&str] = &[
        "JOB__NAME",
        "JOB__TABLE",
        "JOB__PENDING",
        "JOB__TIMEZONE",
        "JOB__MAX_PAUSE",
        "JOB__STOP_AFTER_MAX_PAUSE",
        "JOB__LABELS__TENANT",
        "JOB__LABELS",
        "DATABASE__URL",
        "DATABASE__SCHEMA",
        "DATABASE__REPLICAS",
        "LIMITS__BATCH_SIZE__MAX",
        "LIMITS__BATCH_SIZE__START",
        "LIMITS__BATCH_SIZE",
        "LIMITS__SLEEP__MAX",
        "LIMITS__WORKERS__MAX",
        "LIMITS__READ_CHUNK",
        "LIMITS__MAX_ROWS_PER_SECOND",
        "LIMITS__LOCK_TIMEOUT",
        "LIMITS__STATEMENT_TIMEOUT",
        "CONTROLLER__TICK",
        "CONTROLLER__BETA",
        "CONTROLLER__WORKER_AFTER",
        "CONTROLLER__HOLD_AFTER_RESUME",
        "CONTROLLER__COOLDOWN",
        "CONTROLLER__BATCH_STEP",
        "BASELINE__WINDOW",
        "BASELINE__MIN_SAMPLES",
        "BASELINE__ON_INSUFFICIENT",
        "PROMETHEUS__TIMEOUT",
        "PROMETHEUS__HEADERS__X",
        "HTTP__LISTEN",
        "SIGNAL__NAME",
        "SIGNAL__0__NAME",
        "WINDOW__PAUSE",
        "NO_SUCH__KEY",
        "JOB__NAME__DEEPER",
        "",
        "__",
        "job__name",
    ];
    let key = KEYS[i % KEYS.len()];
    match junk % 8 {
        0 => format!("PACER_POLICY__{key}__{}", "Z".repeat(junk)),
        1 => format!("PACER_POLICY__{key}é\u{7}"),
        _ => format!("PACER_POLICY__{key}"),
    }
}

/// One edit of a policy's text.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    /// The value of the nth `key = value` line.
    SetValue(usize, usize, usize),
    RenameKey(usize, char),
    /// A new `key = value` line after line n.
    AddKey(usize, usize),
    Truncate(usize),
    InsertText(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = prop_oneof![8 => 0usize..60, 1 => Just(5_000usize), 1 => Just(200_000usize)];
    prop_oneof![
        3 => any::<usize>().prop_map(Edit::DeleteLine),
        2 => any::<usize>().prop_map(Edit::DuplicateLine),
        8 => (any::<usize>(), 0usize..40, n).prop_map(|(l, v, n)| Edit::SetValue(l, v, n)),
        2 => (any::<usize>(), prop::sample::select(vec!['_', 'x', 'é', '\u{0}', ' ', '.']))
            .prop_map(|(l, c)| Edit::RenameKey(l, c)),
        2 => (any::<usize>(), 0usize..40).prop_map(|(l, v)| Edit::AddKey(l, v)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        2 => (any::<usize>(), 0usize..12).prop_map(|(at, t)| Edit::InsertText(at, t)),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let assignments: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
        .collect();
    if assignments.is_empty() {
        // Earlier edits left nothing to edit line by line.
        return format!("{text}\n[");
    }
    let pick = |i: usize| i % lines.len().max(1);
    let nth_assignment = |i: usize| assignments[i % assignments.len()];
    match *e {
        Edit::DeleteLine(i) => {
            let i = pick(i);
            lines.remove(i);
        }
        Edit::DuplicateLine(i) => {
            let i = pick(i);
            lines.insert(i, lines[i].clone());
        }
        Edit::SetValue(i, v, n) => {
            let i = nth_assignment(i);
            let key = lines[i].split(" = ").next().unwrap().to_string();
            lines[i] = format!("{key} = {}", toml_value(v, n));
        }
        Edit::RenameKey(i, c) => {
            let i = nth_assignment(i);
            let at = lines[i].find(" = ").unwrap();
            lines[i].insert(at, c);
        }
        Edit::AddKey(i, v) => {
            let i = pick(i);
            lines.insert(i + 1, format!("fuzz_key = {}", toml_value(v, 10)));
        }
        Edit::Truncate(at) => {
            let t = lines.join("\n");
            let cut = t.char_indices().map(|(i, _)| i).nth(at % t.len().max(1));
            return t[..cut.unwrap_or(t.len())].to_string();
        }
        Edit::InsertText(at, t) => {
            let junk = [
                "[",
                "]]",
                "\"",
                "'''",
                "= =",
                "[[signal]]",
                "[job]",
                "\n[limits]\n",
                "\u{0}",
                "\u{feff}",
                "\n\u{1b}[2J\n",
                "{",
            ][t];
            let mut s = lines.join("\n");
            let idx = s.char_indices().map(|(i, _)| i).nth(at % s.len().max(1));
            s.insert_str(idx.unwrap_or(s.len()), junk);
            return s;
        }
    }
    lines.join("\n")
}

/// Every error line: short, starts with the file (and the overrides in
/// play), then names a key — or the TOML position, or the malformed
/// override — and never shows a secret.
fn check_error(path: &Path, e: &PolicyError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.contains(SECRET), "secret leaked: {text}");
    prop_assert!(!e.problems.is_empty());
    let file = path.display().to_string();
    for line in text.lines() {
        let n = line.chars().count();
        prop_assert!(n <= 300, "{n} chars: {line}");
        prop_assert!(line.starts_with(&file), "file not named: {line}");
        let rest = &line[file.len()..];
        let rest = match rest.strip_prefix(" (with ") {
            Some(r) => &r[r.find("): ").map(|i| i + 1).unwrap_or(0)..],
            None => rest,
        };
        let rest = rest.strip_prefix(": ").unwrap_or("");
        let names_key = rest
            .split_once(": ")
            .is_some_and(|(k, _)| !k.is_empty() && !k.starts_with(' '));
        prop_assert!(
            names_key || rest.starts_with("not valid TOML") || rest.starts_with("PACER_POLICY__"),
            "no key named: {line}"
        );
    }
    Ok(())
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(Model::builtin)
}

fn scenario() -> &'static Scenario {
    static S: OnceLock<Scenario> = OnceLock::new();
    S.get_or_init(|| Scenario::load("business-day").unwrap())
}

/// A loaded policy is usable: a controller steps through hostile inputs,
/// and a short simulated run sets up and runs (or refuses with an error).
fn exercise(p: &Policy, seed: u64) {
    let baselines: BTreeMap<String, f64> =
        p.signals.iter().map(|s| (s.name.clone(), 0.5)).collect();
    let mut c = Controller::new(p, &baselines).expect("every baseline is given");
    let t0 = Utc.with_ymd_and_hms(2026, 11, 27, 11, 0, 0).unwrap();
    let values = [0.0, 0.5, 1e300, -1e300, f64::NAN, f64::INFINITY, 3.0, 0.1];
    let durations = [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_secs(3600),
        Duration::from_secs(366 * 86_400),
    ];
    for tick in 0..12u64 {
        let now = t0 + chrono::Duration::seconds(tick as i64 * 7);
        let readings = p
            .signals
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let v = values[(seed as usize + i + tick as usize) % values.len()];
                if (seed + tick).is_multiple_of(5) {
                    Reading::missing("fuzz", now)
                } else {
                    Reading::value(v, now)
                }
            })
            .collect();
        let batches = (0..(seed + tick) % 3)
            .map(|b| BatchOutcome {
                started: now,
                duration: durations[((seed + tick + b) % 4) as usize],
                rows: [0, 1, u32::MAX as u64][((seed + b) % 3) as usize],
                error: [
                    None,
                    Some(BatchError::LockTimeout),
                    Some(BatchError::Deadlock),
                ][((tick + b) % 3) as usize],
            })
            .collect();
        let inputs = Inputs {
            readings,
            batches,
            manual_pause: (tick % 6 == 5).then(|| ManualPause {
                by: "fuzz".into(),
                reason: "fuzz".into(),
            }),
            app_limited: tick % 4 == 3,
        };
        let _ = c.step(now, &inputs);
    }

    // The simulator replays the baseline window tick by tick before the
    // start: a long window is slow (not wrong) in a debug build, so windows
    // the simulator accepts are cut to a minute here; longer than its 7
    // days, the refusal path runs as is.
    let mut p = p.clone();
    if p.baseline.window <= Duration::from_secs(7 * 86_400) {
        p.baseline.window = p.baseline.window.min(Duration::from_secs(60));
    }
    let duration = Some(p.controller.tick.max(Duration::from_secs(60)));
    if let Ok(setup) = Setup::new(&p, model(), scenario(), seed, duration) {
        let _ = setup.run(&SimStrategy::Pacer, false);
    }
}

/// Write `text` as the case's policy file (one file per thread, reused).
fn case_file(text: &str) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    DIR.with(|d| {
        let p = d.path().join("fuzz.toml");
        std::fs::write(&p, text).unwrap();
        p
    })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(FILE_CASES))]

    #[test]
    fn mutated_policy_files(
        seed in 0usize..16,
        edits in prop::collection::vec(edit(), 0..4),
    ) {
        let (_, original) = &seeds()[seed % seeds().len()];
        let text = edits.iter().fold(original.clone(), |t, e| apply(&t, e));
        let path = case_file(&text);
        match Policy::load_with_env(&path, []) {
            Ok(p) => exercise(&p, seed as u64),
            Err(e) => check_error(&path, &e)?,
        }
    }
}

proptest! {
    #![proptest_config(config(ENV_CASES))]

    #[test]
    fn environment_overrides(
        seed in 0usize..16,
        overrides in prop::collection::vec((0usize..64, 0usize..24, 0usize..40), 1..4),
        n in prop_oneof![4 => 0usize..60, 1 => Just(100_000usize)],
    ) {
        let (path, _) = &seeds()[seed % seeds().len()];
        let env: Vec<(String, String)> = overrides
            .iter()
            .map(|&(k, v, junk)| (env_name(k, junk), env_value(v, n)))
            .collect();
        match Policy::load_with_env(path, env) {
            Ok(p) => exercise(&p, seed as u64),
            Err(e) => check_error(path, &e)?,
        }
    }
}
