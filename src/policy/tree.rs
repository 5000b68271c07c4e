//! The policy as a tree of values between parsing and typing: the TOML
//! file with the environment's overrides grafted on as text leaves.
//!
//! Why not the `config` crate: it coerces every way (`name = 3.14` became
//! the string "3.14", `beta = "0.5"` a number), so a wrong type in the file
//! slipped through. Here a file value must already have its key's type; only
//! an override, which is text by nature, is parsed into whatever its key
//! needs — and its text never appears in an error.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{Error, MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, Error as _, IntoDeserializer, Unexpected, Visitor};

/// One value of the policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML date or time, kept as its text: `dates = [2026-11-27]` reads
    /// like the quoted form and the window check parses it either way.
    Date(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
    /// An environment override's text, typed when its key is known.
    Env(String),
}

impl From<toml::Value> for Node {
    fn from(v: toml::Value) -> Node {
        match v {
            toml::Value::String(s) => Node::Str(s),
            toml::Value::Integer(i) => Node::Int(i),
            toml::Value::Float(f) => Node::Float(f),
            toml::Value::Boolean(b) => Node::Bool(b),
            toml::Value::Datetime(d) => Node::Date(d.to_string()),
            toml::Value::Array(a) => Node::Array(a.into_iter().map(Node::from).collect()),
            toml::Value::Table(t) => Node::table(t),
        }
    }
}

impl Node {
    pub(crate) fn table(t: toml::Table) -> Node {
        Node::Table(t.into_iter().map(|(k, v)| (k, Node::from(v))).collect())
    }

    /// What the value is, for "expected X, found Y" messages (never the
    /// value itself: it may be huge or secret).
    fn unexpected(&self) -> Unexpected<'static> {
        match self {
            Node::Str(_) => Unexpected::Other("a string"),
            Node::Int(_) => Unexpected::Other("an integer"),
            Node::Float(_) => Unexpected::Other("a floating point number"),
            Node::Bool(_) => Unexpected::Other("a boolean"),
            Node::Date(_) => Unexpected::Other("a date"),
            Node::Array(_) => Unexpected::Other("an array"),
            Node::Table(_) => Unexpected::Other("a table"),
            Node::Env(_) => Unexpected::Other("an environment override"),
        }
    }
}

impl<'de> IntoDeserializer<'de, Error> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

/// An override's text that is not what its key needs. The message names
/// the type only: the text may be a secret.
fn bad_env(what: &str) -> Error {
    Error::custom(format!(
        "invalid value from the environment, expected {what}"
    ))
}

/// Integers from an override, in whatever width the key asks for.
fn env_int<'de, V: Visitor<'de>>(text: &str, visitor: V) -> Result<V::Value, Error> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        visitor.visit_i64(i)
    } else if let Ok(u) = t.parse::<u64>() {
        visitor.visit_u64(u)
    } else {
        Err(bad_env("an integer"))
    }
}

fn env_float<'de, V: Visitor<'de>>(text: &str, visitor: V) -> Result<V::Value, Error> {
    match text.trim().parse::<f64>() {
        Ok(f) => visitor.visit_f64(f),
        Err(_) => Err(bad_env("a number")),
    }
}

macro_rules! env_ints {
    ($($name:ident)*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Node::Env(t) => env_int(&t, visitor),
                other => other.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Str(s) | Node::Date(s) | Node::Env(s) => visitor.visit_string(s),
            Node::Int(i) => visitor.visit_i64(i),
            Node::Float(f) => visitor.visit_f64(f),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Node::Table(map) => {
                let mut m = MapDeserializer::new(map.into_iter());
                let v = visitor.visit_map(&mut m)?;
                m.end()?;
                Ok(v)
            }
        }
    }

    env_ints! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env(t) => env_float(&t, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env(t) => match t.trim() {
                "true" => visitor.visit_bool(true),
                "false" => visitor.visit_bool(false),
                _ => Err(bad_env("true or false")),
            },
            other => other.deserialize_any(visitor),
        }
    }

    /// A present key is `Some`; absence is handled by `#[serde(default)]`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// Unit variants written as strings (`on_missing = "hold"`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Str(s) | Node::Env(s) => {
                let d: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                visitor.visit_enum(d)
            }
            other => Err(Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env(_) => Err(not_from_env("a list")),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Env(_) => Err(not_from_env("a table")),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}

fn not_from_env(what: &str) -> Error {
    Error::custom(format!(
        "is {what}, which cannot be set from the environment: edit the file"
    ))
}

/// Renders a node's kind for messages about where an override cannot go.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unexpected() {
            Unexpected::Other(s) => f.write_str(s),
            u => write!(f, "{u}"),
        }
    }
}
