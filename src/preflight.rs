//! `pacer check` against the database: everything that can be known
//! before the first write. The role has the grants it needs (`grants`),
//! the statements prepare, the key is walkable,
//! reads walk an index, the pending filter is not hopelessly sparse on a
//! large table, and the update is idempotent (one batch applied twice
//! inside a transaction that is rolled back).

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

mod grants;

use crate::executor::tally::COUNT_LIMIT;
use crate::executor::target::{Target, db_message};
use crate::policy::Policy;

/// Tables at least this large refuse a sparse pending filter without `--force`.
pub const LARGE_TABLE_ROWS: f64 = 1_000_000.0;
/// Below this fraction of pending rows, the filter counts as sparse.
pub const SPARSE_FRACTION: f64 = 0.01;
#[derive(Debug, Default)]
pub struct Report {
    /// Each makes `check` fail.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// Node types and relations of a plan, outermost first:
/// `Limit > Index Scan using orders_pkey on orders`.
pub fn plan_summary(plan: &serde_json::Value) -> String {
    fn walk(n: &serde_json::Value, out: &mut Vec<String>) {
        let mut s = n["Node Type"].as_str().unwrap_or("?").to_string();
        if let Some(i) = n["Index Name"].as_str() {
            s.push_str(&format!(" using {i}"));
        }
        if let Some(r) = n["Relation Name"].as_str() {
            s.push_str(&format!(" on {r}"));
        }
        out.push(s);
        if let Some(children) = n["Plans"].as_array() {
            for c in children {
                walk(c, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&plan["Plan"], &mut out);
    out.join(" > ")
}

/// Whether a keyset read plan reads the whole table: a Seq Scan, or a Sort
/// (the read orders by the key, so a Sort means no index delivers the key
/// order and every chunk reads and sorts everything).
fn reads_whole_table(plan: &serde_json::Value) -> bool {
    fn walk(n: &serde_json::Value) -> bool {
        matches!(n["Node Type"].as_str(), Some("Seq Scan" | "Sort"))
            || n["Plans"].as_array().is_some_and(|c| c.iter().any(walk))
    }
    walk(&plan["Plan"])
}

/// The plan of the first keyset read, as it would be with sequential scans
/// forbidden. On a tiny, empty or unanalyzed table the planner rightly
/// prefers a seq scan, which says nothing about the table at full size; the
/// question is whether the read *can* walk an index, and a seq scan that
/// remains when forbidden means it cannot. `SET LOCAL` in a transaction
/// that is rolled back leaves the session as it was.
async fn read_plan(
    conn: &mut PgConnection,
    target: &Target,
    chunk: u32,
) -> anyhow::Result<serde_json::Value> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('enable_seqscan', 'off', true)")
        .execute(&mut *tx)
        .await?;
    let plan = target
        .explain(&mut tx, &target.first_read_literal(chunk))
        .await;
    tx.rollback().await?;
    plan
}

pub async fn preflight(
    conn: &mut PgConnection,
    policy: &Policy,
    force: bool,
) -> anyhow::Result<Report> {
    let mut r = Report::default();
    if !grants::check(conn, policy, &mut r).await? {
        return Ok(r);
    }
    let target = Target::resolve(conn, policy).await?;
    r.notes.push(format!(
        "key {} ({}) is unique and indexed; statements prepare",
        target.key_name,
        target.key_type.sql()
    ));

    // Reads walk an index on the key.
    let plan = read_plan(conn, &target, policy.limits.read_chunk).await?;
    let summary = plan_summary(&plan);
    if reads_whole_table(&plan) {
        r.problems.push(format!(
            "job.key: keyset reads would scan the whole table instead of walking an index on {} in order (plan: {summary})",
            target.key_name
        ));
    } else {
        r.notes.push(format!("read plan: {summary}"));
    }

    // Sparse pending filter.
    let reltuples: f32 =
        sqlx::query_scalar("SELECT reltuples::real FROM pg_class WHERE oid = $1::regclass")
            .bind(&target.table_q)
            .fetch_one(&mut *conn)
            .await?;
    let table_rows = reltuples as f64;
    let empty: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {})",
        target.table_q
    )))
    .fetch_one(&mut *conn)
    .await?;
    // A column the planner has no statistics for (added or filled since the
    // last ANALYZE) gets a default selectivity: 0.5 % of rows pending on a
    // column added a moment ago when 100 % are (measured). Count instead.
    let unanalyzed = columns_without_statistics(conn, &target, &policy.job.pending).await?;
    let sparse = |r: &mut Report, frac: f64, rows: f64, pending: f64, approx: &str| {
        if frac < SPARSE_FRACTION && pending > 0.0 {
            let msg = format!(
                "job.pending: only {approx}{:.2} % of the table is pending; pacer would read {approx}{:.0} keys for each pending one \
                 (a partial index matching job.pending, or a key range in job.pending, helps)",
                frac * 100.0,
                1.0 / frac.max(1e-9)
            );
            if rows >= LARGE_TABLE_ROWS && !force {
                r.problems.push(format!("{msg}; pass --force to accept"));
            } else {
                r.warnings.push(msg);
            }
        }
    };
    if empty {
        r.notes.push(format!(
            "{} is empty: 0 rows pending, a run would finish at once",
            target.table_q
        ));
    } else if table_rows <= 0.0 || !unanalyzed.is_empty() {
        let why = if table_rows <= 0.0 {
            format!("{} has never been analyzed", target.table_q)
        } else {
            format!(
                "the planner has no statistics for {} (added or filled since the last ANALYZE), which job.pending uses",
                unanalyzed.join(", ")
            )
        };
        r.warnings.push(format!(
            "{why}: the planner's estimate of pending rows would be a guess, so they are counted; run ANALYZE {}",
            target.table_q
        ));
        let chunk = crate::executor::tally::chunk(&policy.limits);
        let t = target.tally_pending(conn, chunk, Some(COUNT_LIMIT)).await?;
        let frac = t.pending as f64 / t.rows.max(1) as f64;
        if t.complete {
            r.notes.push(format!(
                "pending = {} of {} rows ({:.2} %, counted)",
                t.pending,
                t.rows,
                frac * 100.0
            ));
            sparse(&mut r, frac, t.rows as f64, t.pending as f64, "");
        } else {
            r.notes.push(format!(
                "pending: {} of the first {} rows in key order ({:.2} %); counting stopped after {}",
                t.pending,
                t.rows,
                frac * 100.0,
                humantime::format_duration(COUNT_LIMIT)
            ));
        }
    } else {
        let pending_est = target.estimate_pending(conn).await? as f64;
        if pending_est > table_rows * 1.05 {
            // Both figures are planner estimates; this only happens when the
            // statistics predate recent writes.
            r.warnings.push(format!(
                "planner statistics look stale (pending ≈ {pending_est:.0} > table ≈ {table_rows:.0} rows): \
                 run ANALYZE {} for better estimates",
                target.table_q
            ));
        }
        let frac = (pending_est / table_rows).min(1.0);
        r.notes.push(format!(
            "pending ≈ {:.0} of ≈ {table_rows:.0} rows ({:.2} %)",
            pending_est.min(table_rows),
            frac * 100.0
        ));
        sparse(&mut r, frac, table_rows, pending_est, "≈ ");
    }

    idempotency(conn, policy, &target, &mut r).await?;
    Ok(r)
}

