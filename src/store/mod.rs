//! pacer's own tables (jobs, progress, control, decisions) in a schema of
//! their own, and the connection plumbing every database command shares.
//!
//! Store queries qualify table names with the schema instead of changing
//! `search_path`, because the same connections also run the policy's SQL,
//! which must see the user's `search_path` unchanged.

pub mod control;
pub mod decisions;
pub mod fleet;
pub mod history;
pub mod jobs;
pub mod lease;
pub mod pooler;
pub mod samples;
pub mod status;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::policy::Policy;
use crate::telemetry::redact;

/// An error with the exit code it should end the process with, so a command
/// can say "fix your input" (2) apart from "the database failed" (3).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

impl Fail {
    pub fn invalid(msg: impl Into<String>) -> anyhow::Error {
        Fail {
            code: crate::cli::exit::INVALID,
            msg: msg.into(),
        }
        .into()
    }
    pub fn failed(msg: impl Into<String>) -> anyhow::Error {
        Fail {
            code: crate::cli::exit::FAILED,
            msg: msg.into(),
        }
        .into()
    }
    /// Exit code for any error: a `Fail` anywhere in the chain, else FAILED.
    pub fn code_of(e: &anyhow::Error) -> u8 {
        e.chain()
            .find_map(|c| c.downcast_ref::<Fail>())
            .map_or(crate::cli::exit::FAILED, |f| f.code)
    }
}

/// The database URL: `database.url` in the policy, else `DATABASE_URL`.
pub fn database_url(policy: &Policy) -> Option<String> {
    policy
        .database
        .url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            std::env::var("DATABASE_URL")
                .ok()
                .filter(|u| !u.trim().is_empty())
        })
}

/// `application_name` of a runner's backends; DBAs see it in
/// `pg_stat_activity`, and a new run refuses to start while an old run's
/// backends with this name are alive.
pub fn runner_app_name(job: &str) -> String {
    app_name("pacer", job)
}

/// `<prefix>:<job>` cut to the 63 bytes Postgres keeps of an
/// `application_name`, on a character boundary.
pub fn app_name(prefix: &str, job: &str) -> String {
    let mut s = format!("{prefix}:{job}");
    while s.len() > 63 {
        s.pop();
    }
    s
}

/// Connection options from a `postgres://` URL. A libpq keyword/value
/// string (`host=db user=app password=...`) is refused with a hint rather
/// than sqlx's "relative URL without a base", and never echoed: it
/// carries the password in plain text.
pub fn parse_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    if !url.contains("://") {
        return Err(Fail::invalid(
            "database URL (database.url or DATABASE_URL) is a keyword/value string; pacer takes a URL like \
             postgres://app@db:5432/orders (the password percent-encoded after the user name, or from PGPASSWORD or ~/.pgpass)",
        ));
    }
    url.parse::<PgConnectOptions>().map_err(|e| {
        Fail::invalid(format!(
            "database URL {} is not valid: {}",
            redact::url(url),
            redact::text(&e.to_string())
        ))
    })
}

