//! Policy files: examples load, bad input gets a precise message naming the
//! file and key, overrides from the environment apply, nothing panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::NaiveDate;
use pacer::policy::{Level, Policy, local_instant};
use proptest::prelude::*;

fn demo_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.toml"))
        .unwrap()
}

/// The demo policy with its p95's slow level raised to 1.4 × baseline: a
/// band of 0.25 below stop at 1.5 ×.
fn narrow_demo_text() -> String {
    let text = demo_text();
    let narrow = text.replacen(
        "slow_above = \"baseline * 1.2\"",
        "slow_above = \"baseline * 1.4\"",
        1,
    );
    assert_ne!(narrow, text, "fixture lost its slow level");
    narrow
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Run `pacer ARGS --policy PATH` and return (exit code, stdout+stderr).
fn pacer(args: &[&str], path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pacer"));
    cmd.args(args).arg("--policy").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Run `pacer check --offline` and return (exit code, stderr+stdout).
fn check(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    pacer(&["check", "--offline"], path, env)
}

#[test]
fn every_shipped_policy_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load_with_env(&path, []).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "expected at least three example policies, found {n}"
    );
}

/// A band from slow to stop narrower than half of slow's room gets a
/// warning that names the signal, the two levels and the band; a valid
/// policy stays valid (exit 0), and the shipped bands (1.5 here) pass quietly.
#[test]
fn check_warns_of_a_narrow_band_between_slow_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let text = demo_text();
    let (code, out) = check(&write(&dir, "wide.toml", &text), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
    let narrow = narrow_demo_text();
    let (code, out) = check(&write(&dir, "narrow.toml", &narrow), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "warning: signal \"checkout_p95\": the band from slow_above (baseline * 1.4) to \
             stop_above (baseline * 1.5) is 0.25 of slow_above's distance from the baseline"
        ),
        "{out}"
    );
    // Absolute levels: 2 → 10 is a band of 4; 8 → 10 one of 0.25.
    let lag = text.replacen("slow_above = 2.0", "slow_above = 8.0", 1);
    let (_, out) = check(&write(&dir, "lag.toml", &lag), &[]);
    assert!(
        out.contains(
            "warning: signal \"replica_lag\": the band from slow_above (8) to stop_above (10) \
             is 0.25 of slow_above's distance from zero"
        ),
        "{out}"
    );
}

#[test]
fn check_names_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "batch_size = { start = 500, min = 50, max = 5000 }",
            "batch_size = { start = 500, min = 500, max = 100 }",
            "limits.batch_size: min 500 is greater than max 100",
        ),
        (
            "stop_for = \"10s\"",
            "stopfor = \"10s\"",
            "signal[0].stopfor: unknown key `stopfor`",
        ),
        (
            "beta = 0.5",
            "beta = 1.5",
            "controller.beta: 1.5 must be between 0 and 1",
        ),
        (
            "tick = \"1s\"",
            "tick = \"1 parsec\"",
            "controller.tick: invalid value",
        ),
        ("name = \"demo\"", "", "job.name: missing key"),
        (
            "slow_above = 2.0",
            "slow_above = 20.0",
            "signal[1] (replica_lag).slow_above: 20 is above stop_above 10",
        ),
        (
            "postgres = \"replication_lag_seconds\"",
            "postgres = \"replication_lagg\"",
            "signal[1] (replica_lag).postgres: unknown built-in \"replication_lagg\"",
        ),
        (
            "lock_timeout = \"2s\"",
            "lock_timeout = \"0s\"",
            "limits.lock_timeout: 0 disables the timeout",
        ),
        (
            "update = \"UPDATE",
            "update = \"UPDATE /* no placeholder */",
            "",
        ),
        (
            "timezone = \"Europe/Berlin\"",
            "timezone = \"Mars/Olympus\"",
            "job.timezone: \"Mars/Olympus\" is not an IANA time zone",
        ),
        (
            "slow_above = \"baseline * 1.2\"",
            "slow_above = \"baseline ** 1.2\"",
            "signal[0].slow_above:",
        ),
    ];
    for (from, to, expect) in cases {
        let text = demo_text();
        assert!(text.contains(from), "fixture lost {from:?}");
        let path = write(&dir, "bad.toml", &text.replacen(from, to, 1));
        let (code, out) = check(&path, &[]);
        if expect.is_empty() {
            // Still valid: the change kept $1.
            assert_eq!(code, 0, "{out}");
            continue;
        }
        assert_eq!(code, 2, "expected exit 2 for {to:?}, got {code}: {out}");
        assert!(
            out.contains(&format!("{}: ", path.display())),
            "no file name in {out:?}"
        );
        assert!(out.contains(expect), "expected {expect:?} in {out:?}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = demo_text()
        .replace("beta = 0.5", "beta = 0")
        .replace("read_chunk = 20000", "read_chunk = 10");
    let path = write(&dir, "two.toml", &text);
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("controller.beta"), "{out}");
    assert!(out.contains("limits.read_chunk"), "{out}");
}

