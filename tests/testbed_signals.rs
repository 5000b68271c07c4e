//! Every signal against the real testbed (primary, streaming replica,
//! Prometheus, live traffic), each checked against a value the test
//! produced and measured on its own. Tests hold the testbed lock: pausing
//! replay or stopping Prometheus affects everything on the machine.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pacer::signals::{
    Context, Reading, Sampler, build_sampler, capture_baselines, postgres::blocked_by_pacer_pids,
};
use sqlx::{AssertSqlSafe, Connection, PgPool};

const P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(traffic_request_duration_seconds_bucket{route="checkout"}[10s])))"#;

async fn sampler(policy: &pacer::policy::Policy, pool: &PgPool) -> Sampler {
    build_sampler(
        policy,
        &Context {
            pool: Some(pool.clone()),
        },
    )
    .await
    .unwrap()
}

/// How many targets Prometheus scrapes: what `count(up)` reads, asked of
/// Prometheus separately.
async fn active_targets() -> f64 {
    let targets: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/targets?state=active",
        common::prometheus_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    targets["data"]["activeTargets"].as_array().unwrap().len() as f64
}

async fn one(s: &Sampler) -> Reading {
    s.sample().await.remove(0)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn lsn(pool: &PgPool) -> f64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A fresh table `name (id bigint primary key, status text, pad text)`.
async fn table(pool: &PgPool, name: &str, rows: i64) {
    exec(pool, &format!("DROP TABLE IF EXISTS {name}")).await;
    exec(
        pool,
        &format!("CREATE TABLE {name} (id bigint PRIMARY KEY, status text, pad text) WITH (autovacuum_enabled = off)"),
    )
    .await;
    exec(
        pool,
        &format!("INSERT INTO {name} SELECT g, NULL, 'x' FROM generate_series(1, {rows}) g"),
    )
    .await;
}

fn signal(name: &str, builtin: &str) -> String {
    format!(
        "[[signal]]\nname = \"{name}\"\npostgres = \"{builtin}\"\nstop_above = 1e12\ntimeout = \"5s\"\n"
    )
}

// --- replication lag ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn replication_lag_seconds_rises_while_replay_is_paused_and_falls_after() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let replica = common::replica().await;
    let policy = common::policy(
        "lagtest",
        "public.lag_t",
        &signal("lag", "replication_lag_seconds"),
        "",
    );
    let s = sampler(&policy, &pool).await;

    let v = common::eventually(
        Duration::from_secs(30),
        "lag near 0 before pausing",
        || async { one(&s).await.value.filter(|v| *v < 1.0) },
    )
    .await;
    assert!(v >= 0.0);

    let _resume = common::ResumeReplay;
    let before_pause = Instant::now();
    exec(&replica, "SELECT pg_wal_replay_pause()").await;
    common::eventually(Duration::from_secs(10), "replay paused", || async {
        let st: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&replica)
            .await
            .unwrap();
        (st == "paused").then_some(())
    })
    .await;
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = one(&s).await;
    let (lo, hi) = (
        paused.elapsed().as_secs_f64(),
        before_pause.elapsed().as_secs_f64(),
    );
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    // The first beat the replica misses commits between the pause request
    // and the pause taking effect, plus one beat interval (0.25 s).
    assert!(
        v >= lo - 0.6 && v <= hi + 0.3,
        "lag {v:.3}s, expected within [{:.3}, {:.3}]",
        lo - 0.6,
        hi + 0.3
    );

    exec(&replica, "SELECT pg_wal_replay_resume()").await;
    let resumed = Instant::now();
    common::eventually(
        Duration::from_secs(20),
        "lag back under 1 s after resume",
        || async { one(&s).await.value.filter(|v| *v < 1.0) },
    )
    .await;
    eprintln!("lag fell below 1 s {:?} after resume", resumed.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_lag_bytes_matches_pg_stat_replication_while_paused() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let replica = common::replica().await;
    table(&pool, "public.lagb_t", 1).await;
    let policy = common::policy(
        "lagb",
        "public.lagb_t",
        &signal("lagb", "replication_lag_bytes"),
        "",
    );
    let s = sampler(&policy, &pool).await;

    let _resume = common::ResumeReplay;
    exec(&replica, "SELECT pg_wal_replay_pause()").await;
    common::eventually(Duration::from_secs(10), "replay paused", || async {
        let st: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&replica)
            .await
            .unwrap();
        (st == "paused").then_some(())
    })
    .await;
    // ~8 MB of WAL the replica will not replay.
    exec(&pool, "INSERT INTO public.lagb_t SELECT g, NULL, repeat('y', 1000) FROM generate_series(2, 8000) g").await;
    // Let the standby report its (frozen) replay position.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replay: f64 = sqlx::query_scalar(
        "SELECT max(pg_wal_lsn_diff(replay_lsn, '0/0'))::float8 FROM pg_stat_replication",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let a = lsn(&pool).await;
    let r = one(&s).await;
    let b = lsn(&pool).await;
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        v >= a - replay && v <= b - replay,
        "lag bytes {v} not within [{}, {}]",
        a - replay,
        b - replay
    );
    assert!(v > 8_000_000.0, "{v}");

    exec(&replica, "SELECT pg_wal_replay_resume()").await;
    common::eventually(
        Duration::from_secs(30),
        "lag bytes back under 1 MB",
        || async { one(&s).await.value.filter(|v| *v < 1_000_000.0) },
    )
    .await;
}

