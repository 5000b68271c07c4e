//! Bad and edge-case inputs get a clear outcome before the first write;
//! every supported key type walks correctly; stops are clean.

mod exec_common;

use std::time::Duration;

use exec_common::*;
use sqlx::PgPool;

async fn run_expect(policy: &std::path::PathBuf, code: i32, needle: &str) -> Out {
    let out = output(pacer(&["run"], policy)).await;
    assert_eq!(out.code, Some(code), "expected exit {code}:\n{}", out.all());
    assert!(
        out.all().contains(needle),
        "expected {needle:?} in:\n{}",
        out.all()
    );
    out
}

async fn nothing_written(pool: &PgPool) {
    let (_, done, twice) = counters(pool, "t").await;
    assert_eq!((done, twice), (0, 0), "rows were written");
}

/// `pacer run` on table `t` until 500 rows are done, then SIGTERM; its output.
async fn run_then_sigterm(pool: &PgPool, policy: &std::path::PathBuf) -> std::process::Output {
    let child = spawn(capped(pacer(&["run"], policy)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(pool, "t").await.1 > 500
        })
        .await
    );
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn bad_sql_and_missing_objects_stop_before_the_first_write(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 1000).await;
    let cases = [
        (
            Spec {
                update: "UPDATE t SET counter = counter + WHERE id = ANY($1)",
                ..Spec::default()
            },
            "job.update",
        ),
        (
            Spec {
                update: "UPDATE t SET nope = 1 WHERE id = ANY($1)",
                ..Spec::default()
            },
            "job.update",
        ),
        (
            Spec {
                update: "UPDATE t SET counter = 1 WHERE id::text = ANY($1)",
                ..Spec::default()
            },
            "job.update",
        ),
        (
            Spec {
                update: "UPDATE t SET counter = 1",
                ..Spec::default()
            },
            "job.update",
        ),
        (
            Spec {
                pending: "missing_column IS NULL",
                ..Spec::default()
            },
            "job.pending",
        ),
        (
            Spec {
                update: "UPDATE t SET pad = 'x' WHERE id = ANY($1)",
                ..Spec::default()
            },
            "still match job.pending",
        ),
        (
            Spec {
                table: "no_such_table",
                ..Spec::default()
            },
            "job.table",
        ),
        (
            Spec {
                key: "no_such_column",
                ..Spec::default()
            },
            "job.key",
        ),
    ];
    for (spec, key) in cases {
        let (_d, p) = policy(&url, &spec);
        run_expect(&p, 2, key).await;
    }
    nothing_written(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn unusable_keys_are_refused(pool: PgPool) {
    let url = url_of(&pool).await;
    sqlx::raw_sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, grp integer, nk integer UNIQUE, f float8 UNIQUE, counter integer NOT NULL DEFAULT 0);
         INSERT INTO t SELECT g, g % 10, CASE WHEN g % 100 = 0 THEN NULL ELSE g END, g FROM generate_series(1, 1000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let not_unique = Spec {
        key: "grp",
        update: "UPDATE t SET counter = counter + 1 WHERE grp = ANY($1)",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &not_unique);
    run_expect(&p, 2, "no unique index").await;
    let nulls = Spec {
        key: "nk",
        update: "UPDATE t SET counter = counter + 1 WHERE nk = ANY($1)",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &nulls);
    run_expect(&p, 2, "is NULL").await;
    let float = Spec {
        key: "f",
        update: "UPDATE t SET counter = counter + 1 WHERE f = ANY($1)",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &float);
    run_expect(&p, 2, "cannot walk").await;
    nothing_written(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn check_flags_a_non_idempotent_update_and_passes_a_good_one(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 2000).await;
    // Without `[job] idempotent = false`, check and run both refuse an
    // update a second application changes, naming the key.
    let strict = Spec {
        idempotent: true,
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &strict);
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("not idempotent"), "{}", out.stdout);
    assert!(out.stdout.contains("idempotent = false"), "{}", out.stdout);
    let out = run_expect(&p, 2, "not idempotent").await;
    assert!(out.all().contains("idempotent = false"), "{}", out.all());
    nothing_written(&pool).await;
    // Said on purpose: check warns, run applies every row exactly once.
    let (_d, p) = policy(&url, &Spec::default());
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("warning: job.update is not idempotent"),
        "{}",
        out.stdout
    );
    nothing_written(&pool).await;
    let out = output(pacer(&["run"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 2000, 0));
    sqlx::raw_sql("UPDATE t SET counter = 0; DROP SCHEMA pacer CASCADE")
        .execute(&pool)
        .await
        .unwrap();

    let good = Spec {
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &good);
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("Index Scan"), "{}", out.stdout);
    let out = output(pacer(&["check", "--offline"], &p)).await;
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("offline"));
    nothing_written(&pool).await;

    let out = output(pacer(&["run", "--dry-run"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("nothing written"));
    nothing_written(&pool).await;
    let schema: bool = sqlx::query_scalar("SELECT to_regnamespace('pacer') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !schema,
        "--dry-run and check must not create pacer's schema"
    );
}

#[sqlx::test(migrations = false)]
async fn empty_table_complete_job_and_changed_policy(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 0).await;
    let (_d, p) = policy(&url, &Spec::default());
    run_expect(&p, 0, "done: 0 rows").await;
    run_expect(&p, 0, "already complete").await;

    sqlx::raw_sql("INSERT INTO t (id) SELECT generate_series(1, 3000)")
        .execute(&pool)
        .await
        .unwrap();
    let (_d, p2) = policy(
        &url,
        &Spec {
            job: "t2",
            ..Spec::default()
        },
    );
    let changed = Spec {
        job: "t2",
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0",
        ..Spec::default()
    };
    let (_d, p3) = policy(&url, &changed);
    // Start t2, stop it gracefully, then try to resume with a changed update.
    let mut child = spawn({
        let mut c = pacer(&["run"], &p2);
        c.env("PACER_FAILPOINT", "before_commit:3");
        c
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap();
    let out = run_expect(&p3, 2, "--accept-policy-change").await;
    assert!(out.all().contains("changed since the job started"));
    let out = output(pacer(&["run", "--accept-policy-change"], &p3)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 3000, 0));
}

#[sqlx::test(migrations = false)]
async fn sigterm_stops_gracefully_and_the_next_run_resumes(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 20_000).await;
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (200, 100, 300),
            sleep_ms: 30,
            workers: (2, 1, 2),
            ..Spec::default()
        },
    );
    let o = run_then_sigterm(&pool, &p).await;
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("stopped by signal") && stdout.contains("resume with"),
        "{stdout}"
    );
    let (left, done, twice) = counters(&pool, "t").await;
    assert!(left > 0 && twice == 0);
    let st: String = sqlx::query_scalar("SELECT state FROM pacer.jobs WHERE name = 't'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(st, "stopped");
    // The report tells the end from the job's record, not from the last
    // sample (taken while it was still running).
    let out = output({
        let mut c = pacer(&["report"], &p);
        c.arg("--out").arg(_d.path().join("report"));
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let md = std::fs::read_to_string(_d.path().join("report/report.md")).unwrap();
    assert!(
        md.contains("| Outcome | **stopped** before finishing: stopped by signal"),
        "{md}"
    );
    let rows_done: i64 =
        sqlx::query_scalar("SELECT sum(rows)::bigint FROM pacer.progress WHERE job = 't'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows_done, done,
        "every committed row has its progress record"
    );
    let out = output(pacer(&["run"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 20_000, 0));
}

/// A relative signal added to the policy of a stopped job used to end the
/// next run with "no baseline was captured": its baseline is measured at
/// resume and stored beside the ones the job started with.
#[sqlx::test(migrations = false)]
async fn a_relative_signal_added_after_the_start_gets_its_baseline_at_resume(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 20_000).await;
    let spec = Spec {
        batch: (200, 100, 300),
        sleep_ms: 30,
        workers: (1, 1, 1),
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &spec);
    let o = run_then_sigterm(&pool, &p).await;
    assert_eq!(o.status.code(), Some(0));
    let before: serde_json::Value =
        sqlx::query_scalar("SELECT baselines FROM pacer.jobs WHERE name = 't'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(before, serde_json::json!({}));

    let added = "[baseline]\nmin_samples = 3\n\n[[signal]]\nname = \"waiters\"\npostgres = \"lock_waiters\"\nslow_above = \"baseline + 50\"\nstop_above = \"baseline + 100\"\n";
    let (_d2, p2) = policy(
        &url,
        &Spec {
            extra: added,
            ..spec
        },
    );
    let out = output(pacer(&["run"], &p2)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all()
            .contains("measuring the baseline of signal(s) added since the job started"),
        "{}",
        out.all()
    );
    assert_eq!(counters(&pool, "t").await, (0, 20_000, 0));
    let after: serde_json::Value =
        sqlx::query_scalar("SELECT baselines FROM pacer.jobs WHERE name = 't'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(after["waiters"].is_number(), "{after}");
}

#[sqlx::test(migrations = false)]
async fn retries_exhausted_stop_cleanly_with_progress_intact(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 3000).await;
    // One row always fails with a serialization failure (retryable).
    sqlx::raw_sql(
        "CREATE FUNCTION fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW.id = 2002 THEN RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER fail_one BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION fail_one();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_d, p) = policy(
        &url,
        &Spec {
            batch: (100, 50, 100),
            max_retries: 2,
            ..Spec::default()
        },
    );
    let out = run_expect(&p, 3, "limits.max_retries").await;
    assert!(out.all().contains("progress intact"), "{}", out.all());
    let (_, done, twice) = counters(&pool, "t").await;
    assert!(done > 0 && twice == 0);
    let st: String = sqlx::query_scalar("SELECT state FROM pacer.jobs WHERE name = 't'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(st, "failed");
}

/// Every supported key type: bigint with gaps is covered elsewhere; here
/// integer, uuid, timestamptz and text with a non-default collation.
#[sqlx::test(migrations = false)]
async fn key_types_walk_in_postgres_order(pool: PgPool) {
    let url = url_of(&pool).await;
    let tables = [
        ("k_int", "integer", "g"),
        ("k_uuid", "uuid", "md5(g::text)::uuid"),
        (
            "k_ts",
            "timestamptz",
            "timestamptz '2026-01-01' + g * interval '1.000001 second'",
        ),
        (
            "k_text",
            "text COLLATE \"C\"",
            "(ARRAY['a','B','_','é','Z','0'])[1 + g % 6] || g",
        ),
    ];
    for (name, ty, expr) in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {name} (id {ty} PRIMARY KEY, counter integer NOT NULL DEFAULT 0);
             INSERT INTO {name} (id) SELECT {expr} FROM generate_series(1, 2500) g;"
        )))
        .execute(&pool)
        .await
        .unwrap();
        let update = format!("UPDATE {name} SET counter = counter + 1 WHERE id = ANY($1)");
        let (_d, p) = policy(
            &url,
            &Spec {
                job: name,
                table: name,
                update: &update,
                batch: (300, 50, 700),
                read_chunk: 800,
                ..Spec::default()
            },
        );
        let out = output(pacer(&["run"], &p)).await;
        assert_eq!(out.code, Some(0), "{name}:\n{}", out.all());
        assert_eq!(counters(&pool, name).await, (0, 2500, 0), "{name}");
        let v = output(pacer(&["verify"], &p)).await;
        assert_eq!(v.code, Some(0), "{name}: {}", v.all());
    }
}

