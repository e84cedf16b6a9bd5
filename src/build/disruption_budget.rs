//! The PodDisruptionBudget that keeps voluntary disruptions (drains) within bounds.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::{name, owner_reference, selector_labels};
use crate::api::ResilientService;

/// Quorum mode keeps a majority, floor(n/2)+1; otherwise at most maxUnavailable (default 1)
/// replicas may be down.
pub fn desired_disruption_budget(svc: &ResilientService) -> PodDisruptionBudget {
    let budget = &svc.spec.disruption_budget;
    let (min_available, max_unavailable) = if budget.quorum {
        (Some(IntOrString::Int(svc.spec.replicas / 2 + 1)), None)
    } else {
        let max = budget
            .max_unavailable
            .clone()
            .unwrap_or(IntOrString::Int(1));
        (None, Some(max))
    };
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(name(svc).to_string()),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(selector_labels(svc)),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(svc)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
