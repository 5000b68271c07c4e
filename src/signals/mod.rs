//! Readings of production health. A source produces one `Reading` per tick;
//! a missing or stale reading is a first-class value, never a silent zero.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One observation of one signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// `None` when the source could not say (empty result, NaN, timeout...).
    pub value: Option<f64>,
    /// When the value was observed.
    pub at: DateTime<Utc>,
    /// Why the value is missing, for the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

impl Reading {
    pub fn value(value: f64, at: DateTime<Utc>) -> Reading {
        if value.is_finite() {
            Reading {
                value: Some(value),
                at,
                missing: None,
            }
        } else {
            Reading::missing(format!("value is {value}"), at)
        }
    }

    pub fn missing(reason: impl Into<String>, at: DateTime<Utc>) -> Reading {
        Reading {
            value: None,
            at,
            missing: Some(reason.into()),
        }
    }
}
