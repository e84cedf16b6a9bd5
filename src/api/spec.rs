//! The desired state a user declares.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ResilientServiceStatus;

/// Schema of a count-or-percentage: a non-negative integer, or a string from "0%" to
/// "100%". Plain OpenAPI rather than CEL: the API server prices a regex over an unbounded
/// string far above the CEL budget, and these messages already name the field.
///
/// The keywords sit on the property itself, not in an `allOf`: OpenAPI applies `minimum`
/// only to integers and `pattern`/`maxLength` only to strings, and the server then reports
/// one error naming the field instead of adding a path-less "must validate all the
/// schemas (allOf)". `maxLength` also tells the CEL cost estimator the strings are short.
///
/// Not nullable: the API server then drops an explicit `null` before defaulting, so a
/// field with a default gets it and an optional one is simply absent. (kube marks every
/// optional int-or-string nullable unless the schema says otherwise; a stored `null` would
/// neither be defaulted nor deserialize into `IntOrString`.)
fn count_or_percent(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": false,
        "minimum": 0,
        "maxLength": 4,
        "pattern": "^(100|[1-9]?[0-9])%$"
    })
}

/// A service whose replicas Perennial keeps alive, spread over failure domains, upgraded
/// without downtime and repaired when pods, nodes or volumes fail.
// Each `printcolumn(..)` repeats `type_ = "integer"`; clippy reads that as a duplicated
// attribute although every column is its own.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "perennial.dev",
    version = "v1alpha1",
    kind = "ResilientService",
    namespaced,
    shortname = "rsvc",
    category = "perennial",
    status = "ResilientServiceStatus",
    derive = "PartialEq",
    doc = "A service whose replicas Perennial keeps alive, spread over failure domains, upgraded without downtime and repaired when pods, nodes or volumes fail.",
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name: at most 52 characters, so that the pods' revision label <name>-<10-character hash> fits in 63"),
    validation = Rule::new("!self.metadata.name.contains('.')").message("metadata.name: no dots, since each replica's hostname <name>-<ordinal> must be a DNS label"),
    validation = Rule::new("has(self.spec.serviceName) || self.metadata.name.matches('^[a-z]')").message("metadata.name must start with a letter unless spec.serviceName is set, since it also names the headless Service"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Replicas wanted"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas whose pod is Ready"
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Replicas on the update revision"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Replicas Ready for at least minReadySeconds"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        description = "Why the service is Degraded or its rollout failed; empty when healthy"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.replicas < 0 || self.update.partition <= self.replicas").message("spec.update.partition must be between 0 and spec.replicas").field_path(".update.partition"))]
#[x_kube(validation = Rule::new("has(self.serviceName) == has(oldSelf.serviceName) && (!has(self.serviceName) || self.serviceName == oldSelf.serviceName)").message("spec.serviceName is immutable: pods' DNS names depend on it; create a new ResilientService to change it").field_path(".serviceName"))]
#[x_kube(validation = super::template::volume_mounts_rule("containers"))]
#[x_kube(validation = super::template::volume_mounts_rule("initContainers"))]
#[x_kube(validation = Rule::new("self.volumeClaimTemplates == oldSelf.volumeClaimTemplates").message("spec.volumeClaimTemplates is immutable: existing claims hold data; create a new ResilientService to change storage").field_path(".volumeClaimTemplates"))]
#[serde(rename_all = "camelCase")]
pub struct ResilientServiceSpec {
    /// Number of replicas to keep alive. Each replica is a slot with a stable ordinal, pod
    /// hostname and storage. Changed by `kubectl scale` through the scale subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// The pod every replica runs. The label keys `perennial.dev/service`,
    /// `perennial.dev/slot` and `perennial.dev/revision` are reserved for the operator and
    /// may not be set here. Changing the template starts a rollout to a new revision.
    #[schemars(schema_with = "super::template::pod_template_schema")]
    #[x_kube(validation = Rule::new("!has(self.metadata) || !has(self.metadata.labels) || !('perennial.dev/service' in self.metadata.labels || 'perennial.dev/slot' in self.metadata.labels || 'perennial.dev/revision' in self.metadata.labels)").message(Message::Expression("'spec.template.metadata.labels: the key ' + ['perennial.dev/service', 'perennial.dev/slot', 'perennial.dev/revision'].filter(k, k in self.metadata.labels)[0] + ' is reserved for the operator; perennial.dev/service, perennial.dev/slot and perennial.dev/revision may not be set in the template'".into())).field_path(".metadata.labels"))]
    pub template: PodTemplateSpec,

    /// Claims every replica gets, named `<template>-<service>-<ordinal>` and kept by the
    /// slot across pod replacements. Immutable once set.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.metadata.name == t.metadata.name))").message("spec.volumeClaimTemplates: metadata.name must be unique"))]
    pub volume_claim_templates: Vec<ClaimTemplate>,

    /// Name of the headless Service that gives replicas stable DNS names
    /// (`<service>-<ordinal>.<serviceName>`). Defaults to the ResilientService's name;
    /// created when missing. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub service_name: Option<String>,

    /// How replica slots are created and deleted. `Parallel` (default) creates missing
    /// slots at once; `OrderedReady` waits for each slot to be Ready before the next.
    #[serde(default)]
    pub pod_management_policy: PodManagementPolicy,

    /// How replicas are spread over failure domains.
    #[serde(default)]
    pub redundancy: Redundancy,

    /// The PodDisruptionBudget the operator keeps for the service.
    #[serde(default)]
    pub disruption_budget: DisruptionBudget,

    /// How a new template is rolled out.
    #[serde(default)]
    pub update: UpdateSpec,

    /// How a pod that may be serving is drained before it is deleted or upgraded in place.
    #[serde(default)]
    pub drain: super::Drain,

    /// Restart intensity and escalation, as an Erlang/OTP supervisor does it.
    #[serde(default)]
    pub supervision: Supervision,

    /// How failed nodes and lost volumes are repaired.
    #[serde(default)]
    pub repair: Repair,

    /// What happens to claims when replicas are scaled away or the service is deleted.
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: RetentionPolicy,

    /// How many old revisions (ControllerRevisions) to keep for rollbacks.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub revision_history_limit: i32,

    /// Freezes rollouts (no pod moves to a new revision) while repairs go on.
    #[serde(default)]
    pub paused: bool,
}

/// A per-replica claim: its name (unique within the service), labels and annotations, and
/// the claim spec. Each slot gets its own claim `<name>-<service>-<ordinal>`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ClaimTemplate {
    /// Name, labels and annotations of the claims made from this template.
    pub metadata: ClaimTemplateMeta,
    /// The claim's spec: access modes, storage class, size.
    pub spec: PersistentVolumeClaimSpec,
}

