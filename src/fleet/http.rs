//! The fleet's HTTP side on `[http] listen`: `/metrics` for every target
//! (their registries merged, each series labelled with its `target`) and
//! the fleet's own numbers; `/status` (as `pacer status --json` on the
//! fleet), `/pause` and `/resume` (the fleet-wide switch, as `pacer
//! pause`). A fleet's targets serve no HTTP of their own.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::schedule::Tally;
use crate::policy::Policy;
use crate::telemetry::http::{Control, ControlRequest};
use crate::telemetry::hub::Exposition;

type Labels = Vec<(&'static str, String)>;

/// The fleet's own gauges.
pub struct FleetMetrics {
    registry: Registry,
    targets: Family<Labels, Gauge>,
    cluster_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    cluster_paused: Family<Labels, Gauge>,
}

impl FleetMetrics {
    pub fn new(fleet: &str) -> FleetMetrics {
        let mut registry = Registry::with_prefix_and_labels(
            "pacer_fleet",
            std::iter::once((Cow::Borrowed("pacer_job"), Cow::Owned(fleet.to_string()))),
        );
        let m = FleetMetrics {
            registry: Registry::default(),
            targets: Family::default(),
            cluster_rate: Family::default(),
            cluster_paused: Family::default(),
        };
        registry.register(
            "targets",
            "Targets of the fleet by state (done, running, waiting, failed, stopped)",
            m.targets.clone(),
        );
        registry.register(
            "cluster_rate_rows_per_second",
            "Rows/s a cluster's shared budget allows, split among its running targets",
            m.cluster_rate.clone(),
        );
        registry.register(
            "cluster_paused",
            "1 while a cluster's signals hold its targets paused",
            m.cluster_paused.clone(),
        );
        FleetMetrics { registry, ..m }
    }

    pub fn set_tally(&self, t: &Tally) {
        for (state, n) in [
            ("done", t.done),
            ("running", t.running),
            ("waiting", t.waiting),
            ("failed", t.failed),
            ("stopped", t.stopped),
        ] {
            self.targets
                .get_or_create(&vec![("state", state.to_string())])
                .set(n as i64);
        }
    }

    pub fn set_cluster(&self, cluster: &str, rate: f64, paused: bool) {
        let l = vec![("cluster", cluster.to_string())];
        self.cluster_rate
            .get_or_create(&l)
            .set(if rate.is_finite() { rate } else { -1.0 });
        self.cluster_paused.get_or_create(&l).set(paused as i64);
    }
}

impl Exposition for FleetMetrics {
    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `/status`, `/pause`, `/resume` for the fleet.
pub struct FleetControl {
    pub policy: Policy,
    pub policy_path: PathBuf,
}

impl FleetControl {
    async fn flip(&self, paused: bool, req: ControlRequest) -> anyhow::Result<Value> {
        let by = format!("{}:{}", crate::executor::control::HTTP_BY, req.by);
        super::set_switch(&self.policy, &self.policy_path, paused, &by, &req.reason).await?;
        Ok(json!({
            "fleet": self.policy.job.name,
            "paused": paused,
            "by": by,
            "reason": req.reason,
            "note": if paused {
                "every target stops taking batches within one tick and none starts; in-flight batches finish"
            } else {
                "the fleet goes on"
            },
        }))
    }
}

impl Control for FleetControl {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<Value>> {
        async {
            Ok(super::status::status(&self.policy, &self.policy_path)
                .await?
                .unwrap_or_else(|| json!({"fleet": self.policy.job.name, "state": "not started"})))
        }
        .boxed()
    }

    fn pause(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(true, req).boxed()
    }

    fn resume(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(false, req).boxed()
    }
}