/// What applying one batch twice (then rolling back) showed.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub keys: usize,
    /// Rows the first application changed.
    pub first: u64,
    /// Keys of the batch still matching `pending` after it.
    pub still_pending: i64,
    /// Rows a second application changed (0 for an idempotent update).
    pub second: u64,
}

/// What the rolled-back double-apply probe came to.
#[derive(Debug, Clone, Copy)]
pub enum Probed {
    /// The first chunk has nothing pending.
    NothingPending,
    /// Every key of the first batch is locked by another session right now:
    /// probing would mean queueing behind live traffic, so it is skipped.
    AllLocked {
        keys: usize,
    },
    Applied(Probe),
}

/// Apply the first pending batch twice inside a transaction that is always
/// rolled back. Only rows nobody else holds are probed (`SKIP LOCKED`): a
/// row a live session has locked at start is normal traffic, not a reason
/// to wait or to refuse the job.
pub async fn apply_twice(
    conn: &mut PgConnection,
    policy: &Policy,
    target: &Target,
) -> anyhow::Result<Probed> {
    let (_, _, mut pending) = target
        .read_chunk(conn, None, policy.limits.read_chunk)
        .await?;
    if pending.is_empty() {
        return Ok(Probed::NothingPending);
    }
    let candidates = pending.take_front(policy.limits.batch_size.start as usize);
    let mut tx = conn.begin().await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
    )
    .bind(policy.limits.lock_timeout.as_millis().to_string())
    .bind(policy.limits.statement_timeout.as_millis().to_string())
    .execute(&mut *tx)
    .await?;
    let result: anyhow::Result<Probed> = async {
        let rows = candidates
            .bind(sqlx::query(AssertSqlSafe(target.lock_free_sql())))
            .fetch_all(&mut *tx)
            .await?;
        let mut keys = target.key_type.empty();
        for r in &rows {
            keys.push_from(r, 0)?;
        }
        if keys.is_empty() {
            return Ok(Probed::AllLocked {
                keys: candidates.len(),
            });
        }
        let first = keys
            .bind(sqlx::query(AssertSqlSafe(target.update.clone())))
            .execute(&mut *tx)
            .await
            .map_err(|e| match crate::executor::batch::classify(&e) {
                // A lock or a lost connection says nothing about the SQL.
                crate::executor::batch::Class::Fatal => crate::store::Fail::invalid(format!(
                    "job.update: applying one batch failed: {}",
                    db_message(&e)
                )),
                _ => anyhow::anyhow!("applying one batch failed: {}", db_message(&e)),
            })?
            .rows_affected();
        let still_pending: i64 = keys
            .bind_scalar(sqlx::query_scalar(AssertSqlSafe(
                target.still_pending_sql(),
            )))
            .fetch_one(&mut *tx)
            .await?;
        let second = keys
            .bind(sqlx::query(AssertSqlSafe(target.update.clone())))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        Ok(Probed::Applied(Probe {
            keys: keys.len(),
            first,
            still_pending,
            second,
        }))
    }
    .await;
    tx.rollback().await?;
    let _ = conn.execute("SELECT 1").await;
    result
}

