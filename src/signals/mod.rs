//! Readings of production health. A source produces one `Reading` per tick;
//! a missing or stale reading is a first-class value, never a silent zero.
//!
//! Sources: `prometheus` (any PromQL that yields one number), `postgres`
//! (built-ins read from the primary), `heartbeat` (replication lag measured
//! with pacer's own sequence numbers), `http` (gh-ost style throttle check).
//! `baseline` measures the "normal" value that relative levels refer to;
//! `warmup` fetches the readings from before a run that prime its estimates.

pub mod baseline;
pub mod heartbeat;
pub mod http;
pub mod postgres;
pub mod prometheus;
pub mod promql;
pub mod resolution;
pub mod warmup;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::policy::{Policy, Signal, Source as Kind};

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

    /// Signal names, in the order `sample` returns readings.
    pub fn names(&self) -> Vec<&str> {
        self.sources.iter().map(|(s, _)| s.name()).collect()
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

/// Connections and settings the signal sources need at run time. Everything
/// else (job name, target table, replicas, Prometheus) comes from the policy.
pub struct Context {
    /// Pool on the primary (pacer's own connection). Signal sources open
    /// their own small pool with the same options, so busy workers never
    /// starve a health check of a connection.
    pub pool: Option<sqlx::PgPool>,
}

/// The `application_name` pacer's workers carry; `blocked_by_pacer` looks
/// for exactly this name. Postgres keeps at most 63 bytes of it, so the
/// name is cut the same way to still match for long job names.
pub fn worker_application_name(job: &str) -> String {
    crate::store::runner_app_name(job)
}

/// Build the sampler for a policy's `[[signal]]`s, in policy order. Fails
/// only on configuration problems (no database for a Postgres signal, no
/// replicas for replication lag, a bad Prometheus URL); a source that is
/// merely unreachable yields missing readings instead.
pub async fn build_sampler(policy: &Policy, ctx: &Context) -> anyhow::Result<Sampler> {
    let mut shared = Shared::default();
    let mut sources: Vec<(Box<dyn Source>, Duration)> = Vec::new();
    for s in &policy.signals {
        sources.push((build_source(policy, s, ctx, &mut shared).await?, s.timeout));
    }
    Ok(Sampler::new(sources))
}

/// Baselines for relative levels, by signal name: fixed `baseline` keys
/// first, measured history otherwise (see `baseline`).
pub async fn capture_baselines(
    policy: &Policy,
    ctx: &Context,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    baseline::capture(policy, ctx).await
}

/// Resources several sources of one sampler share: one signal pool on the
/// primary, one heartbeat however many lag signals use it.
#[derive(Default)]
pub(crate) struct Shared {
    pool: Option<sqlx::PgPool>,
    heartbeat: Option<Arc<heartbeat::Heartbeat>>,
    prometheus: Option<prometheus::Prometheus>,
}

impl Shared {
    fn pool(
        &mut self,
        policy: &Policy,
        ctx: &Context,
        signal: &str,
    ) -> anyhow::Result<sqlx::PgPool> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        let Some(base) = &ctx.pool else {
            anyhow::bail!(
                "signal {signal:?}: a postgres signal needs a database connection (database.url or DATABASE_URL)"
            );
        };
        let opts = (*base.connect_options()).clone().application_name(&format!(
            "{}:signals",
            worker_application_name(&policy.job.name)
        ));
        let pool = postgres::small_pool(opts);
        self.pool = Some(pool.clone());
        Ok(pool)
    }
}

pub(crate) async fn build_source(
    policy: &Policy,
    s: &Signal,
    ctx: &Context,
    shared: &mut Shared,
) -> anyhow::Result<Box<dyn Source>> {
    let name = s.name.clone();
    Ok(match s.source() {
        Some(Kind::Prometheus(q)) => {
            if shared.prometheus.is_none() {
                shared.prometheus = Some(
                    prometheus::Prometheus::new(&policy.prometheus)
                        .map_err(|e| anyhow::anyhow!("signal {name:?}: {e}"))?,
                );
            }
            let client = shared.prometheus.clone().expect("set above");
            Box::new(prometheus::PromSource::new(name, q.to_string(), client))
        }
        Some(Kind::Http(url)) => Box::new(
            http::HttpCheck::new(name.clone(), url, s.timeout)
                .map_err(|e| anyhow::anyhow!("signal {name:?}: {e}"))?,
        ),
        Some(Kind::Postgres("replication_lag_seconds")) => {
            if policy.database.replicas.is_empty() {
                anyhow::bail!(
                    "signal {name:?}: replication_lag_seconds reads pacer's heartbeat on each replica; list them in database.replicas"
                );
            }
            let hb = match &shared.heartbeat {
                Some(h) => h.clone(),
                None => {
                    let Some(base) = &ctx.pool else {
                        anyhow::bail!(
                            "signal {name:?}: the heartbeat needs a database connection (database.url or DATABASE_URL)"
                        );
                    };
                    let h = Arc::new(
                        heartbeat::Heartbeat::start(
                            base,
                            &policy.database.schema,
                            &policy.job.name,
                            &policy.database.replicas,
                            heartbeat::DEFAULT_INTERVAL,
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("signal {name:?}: {e:#}"))?,
                    );
                    shared.heartbeat = Some(h.clone());
                    h
                }
            };
            Box::new(heartbeat::LagSource::new(name, hb))
        }
        Some(Kind::Postgres(builtin)) => {
            let pool = shared.pool(policy, ctx, &name)?;
            let b = postgres::Builtin::new(name.clone(), builtin, pool, policy)
                .map_err(|e| anyhow::anyhow!("signal {name:?}: {e}"))?;
            b.prime().await;
            Box::new(b)
        }
        None => anyhow::bail!("signal {name:?}: needs exactly one source"),
    })
}

/// An error and its causes on one line: library errors often hide the
/// useful part ("connection refused") in `source()`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_application_name_is_cut_like_postgres_does() {
        assert_eq!(super::worker_application_name("demo"), "pacer:demo");
        let long = "j".repeat(100);
        assert_eq!(super::worker_application_name(&long).len(), 63);
    }
}