#[sqlx::test(migrations = false)]
async fn verify_reports_pending_rows_and_max_pause_stops_with_code_4(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 1500).await;
    let (_d, p) = policy(&url, &Spec::default());
    let v = output(pacer(&["verify", "--json"], &p)).await;
    assert_eq!(v.code, Some(1), "{}", v.all());
    let j: serde_json::Value = serde_json::from_str(v.stdout.trim()).unwrap();
    assert_eq!(j["rows_pending"], 1500);
    assert_eq!(j["samples"]["oldest"].as_array().map(|a| a.len()), Some(3));

    let out = output({
        let mut c = pacer(&["pause"], &p);
        c.args(["--reason", "before the start"]);
        c
    })
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let mut run = pacer(&["run"], &p);
    run.env("PACER_POLICY__JOB__MAX_PAUSE", "1s")
        .env("PACER_POLICY__JOB__STOP_AFTER_MAX_PAUSE", "true");
    let out = output(run).await;
    assert_eq!(out.code, Some(4), "{}", out.all());
    assert!(out.stdout.contains("max_pause"), "{}", out.stdout);
    nothing_written(&pool).await;
    let s = output(pacer(&["status", "--json"], &p)).await;
    let j: serde_json::Value = serde_json::from_str(s.stdout.trim()).unwrap();
    assert_eq!(j["state"], "stopped");
    assert_eq!(j["paused_by"]["reason"], "before the start");
    assert_eq!(j["rows_pending"], 1500);
}