/// The update must clear `pending` (else pacer would find the same rows
/// forever).
pub fn still_pending_problem(p: &Probe) -> Option<String> {
    (p.still_pending > 0).then(|| {
        format!(
            "job.update: after one application, {} of the batch's {} keys still match job.pending; \
             pacer would find them again and again",
            p.still_pending, p.keys
        )
    })
}

/// An update a second application changes rows with, in plain words: an
/// error unless the policy says `[job] idempotent = false` (then `None`).
pub fn not_idempotent_problem(p: &Probe, policy: &Policy) -> Option<String> {
    (p.second > 0 && policy.job.idempotent).then(|| {
        format!(
            "job.update is not idempotent (set [job] idempotent = false if it must not be): applied twice to the same {} keys \
             (rolled back), the second application changed {} rows. Add the pending condition to its WHERE (e.g. `AND {}`) \
             so a second application changes nothing",
            p.keys,
            p.second,
            crate::text::elide(&policy.job.pending, 60)
        )
    })
}

async fn idempotency(
    conn: &mut PgConnection,
    policy: &Policy,
    target: &Target,
    r: &mut Report,
) -> anyhow::Result<()> {
    let p = match apply_twice(conn, policy, target).await {
        Ok(Probed::Applied(p)) => p,
        Ok(Probed::NothingPending) => {
            r.notes
                .push("no pending rows in the first chunk: idempotency not tested".into());
            return Ok(());
        }
        Ok(Probed::AllLocked { keys }) => {
            r.warnings.push(format!(
                "idempotency not tested: all {keys} keys of the first batch are locked by other sessions right now; run check again later"
            ));
            return Ok(());
        }
        Err(e) if e.downcast_ref::<crate::store::Fail>().is_some() => return Err(e),
        Err(e) => {
            r.warnings.push(format!(
                "idempotency not tested: {e:#}; run check again later"
            ));
            return Ok(());
        }
    };
    if let Some(msg) = still_pending_problem(&p) {
        r.problems.push(msg);
    }
    if let Some(msg) = not_idempotent_problem(&p, policy) {
        r.problems.push(msg);
    } else if p.second > 0 {
        r.warnings.push(format!(
            "job.update is not idempotent (a second application to the same {} keys changed {} rows); accepted because \
             [job] idempotent = false: pacer applies each batch exactly once, but anyone re-running it by hand would double-apply",
            p.keys, p.second
        ));
    } else {
        r.notes.push(format!(
            "update is idempotent: one batch of {} keys changed {} rows, a second application changed none (rolled back)",
            p.keys, p.first
        ));
    }
    Ok(())
}

