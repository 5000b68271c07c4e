//! `/metrics` as real Prometheus tooling sees it: `promtool check metrics`
//! accepts it, and a real Prometheus server scrapes it with the job's
//! labels. Both need the Debian `prometheus` package (`apt-get install -y
//! prometheus`); without it these tests fail with that instruction unless
//! PACER_SKIP_PROMETHEUS=1 is set.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use pacer::controller::{BatchError, BatchOutcome, Knobs};
use pacer::signals::Reading;
use pacer::telemetry::http::{self, Control, ControlRequest};
use pacer::telemetry::metrics::Metrics;
use serde_json::{Value, json};

struct Idle;

impl Control for Idle {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async { Ok(json!({"state": "running"})) })
    }
    fn pause(&self, _: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async { Ok(json!({})) })
    }
    fn resume(&self, _: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async { Ok(json!({})) })
    }
}

fn tool(name: &str) -> Option<String> {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(name.to_string());
    }
    if std::env::var_os("PACER_SKIP_PROMETHEUS").is_some() {
        eprintln!("skipping: {name} not installed and PACER_SKIP_PROMETHEUS is set");
        return None;
    }
    panic!(
        "{name} is not installed: apt-get install -y prometheus (or set PACER_SKIP_PROMETHEUS=1)"
    );
}

fn metrics() -> Arc<Metrics> {
    let m = Metrics::new(
        "demo",
        &BTreeMap::from([("tenant".to_string(), "acme".to_string())]),
    )
    .unwrap();
    let now = chrono::Utc::now();
    m.set_knobs(&Knobs {
        batch_size: 2000,
        sleep: Duration::from_millis(100),
        workers: 3,
    });
    m.set_state("running");
    m.set_progress(123_456, Some(1_000_000));
    m.observe_readings(
        ["checkout_p95", "replica_lag"],
        &[Reading::value(0.35, now), Reading::missing("timeout", now)],
    );
    m.observe_batch(&BatchOutcome {
        started: now,
        duration: Duration::from_millis(250),
        rows: 2000,
        error: None,
    });
    m.observe_retry(BatchError::Deadlock);
    Arc::new(m)
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    // What `curl /metrics` gets: the classic text format.
    let text = metrics().encode_classic();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}\n{text}"
    );
    // promtool also lints names; pacer's metrics should raise no complaint.
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");
}

/// Kills the Prometheus server this test started, even on panic.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_it() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let srv = http::serve("127.0.0.1:0", None, metrics(), Arc::new(Idle))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pacer\n    static_configs:\n      - targets: ['{}']\n",
            srv.local_addr()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let series = loop {
        let r = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", "pacer_rows_done_total")])
            .send()
            .await;
        if let Ok(r) = r
            && let Ok(v) = r.json::<Value>().await
            && let Some(first) = v["data"]["result"].as_array().and_then(|a| a.first())
        {
            break first.clone();
        }
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("Prometheus never scraped pacer_rows_done_total; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(series["metric"]["pacer_job"], "demo", "{series}");
    assert_eq!(series["metric"]["tenant"], "acme", "{series}");
    assert_eq!(
        series["metric"]["job"], "pacer",
        "the scrape job keeps its own label: {series}"
    );
    assert_eq!(series["value"][1], "123456");
    let targets: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/targets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");
    // The histogram and the missing signal arrive as Prometheus understands them.
    let q = |expr: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", expr)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["data"]["result"]
                .clone()
        }
    };
    assert_eq!(
        q("pacer_batch_duration_seconds_count").await[0]["value"][1],
        "1"
    );
    assert_eq!(
        q("pacer_signal_missing{signal=\"replica_lag\"}").await[0]["value"][1],
        "1"
    );
    assert_eq!(
        q("pacer_state{state=\"running\"}").await[0]["value"][1],
        "1"
    );

    // Every query in the Grafana dashboard is valid PromQL to this server.
    for expr in dashboard_exprs() {
        let expr = expr
            .replace("$job", ".*")
            .replace("$signal", "checkout_p95")
            .replace("$__interval", "1m")
            .replace("$__range", "5m");
        let v: Value = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "dashboard query {expr:?}: {v}");
    }
    srv.shutdown().await.unwrap();
}

/// Every `expr` in dashboards/pacer-grafana.json.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        out.push(x.as_str().expect("expr is a string").to_string());
                    } else {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string("dashboards/pacer-grafana.json").expect("dashboard file");
    let mut out = Vec::new();
    walk(
        &serde_json::from_str(&text).expect("dashboard is JSON"),
        &mut out,
    );
    assert!(
        out.len() >= 15,
        "only {} queries in the dashboard",
        out.len()
    );
    out
}

#[test]
fn the_dashboard_only_uses_metrics_pacer_exports() {
    let m = metrics();
    let now = chrono::Utc::now();
    m.observe_decision(&pacer::controller::Decision {
        at: now,
        state: pacer::controller::State::Paused,
        action: pacer::controller::Action::Pause,
        before: Knobs {
            batch_size: 1,
            sleep: Duration::ZERO,
            workers: 1,
        },
        knobs: Knobs {
            batch_size: 1,
            sleep: Duration::ZERO,
            workers: 1,
        },
        causes: vec![pacer::controller::Cause::Manual {
            by: "a".into(),
            reason: "b".into(),
        }],
        windows: vec![],
        view: Default::default(),
    });
    m.set_signal_infos(&[pacer::history::SignalInfo {
        name: "checkout_p95".into(),
        slow: Some(0.4),
        stop: Some(0.5),
        baseline: Some(0.33),
    }]);
    let exported: std::collections::BTreeSet<String> = m
        .encode_classic()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    for expr in dashboard_exprs() {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("pacer_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            if name == "pacer_job" {
                continue; // the label
            }
            assert!(
                exported.contains(&name),
                "dashboard uses {name}, which pacer does not export: {expr}"
            );
        }
    }
}
