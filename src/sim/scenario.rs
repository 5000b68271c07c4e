//! Scenarios: the day production has, independent of the backfill. A
//! scenario file gives curves in local time; `Trace` samples them per tick.

use std::time::Duration;

use chrono::{NaiveDate, NaiveTime};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::model::{Conditions, Model};

/// The checked-in scenarios, embedded so the binary works from any directory.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "business-day",
        include_str!("../../sim/scenarios/business-day.toml"),
    ),
    (
        "replica-storm",
        include_str!("../../sim/scenarios/replica-storm.toml"),
    ),
    ("steady", include_str!("../../sim/scenarios/steady.toml")),
    (
        "flash-crowds",
        include_str!("../../sim/scenarios/flash-crowds.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    date: String,
    start: String,
    #[serde(with = "humantime_serde")]
    duration: Duration,
    load: Vec<(String, f64)>,
    #[serde(default)]
    replay: Vec<(String, f64)>,
    /// Local `[from, until]` spans when the health check fails regardless.
    #[serde(default)]
    health_down: Vec<(String, String)>,
}

/// A parsed scenario; curve points are seconds since local midnight of `date`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub date: NaiveDate,
    pub start: NaiveTime,
    pub duration: Duration,
    load: Vec<(f64, f64)>,
    replay: Vec<(f64, f64)>,
    health_down: Vec<(f64, f64)>,
}

impl Scenario {
    /// A built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> anyhow::Result<Scenario> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::from_toml(name_or_path, text);
        }
        let path = std::path::Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("scenario {}: cannot read: {e}", path.display()))?;
            return Scenario::from_toml(&path.display().to_string(), &text);
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        anyhow::bail!(
            "unknown scenario {name_or_path:?}: not a built-in ({}) and no such file",
            names.join(", ")
        )
    }

    pub fn from_toml(label: &str, text: &str) -> anyhow::Result<Scenario> {
        let raw: RawScenario = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("scenario {label}: {}", e.to_string().trim_end()))?;
        let bad = |k: &str, m: String| anyhow::anyhow!("scenario {label}: {k}: {m}");
        let date = NaiveDate::parse_from_str(&raw.date, "%Y-%m-%d").map_err(|_| {
            bad(
                "date",
                format!("{:?} is not a date like 2026-11-24", raw.date),
            )
        })?;
        let time = |k: &str, t: &str| -> anyhow::Result<f64> {
            let t = NaiveTime::parse_from_str(t, "%H:%M:%S")
                .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
                .map_err(|_| bad(k, format!("{t:?} is not a time like 09:30 or 09:30:15")))?;
            Ok(chrono::Timelike::num_seconds_from_midnight(&t) as f64)
        };
        let start = NaiveTime::parse_from_str(&raw.start, "%H:%M")
            .map_err(|_| bad("start", format!("{:?} is not a time like 08:00", raw.start)))?;
        if raw.duration.is_zero() {
            return Err(bad("duration", "must be greater than 0".into()));
        }
        let curve =
            |k: &str, pts: &[(String, f64)], lo: f64, hi: f64| -> anyhow::Result<Vec<(f64, f64)>> {
                let mut out: Vec<(f64, f64)> = Vec::new();
                for (t, v) in pts {
                    let s = time(k, t)?;
                    if !(v.is_finite() && *v >= lo && *v <= hi) {
                        return Err(bad(k, format!("value {v} at {t} is outside {lo} ..= {hi}")));
                    }
                    if out.last().is_some_and(|(p, _)| *p >= s) {
                        return Err(bad(k, format!("{t} is not after the previous point")));
                    }
                    out.push((s, *v));
                }
                Ok(out)
            };
        if raw.load.is_empty() {
            return Err(bad("load", "needs at least one point".into()));
        }
        let load = curve("load", &raw.load, 0.0, 0.99)?;
        let mut replay = curve("replay", &raw.replay, 0.01, 10.0)?;
        if replay.is_empty() {
            replay.push((0.0, 1.0));
        }
        let health_down = raw
            .health_down
            .iter()
            .map(|(a, b)| Ok((time("health_down", a)?, time("health_down", b)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            date,
            start,
            duration: raw.duration,
            load,
            replay,
            health_down,
        })
    }

    /// Conditions at `secs` seconds since local midnight (may be negative or
    /// beyond a day: the curves hold their end values), without jitter.
    pub fn at(&self, secs: f64) -> Conditions {
        Conditions {
            live: interpolate(&self.load, secs),
            replay: interpolate(&self.replay, secs),
            health_down: self
                .health_down
                .iter()
                .any(|(a, b)| secs >= *a && secs < *b),
            drift: 1.0,
        }
    }
}

fn interpolate(pts: &[(f64, f64)], x: f64) -> f64 {
    match pts.iter().position(|(t, _)| *t > x) {
        None => pts.last().map_or(0.0, |p| p.1),
        Some(0) => pts[0].1,
        Some(i) => {
            let (x0, y0) = pts[i - 1];
            let (x1, y1) = pts[i];
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        }
    }
}

/// The scenario sampled once per tick, jitter included, shared by every
/// strategy run of one seed so they all face the same day.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Index of the first tick of the backfill (earlier ticks are the
    /// pre-start history used for baselines).
    pub start_index: usize,
    pub dt: f64,
    pub ticks: Vec<Conditions>,
}

impl Trace {
    /// `preroll` seconds before the start plus `duration` after it.
    pub fn new(s: &Scenario, m: &Model, seed: u64, dt: f64, preroll: f64, duration: f64) -> Trace {
        let start_secs = chrono::Timelike::num_seconds_from_midnight(&s.start) as f64;
        let pre = (preroll / dt).ceil() as usize;
        let n = pre + (duration / dt).ceil() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // AR(1): x' = a x + sqrt(1 - a²) sd ε keeps the stationary sd at `sd`.
        let a = (-dt / m.jitter.tau).exp();
        let kick = (1.0 - a * a).sqrt() * m.jitter.sd;
        let mut x = m.jitter.sd * normal(&mut rng);
        // The same AR(1) on the logarithm of the cost per row, from its own
        // stream so the load of a seed does not depend on the drift model.
        let mut drift_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6472_6966_7400);
        let da = (-dt / m.backfill.drift_tau).exp();
        let dkick = (1.0 - da * da).sqrt() * m.backfill.drift_sd;
        let mut d = m.backfill.drift_sd * normal(&mut drift_rng);
        let ticks = (0..n)
            .map(|i| {
                let secs = start_secs + (i as f64 - pre as f64) * dt;
                let mut c = s.at(secs);
                x = a * x + kick * normal(&mut rng);
                c.live = (c.live + x).clamp(0.0, 0.99);
                d = da * d + dkick * normal(&mut drift_rng);
                c.drift = d.exp();
                c
            })
            .collect();
        Trace {
            start_index: pre,
            dt,
            ticks,
        }
    }
}

/// A standard normal draw (Box–Muller), so only `rand`'s uniform is needed.
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Poisson draw with mean `lambda` (Knuth for small means, normal above).
pub fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda > 30.0 {
        return (lambda + lambda.sqrt() * normal(rng)).round().max(0.0);
    }
    let l = (-lambda).exp();
    let mut k = 0.0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1.0;
    }
}
