//! The simulated database: how live load and backfill rate turn into the
//! true values of latency, replica lag and lock waits. Parameters come from
//! `sim/model.toml`; the controller never sees them.

use serde::Deserialize;

/// The checked-in model, embedded so the binary works from any directory.
pub const DEFAULT_MODEL: &str = include_str!("../../sim/model.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub latency: LatencyModel,
    pub backfill: BackfillModel,
    pub wal: WalModel,
    pub locks: LockModel,
    pub errors: ErrorModel,
    pub health: HealthModel,
    pub measurement: MeasurementModel,
    pub jitter: JitterModel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyModel {
    pub base: f64,
    pub k: f64,
    pub u_max: f64,
    pub cap: f64,
    pub requests_per_load: f64,
    pub spread: f64,
    pub bucket_start: f64,
    pub bucket_factor: f64,
    pub bucket_count: u32,
}

impl LatencyModel {
    /// Upper bounds of the histogram's finite buckets (+Inf above).
    pub fn bucket_bounds(&self) -> Vec<f64> {
        (0..self.bucket_count)
            .map(|i| self.bucket_start * self.bucket_factor.powi(i as i32))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillModel {
    pub cost_per_row: f64,
    pub cost_per_batch: f64,
    pub batch_overhead: f64,
    pub row_time: f64,
    pub lock_wait_per_row: f64,
    pub time_noise: f64,
    pub drift_sd: f64,
    pub drift_tau: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalModel {
    pub live_bytes_per_load: f64,
    pub bytes_per_row: f64,
    pub replay_bytes_per_second: f64,
    pub network_lag: f64,
    pub cdc_bytes_per_second: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockModel {
    pub live_writes_per_load: f64,
    pub hot_rows: f64,
    pub background_waiters_per_load: f64,
    pub timeout_per_row_load: f64,
    pub deadlock_per_row_worker: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorModel {
    pub base: f64,
    pub knee: f64,
    pub slope: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthModel {
    pub fail_above_utilisation: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementModel {
    pub prometheus_window: f64,
    pub scrape_interval: f64,
    pub heartbeat_interval: f64,
    pub sample_noise: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitterModel {
    pub sd: f64,
    pub tau: f64,
}

impl Model {
    /// Parse and sanity-check a model file; `name` labels errors.
    pub fn from_toml(name: &str, text: &str) -> anyhow::Result<Model> {
        let m: Model = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.to_string().trim_end()))?;
        let positive = [
            ("latency.base", m.latency.base),
            ("latency.cap", m.latency.cap),
            ("backfill.row_time", m.backfill.row_time),
            ("wal.replay_bytes_per_second", m.wal.replay_bytes_per_second),
            ("locks.hot_rows", m.locks.hot_rows),
            (
                "measurement.prometheus_window",
                m.measurement.prometheus_window,
            ),
            ("measurement.scrape_interval", m.measurement.scrape_interval),
            ("jitter.tau", m.jitter.tau),
            ("latency.requests_per_load", m.latency.requests_per_load),
            ("latency.spread", m.latency.spread),
            ("latency.bucket_start", m.latency.bucket_start),
            ("backfill.drift_tau", m.backfill.drift_tau),
            ("wal.cdc_bytes_per_second", m.wal.cdc_bytes_per_second),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("{name}: {k} = {v} must be a positive number");
            }
        }
        let non_negative = [
            ("backfill.time_noise", m.backfill.time_noise),
            ("backfill.drift_sd", m.backfill.drift_sd),
            ("locks.timeout_per_row_load", m.locks.timeout_per_row_load),
            (
                "locks.deadlock_per_row_worker",
                m.locks.deadlock_per_row_worker,
            ),
            (
                "measurement.heartbeat_interval",
                m.measurement.heartbeat_interval,
            ),
        ];
        for (k, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("{name}: {k} = {v} must be a number ≥ 0");
            }
        }
        if !(m.latency.bucket_factor.is_finite() && m.latency.bucket_factor > 1.0) {
            anyhow::bail!(
                "{name}: latency.bucket_factor = {} must be greater than 1",
                m.latency.bucket_factor
            );
        }
        if !(1..=200).contains(&m.latency.bucket_count) {
            anyhow::bail!(
                "{name}: latency.bucket_count = {} must be between 1 and 200",
                m.latency.bucket_count
            );
        }
        if !(m.latency.u_max > 0.0 && m.latency.u_max < 1.0) {
            anyhow::bail!(
                "{name}: latency.u_max = {} must be between 0 and 1",
                m.latency.u_max
            );
        }
        Ok(m)
    }

    pub fn builtin() -> Model {
        Model::from_toml("sim/model.toml", DEFAULT_MODEL).expect("the checked-in model is valid")
    }

    fn clamp_u(&self, u: f64) -> f64 {
        u.clamp(0.0, self.latency.u_max)
    }

    /// Primary utilisation with the backfill at `rate` rows/s in batches of `batch`.
    pub fn utilisation(&self, live: f64, rate: f64, batch: f64) -> f64 {
        let b = &self.backfill;
        live + rate * b.cost_per_row
            + if batch > 0.0 {
                rate / batch * b.cost_per_batch
            } else {
                0.0
            }
    }

    /// Mean seconds one batch of `batch` rows takes at utilisation `u`,
    /// with the day's cost drift `drift` (1.0 = nominal).
    pub fn batch_time(&self, batch: f64, u: f64, c: &Conditions) -> f64 {
        let b = &self.backfill;
        b.batch_overhead
            + batch
                * (b.row_time * c.drift / (1.0 - self.clamp_u(u)) + b.lock_wait_per_row * c.live)
    }

    /// Chance that one batch fails (lock timeout, deadlock), as
    /// (lock timeout, deadlock).
    pub fn batch_error_odds(&self, batch: f64, live: f64, workers: f64) -> (f64, f64) {
        let l = &self.locks;
        let timeout = 1.0 - (-batch * live * l.timeout_per_row_load).exp();
        let deadlock = 1.0 - (-batch * (workers - 1.0).max(0.0) * l.deadlock_per_row_worker).exp();
        (timeout, deadlock)
    }

    /// Backfill rate the knobs deliver at live load `live`: the fixed point
    /// of rate → utilisation → batch time → rate (damped iteration; the loop
    /// is stable because a busier primary makes batches slower).
    pub fn knob_rate(&self, c: &Conditions, batch: f64, sleep: f64, workers: f64) -> (f64, f64) {
        let live = c.live;
        let mut u = live;
        let mut rate = 0.0;
        let mut bt = self.batch_time(batch, u, c);
        for _ in 0..12 {
            bt = self.batch_time(batch, u, c);
            rate = workers * batch / (bt + sleep);
            let target = self.utilisation(live, rate, batch);
            u = 0.5 * u + 0.5 * target;
        }
        (rate, bt)
    }

    pub fn latency(&self, u: f64) -> f64 {
        let u = self.clamp_u(u);
        (self.latency.base * (1.0 + self.latency.k * u / (1.0 - u))).min(self.latency.cap)
    }

    pub fn error_rate(&self, u: f64) -> f64 {
        let e = &self.errors;
        let over = ((u - e.knee) / (1.0 - e.knee).max(1e-9)).clamp(0.0, 1.0);
        e.base + e.slope * over
    }

    /// Waiters on row locks: (background, caused by the backfill).
    pub fn lock_waiters(&self, live: f64, rate: f64, bt: f64) -> (f64, f64) {
        let l = &self.locks;
        let writes = l.live_writes_per_load * live;
        let held_rows = rate * bt / 2.0;
        let pacer = writes * (held_rows / l.hot_rows).min(1.0) * bt / 2.0;
        (l.background_waiters_per_load * live, pacer)
    }
}

/// True (noise-free, undelayed) values at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Truth {
    /// Live load (fraction of capacity): how many requests were served.
    pub live: f64,
    pub utilisation: f64,
    pub latency: f64,
    pub error_rate: f64,
    pub lag_seconds: f64,
    pub lag_bytes: f64,
    /// Bytes a logical replication slot's consumer is behind.
    pub slot_lag_bytes: f64,
    pub lock_waiters: f64,
    pub blocked_by_pacer: f64,
    pub wal_bytes_per_second: f64,
    /// 1 = the health check fails, 0 = healthy.
    pub http: f64,
}

/// What the scenario says about one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Live load, fraction of capacity.
    pub live: f64,
    /// Replay capacity, fraction of the model's nominal.
    pub replay: f64,
    /// The scenario forces the health check down.
    pub health_down: bool,
    /// Cost per backfilled row relative to the model's nominal (slow drift).
    pub drift: f64,
}

/// The database's state carried between ticks: the replica's backlog.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plant {
    pub lag_bytes: f64,
    pub slot_lag_bytes: f64,
}

impl Plant {
    /// Truth after `dt` seconds of backfill at `rate` rows/s in batches of
    /// `batch` rows taking `bt` seconds each; advances the replica backlog.
    pub fn advance(
        &mut self,
        m: &Model,
        c: &Conditions,
        rate: f64,
        batch: f64,
        bt: f64,
        dt: f64,
    ) -> Truth {
        let t = self.peek(m, c, rate, batch, bt, dt);
        self.lag_bytes = t.lag_bytes;
        self.slot_lag_bytes = t.slot_lag_bytes;
        t
    }

    /// As `advance` without changing the state (for the oracle's search).
    pub fn peek(
        &self,
        m: &Model,
        c: &Conditions,
        rate: f64,
        batch: f64,
        bt: f64,
        dt: f64,
    ) -> Truth {
        let u = m.utilisation(c.live, rate, batch);
        let wal = c.live * m.wal.live_bytes_per_load + rate * m.wal.bytes_per_row;
        let replay = (m.wal.replay_bytes_per_second * c.replay).max(1.0);
        let lag_bytes = (self.lag_bytes + (wal - replay) * dt).max(0.0);
        let slot_lag_bytes =
            (self.slot_lag_bytes + (wal - m.wal.cdc_bytes_per_second) * dt).max(0.0);
        let (bg, pacer) = if rate > 0.0 {
            m.lock_waiters(c.live, rate, bt)
        } else {
            m.lock_waiters(c.live, 0.0, 0.0)
        };
        Truth {
            live: c.live,
            utilisation: u,
            latency: m.latency(u),
            error_rate: m.error_rate(u),
            lag_seconds: lag_bytes / replay + m.wal.network_lag,
            lag_bytes,
            slot_lag_bytes,
            lock_waiters: bg + pacer,
            blocked_by_pacer: pacer,
            wal_bytes_per_second: wal,
            http: if c.health_down || u > m.health.fail_above_utilisation {
                1.0
            } else {
                0.0
            },
        }
    }
}
