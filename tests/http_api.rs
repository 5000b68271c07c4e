//! The HTTP server over real sockets: `/metrics` is valid exposition with
//! every metric, `/status` serves the job's JSON (redacted), `/pause` and
//! `/resume` reach the job, tokens are enforced, and a public bind without a
//! token is refused.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pacer::controller::{
    Action, BatchError, BatchOutcome, Cause, Controller, Decision, Knobs, SignalView, State, View,
};
use pacer::signals::Reading;
use pacer::telemetry::http::{self, Control, ControlRequest, HttpError};
use pacer::telemetry::metrics::Metrics;
use serde_json::{Value, json};
use support::{SECRET, expo};

/// The job side of the control API: what the run loop will back with the
/// store. Records each request so tests can see it arrived.
struct Job {
    status: Value,
    requests: Mutex<Vec<(&'static str, ControlRequest)>>,
    fail: bool,
}

impl Job {
    fn new() -> Arc<Job> {
        Arc::new(Job {
            status: json!({
                "job": "demo",
                "state": "running",
                "rows_done": 1234,
                "database": format!("postgres://app:{SECRET}@db.internal/shop"),
                "knobs": {"batch_size": 2000, "sleep": "100ms", "workers": 3},
            }),
            requests: Mutex::new(Vec::new()),
            fail: false,
        })
    }
    fn requests(&self) -> Vec<(&'static str, ControlRequest)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Control for Job {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async move { Ok(self.status.clone()) })
    }
    fn pause(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async move {
            if self.fail {
                anyhow::bail!(
                    "cannot write the control row on postgres://app:{SECRET}@db.internal/shop"
                );
            }
            self.requests.lock().unwrap().push(("pause", req.clone()));
            Ok(json!({"paused": true, "reason": req.reason, "by": req.by}))
        })
    }
    fn resume(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(("resume", req.clone()));
            Ok(json!({"paused": false}))
        })
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("tenant".to_string(), "acme".to_string())])
}

/// Metrics fed the way the run loop will feed them.
fn busy_metrics() -> Arc<Metrics> {
    let m = Metrics::new("demo", &labels()).unwrap();
    let policy = support::policy();
    let ctl = Controller::new(
        &policy,
        &BTreeMap::from([("checkout_p95".to_string(), 0.33)]),
    )
    .unwrap();
    m.set_signal_levels(ctl.levels());
    let now = support::start();
    m.observe_readings(
        ctl.levels().iter().map(|l| l.name.as_str()),
        &[
            Reading::value(0.41, now),
            Reading::missing("no answer within 2s", now),
        ],
    );
    let k = |b, s, w| Knobs {
        batch_size: b,
        sleep: Duration::from_millis(s),
        workers: w,
    };
    m.observe_decision(&Decision {
        at: now,
        state: State::Slowing,
        action: Action::Decrease,
        before: k(2000, 100, 3),
        knobs: k(1000, 250, 2),
        causes: vec![],
        windows: vec![],
        view: View {
            target_rate: 4321.5,
            signals: vec![
                SignalView {
                    name: "checkout_p95".into(),
                    raw: Some(0.41),
                    estimate: Some(0.38),
                    delay: Duration::from_secs(75),
                    unresponsive_for: None,
                    noise: None,
                    within_noise: false,
                },
                SignalView {
                    name: "replica_lag".into(),
                    raw: None,
                    estimate: None,
                    delay: Duration::from_secs(2),
                    unresponsive_for: None,
                    noise: None,
                    within_noise: false,
                },
            ],
        },
    });
    m.observe_decision(&Decision {
        at: now,
        state: State::Paused,
        action: Action::Pause,
        before: k(1000, 250, 2),
        knobs: k(1000, 250, 2),
        causes: vec![
            Cause::Signal {
                signal: "replica_lag".into(),
                value: 12.0,
                estimate: None,
                level: "stop",
                threshold: 10.0,
                expr: None,
                baseline: None,
            },
            Cause::Manual {
                by: "alice".into(),
                reason: "free text never becomes a label".into(),
            },
        ],
        windows: vec![],
        view: Default::default(),
    });
    for (ms, err) in [
        (120, None),
        (340, None),
        (2100, Some(BatchError::LockTimeout)),
    ] {
        m.observe_batch(&BatchOutcome {
            started: now,
            duration: Duration::from_millis(ms),
            rows: 1000,
            error: err,
        });
    }
    m.observe_retry(BatchError::LockTimeout);
    m.observe_retry(BatchError::LockTimeout);
    m.observe_retry(BatchError::Deadlock);
    m.set_progress(1_500_000, Some(6_500_000));
    m.set_progress(1_400_000, Some(6_600_000)); // never moves a counter back
    Arc::new(m)
}

