//! The generator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub route: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// 0.5 ms to ~9 s in ×1.1 steps. A stop number at +20 % over the
/// baseline p95 needs buckets much finer than 20 %: with ×1.5 buckets,
/// `histogram_quantile` interpolates inside one bucket and a real +20 %
/// can read as anything from +5 % to +40 %.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 1.1, 104))
}

pub struct Metrics {
    registry: Registry,
    pub duration: Family<Route, Histogram, fn() -> Histogram>,
    pub requests: Family<Outcome, Counter>,
    /// Requests not sent because too many were already in flight.
    pub dropped: Counter,
    pub target_rate: Gauge<f64, AtomicU64>,
    pub added_latency: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let duration = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let requests = Family::<Outcome, Counter>::default();
        let dropped = Counter::default();
        let target_rate = Gauge::<f64, AtomicU64>::default();
        let added_latency = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "traffic_request_duration_seconds",
            "Request latency from scheduled start to completion",
            duration.clone(),
        );
        registry.register("traffic_requests", "Requests completed", requests.clone());
        registry.register(
            "traffic_dropped",
            "Requests not sent: too many in flight",
            dropped.clone(),
        );
        registry.register(
            "traffic_target_rate",
            "Configured requests per second",
            target_rate.clone(),
        );
        registry.register(
            "traffic_added_latency_seconds",
            "Latency injected into every request",
            added_latency.clone(),
        );
        Metrics {
            registry,
            duration,
            requests,
            dropped,
            target_rate,
            added_latency,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
