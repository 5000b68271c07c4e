//! Refuse a connection pooler in transaction or statement mode (pgbouncer
//! `pool_mode = transaction | statement`, and poolers that work like it).
//!
//! pacer relies on its connections being sessions: the runner and table
//! locks are session advisory locks, the worker sessions carry their
//! timeouts (`idle_in_transaction_session_timeout`, keepalives), and sqlx
//! prepares statements per session. Through a transaction-mode pooler each
//! transaction may run on another server session, so the locks would be
//! held by whichever session took them (and released to nobody), and the
//! settings would land on sessions other clients then use: nothing fails
//! loudly, the guarantees just stop holding.
//!
//! A pooler answers like a server, so it is recognised by what it does. A
//! session keeps its backend PID and its settings between transactions;
//! and while a session is idle its backend is not free for anyone else.
//! A pooler in transaction mode hands an idle client's backend to the next
//! transaction that needs one, which pgbouncer picks last-in first-out: a
//! second connection opening a transaction right after ours is served by
//! the backend we just used. Every query here is a simple-protocol query,
//! so a pooler that cannot carry prepared statements still answers.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Row};

/// Second connections opened to look for our own backend: a pooler with a
/// few idle backends still hands ours to one of them.
const PROBES: usize = 3;

/// `Some(problem)` when `conn` (opened on `url`) is not a session of its
/// own; the problem names the pooler modes and what to do instead.
pub async fn transaction_pooler(
    conn: &mut PgConnection,
    url: &str,
) -> anyhow::Result<Option<String>> {
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let (pid1, _) = pid_and_token(
        conn,
        &format!(
            "SELECT pg_backend_pid()::text, set_config('pacer.session_probe', '{token}', false)"
        ),
    )
    .await?;
    let mut seen = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..PROBES {
        let mut x = super::connect(url, "pacer-pooler-check").await?;
        if let Err(e) = sqlx::raw_sql("BEGIN").execute(&mut x).await {
            let msg = e.to_string();
            if msg.to_lowercase().contains("statement pooling") {
                tracing::debug!(error = %msg, "BEGIN refused");
                return Ok(Some(problem(
                    "it refused a transaction block (statement pooling)",
                )));
            }
            return Err(e.into());
        }
        let (pid, tok) = pid_and_token(&mut x, PROBE_SQL).await?;
        if pid == pid1 || tok == token {
            return Ok(Some(problem(&format!(
                "another connection got this one's backend (pid {pid1})"
            ))));
        }
        seen.push(pid);
        probes.push(x);
    }
    let (pid2, tok2) = pid_and_token(conn, PROBE_SQL).await?;
    for mut x in probes {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut x).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), x.close()).await;
    }
    if pid2 != pid1 {
        return Ok(Some(problem(&format!(
            "two transactions of one connection ran on backends {pid1} and {pid2}"
        ))));
    }
    if tok2 != token {
        return Ok(Some(problem(
            "a session setting did not survive from one transaction to the next",
        )));
    }
    tracing::debug!(pid = pid1, others = ?seen, "the connection is a session of its own");
    Ok(None)
}

const PROBE_SQL: &str =
    "SELECT pg_backend_pid()::text, coalesce(current_setting('pacer.session_probe', true), '')";

async fn pid_and_token(c: &mut PgConnection, sql: &str) -> anyhow::Result<(i32, String)> {
    let row = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut *c)
        .await?;
    let pid: String = row.try_get(0)?;
    let token: String = row.try_get(1)?;
    Ok((pid.parse()?, token))
}

fn problem(evidence: &str) -> String {
    // Kept under the 300 characters of an error line.
    format!(
        "database.url leads to a pooler in transaction or statement mode (pgbouncer pool_mode = transaction/statement): \
         {evidence}. pacer's session locks and timeouts would not hold: connect directly or use pool_mode = session"
    )
}
