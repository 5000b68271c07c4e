//! Prometheus signals: any PromQL that yields one number.
//!
//! Only a single finite sample is a value. Empty results (no traffic, a
//! typo in a label), several series (a missing `sum by`), NaN/±Inf (a
//! quantile over zero requests), HTTP errors and timeouts are all missing
//! readings with a reason: reading them as zero would tell the controller
//! that production is perfectly calm exactly when it cannot see it.

use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_http_query::Client;
use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::{Reading, Source, chain};
use crate::policy::PrometheusConfig;

/// Environment variable read when the policy has no `bearer_token`, so
/// tokens stay out of policy files.
pub const TOKEN_ENV: &str = "PACER_PROMETHEUS_TOKEN";

/// A configured Prometheus endpoint, shared by all Prometheus signals of a
/// policy.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
    url: String,
    /// Evaluation timeout passed to Prometheus, so a heavy query is
    /// cancelled server-side instead of piling up behind our client timeout.
    eval_timeout: Duration,
}

impl Prometheus {
    /// The HTTP timeout lives on the reqwest client (connect + response);
    /// the query's own `timeout` parameter bounds Prometheus's evaluation.
    pub fn new(cfg: &PrometheusConfig) -> Result<Prometheus, String> {
        let mut headers = HeaderMap::new();
        let token = cfg
            .bearer_token
            .clone()
            .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()));
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                "prometheus.bearer_token contains characters not allowed in a header".to_string()
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("prometheus.headers: {k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                format!("prometheus.headers.{k}: value is not a valid header value")
            })?;
            headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("prometheus client: {}", chain(&e)))?;
        let client = Client::from(http, &cfg.url)
            .map_err(|e| format!("prometheus.url {:?}: {}", cfg.url, chain(&e)))?;
        Ok(Prometheus {
            client,
            url: cfg.url.clone(),
            eval_timeout: cfg.timeout,
        })
    }

    /// The longest scrape interval of the active targets `jobs` names (all
    /// active targets when `None`): how stale a scraped series can be, part
    /// of each Prometheus signal's delay. `Ok(None)` when no target matches.
    pub async fn scrape_interval(
        &self,
        jobs: Option<&[String]>,
    ) -> Result<Option<Duration>, String> {
        let targets = self
            .client
            .targets(Some(prometheus_http_query::TargetState::Active))
            .await
            .map_err(|e| format!("{}: /api/v1/targets: {}", self.url, chain(&e)))?;
        Ok(targets
            .active()
            .iter()
            .filter(|t| jobs.is_none_or(|j| t.labels().get("job").is_some_and(|v| j.contains(v))))
            .map(|t| t.scrape_interval().whole_milliseconds())
            .filter(|ms| *ms > 0)
            .max()
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))))
    }

    /// Instant query reduced to one number, or why not.
    pub async fn instant(&self, query: &str) -> Result<f64, String> {
        let res = self
            .client
            .query(query)
            .timeout(self.eval_timeout.as_millis() as i64)
            .get()
            .await
            .map_err(|e| format!("prometheus {}: {}", self.url, chain(&e)))?;
        match res.data() {
            Data::Scalar(s) => Ok(s.value()),
            Data::Vector(v) if v.is_empty() => Err("query returned no series".into()),
            Data::Vector(v) if v.len() == 1 => Ok(v[0].sample().value()),
            Data::Vector(v) => Err(format!(
                "query returned {} series, expected one (aggregate it, e.g. with max or sum by ())",
                v.len()
            )),
            Data::Matrix(_) => Err(
                "query returned a range vector; use an instant query that yields one number".into(),
            ),
        }
    }

    /// The finite `le` bounds of the histogram buckets behind `selector`
    /// (a `..._bucket{...}` series selector), ascending.
    pub async fn bucket_bounds(&self, selector: &str) -> Result<Vec<f64>, String> {
        let query = format!("count by (le) ({selector})");
        let res = self
            .client
            .query(&query)
            .timeout(self.eval_timeout.as_millis() as i64)
            .get()
            .await
            .map_err(|e| format!("prometheus {}: {}", self.url, chain(&e)))?;
        let Data::Vector(v) = res.data() else {
            return Err("bucket query did not return a vector".into());
        };
        let mut bounds: Vec<f64> = v
            .iter()
            .filter_map(|s| s.metric().get("le")?.parse::<f64>().ok())
            .filter(|b| b.is_finite())
            .collect();
        bounds.sort_by(|a, b| a.total_cmp(b));
        bounds.dedup();
        Ok(bounds)
    }

    /// Finite values of a range query over `[start, end]` (unix seconds).
    /// More than one series is an error for the same reason as above.
    pub async fn range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: f64,
    ) -> Result<Vec<(f64, f64)>, String> {
        let res = self
            .client
            .query_range(query, start, end, step)
            .timeout(self.eval_timeout.as_millis() as i64)
            .get()
            .await
            .map_err(|e| format!("prometheus {}: {}", self.url, chain(&e)))?;
        match res.data() {
            Data::Matrix(m) if m.is_empty() => Ok(Vec::new()),
            Data::Matrix(m) if m.len() == 1 => Ok(m[0]
                .samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .filter(|(_, v)| v.is_finite())
                .collect()),
            Data::Matrix(m) => Err(format!(
                "query returned {} series, expected one (aggregate it, e.g. with max or sum by ())",
                m.len()
            )),
            _ => Err("range query did not return a matrix".into()),
        }
    }
}

