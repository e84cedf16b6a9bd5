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

/// The pod template a ControllerRevision recorded; None when its data is not ours. The
/// revision cache keeps the record as the template's JSON text (`record_as_text`).
pub fn recorded_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    match &revision.data.as_ref()?.0 {
        serde_json::Value::String(text) => serde_json::from_str(text).ok(),
        data => serde_json::from_value(data.get("spec")?.get("template")?.clone()).ok(),
    }
}

/// Keeps a revision's record (`{"spec": {"template": ...}}`) as the template's JSON text:
/// as a tree of JSON maps a one-container template costs some 4.5 kB, as text a tenth of that,
/// and text decodes faster. A record that is not ours is left as it is.
pub fn record_as_text(revision: &mut ControllerRevision) {
    let text = (revision.data.as_ref())
        .and_then(|d| d.0.get("spec")?.get("template"))
        .map(|t| t.to_string());
    if let Some(text) = text {
        revision.data = Some(RawExtension(serde_json::Value::String(text)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ResilientService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u"},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_record_kept_as_text_gives_back_the_template_it_recorded() {
        let svc = svc();
        let mut revision = desired_revision(&svc, 3);
        record_as_text(&mut revision);
        assert!(matches!(
            revision.data.as_ref().map(|d| &d.0),
            Some(serde_json::Value::String(_))
        ));
        assert_eq!(
            recorded_template(&revision),
            Some(svc.spec.template.clone())
        );
        assert_eq!(
            revision.metadata.name,
            Some(format!("web-{}", template_hash(&svc.spec.template)))
        );
    }

    #[test]
    fn a_record_that_is_not_ours_is_left_as_it_is_and_read_as_none() {
        let mut revision = desired_revision(&svc(), 1);
        let foreign = serde_json::json!({"apps": ["not", "a", "template"]});
        revision.data = Some(RawExtension(foreign.clone()));
        record_as_text(&mut revision);
        assert_eq!(revision.data.as_ref().map(|d| &d.0), Some(&foreign));
        assert_eq!(recorded_template(&revision), None);
        revision.data = Some(RawExtension(
            serde_json::json!({"spec": {"template": "not a pod template"}}),
        ));
        record_as_text(&mut revision);
        assert_eq!(recorded_template(&revision), None);
    }
}
