//! `pacer run` wired to its operators: /metrics, /status and the control
//! API on a real running job, `[http] listen` refusals before the first
//! write, `pacer report` from the stored history, and `pacer cleanup`.

mod exec_common;

use std::process::Stdio;
use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

const PASSWORD: &str = "Hunter2SecretPw";

async fn cli_status(policy: &std::path::PathBuf) -> serde_json::Value {
    let out = output(pacer(&["status", "--json"], policy)).await;
    serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn http_api_drives_a_running_job_and_report_draws_it(pool: PgPool) {
    // Trust auth ignores the password, so it only has to stay hidden.
    let url = url_of(&pool)
        .await
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    assert!(url.contains(PASSWORD));
    counter_table(&pool, "t", 30_000).await;
    let (dir, policy) = policy(
        &url,
        &Spec {
            batch: (200, 100, 400),
            sleep_ms: 50,
            ..Spec::default()
        },
    );
    let base = format!("http://{}", listen_of(&policy));
    let log = dir.path().join("run.log");
    let mut cmd = capped(pacer(&["run"], &policy));
    cmd.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut child = cmd.spawn().unwrap();
    let http = reqwest::Client::new();
    let started = wait_until(Duration::from_secs(30), || async {
        counters(&pool, "t").await.1 > 1000
    })
    .await;
    assert!(started, "the job did not start");

    // /metrics: Prometheus text with the job's numbers (progress lands
    // there once per controller tick).
    let get_metrics = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let rows_done = |m: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with("pacer_rows_done"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let moved = wait_until(Duration::from_secs(10), || async {
        rows_done(&get_metrics().await) > 0.0
    })
    .await;
    let metrics = get_metrics().await;
    assert!(moved, "pacer_rows_done stays 0:\n{metrics}");
    for name in [
        "pacer_rows_done",
        "pacer_rows_pending",
        "pacer_batch_size",
        "pacer_workers",
        "pacer_state{",
        "pacer_batch_duration",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    // `pacer status` shows what the controller aims at while running.
    let aiming = wait_until(Duration::from_secs(10), || async {
        cli_status(&policy).await["controller"]["target_rate"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    })
    .await;
    assert!(
        aiming,
        "no target rate in status: {}",
        cli_status(&policy).await
    );

    // POST /pause: the job pauses and writes nothing more.
    let r = http
        .post(format!("{base}/pause"))
        .json(&serde_json::json!({"reason": "api pause test"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let paused = wait_until(Duration::from_secs(10), || async {
        cli_status(&policy).await["state"] == "paused"
    })
    .await;
    assert!(
        paused,
        "the job did not pause: {}",
        cli_status(&policy).await
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let progress = "SELECT count(*) FROM pacer.progress WHERE job = 't'";
    let frozen = count(&pool, progress).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&pool, progress).await,
        frozen,
        "progress rows added while paused"
    );

    // GET /status is `pacer status --json` (fields that do not move while paused).
    let api: serde_json::Value = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cli = cli_status(&policy).await;
    for k in [
        "job",
        "state",
        "rows_done",
        "rows_pending",
        "rows_at_start",
        "knobs",
        "last_decision",
        "controller",
        "paused_by",
        "pass",
        "cursor",
        "message",
        "started_at",
        "finished_at",
    ] {
        assert_eq!(
            api[k], cli[k],
            "/status and `pacer status --json` differ on {k}"
        );
    }
    let mut api_keys: Vec<_> = api.as_object().unwrap().keys().collect();
    let mut cli_keys: Vec<_> = cli.as_object().unwrap().keys().collect();
    api_keys.sort();
    cli_keys.sort();
    assert_eq!(api_keys, cli_keys);
    assert_eq!(api["paused_by"]["reason"], "api pause test");
    assert_eq!(api["controller"]["target_rate"], 0.0, "{api}");
    assert!(
        api["paused_by"]["by"]
            .as_str()
            .unwrap()
            .starts_with("http:"),
        "{api}"
    );

    // POST /resume: the job goes on to the end.
    let r = http
        .post(format!("{base}/resume"))
        .json(&serde_json::json!({"reason": "sale over"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let code = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the job did not finish after resume")
        .unwrap();
    assert!(code.success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(counters(&pool, "t").await, (0, 30_000, 0));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("pause requested over HTTP"), "{stderr}");

    // pacer report: well-formed SVG with the knob series, a runbook with the
    // SQL and the pause with its cause.
    let out_dir =
        std::env::var_os("PACER_REPORT_OUT").map_or_else(|| dir.path().join("report"), Into::into);
    let out = output({
        let mut c = pacer(&["report"], &policy);
        c.arg("--out").arg(&out_dir);
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let svg = std::fs::read_to_string(out_dir.join("timeline.svg")).unwrap();
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("timeline.svg is well-formed XML");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.descendants().filter_map(|t| t.text()).collect::<String>())
        .collect();
    for needle in [
        "batch size (rows per transaction)",
        "sleep between batches (ms)",
        "workers (concurrent transactions)",
        "rows/s (left axis)",
        "P1",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(needle)),
            "timeline.svg lacks {needle:?}: {texts:?}"
        );
    }
    assert!(md.contains("UPDATE t SET counter = counter + 1"), "{md}");
    assert!(
        md.contains("api pause test"),
        "the pause cause is missing:\n{md}"
    );
    let samples = count(&pool, "SELECT count(*) FROM pacer.samples WHERE job = 't'").await;
    assert!(samples > 5, "{samples} samples");

    // The password appears nowhere an operator looks.
    for (what, text) in [
        ("run's stderr", stderr.as_str()),
        ("/status", &api.to_string()),
        ("report.md", md.as_str()),
        ("timeline.svg", svg.as_str()),
        ("report's output", &out.all()),
    ] {
        assert!(!text.contains(PASSWORD), "the password leaked into {what}");
    }
}

#[sqlx::test(migrations = false)]
async fn http_listen_problems_stop_run_before_the_first_write(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 1000).await;
    let no_schema = "SELECT count(*) FROM pg_namespace WHERE nspname = 'pacer'";

    // Taken: exit 3.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!("[http]\nlisten = \"{}\"\n", taken.local_addr().unwrap());
    let (_d1, p1) = policy(
        &url,
        &Spec {
            extra: &extra,
            ..Spec::default()
        },
    );
    let out = output(pacer(&["run"], &p1)).await;
    assert_eq!(out.code, Some(3), "{}", out.all());
    assert!(out.stderr.contains("[http] listen"), "{}", out.stderr);
    assert_eq!(
        count(&pool, no_schema).await,
        0,
        "pacer wrote before failing"
    );
    assert_eq!(counters(&pool, "t").await, (1000, 0, 0));

    // Non-loopback without a token: exit 2.
    let extra = format!("[http]\nlisten = \"0.0.0.0:{}\"\n", free_port());
    let (_d2, p2) = policy(
        &url,
        &Spec {
            extra: &extra,
            ..Spec::default()
        },
    );
    let out = output({
        let mut c = pacer(&["run"], &p2);
        c.env_remove("PACER_CONTROL_TOKEN");
        c
    })
    .await;
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("[http] listen") && out.stderr.contains("PACER_CONTROL_TOKEN"),
        "{}",
        out.stderr
    );
    assert_eq!(
        count(&pool, no_schema).await,
        0,
        "pacer wrote before failing"
    );
    drop(taken);
}

#[sqlx::test(migrations = false)]
async fn cleanup_only_for_finished_verified_jobs(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 3000).await;
    let (_dir, policy) = policy(&url, &Spec::default());
    let cleanup = |extra: &'static [&'static str]| {
        let mut c = pacer(&["cleanup"], &policy);
        c.args(extra);
        c
    };
    let n = |table: &str| {
        let col = if table == "jobs" { "name" } else { "job" };
        format!("SELECT count(*) FROM pacer.{table} WHERE {col} = 't'")
    };

    // Not started (only a control row): refused.
    let out = output(pacer(&["resume"], &policy)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let out = output(cleanup(&[])).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stderr.contains("refusing"), "{}", out.stderr);
    assert_eq!(count(&pool, &n("control")).await, 1);

    let out = output(pacer(&["run", "--log-batches"], &policy)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains(" INFO [t] batch of "),
        "--log-batches shows each batch at INFO:\n{}",
        out.stderr
    );

    // Done, but a row is pending again: refused, nothing removed.
    sqlx::query("INSERT INTO t (id) VALUES (99999999)")
        .execute(&pool)
        .await
        .unwrap();
    let progress_rows = count(&pool, &n("progress")).await;
    assert!(progress_rows > 0);
    let out = output(cleanup(&[])).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stderr.contains("1 rows still match"), "{}", out.stderr);
    assert_eq!(count(&pool, &n("progress")).await, progress_rows);

    // --force overrides the check; without --history the job row,
    // decisions and samples stay.
    let samples = count(&pool, &n("samples")).await;
    assert!(samples > 0);
    let out = output(cleanup(&["--force"])).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("{progress_rows} row(s) from progress"))
            && out.stdout.contains("1 row(s) from control"),
        "{}",
        out.stdout
    );
    assert_eq!(count(&pool, &n("progress")).await, 0);
    assert_eq!(count(&pool, &n("control")).await, 0);
    assert_eq!(count(&pool, &n("jobs")).await, 1);
    assert_eq!(count(&pool, &n("samples")).await, samples);

    // Verified (nothing pending) and --history: everything of the job goes.
    sqlx::query("DELETE FROM t WHERE id = 99999999")
        .execute(&pool)
        .await
        .unwrap();
    let out = output(cleanup(&["--history"])).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    for t in ["jobs", "samples", "decisions", "progress", "control"] {
        assert_eq!(count(&pool, &n(t)).await, 0, "{t} rows left");
    }
    let out = output({
        let mut c = pacer(&["report"], &policy);
        c.arg("--out").arg(_dir.path().join("r"));
        c
    })
    .await;
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("no history"), "{}", out.stderr);
}
