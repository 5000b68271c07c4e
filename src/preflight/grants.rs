//! Does the role pacer connects as have what it needs, and what stops
//! working without what it lacks? A least-privilege role (docs/OPERATIONS.md,
//! "A role for pacer") has SELECT and UPDATE on the target table, a schema
//! of its own for pacer's tables, and `pg_monitor`; anything missing is
//! named here with the grant that fixes it, before a run fails halfway or —
//! worse — a signal silently reads 0.

use sqlx::postgres::PgConnection;

use super::Report;
use crate::policy::Policy;
use crate::store::quote_ident;

/// Postgres built-ins that read other sessions' columns of
/// `pg_stat_activity` / `pg_stat_replication`, which are NULL for a role
/// without `pg_read_all_stats`: they would read 0 whatever happens.
pub const NEED_STATS: &[&str] = &[
    "lock_waiters",
    "blocked_by_pacer",
    "ddl_waiting",
    "oldest_transaction_seconds",
    "replication_lag_bytes",
];

/// Check the grants; `Ok(false)` when the table's own privileges are
/// missing, so the rest of the preflight (which reads and updates the
/// table) would only fail with a less helpful error.
pub async fn check(
    conn: &mut PgConnection,
    policy: &Policy,
    r: &mut Report,
) -> anyhow::Result<bool> {
    let (role, superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if superuser {
        r.warnings.push(format!(
            "connected as superuser {role}: pacer needs far less (docs/OPERATIONS.md, \"A role for pacer\")"
        ));
        return Ok(true);
    }
    let table_ok = table(conn, policy, &role, r).await?;
    schema(conn, policy, &role, r).await?;
    stats(conn, policy, &role, r).await?;
    signal_backend(conn, policy, &role, r).await?;
    vacuum(conn, policy, &role, r).await?;
    Ok(table_ok)
}

/// `[job] vacuum` other than `"off"` runs `VACUUM` on the table, which
/// only its owner (or the database's) may; Postgres would skip it with a
/// WARNING the job's log never shows.
async fn vacuum(
    conn: &mut PgConnection,
    policy: &Policy,
    role: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    if policy.job.vacuum == crate::policy::VacuumMode::Off {
        return Ok(());
    }
    let Some(table) = sqlx::query_scalar::<_, String>(
        "SELECT c::text FROM to_regclass($1) AS c WHERE c IS NOT NULL",
    )
    .bind(&policy.job.table)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    if !crate::executor::vacuum::may_vacuum(conn, &table).await? {
        r.warnings.push(format!(
            "job.vacuum: role {role} does not own {table} and may not VACUUM it: a pause held up by \
             dead row versions will only say so (run pacer as the table's owner, or ask its owner to vacuum)"
        ));
    }
    Ok(())
}

/// A standby ends the old runner's backends when it takes over
/// (`pg_terminate_backend`): allowed for sessions of its own role, or with
/// `pg_signal_backend` for any non-superuser's. Checked for a policy that
/// says `[job] standby = true` (`pacer run --standby` is a flag `check`
/// does not see; the same applies to it).
async fn signal_backend(
    conn: &mut PgConnection,
    policy: &Policy,
    role: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    if !policy.job.standby {
        return Ok(());
    }
    let can: bool =
        sqlx::query_scalar("SELECT pg_has_role(current_user, 'pg_signal_backend', 'USAGE')")
            .fetch_one(&mut *conn)
            .await?;
    if !can {
        r.warnings.push(format!(
            "job.standby: role {role} lacks pg_signal_backend: a standby can end the old runner's sessions              (to take over) only if the active runner connects as {role} too (GRANT pg_signal_backend TO {})",
            quote_ident(role)
        ));
    }
    Ok(())
}

async fn table(
    conn: &mut PgConnection,
    policy: &Policy,
    role: &str,
    r: &mut Report,
) -> anyhow::Result<bool> {
    let row: Option<(bool, bool)> = sqlx::query_as(
        "SELECT has_table_privilege(current_user, c, 'SELECT'), has_table_privilege(current_user, c, 'UPDATE')
           FROM to_regclass($1) AS c WHERE c IS NOT NULL",
    )
    .bind(&policy.job.table)
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or(None);
    // A missing table is reported by the next step, naming job.table.
    let Some((select, update)) = row else {
        return Ok(true);
    };
    let t = &policy.job.table;
    let role_q = quote_ident(role);
    if !select {
        r.problems.push(format!(
            "job.table: role {role} lacks SELECT on {t}: the keyset reads, `check` and `verify` fail \
             (GRANT SELECT ON {t} TO {role_q})"
        ));
    }
    if !update {
        r.problems.push(format!(
            "job.table: role {role} lacks UPDATE on {t}: every batch would fail (GRANT UPDATE ON {t} TO {role_q})"
        ));
    }
    Ok(select && update)
}

/// pacer's own tables: the schema must exist and be writable, or be
/// creatable.
async fn schema(
    conn: &mut PgConnection,
    policy: &Policy,
    role: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    let schema = &policy.database.schema;
    let (exists, usage, create, db_create): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT n.oid IS NOT NULL,
                coalesce(has_schema_privilege(current_user, n.oid, 'USAGE'), false),
                coalesce(has_schema_privilege(current_user, n.oid, 'CREATE'), false),
                has_database_privilege(current_user, current_database(), 'CREATE')
           FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await?;
    let role_q = quote_ident(role);
    let schema_q = quote_ident(schema);
    if !exists && !db_create {
        r.problems.push(format!(
            "database.schema: schema {schema_q} does not exist and role {role} may not create it: \
             `pacer run` cannot keep its progress (CREATE SCHEMA {schema_q} AUTHORIZATION {role_q})"
        ));
    } else if exists && !(usage && create) {
        // The tables may exist already (created by a DBA): then CREATE is
        // only needed for future migrations, but USAGE and the table
        // privileges are.
        let tables_ok: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 AND bool_and(has_table_privilege(current_user, c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
        if !usage || !tables_ok {
            r.problems.push(format!(
                "database.schema: role {role} cannot create or write pacer's tables in schema {schema_q}: \
                 `pacer run` cannot keep its progress (ALTER SCHEMA {schema_q} OWNER TO {role_q}, \
                 or GRANT USAGE, CREATE ON SCHEMA {schema_q} TO {role_q})"
            ));
        }
    }
    Ok(())
}

/// Without `pg_read_all_stats` (part of `pg_monitor`) other sessions' wait
/// events, transaction starts and replication positions are NULL: a lock
/// signal reads 0 however many sessions wait.
async fn stats(
    conn: &mut PgConnection,
    policy: &Policy,
    role: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    let can: bool =
        sqlx::query_scalar("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")
            .fetch_one(&mut *conn)
            .await?;
    if can {
        return Ok(());
    }
    let blind: Vec<&str> = policy
        .signals
        .iter()
        .filter(|s| {
            s.postgres
                .as_deref()
                .is_some_and(|b| NEED_STATS.contains(&b))
        })
        .map(|s| s.name.as_str())
        .collect();
    let what = |signals: &str| {
        format!(
            "role {role} lacks pg_monitor (or pg_read_all_stats): other sessions' wait events are hidden \
             from it, so {signals} read 0 whatever happens (GRANT pg_monitor TO {})",
            quote_ident(role)
        )
    };
    if blind.is_empty() {
        r.warnings.push(what(&format!(
            "lock signals ({}) would",
            NEED_STATS.join(", ")
        )));
    } else {
        let names = crate::text::elide(&blind.join(", "), 60);
        r.problems
            .push(format!("signal {names}: {}", what("these signals")));
    }
    Ok(())
}
