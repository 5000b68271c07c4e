//! The target table and key as the catalog describes them, and the SQL
//! pacer runs against them. Everything that can be wrong with the policy's
//! table, key, `pending` or `update` is found here, before the first write,
//! and reported naming the policy key.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor, Row};

use super::keys::{KeyType, Keys};
use crate::policy::Policy;
use crate::store::Fail;

#[derive(Debug, Clone)]
pub struct Target {
    /// `regclass` text: quoted and schema-qualified where needed.
    pub table_q: String,
    pub key_q: String,
    pub key_name: String,
    pub key_type: KeyType,
    /// Quoted collation of a text key (`"pg_catalog"."C"`), used for every
    /// comparison with the cursor so it matches the index order.
    pub collation: Option<String>,
    pub nullable: bool,
    /// `job.pending` as an expression to splice into SQL: see `fragment`.
    pub pending: String,
    pub update: String,
}

/// A policy's SQL fragment in parentheses, the closing one on a line of its
/// own: a fragment ending in a `-- comment` would otherwise swallow the rest
/// of the statement it is spliced into (`coalesce((x -- note), false)`).
pub fn fragment(sql: &str) -> String {
    format!("({sql}\n)")
}

/// A database error as one line: message, detail, hint.
pub fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => {
            let mut s = d.message().to_string();
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(det) = pg.detail() {
                    s.push_str(&format!(" ({det})"));
                }
                if let Some(h) = pg.hint() {
                    s.push_str(&format!("; hint: {h}"));
                }
            }
            s
        }
        None => e.to_string(),
    }
}

