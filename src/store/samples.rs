//! Per-tick samples (state, knobs, progress, signal readings): the
//! timeline `pacer report` draws after the run.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use crate::controller::Knobs;

pub struct NewSample<'a> {
    pub at: DateTime<Utc>,
    pub state: &'a str,
    pub knobs: &'a Knobs,
    pub rows_done: u64,
    pub rows_per_second: f64,
    /// `{"signal": value or null}`.
    pub signals: &'a serde_json::Value,
    /// Failed batch attempts of the tick by error class.
    pub retries: &'a std::collections::BTreeMap<&'static str, u64>,
    /// What the controller judged (estimates, delays, target rate).
    pub view: Option<&'a crate::controller::View>,
}

impl Store {
    pub async fn record_sample(
        &self,
        conn: &mut PgConnection,
        job: &str,
        s: &NewSample<'_>,
    ) -> anyhow::Result<()> {
        let rate = if s.rows_per_second.is_finite() {
            s.rows_per_second
        } else {
            0.0
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (job, at, state, knobs, rows_done, rows_per_second, signals, retries, controller)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (job, at) DO NOTHING",
            self.t("samples")
        )))
        .bind(job)
        .bind(s.at)
        .bind(s.state)
        .bind(serde_json::to_value(s.knobs)?)
        .bind(i64::try_from(s.rows_done).unwrap_or(i64::MAX))
        .bind(rate)
        .bind(s.signals)
        .bind(serde_json::to_value(s.retries)?)
        .bind(s.view.map(serde_json::to_value).transpose()?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Retries by error class over the whole job.
    pub async fn retries(
        &self,
        conn: &mut PgConnection,
        job: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT r.key, sum(r.value::bigint)::bigint FROM {}, jsonb_each_text(retries) r
             WHERE job = $1 GROUP BY r.key",
            self.t("samples")
        )))
        .bind(job)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(k, n)| (k, n.max(0) as u64))
            .collect())
    }

    /// What the controller judged at the job's last recorded tick, as
    /// stored (`/status` shows it).
    pub async fn last_view(
        &self,
        conn: &mut PgConnection,
        job: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT controller FROM {} WHERE job = $1 AND controller IS NOT NULL ORDER BY at DESC LIMIT 1",
            self.t("samples")
        )))
        .bind(job)
        .fetch_optional(&mut *conn)
        .await?
        .flatten())
    }

    /// The job's samples in time order.
    pub async fn samples(
        &self,
        conn: &mut PgConnection,
        job: &str,
    ) -> anyhow::Result<Vec<crate::history::Sample>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT at, state, knobs, rows_done, rows_per_second, signals, controller FROM {}
             WHERE job = $1 ORDER BY at",
            self.t("samples")
        )))
        .bind(job)
        .fetch_all(&mut *conn)
        .await?;
        let mut samples = rows
            .into_iter()
            .map(|r| {
                let knobs: serde_json::Value = r.try_get("knobs")?;
                let signals: serde_json::Value = r.try_get("signals")?;
                let rows_done: i64 = r.try_get("rows_done")?;
                // A view this pacer cannot read (a future format) is left
                // out rather than failing the report.
                let view: Option<crate::controller::View> = r
                    .try_get::<Option<serde_json::Value>, _>("controller")?
                    .and_then(|v| serde_json::from_value(v).ok());
                let sample = crate::history::Sample {
                    at: r.try_get("at")?,
                    state: r.try_get("state")?,
                    knobs: serde_json::from_value(knobs)?,
                    rows_per_second: r.try_get("rows_per_second")?,
                    rows_done: rows_done.max(0) as u64,
                    signals: serde_json::from_value(signals).unwrap_or_default(),
                    estimates: Default::default(),
                    target_rate: None,
                };
                Ok(match &view {
                    Some(v) => sample.with_view(v),
                    None => sample,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        recent_rates(&mut samples, RATE_WINDOW);
        Ok(samples)
    }
}

/// Window of the rows/s a report draws: short enough that a pause shows as
/// a drop to zero, long enough to smooth over batch boundaries.
const RATE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Rows/s over the trailing `window` from the samples' rows done. The
/// runner's own rate (what the progress line showed) averages over a minute
/// and starts from the run's start, which smears pauses away on a chart.
fn recent_rates(samples: &mut [crate::history::Sample], window: chrono::TimeDelta) {
    let points: Vec<(DateTime<Utc>, u64)> = samples.iter().map(|s| (s.at, s.rows_done)).collect();
    let mut j = 0;
    for (i, s) in samples.iter_mut().enumerate() {
        while points[j].0 < s.at - window {
            j += 1;
        }
        let (t0, r0) = points[j.min(i)];
        let secs = (s.at - t0).as_seconds_f64();
        s.rows_per_second = if secs > 0.0 {
            s.rows_done.saturating_sub(r0) as f64 / secs
        } else {
            0.0
        };
    }
}