#[test]
fn update_without_placeholder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = demo_text().replace("WHERE id = ANY($1) AND", "WHERE");
    let path = write(&dir, "nop.toml", &text);
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("job.update: must use $1"), "{out}");
}

#[test]
fn environment_overrides_scalar_keys_and_is_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.toml", &demo_text());
    let p = Policy::load_with_env(
        &path,
        [
            (
                "PACER_POLICY__LIMITS__BATCH_SIZE__MAX".to_string(),
                "2000".to_string(),
            ),
            (
                "PACER_POLICY__CONTROLLER__TICK".to_string(),
                "2s".to_string(),
            ),
            ("PACER_LOG_FORMAT".to_string(), "json".to_string()),
        ],
    )
    .unwrap();
    assert_eq!(p.limits.batch_size.max, 2000);
    assert_eq!(p.controller.tick, std::time::Duration::from_secs(2));

    let (code, out) = check(&path, &[("PACER_POLICY__LIMITS__BATCH_SIZE__MAX", "10")]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("(with PACER_POLICY__LIMITS__BATCH_SIZE__MAX)"),
        "{out}"
    );
    // The override's value is named by its variable, never shown.
    assert!(
        out.contains(
            "limits.batch_size: min 50 is greater than max <PACER_POLICY__LIMITS__BATCH_SIZE__MAX>"
        ),
        "{out}"
    );

    let (code, out) = check(&path, &[("PACER_POLICY__LIMITS__BATCHSIZE", "10")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown key `batchsize`"), "{out}");
}

#[test]
fn unreadable_and_non_toml_files() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("missing.toml: cannot read"), "{out}");
    let path = write(&dir, "g.toml", "garbage = [");
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("not valid TOML") && out.contains("line 1"),
        "{out}"
    );
}

#[test]
fn levels_parse() {
    assert_eq!(Level::parse("0.4").unwrap(), Level::Absolute(0.4));
    assert_eq!(Level::parse("baseline * 1.2").unwrap(), Level::Times(1.2));
    assert_eq!(Level::parse("Baseline*2").unwrap(), Level::Times(2.0));
    assert_eq!(Level::parse("baseline + 0.05").unwrap(), Level::Plus(0.05));
    for bad in [
        "",
        "baseline",
        "baseline / 2",
        "1.2 * baseline",
        "baseline * nan",
        "inf",
        "baseline * 1 * 2",
    ] {
        assert!(Level::parse(bad).is_err(), "{bad:?} should not parse");
    }
    assert_eq!(Level::Times(1.2).resolve(Some(0.5)), Some(0.6));
    assert_eq!(Level::Times(1.2).resolve(None), None);
}

