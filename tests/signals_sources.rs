//! Prometheus and HTTP sources against the testbed's real Prometheus, plus
//! the edge cases a real Prometheus produces on demand (empty, NaN, ±Inf,
//! several series, bad query). Headers and timeouts use tiny local servers
//! that record or stall, since a real Prometheus neither echoes headers nor
//! hangs on request.

mod common;

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use pacer::policy::PrometheusConfig;
use pacer::signals::http::HttpCheck;
use pacer::signals::prometheus::{PromSource, Prometheus};
use pacer::signals::{Context, Sampler, Source, build_sampler};

fn prom_cfg(url: &str, timeout: Duration) -> PrometheusConfig {
    let mut c: PrometheusConfig = toml::from_str("").unwrap();
    c.url = url.into();
    c.timeout = timeout;
    c
}

async fn read_prom(query: &str) -> pacer::signals::Reading {
    let prom =
        Prometheus::new(&prom_cfg(&common::prometheus_url(), Duration::from_secs(5))).unwrap();
    PromSource::new("t".into(), query.into(), prom).read().await
}

#[tokio::test]
async fn prometheus_single_number_is_a_value() {
    let _l = common::lock();
    assert_eq!(read_prom("vector(42)").await.value, Some(42.0));
    assert_eq!(read_prom("scalar(vector(7)) * 2").await.value, Some(14.0));
    // A real series from the testbed: the traffic generator's configured rate.
    let r = read_prom("max(traffic_target_rate)").await;
    assert!(r.value.is_some_and(|v| v > 0.0), "{r:?}");
}