async fn start(token: Option<&str>, job: Arc<Job>) -> http::HttpServer {
    http::serve("127.0.0.1:0", token.map(String::from), busy_metrics(), job)
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_are_valid_exposition_with_every_metric() {
    let srv = start(None, Job::new()).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/metrics", srv.local_addr()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    let e = expo::parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    for (family, ty) in [
        ("pacer_rows_done", "counter"),
        ("pacer_rows_pending", "gauge"),
        ("pacer_batch_size", "gauge"),
        ("pacer_sleep_seconds", "gauge"),
        ("pacer_workers", "gauge"),
        ("pacer_state", "gauge"),
        ("pacer_pauses", "counter"),
        ("pacer_decisions", "counter"),
        ("pacer_batches", "counter"),
        ("pacer_batch_duration_seconds", "histogram"),
        ("pacer_retries", "counter"),
        ("pacer_signal_value", "gauge"),
        ("pacer_signal_missing", "gauge"),
        ("pacer_signal_slow_level", "gauge"),
        ("pacer_signal_stop_level", "gauge"),
        ("pacer_signal_baseline", "gauge"),
        ("pacer_signal_estimate", "gauge"),
        ("pacer_signal_delay_seconds", "gauge"),
        ("pacer_target_rate_rows_per_second", "gauge"),
        ("pacer_build_info", "gauge"),
    ] {
        assert_eq!(
            e.types.get(family).map(String::as_str),
            Some(ty),
            "{family} in\n{text}"
        );
        assert!(
            e.help.get(family).is_some_and(|h| !h.is_empty()),
            "{family} has no HELP"
        );
    }
    // Job name and labels on every series.
    for s in &e.samples {
        assert_eq!(
            s.labels.get("pacer_job").map(String::as_str),
            Some("demo"),
            "{s:?}"
        );
        assert_eq!(
            s.labels.get("tenant").map(String::as_str),
            Some("acme"),
            "{s:?}"
        );
    }
    assert_eq!(e.get("pacer_rows_done_total", &[]), Some(1_500_000.0));
    assert_eq!(e.get("pacer_rows_pending", &[]), Some(6_600_000.0));
    assert_eq!(e.get("pacer_batch_size", &[]), Some(1000.0));
    assert_eq!(e.get("pacer_sleep_seconds", &[]), Some(0.25));
    assert_eq!(e.get("pacer_workers", &[]), Some(2.0));
    for (state, v) in [
        ("running", 0.0),
        ("slowing", 0.0),
        ("paused", 1.0),
        ("done", 0.0),
    ] {
        assert_eq!(
            e.get("pacer_state", &[("state", state)]),
            Some(v),
            "state {state}"
        );
    }
    assert_eq!(
        e.get("pacer_pauses_total", &[("reason", "stop:replica_lag")]),
        Some(1.0)
    );
    assert_eq!(
        e.get("pacer_pauses_total", &[("reason", "manual")]),
        Some(1.0)
    );
    assert!(
        !text.contains("free text"),
        "a manual reason became a label value"
    );
    assert_eq!(
        e.get("pacer_decisions_total", &[("action", "decrease")]),
        Some(1.0)
    );
    assert_eq!(
        e.get("pacer_batches_total", &[("outcome", "ok")]),
        Some(2.0)
    );
    assert_eq!(
        e.get("pacer_batches_total", &[("outcome", "lock_timeout")]),
        Some(1.0)
    );
    assert_eq!(e.get("pacer_batch_duration_seconds_count", &[]), Some(2.0));
    assert!((e.get("pacer_batch_duration_seconds_sum", &[]).unwrap() - 0.46).abs() < 1e-9);
    let bucket = |le: f64| {
        e.samples
            .iter()
            .find(|s| {
                s.name == "pacer_batch_duration_seconds_bucket"
                    && s.labels["le"]
                        .parse::<f64>()
                        .is_ok_and(|x| (x - le).abs() < 1e-9)
            })
            .map(|s| s.value)
    };
    assert_eq!(
        bucket(0.16),
        Some(1.0),
        "120 ms falls under 160 ms, 340 ms does not"
    );
    assert_eq!(
        e.get("pacer_batch_duration_seconds_bucket", &[("le", "+Inf")]),
        Some(2.0)
    );
    assert_eq!(
        e.get("pacer_retries_total", &[("class", "lock_timeout")]),
        Some(2.0)
    );
    assert_eq!(
        e.get("pacer_retries_total", &[("class", "deadlock")]),
        Some(1.0)
    );
    assert_eq!(
        e.get("pacer_signal_value", &[("signal", "checkout_p95")]),
        Some(0.41)
    );
    assert!(
        e.get("pacer_signal_value", &[("signal", "replica_lag")])
            .unwrap()
            .is_nan()
    );
    assert_eq!(
        e.get("pacer_signal_missing", &[("signal", "replica_lag")]),
        Some(1.0)
    );
    assert_eq!(
        e.get("pacer_signal_missing", &[("signal", "checkout_p95")]),
        Some(0.0)
    );
    assert!(
        (e.get("pacer_signal_slow_level", &[("signal", "checkout_p95")])
            .unwrap()
            - 0.396)
            .abs()
            < 1e-9
    );
    assert!(
        (e.get("pacer_signal_stop_level", &[("signal", "checkout_p95")])
            .unwrap()
            - 0.495)
            .abs()
            < 1e-9
    );
    assert_eq!(
        e.get("pacer_signal_baseline", &[("signal", "checkout_p95")]),
        Some(0.33)
    );
    assert_eq!(
        e.get("pacer_signal_stop_level", &[("signal", "replica_lag")]),
        Some(10.0)
    );
    assert_eq!(
        e.get("pacer_signal_baseline", &[("signal", "replica_lag")]),
        None
    );
    // The controller's view of the first decision (the pause carried none):
    // the estimate beside the raw reading, the delay, the target rate.
    assert_eq!(
        e.get("pacer_signal_estimate", &[("signal", "checkout_p95")]),
        Some(0.38)
    );
    assert!(
        e.get("pacer_signal_estimate", &[("signal", "replica_lag")])
            .unwrap()
            .is_nan()
    );
    assert_eq!(
        e.get("pacer_signal_delay_seconds", &[("signal", "checkout_p95")]),
        Some(75.0)
    );
    // The pause came last: its target rate is 0.
    assert_eq!(e.get("pacer_target_rate_rows_per_second", &[]), Some(0.0));
    // Without OpenMetrics in Accept: the classic format, same samples.
    let classic = reqwest::get(format!("http://{}/metrics", srv.local_addr()))
        .await
        .unwrap();
    assert!(
        classic.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = classic.text().await.unwrap();
    assert!(
        classic.contains("# TYPE pacer_rows_done_total counter\n") && !classic.contains("# EOF"),
        "{classic}"
    );
    let lines = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&classic), lines(&text));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_serves_the_jobs_json_without_credentials() {
    let job = Job::new();
    let srv = start(None, job.clone()).await;
    let body = reqwest::get(format!("http://{}/status", srv.local_addr()))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let text = body.text().await.unwrap();
    assert!(!text.contains(SECRET), "{text}");
    let mut want = job.status.clone();
    want["database"] = json!("postgres://app:***@db.internal/shop");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn pause_and_resume_reach_the_job() {
    let job = Job::new();
    let srv = start(None, job.clone()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", srv.local_addr());
    let r = c
        .post(format!("{base}/pause"))
        .json(&json!({"reason": "sale starts", "by": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["paused"], true);
    let r = c
        .post(format!("{base}/resume?reason=sale%20over"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        job.requests(),
        vec![
            (
                "pause",
                ControlRequest {
                    reason: "sale starts".into(),
                    by: "bob".into()
                }
            ),
            (
                "resume",
                ControlRequest {
                    reason: "sale over".into(),
                    by: "api@127.0.0.1".into()
                }
            ),
        ]
    );
    // No reason, a malformed body, or a GET: refused, and the job never hears of it.
    let r = c.post(format!("{base}/pause")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("a reason is required"));
    let r = c
        .post(format!("{base}/pause"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(format!("{base}/pause")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(job.requests().len(), 2);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_required_token_guards_control_but_not_metrics() {
    let token = "0123456789abcdef-token";
    let job = Job::new();
    let srv = start(Some(token), job.clone()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", srv.local_addr());
    let body = json!({"reason": "sale"});
    let r = c
        .post(format!("{base}/pause"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c
        .post(format!("{base}/pause"))
        .bearer_auth("0123456789abcdef-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{base}/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(job.requests().is_empty());
    let r = c
        .post(format!("{base}/pause"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(job.requests().len(), 1);
    let r = c
        .get(format!("{base}/status"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_public_bind_without_a_token_is_refused() {
    let m = busy_metrics();
    let e = http::serve("0.0.0.0:0", None, m.clone(), Job::new())
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, HttpError::TokenRequired { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("PACER_CONTROL_TOKEN")
            && msg.contains("0.0.0.0:0")
            && msg.contains("[http] listen"),
        "{msg}"
    );
    let e = http::serve("0.0.0.0:0", Some("short".into()), m.clone(), Job::new())
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, HttpError::WeakToken { len: 5 }), "{e}");
    // With a token it starts, and answers on every interface.
    let srv = http::serve(
        "0.0.0.0:0",
        Some("0123456789abcdef-token".into()),
        m.clone(),
        Job::new(),
    )
    .await
    .unwrap();
    let port = srv.local_addr().port();
    let r = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_busy_port_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let e = http::serve(&listen, None, busy_metrics(), Job::new())
        .await
        .err()
        .expect("port in use");
    let msg = e.to_string();
    assert!(
        msg.contains(&listen) && msg.contains("cannot listen"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_failing_job_is_a_500_without_credentials() {
    let job = Arc::new(Job {
        fail: true,
        ..Arc::into_inner(Job::new()).unwrap()
    });
    let srv = start(None, job).await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/pause", srv.local_addr()))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("cannot write the control row") && !text.contains(SECRET),
        "{text}"
    );
    srv.shutdown().await.unwrap();
}

#[test]
fn policy_labels_must_be_label_names() {
    let bad = BTreeMap::from([("team-name".to_string(), "x".to_string())]);
    assert!(Metrics::new("demo", &bad).is_err());
    let reserved = BTreeMap::from([("job".to_string(), "x".to_string())]);
    let e = Metrics::new("demo", &reserved).err().unwrap().to_string();
    assert!(e.contains("\"job\"") && e.contains("[job] labels"), "{e}");
}

/// A reason or requester with newlines and escapes reaches neither the log
/// nor the job as such: a forged `INFO … resuming` line cannot appear, the
/// terminal cannot be repainted, and overlong values are refused.
#[tokio::test]
async fn control_strings_cannot_forge_log_lines() {
    use pacer::cli::LogFormat;
    use support::capture::Capture;
    let cap = Capture::default();
    let sub = pacer::telemetry::logging::subscriber(
        LogFormat::Text,
        tracing_subscriber::EnvFilter::new("info"),
        cap.clone(),
        false,
    );
    let _guard = tracing::subscriber::set_default(sub);
    let job = Job::new();
    let srv = start(None, job.clone()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", srv.local_addr());
    // Tests in other threads hit the same log callsite with no subscriber;
    // once it is surely registered, make tracing's cached interest count
    // this test's subscriber too.
    let warm_up = c.post(format!("{base}/resume?reason=warm-up")).send();
    assert_eq!(warm_up.await.unwrap().status(), 200);
    tracing::callsite::rebuild_interest_cache();
    let forged = "sale\n2026-11-24T08:00:00.000Z  INFO [demo] resuming: forged\u{1b}[2J\u{202e}";
    let r = c
        .post(format!("{base}/pause"))
        .json(&json!({"reason": forged, "by": "eve\r\nINFO"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, req) = &job.requests()[1];
    for s in [&req.reason, &req.by] {
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert!(!s.contains('\u{202e}'), "{s:?}");
    }
    assert!(req.reason.starts_with("sale\\n2026"), "{:?}", req.reason);
    assert_eq!(req.by, "eve\\r\\nINFO");
    let lines = cap.lines();
    let forged_lines: Vec<&String> = lines.iter().filter(|l| l.contains("forged")).collect();
    assert_eq!(forged_lines.len(), 1, "{lines:?}");
    assert!(
        forged_lines[0].contains("pause requested over HTTP by eve"),
        "the forged text must stay inside the real line: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "{lines:?}");

    for body in [
        json!({"reason": "x".repeat(501)}),
        json!({"reason": "ok", "by": "b".repeat(101)}),
    ] {
        let r = c
            .post(format!("{base}/pause"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(job.requests().len(), 2);
    srv.shutdown().await.unwrap();
}