#[test]
fn windows_follow_local_time_days_dates_and_midnight() {
    let text = demo_text()
        + r#"
[[window]]
name = "lunch"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "12:00"
until = "13:30"
max_workers = 1

[[window]]
name = "night"
from = "22:00"
until = "06:00"
max_batch_size = 100

[[window]]
name = "sale"
dates = ["2026-11-27"]
pause = true
"#;
    let p = Policy::from_toml("w.toml", &text).unwrap();
    let s = p.schedules();
    let at = |d: u32, h: u32, m: u32| {
        local_instant(
            "Europe/Berlin",
            NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
            h,
            m,
        )
        .unwrap()
    };
    // 2026-11-24 is a Tuesday; 2026-11-28 a Saturday.
    assert!(s[0].contains(at(24, 12, 0)));
    assert!(s[0].contains(at(24, 13, 29)));
    assert!(!s[0].contains(at(24, 13, 30)));
    assert!(!s[0].contains(at(24, 11, 59)));
    assert!(!s[0].contains(at(28, 12, 30)), "lunch is weekdays only");
    assert!(s[1].contains(at(24, 23, 0)));
    assert!(s[1].contains(at(25, 5, 59)), "night wraps past midnight");
    assert!(!s[1].contains(at(25, 6, 0)));
    assert!(!s[1].contains(at(24, 21, 59)));
    assert!(s[2].contains(at(27, 0, 0)) && s[2].contains(at(27, 23, 59)));
    assert!(!s[2].contains(at(26, 23, 59)) && !s[2].contains(at(28, 0, 0)));
}

#[test]
fn fingerprint_tracks_what_touches_rows_only() {
    let a = Policy::from_toml("a", &demo_text()).unwrap();
    let b = Policy::from_toml("b", &demo_text().replace("max = 5000", "max = 4000")).unwrap();
    let c = Policy::from_toml(
        "c",
        &demo_text().replace("status IS NULL\"", "status IS NULL AND id > 0\""),
    )
    .unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint(), "limits may change freely");
    assert_ne!(a.fingerprint(), c.fingerprint(), "pending changed");
}

/// Override values may be secrets (a token, a password pasted into the
/// wrong variable): an error names the variable and the key, never the value.
#[test]
fn override_values_never_appear_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.toml", &demo_text());
    let secret = "hunter2-s3cret";
    // A value with a space or newline is invalid for every key below.
    for var in [
        "PACER_POLICY__LIMITS__BATCH_SIZE__MAX",
        "PACER_POLICY__LIMITS__MAX_RETRIES",
        "PACER_POLICY__CONTROLLER__TICK",
        "PACER_POLICY__CONTROLLER__BETA",
        "PACER_POLICY__JOB__STOP_AFTER_MAX_PAUSE",
        "PACER_POLICY__JOB__TIMEZONE",
        "PACER_POLICY__JOB__NAME",
        "PACER_POLICY__BASELINE__ON_INSUFFICIENT",
        "PACER_POLICY__LIMITS__BATCH_SIZE",
        "PACER_POLICY__JOB__NAME__INNER",
        "PACER_POLICY__SIGNAL__NAME",
        "PACER_POLICY__LIMITS__NO_SUCH_KEY",
    ] {
        for value in [format!("{secret} !"), format!("{secret}\nwith newline")] {
            let (code, out) = check(&path, &[(var, &value)]);
            assert_eq!(code, 2, "{var}: {out}");
            assert!(!out.contains("hunter2"), "{var} leaked its value: {out}");
            assert!(out.contains(var), "{var} not named: {out}");
        }
    }
}