// --- Prometheus -------------------------------------------------------------

/// A sampler with one signal: the checkout p95 from the testbed's Prometheus.
async fn p95_sampler(job: &str, table: &str) -> Sampler {
    let policy = common::policy(
        job,
        table,
        &format!("[[signal]]\nname = \"p95\"\nprometheus = '{P95}'\nstop_above = 100\n"),
        "",
    );
    build_sampler(&policy, &Context { pool: None })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_p95_from_prometheus_rises_with_injected_latency_and_falls_after() {
    let _l = common::lock();
    let s = p95_sampler("p95", "public.p95_t").await;
    let base = common::eventually(
        Duration::from_secs(60),
        "a checkout p95 from Prometheus",
        || async { one(&s).await.value },
    )
    .await;
    let added = (base * 5.0).max(0.05);
    let _reset = common::ResetTraffic;
    common::traffic_control(serde_json::json!({ "added_latency_ms": added * 1000.0 })).await;
    let t = Instant::now();
    let high = common::eventually(
        Duration::from_secs(60),
        "p95 above baseline + 80% of the added latency",
        || async { one(&s).await.value.filter(|v| *v >= base + 0.8 * added) },
    )
    .await;
    eprintln!(
        "p95 {base:.4}s -> {high:.4}s after {:?} (added {added:.3}s)",
        t.elapsed()
    );
    common::traffic_control(serde_json::json!({ "added_latency_ms": 0 })).await;
    common::eventually(
        Duration::from_secs(90),
        "p95 back near baseline",
        || async { one(&s).await.value.filter(|v| *v < base + 0.3 * added) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_stopped_is_missing_with_a_reason_and_comes_back() {
    let _l = common::lock();
    let s = p95_sampler("promdown", "public.p_t").await;
    common::eventually(
        Duration::from_secs(60),
        "a value before stopping",
        || async { one(&s).await.value },
    )
    .await;
    let _restart = common::RestartPrometheus;
    common::testbed(&["down", "prometheus"]);
    let r = one(&s).await;
    assert!(r.value.is_none(), "{r:?}");
    let why = r.missing.unwrap();
    assert!(
        why.contains("prometheus") && why.contains(&common::prometheus_addr()),
        "{why}"
    );
    common::testbed(&["up", "prometheus"]);
    common::eventually(
        Duration::from_secs(60),
        "a value after restarting",
        || async { one(&s).await.value },
    )
    .await;
}

// --- locks ----------------------------------------------------------------------

async fn wait_waiting(pool: &PgPool, apps: &[&str]) {
    let apps: Vec<String> = apps.iter().map(|s| s.to_string()).collect();
    common::eventually(Duration::from_secs(20), &format!("{apps:?} waiting on locks"), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = ANY($1)",
        )
        .bind(&apps)
        .fetch_one(pool)
        .await
        .unwrap();
        (n as usize == apps.len()).then_some(())
    })
    .await;
}

async fn pid_of(pool: &PgPool, app: &str) -> i32 {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// pacer (a worker holding a row lock) blocks an app update directly, an
/// ALTER TABLE waits for it, and an app read queues behind the ALTER. An
/// unrelated lock chain elsewhere must not count.
#[tokio::test(flavor = "multi_thread")]
async fn blocked_by_pacer_ddl_waiting_and_lock_waiters_match_a_lock_chain() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.locks_t", 10).await;
    table(&pool, "public.other_t", 10).await;
    let policy = common::policy(
        "locktest",
        "public.locks_t",
        &[
            signal("blocked", "blocked_by_pacer"),
            signal("ddl", "ddl_waiting"),
            signal("waiters", "lock_waiters"),
        ]
        .concat(),
        "",
    );
    let s = sampler(&policy, &pool).await;
    let r = s.sample().await;
    assert_eq!((r[0].value, r[1].value), (Some(0.0), Some(0.0)), "{r:?}");

    // pacer's worker: application_name pacer:<job>, an open batch.
    let mut worker = common::session("pacer:locktest").await;
    sqlx::query("BEGIN").execute(&mut worker).await.unwrap();
    sqlx::query("UPDATE public.locks_t SET status = 'x' WHERE id = 1")
        .execute(&mut worker)
        .await
        .unwrap();
    // An unrelated holder and its victim.
    let mut holder = common::session("other-holder").await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE public.other_t IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let spawn = |app: &'static str, sql: &'static str| {
        tokio::spawn(async move {
            let mut c = common::session(app).await;
            let _ = sqlx::query("SET statement_timeout = '60s'")
                .execute(&mut c)
                .await;
            let r = sqlx::query(sql).execute(&mut c).await;
            let _ = c.close().await;
            r.map(|_| ())
        })
    };
    let direct = spawn(
        "app-direct",
        "UPDATE public.locks_t SET status = 'y' WHERE id = 1",
    );
    wait_waiting(&pool, &["app-direct"]).await;
    let ddl = spawn(
        "migration",
        "ALTER TABLE public.locks_t ADD COLUMN note text",
    );
    wait_waiting(&pool, &["app-direct", "migration"]).await;
    let behind_ddl = spawn(
        "app-behind-ddl",
        "SELECT * FROM public.locks_t WHERE id = 5",
    );
    let unrelated = spawn("other-victim", "SELECT * FROM public.other_t");
    // pacer's own waits are not traffic suffering: a standby blocked on the
    // runner lock the worker's session holds, and pacer's own DDL-like wait.
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut worker)
        .await
        .unwrap();
    let standby = spawn("pacer:locktest:standby", "SELECT pg_advisory_lock(4242)");
    wait_waiting(
        &pool,
        &[
            "app-direct",
            "migration",
            "app-behind-ddl",
            "other-victim",
            "pacer:locktest:standby",
        ],
    )
    .await;

    let expected: BTreeSet<i32> = [
        pid_of(&pool, "app-direct").await,
        pid_of(&pool, "migration").await,
        pid_of(&pool, "app-behind-ddl").await,
    ]
    .into();
    let got = blocked_by_pacer_pids(&pool, "pacer:locktest")
        .await
        .unwrap();
    assert_eq!(got, expected);
    let r = s.sample().await;
    assert_eq!(r[0].value, Some(3.0), "blocked_by_pacer {:?}", r[0]);
    assert_eq!(r[1].value, Some(1.0), "ddl_waiting {:?}", r[1]);
    assert_eq!(r[2].value, Some(4.0), "lock_waiters {:?}", r[2]);

    // pacer's batch ends: its victims proceed; only the unrelated chain remains.
    sqlx::query("ROLLBACK").execute(&mut worker).await.unwrap();
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut worker)
        .await
        .unwrap();
    for h in [direct, ddl, behind_ddl, standby] {
        h.await.unwrap().unwrap();
    }
    let r = s.sample().await;
    assert_eq!(
        (r[0].value, r[1].value, r[2].value),
        (Some(0.0), Some(0.0), Some(1.0)),
        "{r:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    unrelated.await.unwrap().unwrap();
}

// --- the other built-ins -------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn deadlocks_per_second_counts_a_deadlock_the_test_causes() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.dl_t", 2).await;
    let policy = common::policy(
        "dl",
        "public.dl_t",
        &signal("dl", "deadlocks_per_second"),
        "",
    );
    let s = sampler(&policy, &pool).await; // primes the counter
    let deadlocks = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let t_outer = Instant::now();
    let r0 = one(&s).await;
    assert!(r0.value.is_some(), "{r0:?}");
    let t_inner = Instant::now();
    let c0 = deadlocks().await;

    let mut a = common::session("dl-a").await;
    let mut b = common::session("dl-b").await;
    for c in [&mut a, &mut b] {
        sqlx::query("SET deadlock_timeout = '100ms'")
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query("BEGIN").execute(&mut *c).await.unwrap();
    }
    sqlx::query("UPDATE public.dl_t SET status = 'a' WHERE id = 1")
        .execute(&mut a)
        .await
        .unwrap();
    sqlx::query("UPDATE public.dl_t SET status = 'b' WHERE id = 2")
        .execute(&mut b)
        .await
        .unwrap();
    let ta = tokio::spawn(async move {
        let r = sqlx::query("UPDATE public.dl_t SET status = 'a' WHERE id = 2")
            .execute(&mut a)
            .await;
        let _ = sqlx::query("ROLLBACK").execute(&mut a).await;
        r.is_err()
    });
    let rb = sqlx::query("UPDATE public.dl_t SET status = 'b' WHERE id = 1")
        .execute(&mut b)
        .await;
    let _ = sqlx::query("ROLLBACK").execute(&mut b).await;
    let a_failed = ta.await.unwrap();
    assert!(
        a_failed != rb.is_err(),
        "exactly one side is the deadlock victim"
    );
    drop(b);
    // Statistics reach shared memory when the victim's backend flushes.
    common::eventually(Duration::from_secs(15), "the deadlock counted", || async {
        (deadlocks().await > c0).then_some(())
    })
    .await;
    let inner = t_inner.elapsed().as_secs_f64();
    let r = one(&s).await;
    let outer = t_outer.elapsed().as_secs_f64();
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    // One deadlock over the source's interval, which lies between the two
    // intervals the test measured.
    assert!(
        v >= 1.0 / outer - 1e-9 && v <= 1.0 / inner + 1e-9,
        "{v} not within [{}, {}]",
        1.0 / outer,
        1.0 / inner
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_bytes_per_second_brackets_the_wal_the_test_writes() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.wal_t", 1).await;
    let policy = common::policy(
        "wal",
        "public.wal_t",
        &signal("wal", "wal_bytes_per_second"),
        "",
    );
    let s = sampler(&policy, &pool).await;
    let l_outer_a = lsn(&pool).await;
    let t_outer = Instant::now();
    one(&s).await;
    let t_inner = Instant::now();
    let g0 = lsn(&pool).await;
    exec(&pool, "INSERT INTO public.wal_t SELECT g, NULL, repeat('w', 1000) FROM generate_series(2, 5000) g").await;
    let generated = lsn(&pool).await - g0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inner = t_inner.elapsed().as_secs_f64();
    let r = one(&s).await;
    let outer = t_outer.elapsed().as_secs_f64();
    let total = lsn(&pool).await - l_outer_a;
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    let (lo, hi) = (generated / outer, total / inner);
    assert!(generated > 5_000_000.0, "{generated}");
    assert!(
        v >= lo && v <= hi,
        "wal bytes/s {v} not within [{lo}, {hi}]"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_tuples_equals_the_rows_the_test_deleted() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.dead_t", 1000).await;
    let mut c = common::session("dead").await;
    sqlx::query("DELETE FROM public.dead_t WHERE id <= 300")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut c)
        .await
        .unwrap();
    let policy = common::policy("dead", "public.dead_t", &signal("dead", "dead_tuples"), "");
    let s = sampler(&policy, &pool).await;
    let v = common::eventually(Duration::from_secs(20), "300 dead tuples", || async {
        one(&s).await.value.filter(|v| *v == 300.0)
    })
    .await;
    assert_eq!(v, 300.0);
    // A table that does not exist is missing, not a calm zero.
    let bad = common::policy(
        "dead",
        "public.no_such_table",
        &signal("dead", "dead_tuples"),
        "",
    );
    let r = one(&sampler(&bad, &pool).await).await;
    assert!(
        r.value.is_none() && r.missing.as_deref().unwrap().contains("no_such_table"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_used_ratio_follows_connections_the_test_opens() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let policy = common::policy(
        "conn",
        "public.conn_t",
        &signal("conn", "connections_used_ratio"),
        "",
    );
    let s = sampler(&policy, &pool).await;
    let max: f64 = sqlx::query_scalar("SELECT current_setting('max_connections')::float8")
        .fetch_one(&pool)
        .await
        .unwrap();
    let independent = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n as f64 / max
    };
    let before = one(&s).await.value.unwrap();
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.push(common::session("conn-extra").await);
    }
    let a = independent().await;
    let after = one(&s).await.value.unwrap();
    let b = independent().await;
    // Other sessions on the machine come and go: allow 3 either way.
    let tol = 3.0 / max;
    assert!(
        after >= a.min(b) - tol && after <= a.max(b) + tol,
        "{after} vs independent {a}..{b}"
    );
    let delta = (after - before) * max;
    assert!(
        (delta - 20.0).abs() <= 4.0,
        "opened 20 connections, ratio moved by {delta} connections"
    );
    drop(extra);
}

#[tokio::test(flavor = "multi_thread")]
async fn oldest_transaction_seconds_ages_with_an_open_transaction() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    let policy = common::policy(
        "oldtx",
        "public.oldtx_t",
        &signal("old", "oldest_transaction_seconds"),
        "",
    );
    let s = sampler(&policy, &pool).await;
    let mut c = common::session("old-tx").await;
    let begun = Instant::now();
    sqlx::query("BEGIN").execute(&mut c).await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut c)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lo = 3.0;
    let r = one(&s).await;
    let hi = begun.elapsed().as_secs_f64();
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        v >= lo - 0.05 && v <= hi + 0.05,
        "oldest transaction {v}s, expected within [{lo}, {hi}]"
    );
    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_slot_lag_bytes_measures_an_unconsumed_slot() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.slot_t", 1).await;
    let policy = common::policy(
        "slot",
        "public.slot_t",
        &signal("slot", "logical_slot_lag_bytes"),
        "",
    );
    let s = sampler(&policy, &pool).await;
    exec(&pool, "SELECT pg_drop_replication_slot('pacer_test_slot') FROM pg_replication_slots WHERE slot_name = 'pacer_test_slot'").await;
    exec(
        &pool,
        "SELECT pg_create_logical_replication_slot('pacer_test_slot', 'test_decoding')",
    )
    .await;
    struct DropSlot;
    impl Drop for DropSlot {
        fn drop(&mut self) {
            let _ = std::process::Command::new("psql")
                .args(["-X", "-h", "127.0.0.1", "-p", &common::primary_port().to_string(), "-U", "postgres", "-d", common::TEST_DB, "-Atc",
                    "SELECT pg_drop_replication_slot('pacer_test_slot') FROM pg_replication_slots WHERE slot_name = 'pacer_test_slot'"])
                .output();
        }
    }
    let _drop = DropSlot;
    let confirmed: f64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::float8 FROM pg_replication_slots WHERE slot_name = 'pacer_test_slot'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    exec(&pool, "INSERT INTO public.slot_t SELECT g, NULL, repeat('s', 500) FROM generate_series(2, 3000) g").await;
    let a = lsn(&pool).await;
    let r = one(&s).await;
    let b = lsn(&pool).await;
    let v = r.value.unwrap_or_else(|| panic!("{r:?}"));
    assert!(v >= a - confirmed, "slot lag {v} below {}", a - confirmed);
    // Another logical slot on the machine could be further behind (worst
    // slot wins); with ours alone the reading is bracketed exactly.
    let slots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'")
            .fetch_one(&pool)
            .await
            .unwrap();
    if slots == 1 {
        assert!(v <= b - confirmed, "slot lag {v} above {}", b - confirmed);
    }
    assert!(v > 1_000_000.0, "{v}");
}

