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
    /// Consecutive bigint keys `start..end`, held as two numbers: the
    /// simulator's table (millions of keys a minute) hands these to the
    /// `Job`. The same keys as `I64` of them; the database never returns
    /// one, and one becomes `I64` as soon as it is not a plain run.
    I64Run(std::ops::Range<i64>),
    Uuid(Vec<Uuid>),
    Ts(Vec<DateTime<Utc>>),
    Text(Vec<String>),
}

/// `$self` must not be an `I64Run` (see `Keys::as_list`).
macro_rules! each {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            Keys::I16($v) => $body,
            Keys::I32($v) => $body,
            Keys::I64($v) => $body,
            Keys::Uuid($v) => $body,
            Keys::Ts($v) => $body,
            Keys::Text($v) => $body,
            Keys::I64Run(_) => unreachable!("a run is made a list first"),
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
            Keys::I64Run(_) => unreachable!("a run is made a list first"),
        }
    };
}

fn ts_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Keys {
    pub fn len(&self) -> usize {
        match self {
            Keys::I64Run(r) => (r.end - r.start).max(0) as usize,
            _ => each!(self, v => v.len()),
        }
    }

    /// A run as the plain list of its keys (anything else unchanged).
    fn as_list(&mut self) {
        if let Keys::I64Run(r) = self {
            *self = Keys::I64(r.clone().collect());
        }
    }

    /// The keys as bigints, if they are (a run is listed).
    pub fn i64s(&self) -> Option<std::borrow::Cow<'_, [i64]>> {
        match self {
            Keys::I64(v) => Some(std::borrow::Cow::Borrowed(v)),
            Keys::I64Run(r) => Some(std::borrow::Cow::Owned(r.clone().collect())),
            _ => None,
        }
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
            Keys::I64Run(r) => (i < self.len()).then(|| (r.start + i as i64).to_string()),
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
        if let Keys::I64Run(r) = self {
            let mid = r.start + n.min(self.len()) as i64;
            let Keys::I64Run(r) = self else {
                unreachable!()
            };
            let front = r.start..mid;
            r.start = mid;
            return Keys::I64Run(front);
        }
        each_map!(self, v => {
            let n = n.min(v.len());
            v.drain(..n).collect()
        })
    }

    /// Append `other` (same type; a mismatch is ignored, it cannot happen
    /// because every `Keys` of a run comes from the same column).
    pub fn append(&mut self, other: Keys) {
        if other.is_empty() {
            return;
        }
        let bigints = |k: &Keys| matches!(k, Keys::I64(_) | Keys::I64Run(_));
        if self.is_empty() && (bigints(self) == bigints(&other)) {
            *self = other;
            return;
        }
        match (&mut *self, other) {
            (Keys::I64Run(a), Keys::I64Run(b)) if a.end == b.start => a.end = b.end,
            (Keys::I64(a), Keys::I64Run(b)) => a.extend(b),
            (Keys::I64Run(_), other) => {
                self.as_list();
                self.append(other);
            }
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
        yes.as_list();
        let mut no = yes.clone();
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
            Keys::I64Run(r) => q.bind(r.clone().collect::<Vec<i64>>()),
        }
    }

    /// Push column `col` of `row` (decoded as this run's type).
    pub fn push_from(&mut self, row: &PgRow, col: usize) -> Result<(), sqlx::Error> {
        self.as_list();
        match self {
            Keys::I16(v) => v.push(row.try_get(col)?),
            Keys::I32(v) => v.push(row.try_get(col)?),
            Keys::I64(v) => v.push(row.try_get(col)?),
            Keys::Uuid(v) => v.push(row.try_get(col)?),
            Keys::Ts(v) => v.push(row.try_get(col)?),
            Keys::Text(v) => v.push(row.try_get(col)?),
            Keys::I64Run(_) => unreachable!("listed above"),
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
            Keys::I64Run(r) => q.bind(r.clone().collect::<Vec<i64>>()),
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
    fn a_run_is_the_same_keys_as_their_list() {
        let mut k = Keys::I64(Vec::new());
        k.append(Keys::I64Run(10..14));
        assert_eq!(k, Keys::I64Run(10..14), "an empty list takes the run");
        k.append(Keys::I64Run(14..16));
        assert_eq!(k.len(), 6);
        let front = k.take_front(4);
        assert_eq!(front, Keys::I64Run(10..14));
        assert_eq!(front.texts(), vec!["10", "11", "12", "13"]);
        assert_eq!(k.first_text().as_deref(), Some("14"));
        assert_eq!(k.last_text().as_deref(), Some("15"));
        assert_eq!(k.text(2), None);
        k.append(Keys::I64(vec![3]));
        assert_eq!(k, Keys::I64(vec![14, 15, 3]), "not a run any more");
        let mut d = Keys::I64Run(5..5);
        d.append(Keys::I64(vec![7, 9]));
        assert_eq!(d, Keys::I64(vec![7, 9]));
        let keep = ["12".to_string()].into_iter().collect();
        assert_eq!(
            front.partition(&keep),
            (Keys::I64(vec![12]), Keys::I64(vec![10, 11, 13]))
        );
        assert_eq!(Keys::I64Run(1..3).i64s().unwrap().as_ref(), &[1, 2]);
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
