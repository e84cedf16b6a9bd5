//! The observed state the operator reports.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types the operator sets on a ResilientService.
pub mod condition {
    /// At least the minimum number of replicas (replicas - maxUnavailable) is available.
    pub const AVAILABLE: &str = "Available";
    /// A rollout or scale is under way, or has just completed.
    pub const PROGRESSING: &str = "Progressing";
    /// Redundancy is below what the spec declares, or a replica cannot be repaired.
    pub const DEGRADED: &str = "Degraded";
    /// The last rollout was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// What Perennial last observed of a ResilientService.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResilientServiceStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist for the service (not terminating).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods Ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods on the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The revision pods ran before the current rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Label selector of the service's pods, for the scale subresource and HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready replicas per failure domain (value of spec.redundancy.topologyKey).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, i32>,
    /// Why the service is Degraded or its rollout failed; absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Available, Progressing, Degraded, RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The rollout in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The failure ledger: one entry per replica slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["ordinal"]))]
    pub replica_statuses: Vec<ReplicaStatus>,
}

/// One replica slot as the operator sees it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The slot's ordinal, stable for its life.
    pub ordinal: i32,
    /// The pod that currently fills the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Pending, Starting, Ready, NotReady, Failing, Waiting (its repair waits, see
    /// waitingFor), Repairing, Draining, Terminating, OnLostNode, Missing, Quarantined.
    #[serde(default)]
    pub state: String,
    /// The revision of the slot's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Repairs of this slot within the supervision window.
    #[serde(default)]
    pub restarts_in_window: i32,
    /// When those repairs happened (the sliding window of restart intensity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Time>,
    /// The escalation step the last repair took: Restart, Reschedule, RebuildStorage,
    /// Quarantine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// A node the slot's next pod must avoid: where its pod failed (a Reschedule), or the
    /// node it was lost with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avoid_node: Option<String>,
    /// Why avoidNode is set: `Reschedule` (kept until a later repair replaces it) or
    /// `NodeLost` (lifted once the node renews its lease again and is Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avoid_node_reason: Option<String>,
    /// What the slot's repair waits for, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The last failure identified for this slot.
    // Boxed: most slots have none, and every slot of every cached service would carry the
    // room for one (88 bytes) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Box<Failure>>,
}

/// An identified failure.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// CrashLoopBackOff, OOMKilled, ImagePullBackOff, Unschedulable, NodeLost, VolumeLost,
    /// Evicted, Failed, NeverReady, ProgressDeadlineExceeded.
    pub reason: String,
    /// What was seen, for a person.
    pub message: String,
    /// When it was first seen.
    pub at: Time,
    /// When the slot was seen healthy again; the entry is cleared a quiet supervision
    /// period after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<Time>,
}

/// Where a rollout stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out.
    pub revision: String,
    /// When it began.
    pub started_at: Time,
    /// When it last made progress (a new pod, or a new pod available).
    pub last_progress_at: Time,
    /// New pods / new pods available, at the last progress.
    #[serde(default)]
    pub progress: String,
    /// The canary step in progress (0-based), for canary rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_step: Option<i32>,
    /// When the current pause step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since: Option<Time>,
    /// The last value of the promote annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<String>,
    /// What the rollout waits for, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

impl ResilientServiceStatus {
    /// Whether a slot's next pod keeps off `node`: such a service must hear of the node
    /// coming back, though none of its pods is there, or the avoidance outlives the loss.
    pub fn keeps_off(&self, node: &str) -> bool {
        (self.replica_statuses.iter()).any(|r| r.avoid_node.as_deref() == Some(node))
    }

    /// Whether `other` records what this status records: the generation, the revisions, the
    /// conditions' status and reason, the rollout, and each slot's ledger (repairs,
    /// escalation, avoided node, last failure). What differs then is only what the next
    /// pass sees again of the world (counts, each slot's pod, node and state, the messages
    /// and what things wait for), so its write may wait a moment without losing anything.
    pub fn records_as(&self, other: &Self) -> bool {
        let failures = |s: &Self| -> Vec<Option<Failure>> {
            (s.replica_statuses.iter())
                .map(|r| r.last_failure.as_deref().cloned())
                .collect()
        };
        self.decides_as(other)
            && failures(self) == failures(other)
            && self.reason == other.reason
            && conditions(self, |_| true) == conditions(other, |_| true)
    }

    /// Whether `other` carries every decision this status carries, what a later pass reads
    /// back to plan: what `records_as` compares but the Available, Progressing and Degraded
    /// conditions, `reason`, and when a slot's last failure was seen to recover and its
    /// message. Each pass derives these from the pods and the rollout again; the recovery
    /// only says how long the failure stays on show. (RolledBack is read back: it tells an
    /// aborted rollout.) A pass may plan from `other` before it is written: should the
    /// write be lost, the next pass derives them again.
    pub fn decides_as(&self, other: &Self) -> bool {
        let derived = [
            condition::AVAILABLE,
            condition::PROGRESSING,
            condition::DEGRADED,
        ];
        let decided = |type_: &str| !derived.contains(&type_);
        let rollout = |s: &Self| {
            s.rollout.clone().map(|mut r| {
                r.waiting_for = None;
                r
            })
        };
        let ledger = |s: &Self| -> Vec<ReplicaStatus> {
            (s.replica_statuses.iter())
                .map(|r| ReplicaStatus {
                    ordinal: r.ordinal,
                    restarts_in_window: r.restarts_in_window,
                    repairs: r.repairs.clone(),
                    escalation: r.escalation.clone(),
                    avoid_node: r.avoid_node.clone(),
                    avoid_node_reason: r.avoid_node_reason.clone(),
                    last_failure: r.last_failure.clone().map(|f| {
                        Box::new(Failure {
                            recovered_at: None,
                            message: String::new(),
                            ..*f
                        })
                    }),
                    ..Default::default()
                })
                .collect()
        };
        self.observed_generation == other.observed_generation
            && self.current_revision == other.current_revision
            && self.update_revision == other.update_revision
            && self.selector == other.selector
            && conditions(self, decided) == conditions(other, decided)
            && rollout(self) == rollout(other)
            && ledger(self) == ledger(other)
    }
}

/// The type, status and reason of each condition `of` picks.
fn conditions(
    status: &ResilientServiceStatus,
    of: impl Fn(&str) -> bool,
) -> Vec<(&str, &str, &str)> {
    (status.conditions.iter())
        .filter(|c| of(&c.type_))
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect()
}