// --- baselines --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn baselines_prometheus_median_postgres_samples_fixed_and_refusal() {
    let _l = common::lock();
    let pool = common::primary("pacer-test").await;
    table(&pool, "public.base_t", 100).await;
    {
        let mut c = common::session("base").await;
        sqlx::query("DELETE FROM public.base_t WHERE id <= 40")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut c)
            .await
            .unwrap();
    }
    common::eventually(Duration::from_secs(20), "dead tuples flushed", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = 'public.base_t'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 40).then_some(())
    })
    .await;
    // `count(up)` has a full window of history once Prometheus has run that
    // long, and its value is the number of targets, which the test asks
    // Prometheus for separately.
    let policy = common::policy(
        "base",
        "public.base_t",
        r#"
[[signal]]
name = "targets"
prometheus = 'count(up)'
delay = "15s"
slow_above = "baseline * 2"

[[signal]]
name = "dead"
postgres = "dead_tuples"
slow_above = "baseline + 10"

[[signal]]
name = "fixed"
postgres = "lock_waiters"
slow_above = "baseline * 2"
baseline = 3.5
"#,
        "[controller]\ntick = \"200ms\"\n\n[baseline]\nwindow = \"20s\"\nmin_samples = 5\non_insufficient = \"wait\"\n",
    );
    let t = Instant::now();
    let b = capture_baselines(
        &policy,
        &Context {
            pool: Some(pool.clone()),
        },
    )
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(b["dead"], 40.0);
    assert_eq!(b["fixed"], 3.5);
    let n = active_targets().await;
    assert!(
        b["targets"] == n,
        "targets baseline {} for {n} targets",
        b["targets"]
    );

    let refuse = common::policy(
        "base",
        "public.base_t",
        r#"
[[signal]]
name = "empty"
prometheus = 'vector(1) unless on() vector(1)'
delay = "15s"
stop_above = "baseline * 2"
"#,
        "[baseline]\nwindow = \"1m\"\non_insufficient = \"refuse\"\n",
    );
    let err = capture_baselines(
        &refuse,
        &Context {
            pool: Some(pool.clone()),
        },
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("\"empty\"")
            && err.contains("not enough history")
            && err.contains("0 finite points"),
        "{err}"
    );
}