/// Metadata of a claim template.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ClaimTemplateMeta {
    /// Name of the template; the volume name pods mount it by.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Labels added to each claim.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to each claim.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_replicas() -> i32 {
    1
}

fn default_revision_history_limit() -> i32 {
    10
}

/// Whether replica slots are started all at once or one after another.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodManagementPolicy {
    /// Create and delete missing slots in parallel (bounded burst).
    #[default]
    Parallel,
    /// Create slots in ordinal order, each once the previous one is Ready.
    OrderedReady,
}

/// Spread of replicas over failure domains (zones, racks, nodes).
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'").message("spec.redundancy.minDomains requires whenUnsatisfiable: DoNotSchedule"))]
#[serde(rename_all = "camelCase")]
pub struct Redundancy {
    /// Node label whose values are the failure domains.
    #[serde(default = "default_topology_key")]
    #[schemars(length(min = 1, max = 316))]
    pub topology_key: String,

    /// The fewest domains replicas must be spread over; below it, the scheduler treats
    /// missing domains as having zero replicas. Needs whenUnsatisfiable: DoNotSchedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_domains: Option<i32>,

    /// The largest allowed difference in replica count between two domains.
    #[serde(default = "default_max_skew")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_skew: i32,

    /// What the scheduler does when the spread cannot be met: `ScheduleAnyway` (default,
    /// prefer spreading) or `DoNotSchedule` (leave the pod Pending).
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,

