//! Per-replica PersistentVolumeClaims, kept by their slot across pod replacements.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ObjectMeta;

use super::{name, owner_reference, selector_labels};
use crate::api::{ClaimRetention, ClaimTemplate, ResilientService, LABEL_SLOT};

/// `<template>-<service>-<ordinal>`, as a StatefulSet names its claims.
pub fn claim_name(template: &str, svc: &ResilientService, ordinal: i32) -> String {
    format!("{template}-{}-{ordinal}", name(svc))
}

/// The claim of `ordinal` made from `template`. It is owned by the service only when the
/// retention policy deletes claims with it; a retained claim must outlive the service.
pub fn desired_claim(
    svc: &ResilientService,
    template: &ClaimTemplate,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let mut labels = template.metadata.labels.clone();
    labels.extend(selector_labels(svc));
    labels.insert(LABEL_SLOT.to_string(), ordinal.to_string());
    let owned = svc
        .spec
        .persistent_volume_claim_retention_policy
        .when_deleted
        == ClaimRetention::Delete;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(&template.metadata.name, svc, ordinal)),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!template.metadata.annotations.is_empty())
                .then(|| template.metadata.annotations.clone()),
            owner_references: owned
                .then(|| owner_reference(svc))
                .flatten()
                .map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(template.spec.clone()),
        ..Default::default()
    }
}
