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
