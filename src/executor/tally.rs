//! Counting pending rows exactly without one big scan: walk the key index
//! in chunks with a short pause between them, so counting a huge table is a
//! trickle of small index reads that live traffic does not notice. `pacer
//! verify` counts this way, a new job its rows pending, and `pacer check`
//! where the planner cannot estimate (a column added after the last
//! ANALYZE).

use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::target::Target;

/// Pause between two counting chunks.
pub const CHUNK_PAUSE: Duration = Duration::from_millis(5);

/// How long a count that may fall back to the planner's estimate walks
/// (a new job's rows pending, `pacer check`'s where the planner cannot
/// estimate) before it does.
pub const COUNT_LIMIT: Duration = Duration::from_secs(30);

/// Keys per counting statement: the policy's `read_chunk`, at least 1000
/// (fewer would make a walk of a big table mostly round trips).
pub fn chunk(limits: &crate::policy::Limits) -> i64 {
    i64::from(limits.read_chunk.max(1000))
}

/// What a walk counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Rows matching `job.pending` among the rows walked.
    pub pending: i64,
    /// Rows walked.
    pub rows: i64,
    /// Last key of each full chunk, in key order.
    pub boundaries: Vec<String>,
    /// False when the walk stopped at its time limit before the last key.
    pub complete: bool,
}

impl Target {
    /// Walk the whole key index (rows with a NULL key included) in chunks
    /// of `chunk` keys, stopping early once `limit` has passed.
    pub async fn tally_pending(
        &self,
        conn: &mut PgConnection,
        chunk: i64,
        limit: Option<Duration>,
    ) -> anyhow::Result<Tally> {
        let started = Instant::now();
        let (k, t, p) = (&self.key_q, &self.table_q, &self.pending);
        let coll = self
            .collation
            .as_ref()
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default();
        // Built per condition, not by replacing text: job.pending may contain
        // the very text a replacement would look for.
        let chunk_sql = |cond: &str| {
            format!(
                "SELECT count(*) FILTER (WHERE pend), count(*), (array_agg(k::text ORDER BY k))[count(*)::int] FROM
                   (SELECT {k} AS k, coalesce(({p}), false) AS pend FROM {t} WHERE {cond} ORDER BY {k} LIMIT $1) s"
            )
        };
        let first = chunk_sql(&format!("{k} IS NOT NULL"));
        let next = chunk_sql(&format!("{k} > ($2::{}{coll})", self.key_type.sql()));
        let mut cursor: Option<String> = None;
        let mut out = Tally::default();
        loop {
            let q = if cursor.is_some() { &next } else { &first };
            let mut query =
                sqlx::query_as::<_, (i64, i64, Option<String>)>(AssertSqlSafe(q.clone()))
                    .bind(chunk);
            if let Some(c) = &cursor {
                query = query.bind(c.clone());
            }
            let (p_n, n, last) = query.fetch_one(&mut *conn).await?;
            out.pending += p_n;
            out.rows += n;
            if n < chunk || last.is_none() {
                break;
            }
            out.boundaries.push(last.clone().unwrap_or_default());
            cursor = last;
            if limit.is_some_and(|l| started.elapsed() >= l) {
                return Ok(out);
            }
            tokio::time::sleep(CHUNK_PAUSE).await;
        }
        if self.nullable {
            let (n, all): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT count(*) FILTER (WHERE coalesce(({p}), false)), count(*) FROM {t} WHERE {k} IS NULL"
            )))
            .fetch_one(&mut *conn)
            .await?;
            out.pending += n;
            out.rows += all;
        }
        out.complete = true;
        Ok(out)
    }
}