/// Columns of the target that `pending` names and the planner has no
/// statistics for. `pg_stats` shows only columns the role may read, which
/// include every column `pending` can use.
async fn columns_without_statistics(
    conn: &mut PgConnection,
    target: &Target,
    pending: &str,
) -> anyhow::Result<Vec<String>> {
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND NOT EXISTS (SELECT 1 FROM pg_stats s
                             WHERE s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname)
          ORDER BY a.attnum",
    )
    .bind(&target.table_q)
    .fetch_all(&mut *conn)
    .await?;
    let used = identifiers(pending);
    Ok(missing.into_iter().filter(|c| used.contains(c)).collect())
}

/// The identifiers an SQL fragment mentions, as Postgres folds them:
/// unquoted words lower-cased, `"Quoted"` ones as written; string literals
/// and comments skipped. Over-inclusive (keywords and function names come
/// along), which is harmless when matched against column names.
fn identifiers(sql: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut it = sql.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\'' => {
                // '' inside a literal is an escaped quote: the loop re-enters.
                for c in it.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            '-' if it.peek() == Some(&'-') => {
                for c in it.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut id = String::new();
                while let Some(c) = it.next() {
                    if c == '"' {
                        if it.peek() == Some(&'"') {
                            it.next();
                            id.push('"');
                            continue;
                        }
                        break;
                    }
                    id.push(c);
                }
                out.insert(id);
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut id: String = c.to_lowercase().collect();
                while let Some(&c) = it.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '$' {
                        id.extend(c.to_lowercase());
                        it.next();
                    } else {
                        break;
                    }
                }
                out.insert(id);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::identifiers;

    #[test]
    fn identifiers_fold_like_postgres_and_skip_literals_and_comments() {
        let ids = identifiers(
            r#"Status IS NULL AND "MixedCase" = 'not_a_column' -- note_col
               AND x.amount_cents > 0 AND "a""b" <> 'it''s'"#,
        );
        for want in [
            "status",
            "MixedCase",
            "amount_cents",
            "x",
            "a\"b",
            "is",
            "null",
        ] {
            assert!(ids.contains(want), "{want} missing from {ids:?}");
        }
        for not in ["not_a_column", "note_col", "mixedcase", "s", "it"] {
            assert!(!ids.contains(not), "{not} in {ids:?}");
        }
    }
}
