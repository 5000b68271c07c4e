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

/// A source of readings for one signal (Prometheus query, Postgres
/// built-in, HTTP check, ...). Implementations never fail: a problem is a
/// missing reading with a reason.
pub trait Source: Send + Sync {
    /// The policy's name for the signal.
    fn name(&self) -> &str;
    /// Take one reading. The sampler bounds it with the signal's timeout.
    fn read(&self) -> futures::future::BoxFuture<'_, Reading>;
}

/// Reads every source concurrently, each bounded by its own timeout, so one
/// slow source never delays the others or the tick.
pub struct Sampler {
    sources: Vec<(Box<dyn Source>, std::time::Duration)>,
}

impl Sampler {
    pub fn new(sources: Vec<(Box<dyn Source>, std::time::Duration)>) -> Sampler {
        Sampler { sources }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// One reading per source, in the order given to `new`.
    pub async fn sample(&self) -> Vec<Reading> {
        let reads = self.sources.iter().map(|(src, timeout)| async move {
            match tokio::time::timeout(*timeout, src.read()).await {
                Ok(r) => r,
                Err(_) => Reading::missing(
                    format!("no answer within {}", humantime::format_duration(*timeout)),
                    Utc::now(),
                ),
            }
        });
        futures::future::join_all(reads).await
    }
}

/// Connections and settings the signal sources need at run time.
pub struct Context {
    /// Pool on the primary (pacer's own connection).
    pub pool: Option<sqlx::PgPool>,
}

/// Build the sampler for a policy's `[[signal]]`s, in policy order.
pub async fn build_sampler(
    policy: &crate::policy::Policy,
    _ctx: &Context,
) -> anyhow::Result<Sampler> {
    if let Some(s) = policy.signals.first() {
        anyhow::bail!(
            "signal {:?}: live signal sources are not available in this build",
            s.name
        );
    }
    Ok(Sampler::new(Vec::new()))
}

/// Baselines for relative levels, by signal name: fixed `baseline` keys
/// first, measured history otherwise.
pub async fn capture_baselines(
    policy: &crate::policy::Policy,
    _ctx: &Context,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for s in &policy.signals {
        match s.baseline {
            Some(b) => {
                out.insert(s.name.clone(), b);
            }
            None if s.needs_baseline() => anyhow::bail!(
                "signal {:?}: relative levels need a measured baseline, which this build cannot capture yet; set `baseline = <number>`",
                s.name
            ),
            None => {}
        }
    }
    Ok(out)
}
