//! Keys of the target table, typed as the key column is, so `$1` binds as
//! an array of the column's real type and Postgres does all ordering.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use uuid::Uuid;

/// Key column types pacer can walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Uuid,
    Timestamptz,
    /// `text` or `varchar`; compared with the column's collation.
    Text,
}

impl KeyType {
    /// From `pg_type.typname`.
    pub fn from_typname(name: &str) -> Option<KeyType> {
        Some(match name {
            "int2" => KeyType::Int2,
            "int4" => KeyType::Int4,
            "int8" => KeyType::Int8,
            "uuid" => KeyType::Uuid,
            "timestamptz" => KeyType::Timestamptz,
            "text" | "varchar" => KeyType::Text,
            _ => return None,
        })
    }

    pub const SUPPORTED: &'static str =
        "smallint, integer, bigint, uuid, timestamptz, text, varchar";

    /// SQL type a text cursor is cast to (`$2::<type>`).
    pub fn sql(&self) -> &'static str {
        match self {
            KeyType::Int2 => "smallint",
            KeyType::Int4 => "integer",
            KeyType::Int8 => "bigint",
            KeyType::Uuid => "uuid",
            KeyType::Timestamptz => "timestamptz",
            KeyType::Text => "text",
        }
    }

    pub fn empty(&self) -> Keys {
        match self {
            KeyType::Int2 => Keys::I16(Vec::new()),
            KeyType::Int4 => Keys::I32(Vec::new()),
            KeyType::Int8 => Keys::I64(Vec::new()),
            KeyType::Uuid => Keys::Uuid(Vec::new()),
            KeyType::Timestamptz => Keys::Ts(Vec::new()),
            KeyType::Text => Keys::Text(Vec::new()),
        }
    }
}

/// An ordered run of keys (in the order Postgres returned them).
#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Uuid(Vec<Uuid>),
    Ts(Vec<DateTime<Utc>>),
    Text(Vec<String>),
}

macro_rules! each {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            Keys::I16($v) => $body,
            Keys::I32($v) => $body,
            Keys::I64($v) => $body,
            Keys::Uuid($v) => $body,
            Keys::Ts($v) => $body,
            Keys::Text($v) => $body,
        }
    };
}

macro_rules! each_map {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            Keys::I16($v) => Keys::I16($body),
            Keys::I32($v) => Keys::I32($body),
            Keys::I64($v) => Keys::I64($body),
            Keys::Uuid($v) => Keys::Uuid($body),
            Keys::Ts($v) => Keys::Ts($body),
            Keys::Text($v) => Keys::Text($body),
        }
    };
}

fn ts_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Keys {
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text form of key `i`, which `$n::<type>` casts back exactly.
    pub fn text(&self, i: usize) -> Option<String> {
        match self {
            Keys::I16(v) => v.get(i).map(|k| k.to_string()),
            Keys::I32(v) => v.get(i).map(|k| k.to_string()),
            Keys::I64(v) => v.get(i).map(|k| k.to_string()),
            Keys::Uuid(v) => v.get(i).map(|k| k.to_string()),
            Keys::Ts(v) => v.get(i).map(ts_text),
            Keys::Text(v) => v.get(i).cloned(),
        }
    }

    pub fn first_text(&self) -> Option<String> {
        self.text(0)
    }

    pub fn last_text(&self) -> Option<String> {
        self.text(self.len().checked_sub(1)?)
    }

    /// Remove and return the first `n` keys.
    pub fn take_front(&mut self, n: usize) -> Keys {
        each_map!(self, v => {
            let n = n.min(v.len());
            v.drain(..n).collect()
        })
    }

    /// Append `other` (same type; a mismatch is ignored, it cannot happen
    /// because every `Keys` of a run comes from the same column).
    pub fn append(&mut self, other: Keys) {
        match (self, other) {
            (Keys::I16(a), Keys::I16(b)) => a.extend(b),
            (Keys::I32(a), Keys::I32(b)) => a.extend(b),
            (Keys::I64(a), Keys::I64(b)) => a.extend(b),
            (Keys::Uuid(a), Keys::Uuid(b)) => a.extend(b),
            (Keys::Ts(a), Keys::Ts(b)) => a.extend(b),
            (Keys::Text(a), Keys::Text(b)) => a.extend(b),
            _ => debug_assert!(false, "key type mismatch"),
        }
    }

    /// Split into (keys whose text is in `keep`, the others), order kept.
    pub fn partition(&self, keep: &std::collections::HashSet<String>) -> (Keys, Keys) {
        let mut yes = self.clone();
        let mut no = self.clone();
        let flags: Vec<bool> = (0..self.len())
            .map(|i| self.text(i).is_some_and(|t| keep.contains(&t)))
            .collect();
        fn filt<T>(v: &mut Vec<T>, flags: &[bool], want: bool) {
            let mut i = 0;
            v.retain(|_| {
                let f = flags[i] == want;
                i += 1;
                f
            });
        }
        each!(&mut yes, v => filt(v, &flags, true));
        each!(&mut no, v => filt(v, &flags, false));
        (yes, no)
    }

    /// Bind as `$n`, an array of the column's type.
    pub fn bind<'q>(
        &self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        match self {
            Keys::I16(v) => q.bind(v.clone()),
            Keys::I32(v) => q.bind(v.clone()),
            Keys::I64(v) => q.bind(v.clone()),
            Keys::Uuid(v) => q.bind(v.clone()),
            Keys::Ts(v) => q.bind(v.clone()),
            Keys::Text(v) => q.bind(v.clone()),
        }
    }

    /// Push column `col` of `row` (decoded as this run's type).
    pub fn push_from(&mut self, row: &PgRow, col: usize) -> Result<(), sqlx::Error> {
        match self {
            Keys::I16(v) => v.push(row.try_get(col)?),
            Keys::I32(v) => v.push(row.try_get(col)?),
            Keys::I64(v) => v.push(row.try_get(col)?),
            Keys::Uuid(v) => v.push(row.try_get(col)?),
            Keys::Ts(v) => v.push(row.try_get(col)?),
            Keys::Text(v) => v.push(row.try_get(col)?),
        }
        Ok(())
    }

    pub fn texts(&self) -> Vec<String> {
        (0..self.len()).filter_map(|i| self.text(i)).collect()
    }
}

impl Keys {
    /// Bind as `$1` of a scalar query.
    pub fn bind_scalar<'q, O>(
        &self,
        q: sqlx::query::QueryScalar<'q, Postgres, O, PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, Postgres, O, PgArguments> {
        match self {
            Keys::I16(v) => q.bind(v.clone()),
            Keys::I32(v) => q.bind(v.clone()),
            Keys::I64(v) => q.bind(v.clone()),
            Keys::Uuid(v) => q.bind(v.clone()),
            Keys::Ts(v) => q.bind(v.clone()),
            Keys::Text(v) => q.bind(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_partition_append() {
        let mut k = Keys::I64(vec![1, 5, 9, 12]);
        let front = k.take_front(3);
        assert_eq!(front, Keys::I64(vec![1, 5, 9]));
        assert_eq!(k, Keys::I64(vec![12]));
        let keep = ["5".to_string()].into_iter().collect();
        let (yes, no) = front.partition(&keep);
        assert_eq!(yes, Keys::I64(vec![5]));
        assert_eq!(no, Keys::I64(vec![1, 9]));
        k.append(no);
        assert_eq!(k.texts(), vec!["12", "1", "9"]);
        assert_eq!(k.last_text().as_deref(), Some("9"));
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            Keys::Ts(vec![t]).first_text().unwrap(),
            "2026-01-02T03:04:05.123456Z"
        );
    }
}