/// A fragment ending in a `-- comment` is spliced into pacer's SQL without
/// swallowing the rest of the statement: check, run and verify all work.
#[sqlx::test(migrations = false)]
async fn sql_fragments_may_end_in_a_line_comment(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 1500).await;
    let spec = Spec {
        pending: "counter = 0 -- not counted yet",
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0 -- one pass",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &spec);
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let out = output(pacer(&["run"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 1500, 0));
    let out = output(pacer(&["verify"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
}

/// A column added a moment ago has no planner statistics: the planner
/// would guess 0.5 % of rows pending when all are. `check` says so and
/// counts them instead, with a throttled walk of the key index.
#[sqlx::test(migrations = false)]
async fn check_counts_pending_rows_on_a_column_the_planner_has_no_statistics_for(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 5000).await;
    sqlx::raw_sql("ANALYZE t; ALTER TABLE t ADD COLUMN fresh int")
        .execute(&pool)
        .await
        .unwrap();
    let spec = Spec {
        pending: "fresh IS NULL",
        update: "UPDATE t SET fresh = 1 WHERE id = ANY($1) AND fresh IS NULL",
        ..Spec::default()
    };
    let (_d, p) = policy(&url, &spec);
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("no statistics for fresh")
            && out
                .stdout
                .contains("pending = 5000 of 5000 rows (100.00 %, counted)"),
        "{}",
        out.stdout
    );
    // Once analyzed, the planner's estimate is back.
    sqlx::raw_sql("UPDATE t SET fresh = 1 WHERE id <= 2500; ANALYZE t")
        .execute(&pool)
        .await
        .unwrap();
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        !out.stdout.contains("no statistics") && out.stdout.contains("of ≈ 5000 rows"),
        "{}",
        out.stdout
    );
}

/// `check` asks whether the read path *can* walk an index, not which plan
/// the planner prefers today: on a tiny or empty table a seq scan is the
/// cheaper plan and no problem, an empty table is 0 rows pending, and only
/// a read no index can serve in key order is flagged.
#[sqlx::test(migrations = false)]
async fn check_asks_whether_reads_can_use_an_index(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 40).await;
    let good = "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0";
    let (_d, p) = policy(
        &url,
        &Spec {
            update: good,
            ..Spec::default()
        },
    );
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "tiny table: {}", out.all());
    assert!(out.stdout.contains("Index Scan"), "{}", out.stdout);

    sqlx::raw_sql("DELETE FROM t; ANALYZE t")
        .execute(&pool)
        .await
        .unwrap();
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "empty table: {}", out.all());
    assert!(out.stdout.contains("0 rows pending"), "{}", out.stdout);

    // A unique index in another collation cannot give the column's order.
    sqlx::raw_sql(
        "CREATE TABLE c (id text COLLATE \"und-x-icu\" NOT NULL, counter int NOT NULL DEFAULT 0);
         CREATE UNIQUE INDEX ON c (id COLLATE \"C\");
         INSERT INTO c (id) SELECT g::text FROM generate_series(1, 200) g; ANALYZE c;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_d, p) = policy(
        &url,
        &Spec {
            table: "c",
            update: "UPDATE c SET counter = 1 WHERE id = ANY($1) AND counter = 0",
            ..Spec::default()
        },
    );
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("problem: job.key: keyset reads would scan the whole table"),
        "{}",
        out.stdout
    );
}