/// A value of the wrong type in the file is an error naming the key, not a
/// silent conversion (`name = 3.14` used to become the job "3.14").
#[test]
fn file_values_have_strict_types() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "name = \"demo\"",
            "name = 3.14",
            "job.name: invalid type: floating point",
        ),
        (
            "table = \"public.orders\"",
            "table = 1",
            "job.table: invalid type: integer",
        ),
        (
            "beta = 0.5",
            "beta = \"0.5\"",
            "controller.beta: invalid type: string",
        ),
        (
            "max_retries = 5",
            "max_retries = true",
            "limits.max_retries: invalid type: boolean",
        ),
        (
            "max_retries = 5",
            "max_retries = 5.5",
            "limits.max_retries: invalid type: floating point",
        ),
        (
            "stop_for = \"10s\"",
            "stop_for = 10",
            "signal[0].stop_for: invalid type: integer",
        ),
        (
            "on_missing = \"hold\"",
            "on_missing = 1",
            "signal[0].on_missing: invalid type",
        ),
        (
            "timezone = \"Europe/Berlin\"",
            "timezone = false",
            "job.timezone: invalid type: boolean",
        ),
        (
            "timezone = \"Europe/Berlin\"",
            "timezone = \"Europe/Berlin\"\nvacuum = \"always\"",
            "job.vacuum: unknown variant `always`, expected one of `off`, `when-stuck`, `as-it-goes`",
        ),
    ];
    for (from, to, expect) in cases {
        let text = demo_text();
        assert!(text.contains(from), "fixture lost {from:?}");
        let e = Policy::from_toml("t.toml", &text.replacen(from, to, 1)).unwrap_err();
        assert!(e.to_string().contains(expect), "{to}: {e}");
    }
    // A TOML date where a date string belongs reads as that string.
    let bf = "\n[[window]]\nname = \"bf\"\ndates = [2026-11-27]\npause = true\n";
    let p = Policy::from_toml("t.toml", &(demo_text() + bf)).unwrap();
    assert_eq!(p.windows[0].dates, ["2026-11-27"]);
    // Overrides are text by nature: they take the type of their key.
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.toml", &demo_text());
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let p = Policy::load_with_env(
        &path,
        [
            env("PACER_POLICY__JOB__NAME", "3.14"),
            env("PACER_POLICY__CONTROLLER__BETA", "0.25"),
            env("PACER_POLICY__JOB__STOP_AFTER_MAX_PAUSE", "false"),
            env("PACER_POLICY__BASELINE__ON_INSUFFICIENT", "wait"),
            env("PACER_POLICY__JOB__LABELS__TENANT", "acme"),
        ],
    )
    .unwrap();
    assert_eq!(p.job.name, "3.14");
    assert_eq!(p.controller.beta, 0.25);
    assert_eq!(p.job.labels["tenant"], "acme");
    assert_eq!(p.job.vacuum, pacer::policy::VacuumMode::Off);
    let p = Policy::from_toml(
        "t.toml",
        &demo_text().replacen(
            "timezone = \"Europe/Berlin\"",
            "timezone = \"Europe/Berlin\"\nvacuum = \"when-stuck\"",
            1,
        ),
    )
    .unwrap();
    assert_eq!(p.job.vacuum, pacer::policy::VacuumMode::WhenStuck);
}

/// However long the offending value, an error line stays short and still
/// names the file and the key.
#[test]
fn errors_stay_short_and_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "x".repeat(3_000_000);
    let cases = [
        (
            demo_text().replacen("name = \"demo\"", &format!("name = \"{huge}\""), 1),
            "job.name",
        ),
        (
            demo_text().replacen(
                "timezone = \"Europe/Berlin\"",
                &format!("timezone = \"{huge}\""),
                1,
            ),
            "job.timezone",
        ),
        (
            demo_text().replacen("slow_above = 2.0", &format!("slow_above = \"{huge}\""), 1),
            "signal[1].slow_above",
        ),
        (
            demo_text().replacen("[controller]", &format!("[controller]\n{huge} = 1"), 1),
            "controller.xxx",
        ),
        (
            demo_text().replacen("name = \"demo\"", &format!("name = \"{huge}"), 1),
            "line 8",
        ),
        (
            demo_text().replacen("tick = \"1s\"", &format!("tick = \"{huge}\""), 1),
            "controller.tick",
        ),
    ];
    for (text, key) in cases {
        let path = write(&dir, "long.toml", &text);
        let (code, out) = check(&path, &[]);
        assert_eq!(code, 2, "{}", &out[..out.len().min(500)]);
        for line in out.lines() {
            assert!(
                line.chars().count() <= 300,
                "{} chars: {}",
                line.len(),
                &line[..300]
            );
            assert!(line.starts_with(&format!("{}: ", path.display())), "{line}");
        }
        assert!(out.contains(key), "{key} not named: {out}");
    }
}