/// The readings that prime a run's estimates: a Prometheus signal's own
/// query over the span the controller asks for, one point a tick, oldest
/// first; nothing for a Postgres signal, which keeps no history; and an
/// unreachable Prometheus loses nothing but the priming.
#[tokio::test(flavor = "multi_thread")]
async fn readings_before_the_run_come_from_prometheus_history() {
    use pacer::controller::Controller;
    use pacer::signals::warmup::readings_before;
    let _l = common::lock();
    let signals = r#"
[[signal]]
name = "targets"
prometheus = 'count(up)'
delay = "15s"
stop_above = 1000

[[signal]]
name = "dead"
postgres = "dead_tuples"
stop_above = 1000
"#;
    let policy = common::policy("warm", "public.warm_t", signals, "");
    let wanted = Controller::new(&policy, &Default::default())
        .unwrap()
        .history_wanted();
    let span = wanted[0].expect("a Prometheus signal asks for history");
    assert_eq!(wanted[1], None, "a Postgres signal has none to fetch");
    let t0 = chrono::Utc::now();
    let got = readings_before(&policy, &wanted, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 2);
    assert!(got[1].is_empty(), "{:?}", got[1]);
    let n = active_targets().await;
    let h = &got[0];
    assert!(h.len() >= 10, "{} readings", h.len());
    // Targets come up one by one after Prometheus starts: the history
    // may begin below today's count, never above it.
    assert_eq!(h[h.len() - 1].1, n, "{n} targets: {h:?}");
    assert!(
        h.iter().all(|(_, v)| *v >= 1.0 && *v <= n),
        "{n} targets: {h:?}"
    );
    // One point a second, oldest first; a gap where Prometheus had no
    // data (another test stops it) leaves whole steps out.
    assert!(
        h.windows(2).all(|w| {
            let ms = (w[1].0 - w[0].0).num_milliseconds();
            ms >= 1000 && ms % 1000 == 0
        }),
        "{h:?}"
    );
    let (first, last) = (h[0].0, h[h.len() - 1].0);
    assert!(t0 - first <= chrono::Duration::from_std(span).unwrap() + chrono::Duration::seconds(1));
    assert!(last <= t0 + chrono::Duration::seconds(1) && t0 - last <= chrono::Duration::seconds(2));

    let mut dead_end = policy.clone();
    dead_end.prometheus.url = "http://127.0.0.1:9".into();
    let t = Instant::now();
    let got = readings_before(&dead_end, &wanted, Duration::from_secs(1)).await;
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// `pacer check`'s resolution warning against the testbed's real
/// histogram: the generator's buckets are ×1.1 apart, so a +5 % stop on a
/// baseline of 4.6 ms (bucket 4.48–4.92 ms) cannot be told from the
/// baseline, while the seed's +10 % / +20 % can. The warning names the
/// signal, the level and the bucket.
#[tokio::test]
async fn check_warns_when_a_level_shares_the_baselines_histogram_bucket() {
    let _l = common::lock();
    let sig = |slow: &str, stop: &str| {
        format!(
            "[[signal]]\nname = \"checkout_p95\"\nprometheus = '{P95}'\nbaseline = 0.0046\nslow_above = \"{slow}\"\nstop_above = \"{stop}\"\n"
        )
    };
    let narrow = common::policy(
        "bucket-check",
        "public.t",
        &sig("baseline * 1.02", "baseline * 1.05"),
        "",
    );
    let (warnings, notes) = pacer::signals::resolution::check(&narrow).await;
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[1].contains("checkout_p95")
            && warnings[1].contains("stop 0.0048")
            && warnings[1].contains("0.0044771")
            && warnings[1].contains("0.0049248"),
        "{warnings:?}"
    );
    let wide = common::policy(
        "bucket-check",
        "public.t",
        &sig("baseline * 1.1", "baseline * 1.2"),
        "",
    );
    let (warnings, notes) = pacer::signals::resolution::check(&wide).await;
    assert!(
        warnings.is_empty() && notes.is_empty(),
        "{warnings:?} {notes:?}"
    );
}

