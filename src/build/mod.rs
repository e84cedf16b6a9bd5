//! Desired objects, one file per kind. Pure: a function of the spec, never of a client.

mod claim;
mod disruption_budget;
mod fence;
mod in_place;
mod pod;
mod revision;
mod service;

pub use claim::{claim_name, desired_claim};
pub use disruption_budget::desired_disruption_budget;
pub use fence::{fence_patch, service_key, unfence_patch, FenceRecord, Unfence};
pub use in_place::{in_place_key, in_place_patches, qos_class};
pub use pod::{avoid_node, desired_pod, free_pod_name, pod_hostname, pod_name, second_pod_name};
pub use revision::{
    desired_revision, record_as_text, recorded_template, revision_name, template_hash,
};
pub use service::{desired_service, service_name};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use crate::api::{ResilientService, LABEL_SERVICE};

/// The labels that select every pod of a service.
pub fn selector_labels(svc: &ResilientService) -> BTreeMap<String, String> {
    [(LABEL_SERVICE.to_string(), name(svc).to_string())].into()
}

/// The label selector of a service's pods, as status.selector shows it.
pub fn selector_string(svc: &ResilientService) -> String {
    format!("{LABEL_SERVICE}={}", name(svc))
}

/// The owner reference children carry, so that the garbage collector removes them with
/// the service.
pub fn owner_reference(svc: &ResilientService) -> Option<OwnerReference> {
    svc.controller_owner_ref(&())
}

pub(crate) fn name(svc: &ResilientService) -> &str {
    svc.metadata.name.as_deref().unwrap_or_default()
}