/// Settings every pacer session takes at connect (see `connect`).
const KEEPALIVE_SETTINGS: [(&str, &str); 5] = [
    ("client_connection_check_interval", "1000"),
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// Open one connection. `client_connection_check_interval` makes a backend
/// notice a killed client within a second instead of finishing its query;
/// the server-side keepalives end a session whose client went silent (a
/// partition, a host gone without a FIN) in about 25 s instead of the
/// OS's two hours, so a control session's runner lock does not outlive
/// the runner by hours (the worker sessions add their own limits).
pub async fn connect(url: &str, app_name: &str) -> anyhow::Result<PgConnection> {
    let opts = parse_url(url)?;
    let opts = opts.application_name(app_name);
    let mut conn = PgConnection::connect_with(&opts)
        .await
        .map_err(|e| Fail::failed(format!("cannot connect to {}: {e}", redact::url(url))))?;
    set_nodelay_on_tcp_sockets();
    // One round trip for all of them; only a server that lacks one
    // (`client_connection_check_interval` needs Postgres 14,
    // `tcp_user_timeout` 12) gets them one by one, and just lacks that
    // safety net. `tcp_*` are ignored on a Unix socket.
    let all = KEEPALIVE_SETTINGS
        .iter()
        .map(|(name, value)| format!("set_config('{name}', '{value}', false)"))
        .collect::<Vec<_>>()
        .join(", ");
    if conn
        .execute(AssertSqlSafe(format!("SELECT {all}")))
        .await
        .is_err()
    {
        for (name, value) in KEEPALIVE_SETTINGS {
            let _ = sqlx::query("SELECT set_config($1, $2, false)")
                .bind(name)
                .bind(value)
                .execute(&mut conn)
                .await;
        }
    }
    Ok(conn)
}

/// sqlx does not set TCP_NODELAY on its sockets. Without it, a batch's
/// Bind message (the key array, tens of KB) can be sent in two segments,
/// the second held back by Nagle's algorithm until the server's delayed ACK
/// (~40 ms): over TCP that halved pacer's throughput on a 1M-row backfill.
/// This sets it on every TCP socket of the process (all of them are
/// database or HTTP clients, for which it is right); errors mean "not a TCP
/// socket" and are ignored.
#[cfg(target_os = "linux")]
fn set_nodelay_on_tcp_sockets() {
    use std::os::fd::FromRawFd;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: the fd is open (listed just now) and is only borrowed:
        // ManuallyDrop never closes it. If it was closed and reused in the
        // meantime, setsockopt on another socket of ours is harmless.
        let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        let _ = stream.set_nodelay(true);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nodelay_on_tcp_sockets() {}

/// Quote an identifier for SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Handle on pacer's tables in one schema.
#[derive(Debug, Clone)]
pub struct Store {
    schema: String,
    schema_q: String,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The version of the newest migration this binary carries: pacer's tables
/// at another version were made (or are used) by another pacer version.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Store {
    pub fn new(schema: &str) -> Store {
        Store {
            schema: schema.to_string(),
            schema_q: quote_ident(schema),
        }
    }

    pub fn for_policy(policy: &Policy) -> Store {
        Store::new(&policy.database.schema)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A table of pacer's, schema-qualified.
    pub fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema_q)
    }

    /// Create the schema if needed (a DBA may have pre-created it, and pacer
    /// may lack CREATE on the database then) and apply the migrations with
    /// `search_path` set to it, so `_sqlx_migrations` lives there too.
    pub async fn migrate(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.schema)
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            conn.execute(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema_q)))
                .await
                .map_err(|e| {
                    Fail::failed(format!(
                        "database.schema: cannot create schema {:?}: {e} (ask a DBA to create it and grant pacer USAGE, CREATE on it)",
                        self.schema
                    ))
                })?;
        }
        let old_path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('search_path', $1, false)")
            .bind(&self.schema_q)
            .execute(&mut *conn)
            .await?;
        // "already exists, skipping" notices are noise on every start.
        let old_level: String = sqlx::query_scalar(
            "SELECT current_setting('client_min_messages'), set_config('client_min_messages', 'warning', false)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let result = MIGRATOR.run_direct(None, &mut *conn, false).await;
        sqlx::query("SELECT set_config('search_path', $1, false)")
            .bind(&old_path)
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('client_min_messages', $1, false)")
            .bind(&old_level)
            .execute(&mut *conn)
            .await?;
        result.map_err(|e| {
            Fail::failed(format!(
                "migrating pacer's tables in schema {:?}: {e}",
                self.schema
            ))
        })
    }

    /// Whether pacer's tables exist (read-only commands must not create them).
    pub async fn exists(&self, conn: &mut PgConnection) -> anyhow::Result<bool> {
        Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.t("jobs"))
            .fetch_one(&mut *conn)
            .await?)
    }
}

/// Retry-with-backoff delay for attempt `n` (1-based): 100 ms doubling, capped.
pub fn backoff(n: u32, cap: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << n.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(cap)
}
