//! ControllerRevisions: one per template revision, named by the template's hash.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use super::{name, owner_reference, selector_labels};
use crate::api::{ResilientService, LABEL_REVISION};

/// A short, stable hash of a pod template: equal templates give equal hashes, so an edit
/// and its undo land on the same revision.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // k8s-openapi serializes structs in declaration order and maps as BTreeMaps: stable.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// `<service>-<hash>`: the name of the revision and the value of the revision label.
pub fn revision_name(svc: &ResilientService) -> String {
    format!("{}-{}", name(svc), template_hash(&svc.spec.template))
}

/// The ControllerRevision recording the current template, numbered `number`.
pub fn desired_revision(svc: &ResilientService, number: i64) -> ControllerRevision {
    let revision = revision_name(svc);
    let mut labels = selector_labels(svc);
    labels.insert(LABEL_REVISION.to_string(), revision.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(RawExtension(
            serde_json::json!({ "spec": { "template": svc.spec.template } }),
        )),
        revision: number,
    }
}

/// The pod template a ControllerRevision recorded; None when its data is not ours.
pub fn recorded_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = revision.data.as_ref()?;
    serde_json::from_value(data.0.get("spec")?.get("template")?.clone()).ok()
}