#[tokio::test]
async fn prometheus_empty_nan_inf_and_several_series_are_missing_not_zero() {
    let _l = common::lock();
    for (q, why) in [
        ("vector(1) unless on() vector(1)", "no series"),
        (r#"up{job="no-such-job"}"#, "no series"),
        ("vector(0) / 0", "NaN"),
        ("vector(1) / 0", "inf"),
        ("vector(-1) / 0", "-inf"),
        (
            r#"label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")"#,
            "2 series",
        ),
        ("sum(rate(", "bad_data"),
    ] {
        let r = read_prom(q).await;
        assert_eq!(r.value, None, "{q}: {r:?}");
        let reason = r.missing.unwrap();
        assert!(
            reason.contains(why),
            "{q}: reason {reason:?} should mention {why:?}"
        );
    }
}

#[tokio::test]
async fn prometheus_unreachable_and_slow_are_missing_within_the_timeout() {
    // Refused: nothing listens on port 1.
    let prom = Prometheus::new(&prom_cfg("http://127.0.0.1:1", Duration::from_secs(2))).unwrap();
    let r = PromSource::new("t".into(), "vector(1)".into(), prom)
        .read()
        .await;
    assert!(
        r.value.is_none() && r.missing.as_deref().unwrap().contains("127.0.0.1:1"),
        "{r:?}"
    );

    // Accepts but never answers: the reqwest timeout ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let prom = Prometheus::new(&prom_cfg(
        &format!("http://{addr}"),
        Duration::from_millis(500),
    ))
    .unwrap();
    let t = Instant::now();
    let r = PromSource::new("t".into(), "vector(1)".into(), prom)
        .read()
        .await;
    assert!(r.value.is_none(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

/// Bearer token (from the env when the policy has none) and extra headers
/// reach the server.
#[tokio::test]
async fn prometheus_sends_bearer_token_and_extra_headers() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HeaderMap>();
    let app = axum::Router::new().route(
        "/api/v1/query",
        get(move |h: HeaderMap| {
            let tx = tx.clone();
            async move {
                tx.send(h).unwrap();
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3.5"]}]}}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut cfg = prom_cfg(&format!("http://{addr}"), Duration::from_secs(2));
    cfg.bearer_token = Some("s3cret".into());
    cfg.headers
        .insert("X-Scope-OrgID".into(), "tenant-a".into());
    let prom = Prometheus::new(&cfg).unwrap();
    let r = PromSource::new("t".into(), "q".into(), prom).read().await;
    assert_eq!(r.value, Some(3.5), "{r:?}");
    let h = rx.recv().await.unwrap();
    assert_eq!(h["authorization"], "Bearer s3cret");
    assert_eq!(h["x-scope-orgid"], "tenant-a");

    let bad = {
        let mut c = cfg.clone();
        c.headers.insert("bad header".into(), "x".into());
        c
    };
    let err = Prometheus::new(&bad).err().unwrap();
    assert!(err.contains("bad header"), "{err}");
}

/// 2xx = 0 (calm), other statuses = 1 (stop), refused = missing.
#[tokio::test]
async fn http_check_statuses() {
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let s2 = status.clone();
    let app =
        axum::Router::new()
            .route(
                "/throttle",
                get(move || {
                    let s = s2.clone();
                    async move {
                        StatusCode::from_u16(s.load(std::sync::atomic::Ordering::SeqCst)).unwrap()
                    }
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let check = HttpCheck::new(
        "h".into(),
        &format!("http://{addr}/throttle"),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(check.read().await.value, Some(0.0));
    for code in [204u16, 299] {
        status.store(code, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(check.read().await.value, Some(0.0), "{code}");
    }
    for code in [302u16, 404, 429, 500, 503] {
        status.store(code, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(check.read().await.value, Some(1.0), "{code}");
    }
    let refused =
        HttpCheck::new("h".into(), "http://127.0.0.1:1/", Duration::from_secs(2)).unwrap();
    let r = refused.read().await;
    assert!(r.value.is_none() && r.missing.is_some(), "{r:?}");
    let slow = HttpCheck::new(
        "h".into(),
        &format!("http://{addr}/slow"),
        Duration::from_millis(300),
    )
    .unwrap();
    let r = slow.read().await;
    assert!(r.value.is_none(), "{r:?}");
}

/// A source that hangs costs its own timeout, never the others' readings
/// or the tick: the sampler returns after the longest timeout.
#[tokio::test]
async fn sampler_bounds_each_source_by_its_own_timeout() {
    let _l = common::lock();
    let app = axum::Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let policy = common::policy(
        "sampler",
        "public.sampler_t",
        &format!(
            r#"
[[signal]]
name = "slow_http"
http = "http://{addr}/slow"
timeout = "1s"

[[signal]]
name = "answer"
prometheus = "vector(42)"
delay = "15s"
stop_above = 100
timeout = "5s"
"#
        ),
        "",
    );
    // Only a Prometheus and an HTTP source: no database needed.
    let sampler: Sampler = build_sampler(&policy, &Context { pool: None })
        .await
        .unwrap();
    assert_eq!(sampler.names(), ["slow_http", "answer"]);
    let t = Instant::now();
    let r = sampler.sample().await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "sample took {took:?}");
    assert_eq!(r[1].value, Some(42.0));
    assert!(r[0].value.is_none(), "{:?}", r[0]);
    let why = r[0].missing.as_deref().unwrap();
    assert!(
        why.contains("timed out") || why.contains("within 1s"),
        "{why}"
    );
}

#[tokio::test]
async fn configuration_problems_are_errors_naming_the_signal() {
    let policy = common::policy(
        "cfg",
        "public.cfg_t",
        r#"
[[signal]]
name = "locks"
postgres = "lock_waiters"
stop_above = 5
"#,
        "",
    );
    let err = build_sampler(&policy, &Context { pool: None })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"locks\"") && err.contains("database"),
        "{err}"
    );

    let mut policy = common::policy(
        "cfg",
        "public.cfg_t",
        r#"
[[signal]]
name = "lag"
postgres = "replication_lag_seconds"
stop_above = 5
"#,
        "",
    );
    policy.database.replicas.clear();
    let pool =
        sqlx::PgPool::connect_lazy(&format!("{}/{}", common::primary_server(), common::TEST_DB))
            .unwrap();
    let err = build_sampler(&policy, &Context { pool: Some(pool) })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"lag\"") && err.contains("database.replicas"),
        "{err}"
    );
}
