//! How pacer sees the simulated database: each policy signal maps to a
//! simulated counterpart, read through a pipeline that imitates its real
//! source (a Prometheus rate window and scrape, a heartbeat, a sample).

use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;

use super::model::{Model, Truth};
use super::scenario::{normal, poisson};
use crate::policy::Signal;

/// Simulated counterparts of policy signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimKind {
    Latency,
    ErrorRate,
    LagSeconds,
    LagBytes,
    LockWaiters,
    BlockedByPacer,
    WalBytesPerSecond,
    Http,
}

impl SimKind {
    /// The counterpart of `signal`, or an error naming the signal.
    pub fn of(signal: &Signal) -> anyhow::Result<SimKind> {
        let Some(kind) = signal.sim_kind() else {
            anyhow::bail!(
                "signal {:?} has no simulated counterpart: add sim = \"latency\" (or another of {}) to it",
                signal.name,
                crate::policy::SIM_HINTS.join(", ")
            );
        };
        Ok(match kind {
            "latency" => SimKind::Latency,
            "error_rate" => SimKind::ErrorRate,
            "replication_lag_seconds" => SimKind::LagSeconds,
            "replication_lag_bytes" => SimKind::LagBytes,
            "lock_waiters" => SimKind::LockWaiters,
            "blocked_by_pacer" => SimKind::BlockedByPacer,
            "wal_bytes_per_second" => SimKind::WalBytesPerSecond,
            "http" => SimKind::Http,
            other => anyhow::bail!(
                "signal {:?}: {other:?} has no simulated counterpart; simulated: {}",
                signal.name,
                crate::policy::SIM_HINTS.join(", ")
            ),
        })
    }

    pub fn value(self, t: &Truth) -> f64 {
        match self {
            SimKind::Latency => t.latency,
            SimKind::ErrorRate => t.error_rate,
            SimKind::LagSeconds => t.lag_seconds,
            SimKind::LagBytes => t.lag_bytes,
            SimKind::LockWaiters => t.lock_waiters,
            SimKind::BlockedByPacer => t.blocked_by_pacer,
            SimKind::WalBytesPerSecond => t.wal_bytes_per_second,
            SimKind::Http => t.http,
        }
    }

    /// Whether the value depends on batch size at a given rate (then the
    /// safe-rate oracle searches over batch sizes too).
    pub fn batch_sensitive(self) -> bool {
        matches!(self, SimKind::LockWaiters | SimKind::BlockedByPacer)
    }
}

/// One signal's measurement pipeline.
#[derive(Debug, Clone)]
pub struct Meter {
    kind: SimKind,
    /// Prometheus-style sources: the rate window of true values.
    window: VecDeque<f64>,
    window_len: usize,
    window_sum: f64,
    /// Ticks between scrapes, and ticks since the last one.
    scrape_every: usize,
    since_scrape: usize,
    published: Option<f64>,
}

impl Meter {
    pub fn new(kind: SimKind, m: &Model, dt: f64) -> Meter {
        let prom = matches!(kind, SimKind::Latency | SimKind::ErrorRate);
        let window_len = if prom {
            (m.measurement.prometheus_window / dt).round().max(1.0) as usize
        } else if kind == SimKind::WalBytesPerSecond {
            // pg_stat_wal differences over the sampling interval.
            (10.0 / dt).round().max(1.0) as usize
        } else {
            1
        };
        Meter {
            kind,
            window: VecDeque::with_capacity(window_len + 1),
            window_len,
            window_sum: 0.0,
            scrape_every: if prom {
                (m.measurement.scrape_interval / dt).round().max(1.0) as usize
            } else {
                1
            },
            since_scrape: usize::MAX / 2,
            published: None,
        }
    }

    /// Feed this tick's truth; returns what a reading now would say
    /// (`None` until the first scrape).
    pub fn observe(&mut self, t: &Truth, m: &Model, rng: &mut ChaCha8Rng) -> Option<f64> {
        let v = self.kind.value(t);
        self.window.push_back(v);
        self.window_sum += v;
        if self.window.len() > self.window_len {
            self.window_sum -= self.window.pop_front().unwrap_or_default();
        }
        let avg = self.window_sum / self.window.len() as f64;
        let ms = &m.measurement;
        self.since_scrape += 1;
        if self.since_scrape >= self.scrape_every {
            self.since_scrape = 0;
            self.published = Some(match self.kind {
                SimKind::Latency | SimKind::ErrorRate => {
                    (avg * (1.0 + ms.prometheus_noise * normal(rng))).max(0.0)
                }
                SimKind::LagSeconds => {
                    // Heartbeat reading: late by up to one heartbeat interval.
                    let u: f64 = rand::RngExt::random(rng);
                    v + u * ms.heartbeat_interval
                }
                SimKind::LagBytes | SimKind::WalBytesPerSecond => {
                    (avg * (1.0 + ms.sample_noise * normal(rng))).max(0.0)
                }
                SimKind::LockWaiters | SimKind::BlockedByPacer => poisson(rng, v),
                SimKind::Http => v,
            });
        }
        self.published
    }
}