/// One PromQL signal.
pub struct PromSource {
    name: String,
    query: String,
    prom: Prometheus,
}

impl PromSource {
    pub fn new(name: String, query: String, prom: Prometheus) -> PromSource {
        PromSource { name, query, prom }
    }
}

impl Source for PromSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> BoxFuture<'_, Reading> {
        async move {
            match self.prom.instant(&self.query).await {
                Ok(v) => Reading::value(v, Utc::now()),
                Err(why) => Reading::missing(why, Utc::now()),
            }
        }
        .boxed()
    }
}

/// Where a policy's scrape interval came from, for `pacer check` and the
/// start of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum ScrapeInterval {
    /// `[prometheus] scrape_interval` in the policy.
    Policy(Duration),
    /// Read from Prometheus's `/api/v1/targets` (the jobs the queries name,
    /// or every active target).
    Discovered(Duration, String),
    /// Neither: the default, and why discovery did not say.
    Default(Duration, String),
}

impl ScrapeInterval {
    pub fn value(&self) -> Duration {
        match self {
            ScrapeInterval::Policy(d)
            | ScrapeInterval::Discovered(d, _)
            | ScrapeInterval::Default(d, _) => *d,
        }
    }
}

impl std::fmt::Display for ScrapeInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            ScrapeInterval::Policy(v) => write!(f, "{} ([prometheus] scrape_interval)", d(v)),
            ScrapeInterval::Discovered(v, from) => {
                write!(f, "{} (from Prometheus's targets: {from})", d(v))
            }
            ScrapeInterval::Default(v, why) => write!(
                f,
                "{} (the default; {why}; set [prometheus] scrape_interval if it differs)",
                d(v)
            ),
        }
    }
}

/// The scrape interval the controller should count in each Prometheus
/// signal's delay: the policy's, else the longest of the active targets the
/// queries read (by their `job="…"` matchers, or all active targets), else
/// 15 s. `None` when the policy has no Prometheus signal.
pub async fn resolve_scrape_interval(policy: &crate::policy::Policy) -> Option<ScrapeInterval> {
    const DEFAULT: Duration = crate::controller::DEFAULT_SCRAPE;
    let queries: Vec<&str> = policy
        .signals
        .iter()
        .filter_map(|s| s.prometheus.as_deref())
        .collect();
    if queries.is_empty() {
        return None;
    }
    if let Some(d) = policy.prometheus.scrape_interval {
        return Some(ScrapeInterval::Policy(d));
    }
    let jobs: Option<Vec<String>> = queries
        .iter()
        .map(|q| super::promql::scrape_jobs(q))
        .collect::<Option<Vec<_>>>()
        .map(|v| {
            let mut v: Vec<String> = v.into_iter().flatten().collect();
            v.sort();
            v.dedup();
            v
        });
    let prom = match Prometheus::new(&policy.prometheus) {
        Ok(p) => p,
        Err(e) => return Some(ScrapeInterval::Default(DEFAULT, e)),
    };
    let from = match &jobs {
        Some(j) => format!("job {}", j.join(", ")),
        None => "every active target".to_string(),
    };
    Some(match prom.scrape_interval(jobs.as_deref()).await {
        Ok(Some(d)) => ScrapeInterval::Discovered(d, from),
        Ok(None) => ScrapeInterval::Default(DEFAULT, format!("no active target matches {from}")),
        Err(e) => ScrapeInterval::Default(DEFAULT, crate::text::message_line(&e)),
    })
}
