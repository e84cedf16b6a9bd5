//! How a pod leaves service: drained from every EndpointSlice before it is deleted, upgraded
//! in place where Kubernetes allows it, and when a replacement may start.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Draining before delete. Every pod the operator creates carries the readiness gate
/// `perennial.dev/serving`. Before it deletes (or patches in place) a pod that may be
/// serving, the operator sets that condition False, waits until every EndpointSlice that
/// lists the pod shows it not ready, waits `settleSeconds` more for the proxies, and only
/// then acts. A pod on a lost node, or one that has failed, is not drained.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.timeoutSeconds > self.settleSeconds").message("spec.drain.timeoutSeconds must be greater than settleSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Seconds between the moment no EndpointSlice shows the pod ready and its deletion.
    /// kube-proxy applies endpoint changes at most once per `minSyncPeriod` (1 s by
    /// default) and then writes its rules; 2 s covers one batch and the write.
    #[serde(default = "default_settle")]
    #[schemars(range(min = 0, max = 300))]
    pub settle_seconds: i32,

    /// Seconds a pod may stay listed as ready after its gate was closed before it is
    /// deleted all the same: a stuck EndpointSlice never stops a rollout or a repair.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            settle_seconds: default_settle(),
            timeout_seconds: default_drain_timeout(),
        }
    }
}

fn default_settle() -> i32 {
    2
}

fn default_drain_timeout() -> i32 {
    30
}

/// Whether a new revision may be applied to running pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InPlacePolicy {
    /// Every new revision replaces pods.
    #[default]
    Never,
    /// Where the new template differs from a pod's only in container images, labels,
    /// annotations and CPU or memory resources (with the same QoS class), the pod is
    /// drained, patched and restarted by its kubelet, keeping its name, UID, IP, node and
    /// volumes. Anything else is replaced.
    IfPossible,
}

/// When a replacement pod may start while the pod it replaces is shutting down.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodReplacementPolicy {
    /// A pod counts toward `replicas + maxSurge` until its deletion starts: it has been
    /// drained from the endpoints by then, and no longer takes traffic.
    #[default]
    TerminationStarted,
    /// A pod counts until it is gone, grace period and all: for tight quotas and nodes.
    TerminationComplete,
}
