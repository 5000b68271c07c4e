//! Log lines as an operator and a log pipeline see them: the decision
//! sentence and its structured fields for every kind of cause, job labels
//! on every line, batch and progress lines, and no credentials anywhere.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pacer::cli::LogFormat;
use pacer::controller::{Action, BatchError, Cause, Decision, Knobs, State};
use pacer::policy::OnMissing;
use pacer::telemetry::{self, BatchLine, ProgressLine, logging, redact};
use serde_json::Value;
use support::capture::Capture;
use tracing_subscriber::EnvFilter;

const SECRET: &str = "hunter2-SECRET";

/// Run `f` with pacer's subscriber in `format` at `level`; return the lines.
fn capture(format: LogFormat, level: &str, f: impl FnOnce()) -> Vec<String> {
    let cap = Capture::default();
    let sub = logging::subscriber(format, EnvFilter::new(level), cap.clone(), false);
    tracing::subscriber::with_default(sub, f);
    cap.lines()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("tenant".to_string(), "acme".to_string())])
}

fn knobs(batch: u32, sleep_ms: u64, workers: u32) -> Knobs {
    Knobs {
        batch_size: batch,
        sleep: Duration::from_millis(sleep_ms),
        workers,
    }
}

fn decision(
    state: State,
    action: Action,
    before: Knobs,
    after: Knobs,
    causes: Vec<Cause>,
) -> Decision {
    Decision {
        at: Utc.with_ymd_and_hms(2026, 11, 24, 13, 0, 0).unwrap(),
        state,
        action,
        before,
        knobs: after,
        causes,
        windows: vec![],
        view: Default::default(),
    }
}

/// One decision per kind of cause, with the `kind` its JSON must carry.
fn decisions() -> Vec<(&'static str, Decision)> {
    vec![
        (
            "signal",
            decision(
                State::Slowing,
                Action::Decrease,
                knobs(2000, 100, 3),
                knobs(1000, 200, 2),
                vec![Cause::Signal {
                    signal: "checkout_p95".into(),
                    value: 0.41,
                    estimate: None,
                    level: "slow",
                    threshold: 0.396,
                    expr: Some("baseline * 1.2".into()),
                    baseline: Some(0.33),
                }],
            ),
        ),
        (
            "missing",
            decision(
                State::Paused,
                Action::Pause,
                knobs(1000, 200, 2),
                knobs(1000, 200, 2),
                vec![Cause::Missing {
                    signal: "replica_lag".into(),
                    reason: "no answer within 2s".into(),
                    missing_for: Duration::from_secs(20),
                    on_missing: Some(OnMissing::Pause),
                }],
            ),
        ),
        (
            "slow_batch",
            decision(
                State::Slowing,
                Action::Decrease,
                knobs(4000, 0, 2),
                knobs(2500, 0, 2),
                vec![Cause::SlowBatch {
                    duration: Duration::from_millis(1600),
                    target: Duration::from_secs(1),
                }],
            ),
        ),
        (
            "batch_error",
            decision(
                State::Slowing,
                Action::Decrease,
                knobs(4000, 50, 2),
                knobs(2000, 50, 2),
                vec![Cause::BatchError {
                    error: BatchError::LockTimeout,
                    count: 3,
                }],
            ),
        ),
        (
            "manual",
            decision(
                State::Paused,
                Action::Pause,
                knobs(2000, 100, 3),
                knobs(2000, 100, 3),
                vec![Cause::Manual {
                    by: "alice".into(),
                    reason: "sale starts".into(),
                }],
            ),
        ),
        (
            "window",
            decision(
                State::Running,
                Action::Clamp,
                knobs(2000, 100, 4),
                knobs(2000, 100, 2),
                vec![Cause::Window {
                    window: "lunch".into(),
                }],
            ),
        ),
        (
            "calm",
            decision(
                State::Running,
                Action::Resume,
                knobs(2000, 100, 3),
                knobs(1500, 100, 3),
                vec![Cause::Calm {
                    calm_for: Duration::from_secs(30),
                }],
            ),
        ),
    ]
}