/// Durations beyond what pacer and Postgres can use are refused at load,
/// not discovered as an overflow or a failed `SET` at run time.
#[test]
fn durations_are_bounded_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.toml", &demo_text());
    for (var, value, expect) in [
        (
            "PACER_POLICY__CONTROLLER__WORKER_AFTER",
            "18446744073709551615s",
            "controller.worker_after: is longer than the supported 366 days",
        ),
        (
            "PACER_POLICY__BASELINE__WINDOW",
            "400days",
            "baseline.window: is longer than the supported 366 days",
        ),
        (
            "PACER_POLICY__LIMITS__STATEMENT_TIMEOUT",
            "25days",
            "limits.statement_timeout: is longer than Postgres accepts",
        ),
        (
            "PACER_POLICY__LIMITS__LOCK_TIMEOUT",
            "500us",
            "limits.lock_timeout: is under 1ms",
        ),
    ] {
        let (code, out) = check(&path, &[(var, value)]);
        assert_eq!(code, 2, "{var}={value}: {out}");
        assert!(out.contains(expect), "{var}={value}: {out}");
    }
    let (code, out) = check(
        &path,
        &[("PACER_POLICY__LIMITS__STATEMENT_TIMEOUT", "24days")],
    );
    assert_eq!(code, 0, "{out}");
}