/// The scrape interval comes from the Prometheus the policy reads (the
/// testbed scrapes every second), for the jobs its queries name; the
/// policy's own key wins, and a job no target has falls back to 15 s and
/// says why.
#[tokio::test]
async fn scrape_interval_is_read_from_prometheus_targets() {
    use pacer::signals::prometheus::{ScrapeInterval, resolve_scrape_interval};
    let _l = common::lock();
    let sig = |q: &str| format!("[[signal]]\nname = \"s\"\nprometheus = '{q}'\nstop_above = 100\n");
    let traffic = r#"sum(rate(traffic_request_duration_seconds_count{job="traffic"}[10s]))"#;
    let p = common::policy("scrape", "public.t", &sig(traffic), "");
    assert_eq!(
        resolve_scrape_interval(&p).await,
        Some(ScrapeInterval::Discovered(
            Duration::from_secs(1),
            "job traffic".into()
        ))
    );
    // No job matcher: every active target counts.
    let p = common::policy("scrape", "public.t", &sig(P95), "");
    assert_eq!(
        resolve_scrape_interval(&p).await,
        Some(ScrapeInterval::Discovered(
            Duration::from_secs(1),
            "every active target".into()
        ))
    );
    let none = r#"sum(rate(x_count{job="no_such_job"}[1m]))"#;
    let p = common::policy("scrape", "public.t", &sig(none), "");
    match resolve_scrape_interval(&p).await {
        Some(ScrapeInterval::Default(d, why)) => {
            assert_eq!(d, Duration::from_secs(15));
            assert!(why.contains("no_such_job"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let mut p = common::policy("scrape", "public.t", &sig(traffic), "");
    p.prometheus.scrape_interval = Some(Duration::from_secs(30));
    assert_eq!(
        resolve_scrape_interval(&p).await,
        Some(ScrapeInterval::Policy(Duration::from_secs(30)))
    );
    let p = common::policy(
        "scrape",
        "public.t",
        &signal("lag", "replication_lag_seconds"),
        "",
    );
    assert_eq!(resolve_scrape_interval(&p).await, None);
}