#[test]
fn every_kind_of_cause_is_one_json_line_with_its_fields() {
    for (kind, d) in decisions() {
        let lines = capture(LogFormat::Json, "info", || {
            assert!(telemetry::log_decision(&d, "demo", &labels()));
        });
        assert_eq!(lines.len(), 1, "{kind}: {lines:?}");
        let v: Value = serde_json::from_str(&lines[0])
            .unwrap_or_else(|e| panic!("{kind}: not JSON ({e}): {}", lines[0]));
        assert_eq!(v["level"], "INFO", "{kind}");
        assert_eq!(v["target"], "pacer::decision");
        assert_eq!(v["message"], d.summary(), "{kind}");
        assert_eq!(v["job"], "demo");
        assert_eq!(v["labels"]["tenant"], "acme");
        assert_eq!(v["state"], d.state.as_str());
        assert_eq!(v["batch_before"], d.before.batch_size);
        assert_eq!(v["batch_after"], d.knobs.batch_size);
        assert_eq!(v["sleep_before_ms"], d.before.sleep.as_millis() as u64);
        assert_eq!(v["sleep_after_ms"], d.knobs.sleep.as_millis() as u64);
        assert_eq!(v["workers_before"], d.before.workers);
        assert_eq!(v["workers_after"], d.knobs.workers);
        let causes = v["causes"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}: causes not an array: {v}"));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0]["kind"], kind);
        match kind {
            "signal" => {
                assert_eq!(v["action"], "decrease");
                assert_eq!(causes[0]["signal"], "checkout_p95");
                assert_eq!(causes[0]["value"], 0.41);
                assert_eq!(causes[0]["level"], "slow");
                assert_eq!(causes[0]["threshold"], 0.396);
                assert_eq!(causes[0]["baseline"], 0.33);
                assert_eq!(causes[0]["expr"], "baseline * 1.2");
            }
            "missing" => {
                assert_eq!(v["action"], "pause");
                assert_eq!(causes[0]["signal"], "replica_lag");
                assert_eq!(causes[0]["on_missing"], "pause");
                assert_eq!(causes[0]["missing_for"], "20s");
            }
            "slow_batch" => {
                assert_eq!(causes[0]["duration"], "1s 600ms");
                assert_eq!(causes[0]["target"], "1s");
            }
            "batch_error" => {
                assert_eq!(causes[0]["error"], "lock_timeout");
                assert_eq!(causes[0]["count"], 3);
            }
            "manual" => {
                assert_eq!(causes[0]["by"], "alice");
                assert_eq!(causes[0]["reason"], "sale starts");
            }
            "window" => {
                assert_eq!(v["action"], "clamp");
                assert_eq!(causes[0]["window"], "lunch");
            }
            "calm" => {
                assert_eq!(v["action"], "resume");
                assert_eq!(causes[0]["calm_for"], "30s");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn text_lines_read_as_sentences() {
    let (_, d) = decisions().remove(0);
    let lines = capture(LogFormat::Text, "info", || {
        telemetry::log_decision(&d, "demo", &labels());
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.contains(
            " INFO [demo tenant=acme] slowing down: checkout_p95 0.41 > slow 0.396 (baseline 0.33 * 1.2); batch 2000→1000, sleep 100ms→200ms, workers 3→2"
        ),
        "{line}"
    );
    assert!(line.contains("state=slowing action=decrease"), "{line}");
    // The structured causes are for machines; the sentence already says it.
    assert!(!line.contains("causes="), "{line}");
    assert!(
        !line.contains('\x1b'),
        "no colour codes without a terminal: {line}"
    );
}

#[test]
fn decisions_that_change_nothing_stay_at_debug() {
    let hold = decision(
        State::Running,
        Action::Hold,
        knobs(2000, 100, 3),
        knobs(2000, 100, 3),
        vec![],
    );
    let lines = capture(LogFormat::Json, "info", || {
        assert!(!telemetry::log_decision(&hold, "demo", &labels()));
    });
    assert!(lines.is_empty(), "{lines:?}");
    let lines = capture(LogFormat::Json, "debug", || {
        telemetry::log_decision(&hold, "demo", &labels());
    });
    assert_eq!(lines.len(), 1);
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["level"], "DEBUG");
    assert_eq!(v["message"], "holding");
}

#[test]
fn batch_lines_are_debug_unless_asked_for() {
    let b = BatchLine {
        worker: 2,
        first_key: "1001",
        last_key: "3000",
        batch_size: 2000,
        rows: 1998,
        duration: Duration::from_millis(340),
        retries: 1,
        error: None,
    };
    let quiet = capture(LogFormat::Json, "info", || {
        let _g = telemetry::job_span("demo", &labels()).entered();
        telemetry::log_batch(&b, false);
    });
    assert!(quiet.is_empty(), "{quiet:?}");
    let lines = capture(LogFormat::Json, "info", || {
        let _g = telemetry::job_span("demo", &labels()).entered();
        telemetry::log_batch(&b, true);
    });
    assert_eq!(lines.len(), 1);
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["job"], "demo");
    assert_eq!(v["labels"]["tenant"], "acme");
    assert_eq!(v["worker"], 2);
    assert_eq!(v["first_key"], "1001");
    assert_eq!(v["last_key"], "3000");
    assert_eq!(v["batch_size"], 2000);
    assert_eq!(v["rows"], 1998);
    assert_eq!(v["duration_ms"], 340.0);
    assert_eq!(v["retries"], 1);
    assert_eq!(
        v["message"],
        "batch of 2000 keys (1001..3000) changed 1998 rows in 340ms on worker 2"
    );
}

#[test]
fn progress_line_has_rate_and_eta() {
    let p = ProgressLine {
        rows_done: 1_234_000,
        rows_pending: Some(6_766_000),
        rate: 2345.4,
        state: "running".into(),
        knobs: knobs(2000, 100, 3),
    };
    assert_eq!(p.eta(), Some(Duration::from_secs_f64(6_766_000.0 / 2345.4)));
    let lines = capture(LogFormat::Json, "info", || telemetry::log_progress(&p));
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        v["message"],
        "progress: 1,234,000 of 8,000,000 rows (15.4 %), 2,345 rows/s, ETA 48m; running, batch 2000, sleep 100ms, 3 workers"
    );
    assert_eq!(v["rows_done"], 1_234_000);
    assert_eq!(v["rows_pending"], 6_766_000);
    assert_eq!(v["eta_seconds"], 2884);
    // Paused: no rate, no ETA.
    let paused = ProgressLine {
        rate: 0.0,
        state: "paused".into(),
        ..p
    };
    assert_eq!(paused.eta(), None);
    assert!(
        paused.sentence().contains("ETA unknown; paused"),
        "{}",
        paused.sentence()
    );
}

#[test]
fn long_pause_warning_carries_the_job_labels() {
    let lines = capture(LogFormat::Text, "info", || {
        let _g = telemetry::job_span("demo", &labels()).entered();
        telemetry::log_long_pause(
            Duration::from_secs(3900),
            Duration::from_secs(3600),
            "replica_lag 16 > stop 10",
            false,
        );
    });
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains(" WARN [demo tenant=acme] paused for 1h5m (max_pause 1h) because replica_lag 16 > stop 10"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn credentials_never_reach_a_log_line_or_an_error() {
    use sqlx::postgres::PgConnectOptions;
    let url = format!("postgres://app:{SECRET}@127.0.0.1:1/shop");
    let opts: PgConnectOptions = url.parse().unwrap();
    // The hazard this guards against is real: Debug prints the password.
    assert!(format!("{opts:?}").contains(SECRET));
    // A real connection failure, with the URL in the error context.
    let err = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts.clone())
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("connecting to {url}")))
        .unwrap_err();
    let shown = redact::error(&err);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("postgres://app:***@127.0.0.1:1/shop"),
        "{shown}"
    );

    for format in [LogFormat::Text, LogFormat::Json] {
        let lines = capture(format, "debug", || {
            let _g = telemetry::job_span("demo", &labels()).entered();
            tracing::info!("connecting to {url}");
            tracing::warn!(options = ?opts, "connect options");
            tracing::error!(error = %format!("{err:#}"), "database unreachable");
            tracing::info!(
                dsn = format!("host=db user=app password={SECRET} dbname=shop").as_str(),
                "libpq style"
            );
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        for l in &lines {
            assert!(!l.contains(SECRET), "{format:?} leaked: {l}");
            if format == LogFormat::Json {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("redaction broke JSON ({e}): {l}"));
            }
        }
        assert!(
            lines[0].contains("postgres://app:***@127.0.0.1:1/shop"),
            "{}",
            lines[0]
        );
    }
}

#[test]
fn log_level_comes_from_the_flag_then_rust_log() {
    assert!(logging::filter(Some("pacer=debug,info")).is_ok());
    let e = logging::filter(Some("pacer=loud")).unwrap_err().to_string();
    assert!(e.contains("--log-level") && e.contains("pacer=loud"), "{e}");
}

/// Every command that connects prints its errors through one redaction
/// pass: no form of connection string (URL, libpq keyword/value, quoted
/// values, an unencoded space) and no override shows its password.
#[test]
fn no_form_of_connection_string_reaches_command_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let demo = std::fs::read_to_string("policies/demo.toml").unwrap();
    std::fs::write(&path, demo).unwrap();
    let out_dir = dir.path().join("report");
    let urls = [
        format!("host=127.0.0.1 port=1 user=app password={SECRET} dbname=shop"),
        format!("host=127.0.0.1 port=1 user=app password='{SECRET} x' dbname=shop"),
        format!("host=127.0.0.1 port=1 password = 'it\\'s {SECRET}' dbname=shop"),
        format!("postgres://app:{SECRET}@127.0.0.1:1/shop"),
        format!("postgres://app:{SECRET} x@127.0.0.1:1/shop"),
        format!("postgres://app@127.0.0.1:1/shop?password={SECRET}&sslmode=bogus"),
        format!("postgres://app:{SECRET}@127.0.0.1:1/shop?sslmode=bogus"),
    ];
    let commands: &[&[&str]] = &[
        &["check"],
        &["status"],
        &["run"],
        &["pause", "--reason", "test"],
        &["resume"],
        &["verify"],
        &["report", "--out", out_dir.to_str().unwrap()],
        &["cleanup"],
    ];
    for url in &urls {
        for var in ["DATABASE_URL", "PACER_POLICY__DATABASE__URL"] {
            for args in commands {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_pacer"))
                    .args(*args)
                    .arg("--policy")
                    .arg(&path)
                    .env_remove("DATABASE_URL")
                    .env(var, url)
                    .env("PACER_POLICY__HTTP__LISTEN", "127.0.0.1:0")
                    .output()
                    .unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    !text.contains("hunter2"),
                    "{args:?} with {var}={url:?} leaked:\n{text}"
                );
                assert_ne!(out.status.code(), Some(0), "{args:?}: {text}");
                assert!(!text.contains("panicked"), "{args:?}: {text}");
            }
        }
    }
}

/// A newline or escape inside a value (a pause reason from the control
/// API, a database error) cannot start a log line of its own that reads
/// like pacer's, nor repaint the operator's terminal.
#[test]
fn control_characters_in_values_never_start_a_line() {
    let forged = "sale\n2026-11-24T08:00:00.000Z  INFO [demo] resuming: forged\u{1b}[2J";
    for format in [LogFormat::Text, LogFormat::Json] {
        let lines = capture(format, "info", || {
            let _g = telemetry::job_span("demo", &labels()).entered();
            tracing::info!(by = "eve\r\nx", reason = forged, "paused by eve: {forged}");
        });
        assert_eq!(lines.len(), 1, "{format:?}: {lines:?}");
        assert!(!lines[0].contains('\u{1b}'), "{format:?}: {}", lines[0]);
        if format == LogFormat::Json {
            let v: Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(v["reason"], forged, "JSON keeps the value, escaped");
        } else {
            assert!(
                lines[0].contains("paused by eve: sale\\n2026"),
                "{}",
                lines[0]
            );
        }
    }
}