    /// At most one replica per node (required pod anti-affinity on the hostname).
    #[serde(default)]
    pub one_per_node: bool,
}

impl Default for Redundancy {
    fn default() -> Self {
        Self {
            topology_key: default_topology_key(),
            min_domains: None,
            max_skew: default_max_skew(),
            when_unsatisfiable: WhenUnsatisfiable::default(),
            one_per_node: false,
        }
    }
}

fn default_topology_key() -> String {
    "topology.kubernetes.io/zone".to_string()
}

fn default_max_skew() -> i32 {
    1
}

/// The scheduler's choice when a spread constraint cannot be satisfied.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    /// Prefer spreading, but schedule anyway.
    #[default]
    ScheduleAnyway,
    /// Leave the pod Pending rather than break the spread.
    DoNotSchedule,
}

/// The PodDisruptionBudget kept for the service: at most `maxUnavailable` replicas down
/// for voluntary disruptions (drains), or a majority kept up with `quorum: true`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!(self.quorum && has(self.maxUnavailable))").message("spec.disruptionBudget: set either maxUnavailable or quorum: true, not both"))]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Replicas that may be down at once for voluntary disruptions: a count or a percentage.
    /// Defaults to 1 when quorum is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_or_percent")]
    pub max_unavailable: Option<IntOrString>,

    /// Keep a majority up: minAvailable = floor(replicas / 2) + 1.
    #[serde(default)]
    pub quorum: bool,
}

/// How pods move to a new template revision.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.strategy == 'Recreate' || !((type(self.maxSurge) == int ? self.maxSurge == 0 : self.maxSurge == '0%') && (type(self.maxUnavailable) == int ? self.maxUnavailable == 0 : self.maxUnavailable == '0%'))").message("spec.update: maxSurge and maxUnavailable cannot both be zero, or a rolling update could never progress"))]
#[x_kube(validation = Rule::new("self.progressDeadlineSeconds > self.minReadySeconds").message("spec.update.progressDeadlineSeconds must be greater than minReadySeconds"))]
#[serde(rename_all = "camelCase")]
pub struct UpdateSpec {
    /// `RollingUpdate` (default) replaces pods a few at a time, gated on readiness;
    /// `Recreate` stops every old pod before starting new ones.
    #[serde(default)]
    pub strategy: UpdateStrategy,

    /// Extra pods allowed above `replicas` during a rolling update: a count or a
    /// percentage. Slots with ReadWriteOnce storage are replaced in place instead.
    #[serde(default = "default_max_surge")]
    #[schemars(schema_with = "count_or_percent")]
    pub max_surge: IntOrString,

    /// Replicas that may be unavailable during a rolling update: a count or a percentage.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "count_or_percent")]
    pub max_unavailable: IntOrString,

    /// Seconds a new pod must stay Ready before it counts as available.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,

    /// Seconds a rollout may go without progress before it is marked failed
    /// (Progressing=False, reason ProgressDeadlineExceeded) and, with `rollback: Automatic`,
    /// rolled back.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: i32,

    /// Slots with an ordinal below the partition stay on the old revision (0 = all update).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,

    /// Canary steps the rollout walks through before it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,

    /// What happens when a new revision fails: `Automatic` (default) returns to the last
    /// revision that was fully available; `Manual` stops and marks the service Degraded.
    #[serde(default)]
    pub rollback: RollbackPolicy,