/// The least-privilege role of docs/OPERATIONS.md ("A role for pacer") is
/// enough to check and run a backfill, and `check` names each grant that
/// goes missing and what stops working without it.
#[sqlx::test(migrations = false)]
async fn a_least_privilege_role_runs_a_backfill(pool: PgPool) {
    let url = url_of(&pool).await;
    counter_table(&pool, "t", 2000).await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Roles are cluster-wide: one per test database, short and lowercase.
    let role = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        db.hash(&mut h);
        format!("pacer_lp_{:016x}", h.finish())
    };
    let sql = |s: String| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(s))
                .execute(&pool)
                .await
                .unwrap()
        }
    };
    // Exactly the documented role, nothing more.
    sql(format!(
        "DROP ROLE IF EXISTS {role};
         CREATE ROLE {role} LOGIN PASSWORD 'pacer-lp';
         GRANT CONNECT ON DATABASE \"{db}\" TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, UPDATE ON public.t TO {role};
         CREATE SCHEMA pacer AUTHORIZATION {role};
         GRANT pg_monitor TO {role};"
    ))
    .await;
    let as_role = url.replacen("postgres@", &format!("{role}:pacer-lp@"), 1);
    assert_ne!(as_role, url, "the test URL names user postgres: {url}");
    let good = Spec {
        update: "UPDATE t SET counter = counter + 1 WHERE id = ANY($1) AND counter = 0",
        ..Spec::default()
    };
    let (_d, p) = policy(&as_role, &good);
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    // VACUUM is the table owner's: `job.vacuum = "when-stuck"` would only
    // ever say what to run.
    let (_dv, pv) = policy(&as_role, &good);
    let text = std::fs::read_to_string(&pv).unwrap().replacen(
        "[job]\n",
        "[job]\nvacuum = \"when-stuck\"\n",
        1,
    );
    std::fs::write(&pv, text).unwrap();
    let out = output(pacer(&["check"], &pv)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("warning: job.vacuum: role")
            && out.stdout.contains("does not own t and may not VACUUM it"),
        "{}",
        out.stdout
    );
    // The run also writes the replication heartbeat into pacer's schema.
    let lag = Spec {
        extra: "[[signal]]\nname = \"lag\"\npostgres = \"replication_lag_seconds\"\nstop_above = 100\non_missing = \"ignore\"\n",
        ..good
    };
    let (_d3, p3) = policy(&as_role, &lag);
    // The primary stands in for a replica: it has the heartbeat row too.
    let text = std::fs::read_to_string(&p3).unwrap().replacen(
        &format!("url = \"{as_role}\""),
        &format!("url = \"{as_role}\"\nreplicas = [\"{as_role}\"]"),
        1,
    );
    std::fs::write(&p3, text).unwrap();
    let out = output(pacer(&["run"], &p3)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(counters(&pool, "t").await, (0, 2000, 0));
    let beats: i64 = sqlx::query_scalar("SELECT count(*) FROM pacer.heartbeat")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(beats, 1);

    // Without pg_monitor, lock signals would read 0: a warning, and a
    // problem when the policy relies on one.
    sql(format!("REVOKE pg_monitor FROM {role}")).await;
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("warning: role") && out.stdout.contains("lacks pg_monitor"),
        "{}",
        out.stdout
    );
    let locks = Spec {
        extra: "[[signal]]\nname = \"waits\"\npostgres = \"lock_waiters\"\nstop_above = 5\n",
        ..good
    };
    let (_d2, p2) = policy(&as_role, &locks);
    let out = output(pacer(&["check"], &p2)).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout.contains("problem: signal waits: role")
            && out
                .stdout
                .contains("read 0 whatever happens (GRANT pg_monitor TO"),
        "{}",
        out.stdout
    );

    // Without UPDATE every batch would fail: named before anything runs.
    sql(format!("REVOKE UPDATE ON public.t FROM {role}")).await;
    let out = output(pacer(&["check"], &p)).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout.contains("lacks UPDATE on t") && out.stdout.contains("GRANT UPDATE ON t TO"),
        "{}",
        out.stdout
    );

    sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';
         DROP OWNED BY {role}; DROP ROLE {role};"
    ))
    .await;
}
