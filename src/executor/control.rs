//! The store behind the HTTP control API: `GET /status` is the JSON of
//! `pacer status --json` and `POST /pause`/`/resume` flip the same switch as
//! the CLI, so an operator gets the same answer whichever door they use.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use std::sync::Arc;

use super::LocalPause;
use crate::controller::ManualPause;
use crate::policy::Policy;
use crate::telemetry::http::{Control, ControlRequest};

/// Prefix of the `changed_by` a request over HTTP records, so `status`
/// tells an API pause from a CLI one.
pub const HTTP_BY: &str = "http";

pub struct StoreControl {
    policy: Policy,
    local: Option<Arc<LocalPause>>,
}

impl StoreControl {
    pub fn new(policy: &Policy) -> StoreControl {
        StoreControl {
            policy: policy.clone(),
            local: None,
        }
    }

    /// Honour a pause in this process at once, before (and whether or not)
    /// it reaches the store: the database may be the thing that is down.
    pub fn with_local_pause(mut self, local: Arc<LocalPause>) -> StoreControl {
        self.local = Some(local);
        self
    }

    async fn flip(&self, paused: bool, req: ControlRequest) -> anyhow::Result<Value> {
        let by = format!("{HTTP_BY}:{}", req.by);
        if let Some(local) = &self.local {
            local.set(paused.then(|| ManualPause {
                by: by.clone(),
                reason: req.reason.clone(),
            }));
        }
        let stored =
            crate::store::control::set_switch(&self.policy, paused, &by, &req.reason).await;
        if let Err(e) = stored {
            if !(paused && self.local.is_some()) {
                return Err(e);
            }
            return Ok(json!({
                "job": self.policy.job.name,
                "paused": true,
                "by": by,
                "reason": req.reason,
                "note": format!(
                    "paused in this process (no new batches; in-flight batches finish); the pause switch could not be stored \
                     ({e:#}) and will be once the database is reachable"
                ),
            }));
        }
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
        crate::store::status::status_json(&self.policy).boxed()
    }

    fn pause(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(true, req).boxed()
    }

    fn resume(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>> {
        self.flip(false, req).boxed()
    }
}
