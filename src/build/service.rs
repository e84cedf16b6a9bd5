//! The headless Service that gives replicas stable DNS names.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kube::api::ObjectMeta;

use super::{name, owner_reference, selector_labels};
use crate::api::ResilientService;

/// The Service name replicas use as their subdomain.
pub fn service_name(svc: &ResilientService) -> String {
    svc.spec
        .service_name
        .clone()
        .unwrap_or_else(|| name(svc).to_string())
}

/// A headless Service selecting every pod of the service, not-ready ones included, so that
/// peers can find each other while they start (as a StatefulSet's governing Service does).
pub fn desired_service(svc: &ResilientService) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(svc)),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(selector_labels(svc)),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(svc)),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}