impl Target {
    /// Resolve `job.table` and `job.key` in the catalog and check the key is
    /// walkable: a supported type with a unique index on it alone.
    pub async fn resolve(conn: &mut PgConnection, policy: &Policy) -> anyhow::Result<Target> {
        let job = &policy.job;
        let oid: Option<sqlx::postgres::types::Oid> =
            sqlx::query_scalar("SELECT to_regclass($1)::oid")
                .bind(&job.table)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| {
                    Fail::invalid(format!(
                        "job.table: {:?} is not a valid table name: {}",
                        job.table,
                        db_message(&e)
                    ))
                })?;
        let Some(oid) = oid else {
            return Err(Fail::invalid(format!(
                "job.table: relation {:?} does not exist (or is not visible on the search_path)",
                job.table
            )));
        };
        let row = sqlx::query(
            "SELECT c.oid::regclass::text AS table_q, c.relkind::text AS relkind,
                    quote_ident(a.attname) AS key_q, t.typname::text AS typname, a.attnotnull,
                    (SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname)
                       FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
                      WHERE co.oid = a.attcollation) AS coll,
                    EXISTS (SELECT 1 FROM pg_index i
                             WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                               AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
                               AND i.indpred IS NULL AND i.indexprs IS NULL) AS is_unique
               FROM pg_class c
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
              WHERE c.oid = $1",
        )
        .bind(oid)
        .bind(&job.key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else {
            return Err(Fail::invalid(format!(
                "job.key: column {:?} does not exist in table {}",
                job.key, job.table
            )));
        };
        let table_q: String = r.try_get("table_q")?;
        let relkind: String = r.try_get("relkind")?;
        if relkind != "r" && relkind != "p" {
            return Err(Fail::invalid(format!(
                "job.table: {table_q} is not a table (relkind {relkind:?}); pacer updates base tables only"
            )));
        }
        let typname: String = r.try_get("typname")?;
        let key_type = KeyType::from_typname(&typname).ok_or_else(|| {
            Fail::invalid(format!(
                "job.key: column {} has type {typname}, which pacer cannot walk (supported: {})",
                job.key,
                KeyType::SUPPORTED
            ))
        })?;
        let is_unique: bool = r.try_get("is_unique")?;
        if !is_unique {
            return Err(Fail::invalid(format!(
                "job.key: {table_q} has no unique index on ({}) alone; keyset batches need a unique, \
                 indexed key (duplicate keys would straddle batches and be skipped). Add a unique index \
                 or choose another key",
                job.key
            )));
        }
        let collation: Option<String> = if key_type == KeyType::Text {
            r.try_get("coll")?
        } else {
            None
        };
        let t = Target {
            table_q,
            key_q: r.try_get("key_q")?,
            key_name: job.key.clone(),
            key_type,
            collation,
            nullable: !r.try_get::<bool, _>("attnotnull")?,
            pending: fragment(&job.pending),
            update: job.update.clone(),
        };
        t.check_sql(conn).await?;
        t.check_nulls(conn).await?;
        Ok(t)
    }

    fn coll(&self) -> String {
        self.collation
            .as_ref()
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default()
    }

    /// Narrow keyset read: the next `$1` keys after the cursor `$2`, each
    /// with whether it is pending. Reading keys rather than only pending
    /// keys bounds every read to `read_chunk` index entries, even when
    /// pending rows are sparse.
    pub fn read_sql(&self, with_cursor: bool) -> String {
        self.read_sql_limit(with_cursor, "$1")
    }

    /// `job.pending` as a condition: a NULL answer is not pending.
    fn is_pending(&self) -> String {
        format!("coalesce(({}), false)", self.pending)
    }

    fn read_sql_limit(&self, with_cursor: bool, limit: &str) -> String {
        let (k, t, p) = (&self.key_q, &self.table_q, self.is_pending());
        let cond = if with_cursor {
            format!("{k} > ($2::{}{})", self.key_type.sql(), self.coll())
        } else {
            format!("{k} IS NOT NULL")
        };
        format!("SELECT {k}, {p} FROM {t} WHERE {cond} ORDER BY {k} LIMIT {limit}")
    }

    /// Lock the batch's rows that are free right now; the others are set
    /// aside and revisited (never skipped: they are tracked as deferred).
    pub fn lock_free_sql(&self) -> String {
        format!(
            "SELECT {k} FROM {t} WHERE {k} = ANY($1) ORDER BY {k} FOR NO KEY UPDATE SKIP LOCKED",
            k = self.key_q,
            t = self.table_q
        )
    }

    /// Which of `$1` still match `pending`.
    pub fn still_pending_sql(&self) -> String {
        format!(
            "SELECT count(*) FROM {t} WHERE {k} = ANY($1) AND {p}",
            k = self.key_q,
            t = self.table_q,
            p = self.is_pending()
        )
    }

    /// The statements prepare, and the update takes `$1` as an array of the
    /// key's type.
    async fn check_sql(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let probe = format!(
            "SELECT 1 FROM {} WHERE ({}) LIMIT 0",
            self.table_q, self.pending
        );
        let d = conn
            .describe(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(probe)))
            .await
            .map_err(|e| Fail::invalid(format!("job.pending: {}", db_message(&e))))?;
        if let Some(either) = d.parameters() {
            let n = either.map_left(|v| v.len()).into_inner();
            if n > 0 {
                return Err(Fail::invalid(
                    "job.pending: must not use parameters ($1...)",
                ));
            }
        }
        let d = conn
            .describe(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(
                self.update.clone(),
            )))
            .await
            .map_err(|e| Fail::invalid(format!("job.update: {}", db_message(&e))))?;
        let want = format!("{}[]", self.key_type.sql());
        match d.parameters() {
            Some(sqlx::Either::Left(types)) => {
                if types.len() != 1 {
                    return Err(Fail::invalid(format!(
                        "job.update: uses {} parameters; it must use exactly $1, the batch's keys",
                        types.len()
                    )));
                }
                let got = sqlx::TypeInfo::name(&types[0]).to_ascii_lowercase();
                let ok = match self.key_type {
                    KeyType::Int2 => got == "int2[]",
                    KeyType::Int4 => got == "int4[]",
                    KeyType::Int8 => got == "int8[]",
                    KeyType::Uuid => got == "uuid[]",
                    KeyType::Timestamptz => got == "timestamptz[]",
                    KeyType::Text => got == "text[]" || got == "varchar[]",
                };
                if !ok {
                    return Err(Fail::invalid(format!(
                        "job.update: $1 is used as {got}, but the batch's keys are {want} (column {} is {}); \
                         write `{} = ANY($1)`",
                        self.key_name,
                        self.key_type.sql(),
                        self.key_q
                    )));
                }
            }
            _ => {
                return Err(Fail::invalid(
                    "job.update: must use $1 (the array of the batch's keys)",
                ));
            }
        }
        Ok(())
    }

    /// NULL keys are invisible to a keyset walk: refuse if a pending row has one.
    async fn check_nulls(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if !self.nullable {
            return Ok(());
        }
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL AND {})",
            self.table_q,
            self.key_q,
            self.is_pending()
        );
        let has: bool = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        if has {
            return Err(Fail::invalid(format!(
                "job.key: {} has pending rows whose key {} is NULL; a keyset walk cannot reach them. \
                 Fill or exclude them (e.g. add `AND {} IS NOT NULL` to job.pending) first",
                self.table_q, self.key_name, self.key_q
            )));
        }
        tracing::warn!(
            key = %self.key_name,
            "key column is nullable: rows inserted later with a NULL key would be missed; consider NOT NULL"
        );
        Ok(())
    }

    /// Whether no row of the whole table matches `pending`, in one round
    /// trip: one statement, so one snapshot, which also holds back vacuum
    /// while it runs; hence the server-side `bound` (a big table's sweep
    /// is left to the keyset walk, whose reads each take a fresh snapshot).
    /// `None`: no answer within `bound`.
    pub async fn nothing_pending(
        &self,
        conn: &mut PgConnection,
        bound: std::time::Duration,
    ) -> Result<Option<bool>, sqlx::Error> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
            self.table_q,
            self.is_pending()
        );
        Ok(bounded_scalar::<bool>(conn, bound, &sql)
            .await?
            .map(|any| !any))
    }

    /// The planner's estimate of pending rows.
    pub async fn estimate_pending(&self, conn: &mut PgConnection) -> anyhow::Result<i64> {
        let plan = self
            .explain(
                conn,
                &format!("SELECT 1 FROM {} WHERE ({})", self.table_q, self.pending),
            )
            .await?;
        Ok(plan["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64)
    }

    /// `EXPLAIN (FORMAT JSON)` of a parameterless statement: the top object.
    pub async fn explain(
        &self,
        conn: &mut PgConnection,
        sql: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value =
            sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
                .fetch_one(&mut *conn)
                .await?;
        Ok(v.get(0).cloned().unwrap_or_default())
    }

    /// The first read of a pass, as literal SQL (for EXPLAIN).
    pub fn first_read_literal(&self, chunk: u32) -> String {
        self.read_sql_limit(false, &chunk.to_string())
    }

    /// Read up to `n` keys after `cursor`: (all keys read, pending keys).
    pub async fn read_chunk(
        &self,
        conn: &mut PgConnection,
        cursor: Option<&str>,
        n: u32,
    ) -> Result<(Option<String>, usize, Keys), sqlx::Error> {
        let sql = self.read_sql(cursor.is_some());
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(n as i64);
        if let Some(c) = cursor {
            q = q.bind(c);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let mut all = self.key_type.empty();
        let mut pending = self.key_type.empty();
        for r in &rows {
            all.push_from(r, 0)?;
            if r.try_get::<bool, _>(1)? {
                pending.push_from(r, 0)?;
            }
        }
        Ok((all.last_text(), rows.len(), pending))
    }
}

/// The one value of `select`, under a server-side `statement_timeout` of
/// `bound`, in one round trip: SET LOCAL holds for the implicit transaction
/// of this one simple-protocol message, and ends with it. `None`: no answer
/// within `bound` (the server cancelled it, 57014).
async fn bounded_scalar<T>(
    conn: &mut PgConnection,
    bound: std::time::Duration,
    select: &str,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let sql = format!(
        "SET LOCAL statement_timeout = {}; {select}",
        bound.as_millis().max(1)
    );
    match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
    {
        Ok(row) => Ok(Some(row.try_get::<T, _>(0)?)),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("57014") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