    /// `IfPossible` upgrades running pods in place where the new template allows it;
    /// `Never` (default) replaces them.
    #[serde(default)]
    pub in_place: super::InPlacePolicy,

    /// Whether a pod that is shutting down still counts toward `replicas + maxSurge`:
    /// `TerminationStarted` (default) or `TerminationComplete`.
    #[serde(default)]
    pub pod_replacement_policy: super::PodReplacementPolicy,
}

impl Default for UpdateSpec {
    fn default() -> Self {
        Self {
            strategy: UpdateStrategy::default(),
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
            min_ready_seconds: 0,
            progress_deadline_seconds: default_progress_deadline(),
            partition: 0,
            canary: None,
            rollback: RollbackPolicy::default(),
            in_place: super::InPlacePolicy::default(),
            pod_replacement_policy: super::PodReplacementPolicy::default(),
        }
    }
}

fn default_max_surge() -> IntOrString {
    IntOrString::Int(1)
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(0)
}

fn default_progress_deadline() -> i32 {
    600
}

/// How a new revision replaces the old one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategy {
    /// Replace pods a few at a time, gated on readiness.
    #[default]
    RollingUpdate,
    /// Delete every old pod, then create the new ones.
    Recreate,
}

/// What to do when a new revision fails.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RollbackPolicy {
    /// Return to the last revision that was fully available, and mark the new one bad.
    #[default]
    Automatic,
    /// Stop the rollout and wait for a person; the service is Degraded with the reason.
    Manual,
}

/// A canary rollout: the new revision is given to a growing share of replicas, with pauses.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Canary {
    /// The steps, in order. Once the last step is done the rollout completes.
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<CanaryStep>,
}

/// One canary step: exactly one of `replicas` or `pause`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.replicas) != has(self.pause)").message("spec.update.canary.steps: each step sets exactly one of replicas or pause"))]
pub struct CanaryStep {
    /// Replicas to move to the new revision at this step: a count or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_or_percent")]
    pub replicas: Option<IntOrString>,

    /// Wait before the next step: for `seconds`, or until promoted when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A pause in a canary rollout.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct Pause {
    /// How long to wait; without it, wait until the rollout is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub seconds: Option<i32>,
}

/// Restart intensity, as an Erlang/OTP supervisor counts it: at most `maxRestarts` repairs
/// in `periodSeconds`; past that, the next step of `escalation`. Repairs of one slot back
/// off exponentially from 5 s, capped so that a persistent failure climbs the whole ladder
/// within one window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Supervision {
    /// Repairs allowed in the window before escalating.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_restarts: i32,

    /// The sliding window, in seconds, over which repairs are counted. A quiet window
    /// resets the ladder. Repairs of one slot back off exponentially from 5 s, capped so
    /// that a persistent failure climbs the whole ladder within one window.
    #[serde(default = "default_period")]
    #[schemars(range(min = 10, max = 86400))]
    pub period_seconds: i32,

    /// The ladder climbed when restarts exceed the intensity, in order.
    #[serde(default = "default_escalation")]
    #[schemars(length(min = 1, max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub escalation: Vec<EscalationStep>,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            period_seconds: default_period(),
            escalation: default_escalation(),
        }
    }
}

fn default_max_restarts() -> i32 {
    5
}

fn default_period() -> i32 {
    300
}

fn default_escalation() -> Vec<EscalationStep> {
    vec![
        EscalationStep::Restart,
        EscalationStep::Reschedule,
        EscalationStep::RebuildStorage,
        EscalationStep::Quarantine,
    ]
}

/// One rung of the escalation ladder.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EscalationStep {
    /// Replace the pod.
    Restart,
    /// Replace the pod away from the node where it failed.
    Reschedule,
    /// Give the slot a new claim, where the storage policy allows it.
    RebuildStorage,
    /// Leave the slot alone and mark the service Degraded; roll back a failing revision.
    Quarantine,
}

