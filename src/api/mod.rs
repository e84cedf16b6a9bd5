//! The `ResilientService` API, version `v1alpha1` of group `perennial.dev`.
//!
//! Types, defaults and admission rules (OpenAPI + CEL) live here; nothing in this module
//! talks to a server. The CRD YAML in `crds/` is generated from these types.

pub mod reference;
mod replacement;
mod spec;
mod stamp;
mod status;
pub mod template;
#[cfg(test)]
mod tests;

pub use replacement::*;
pub use spec::*;
pub use stamp::{
    crd, schema_hash, schema_hash_of, ANNOTATION_SCHEMA_HASH, ANNOTATION_VERSION, VERSION,
};
pub use status::*;

/// The API group of every Perennial resource.
pub const GROUP: &str = "perennial.dev";

/// Labels the operator puts on the objects it owns. Users may not set them in the template:
/// they are how the operator finds its pods again.
pub const LABEL_SERVICE: &str = "perennial.dev/service";
/// The replica slot (ordinal) a pod or claim belongs to.
pub const LABEL_SLOT: &str = "perennial.dev/slot";
/// The template revision a pod was built from.
pub const LABEL_REVISION: &str = "perennial.dev/revision";
/// The readiness gate of every pod the operator creates: True while the pod may serve,
/// False while it is drained before a delete or an in-place upgrade.
pub const GATE_SERVING: &str = "perennial.dev/serving";
/// Every label key the operator reserves for itself.
pub const RESERVED_LABELS: [&str; 3] = [LABEL_SERVICE, LABEL_SLOT, LABEL_REVISION];

/// Annotation that promotes a canary rollout waiting at `pause: {}`: set it to a new value
/// (a timestamp) for each promotion.
pub const ANNOTATION_PROMOTE: &str = "perennial.dev/promote";
/// Annotation that aborts the rollout in progress ("true", or the revision's name): the
/// service returns to its last stable revision, and the aborted one is marked bad.
pub const ANNOTATION_ABORT: &str = "perennial.dev/abort";
/// Template annotation `kubectl perennial restart` sets to the time of the restart: a new
/// template, so a new revision rolled out like any other, with every guarantee of a rollout.
pub const ANNOTATION_RESTARTED_AT: &str = "perennial.dev/restarted-at";
/// Annotation on a ControllerRevision marking it failed, with the reason.
pub const ANNOTATION_BAD_REVISION: &str = "perennial.dev/failed";
/// Annotation on a ControllerRevision whose pods the API server refused as invalid, with
/// the server's message. No pod of that revision is created again: the service is Degraded
/// (InvalidTemplate) until spec.template changes. Removing the annotation tries again.
pub const ANNOTATION_INVALID_TEMPLATE: &str = "perennial.dev/invalid-template";

/// Annotation on a Node the operator fenced (tainted node.kubernetes.io/out-of-service):
/// which service did, and the exact taint, as JSON. The operator removes only a taint that
/// is still as recorded; deleting the annotation leaves the fence to a person.
pub const ANNOTATION_FENCE: &str = "perennial.dev/fence";

/// Annotation on a pod made to keep off a node (the slot's avoidance when it was made):
/// that node. A pod still waiting for a node whose slot avoids that node no more is made
/// again without it, whenever the operator sees it, not only in the pass that lifts the
/// avoidance. Set by the operator alone: a template's own value is dropped.
pub const ANNOTATION_AVOIDS_NODE: &str = "perennial.dev/avoids-node";

/// The field manager the operator uses for every server-side apply.
pub const FIELD_MANAGER: &str = "perennial";

/// The CustomResourceDefinition of `ResilientService` as YAML, stamped, as `make crds`
/// writes it.
pub fn crd_yaml() -> String {
    let crd = crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
    format!("# Generated from the Rust types by `make crds`; do not edit.\n{body}")
}

/// The field reference of `ResilientService` as Markdown, as `make crds` writes it to
/// `docs/reference.md`.
pub fn crd_reference() -> String {
    use kube::CustomResourceExt;
    reference::markdown(&ResilientService::crd())
}