/// A variable that is not UTF-8 (anyone's, not only pacer's) must not
/// crash the loader: `std::env::vars` panics on one.
#[test]
fn a_non_utf8_environment_does_not_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.toml", &demo_text());
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    for var in ["SOME_OTHER_TOOL", "PACER_POLICY__JOB__NAME"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pacer"))
            .args(["check", "--offline", "--policy"])
            .arg(&path)
            .env(var, bad)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("panicked"), "{var}: {text}");
        assert!(matches!(out.status.code(), Some(0 | 2)), "{var}: {text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the file holds, loading returns Ok or a described error.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = Policy::from_toml("fuzz.toml", &text);
    }

    /// Mutations of a valid policy (a line dropped, a value replaced) give
    /// Ok or an error that names the file.
    #[test]
    fn mutated_policy_never_panics(line in 0usize..60, value in prop_oneof![
        Just("-1".to_string()), Just("\"\"".to_string()), Just("1e400".to_string()),
        Just("\"nan\"".to_string()), Just("[]".to_string()), Just("{}".to_string()),
        Just("99999999999999999999".to_string()), Just("\"-5s\"".to_string()),
        Just("0".to_string()), Just("\"baseline * -1\"".to_string()), ".{0,12}",
    ], drop in any::<bool>()) {
        let text = demo_text();
        let lines: Vec<&str> = text.lines().collect();
        let i = line % lines.len();
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        if drop {
            out.remove(i);
        } else if let Some((k, _)) = lines[i].split_once('=') {
            out[i] = format!("{k}= {value}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "m.toml", &out.join("\n"));
        if let Err(e) = Policy::load_with_env(&path, []) {
            prop_assert!(e.to_string().starts_with(&path.display().to_string()));
        }
    }
}

/// The controller paces growth by each signal's measurement delay: a
/// Prometheus query without a range (a recording rule) or one pacer cannot
/// parse must say how late its data is.
#[test]
fn a_query_without_a_range_needs_a_delay() {
    let policy = |signal: &str| {
        format!(
            "[job]\nname = \"j\"\ntable = \"t\"\nkey = \"id\"\npending = \"x IS NULL\"\nupdate = \"UPDATE t SET x = 1 WHERE id = ANY($1)\"\n[limits]\nbatch_size = {{ start = 100, min = 10, max = 1000 }}\nsleep = {{ start = \"100ms\", min = \"0ms\", max = \"1s\" }}\nworkers = {{ start = 1, min = 1, max = 2 }}\n[[signal]]\nname = \"p95\"\n{signal}\nslow_above = 1\nstop_above = 2\n"
        )
    };
    let e = pacer::policy::Policy::from_toml(
        "rule.toml",
        &policy("prometheus = 'job:latency_p95:rate5m'"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rule.toml") && e.contains("delay") && e.contains("required"),
        "{e}"
    );
    let e = pacer::policy::Policy::from_toml("bad.toml", &policy("prometheus = 'rate(x[1m]'"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot parse the query") && e.contains("delay"),
        "{e}"
    );
    pacer::policy::Policy::from_toml(
        "ok.toml",
        &policy("prometheus = 'job:latency_p95:rate5m'\ndelay = \"5m30s\""),
    )
    .unwrap();
    pacer::policy::Policy::from_toml("range.toml", &policy("prometheus = 'rate(x[1m])'")).unwrap();
}

#[test]
fn standby_keys_default_and_a_lease_shorter_than_two_ticks_is_refused() {
    let p = Policy::from_toml("demo.toml", &demo_text()).unwrap();
    assert!(!p.job.standby);
    assert_eq!(p.job.lease, std::time::Duration::from_secs(10));
    assert_eq!(p.job.takeover_after, std::time::Duration::from_secs(15));

    let dir = tempfile::tempdir().unwrap();
    let text = demo_text().replace(
        "timezone = \"Europe/Berlin\"",
        "timezone = \"Europe/Berlin\"\nstandby = true\nlease = \"1500ms\"\ntakeover_after = \"5s\"",
    );
    let path = write(&dir, "standby.toml", &text);
    // The demo ticks every second: a 1.5 s lease would lapse between renewals.
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("job.lease"), "{out}");
    let (code, out) = check(&path, &[("PACER_POLICY__JOB__LEASE", "3s")]);
    assert_eq!(code, 0, "{out}");
}

/// The band is measured from the baseline for relative levels (and for
/// absolute ones with a fixed baseline below slow), from zero otherwise, and
/// not judged where the two levels are of different kinds.
#[test]
fn band_from_slow_to_stop_by_kind_of_level() {
    let band = |levels: &str| {
        let s: pacer::policy::Signal =
            toml::from_str(&format!("name = \"s\"\nprometheus = \"q\"\n{levels}")).unwrap();
        s.band()
    };
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(close(
        band("slow_above = \"baseline * 1.15\"\nstop_above = \"baseline * 1.2\""),
        1.0 / 3.0
    ));
    assert!(close(
        band("slow_above = \"baseline + 0.1\"\nstop_above = \"baseline + 0.15\""),
        0.5
    ));
    assert!(close(band("slow_above = 2.0\nstop_above = 10.0"), 4.0));
    assert!(close(
        band("slow_above = 2.0\nstop_above = 3.0\nbaseline = 1.0"),
        1.0
    ));
    assert_eq!(
        band("slow_above = \"baseline * 1.1\"\nstop_above = \"baseline + 0.05\""),
        None
    );
    assert_eq!(band("stop_above = 10.0"), None);
    assert_eq!(
        band("slow_above = \"baseline * 0.9\"\nstop_above = \"baseline * 1.2\""),
        None
    );
}

/// `pacer run` logs the narrow-band warning before anything else, so it is
/// in the log even of a run that cannot reach its database.
#[test]
fn run_logs_a_narrow_band_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "narrow.toml", &narrow_demo_text());
    let (code, text) = pacer(
        &["run"],
        &path,
        // Nothing listens on port 1: the run ends at its first connection.
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("PACER_POLICY__PROMETHEUS__URL", "http://127.0.0.1:1"),
        ],
    );
    assert_ne!(code, 0, "{text}");
    let warn = text
        .lines()
        .position(|l| l.contains("WARN") && l.contains("signal \"checkout_p95\": the band from"))
        .unwrap_or_else(|| panic!("no warning in {text}"));
    let error = text
        .lines()
        .position(|l| l.contains("cannot connect"))
        .unwrap_or_else(|| panic!("no connection error in {text}"));
    assert!(warn < error, "{text}");
}