/// How the operator repairs replicas whose node or volume is lost.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// Seconds without a renewed node Lease (or with Ready not True) after which a node
    /// counts as lost. The floor of 10 keeps a network hiccup from triggering repairs. A
    /// Lease is renewed every 10 s, so a silence counts from 12 s at the least; a loss
    /// without evidence (deletion or the out-of-service taint) is acted on 11 s later still,
    /// once nodes that failed together are all seen lost, so that the storm guard counts them.
    #[serde(default = "default_node_lost_after")]
    #[schemars(range(min = 10, max = 3600))]
    pub node_lost_after_seconds: i32,

    /// When a replica with ReadWriteOnce storage on a lost node may be replaced:
    /// `WaitForEvidence` (default: once the node is deleted or tainted out-of-service),
    /// `TaintOutOfService` (the operator taints the lost node itself; risky if the node is
    /// only partitioned and still writes), or `None` (a person decides).
    #[serde(default)]
    pub fencing: Fencing,

    /// What happens to the out-of-service taint the operator put on a lost node
    /// (`fencing: TaintOutOfService`) once the node renews its lease again and is Ready, and
    /// no pod of ours is left on it from before the fence: `RemoveFence` (default: the
    /// operator removes that taint, and only that one, with an Event) or `KeepFence` (it
    /// stays until a person removes it, for example after checking the machine).
    #[serde(default)]
    pub on_node_recovered: NodeRecoveredPolicy,

    /// What happens to storage lost with its node.
    #[serde(default)]
    pub storage: StorageRepair,

    /// Destructive repairs allowed at once for this service; many failures at once point at
    /// the infrastructure, and churning replicas would make it worse.
    #[serde(default = "default_max_concurrent_repairs")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_repairs: i32,
}

impl Default for Repair {
    fn default() -> Self {
        Self {
            node_lost_after_seconds: default_node_lost_after(),
            fencing: Fencing::default(),
            on_node_recovered: NodeRecoveredPolicy::default(),
            storage: StorageRepair::default(),
            max_concurrent_repairs: default_max_concurrent_repairs(),
        }
    }
}

fn default_node_lost_after() -> i32 {
    30
}

fn default_max_concurrent_repairs() -> i32 {
    1
}

/// Evidence required before a stateful replica on a lost node is replaced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fencing {
    /// Replace once the node is deleted or carries node.kubernetes.io/out-of-service.
    #[default]
    WaitForEvidence,
    /// Taint the lost node out-of-service, then replace.
    TaintOutOfService,
    /// Never replace on its own: a person decides.
    None,
}

/// What to do with the operator's fence on a node that has recovered.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeRecoveredPolicy {
    /// Remove the out-of-service taint the operator applied.
    #[default]
    RemoveFence,
    /// Leave it for a person to remove.
    KeepFence,
}

/// Storage repair policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageRepair {
    /// When a replica's volume is bound to a lost node: `Retain` (default: wait for a
    /// person; the service is Degraded) or `Recreate` (a new empty claim, bound elsewhere).
    #[serde(default)]
    pub on_volume_lost: VolumeLostPolicy,
}

/// What to do with a volume that was lost with its node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumeLostPolicy {
    /// Keep the claim and wait for a person.
    #[default]
    Retain,
    /// Replace the claim with a new, empty one; the replica starts without its data.
    Recreate,
}

/// What happens to per-replica claims on scale-down and on deletion.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Claims of slots removed by a scale-down: `Retain` (default) or `Delete`.
    #[serde(default)]
    pub when_scaled: ClaimRetention,
    /// Claims when the ResilientService is deleted: `Retain` (default) or `Delete`.
    #[serde(default)]
    pub when_deleted: ClaimRetention,
}

/// Keep or delete a claim.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClaimRetention {
    /// Keep the claim (and its data).
    #[default]
    Retain,
    /// Delete the claim.
    Delete,
}
