//! The store behind the HTTP control API: `GET /status` is the JSON of
//! `pacer status --json` and `POST /pause`/`/resume` flip the same switch as
//! the CLI, so an operator gets the same answer whichever door they use.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::policy::Policy;
use crate::telemetry::http::{Control, ControlRequest};

/// Prefix of the `changed_by` a request over HTTP records, so `status`
/// tells an API pause from a CLI one.
pub const HTTP_BY: &str = "http";

pub struct StoreControl {
    policy: Policy,
}

impl StoreControl {
    pub fn new(policy: &Policy) -> StoreControl {
        StoreControl {
            policy: policy.clone(),
        }
    }

    async fn flip(&self, paused: bool, req: ControlRequest) -> anyhow::Result<Value> {
        let by = format!("{HTTP_BY}:{}", req.by);
        crate::commands::pause::set_switch(&self.policy, paused, &by, &req.reason).await?;
        Ok(json!({
            "job": self.policy.job.name,
            "paused": paused,
            "by": by,
            "reason": req.reason,
            "note": if paused {
                "the job stops taking batches within one tick; in-flight batches finish"
            } else {
                "the job continues with the knobs it had"
            },
        }))
    }
}

impl Control for StoreControl {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<Value>> {
        crate::commands::status::status_json(&self.policy).boxed()
    }

    fn pause(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(true, req).boxed()
    }

    fn resume(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(false, req).boxed()
    }
}
