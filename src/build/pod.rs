//! Replica pods: the user's template plus identity, ownership, spread and storage.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::{
    Affinity, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity,
    PodReadinessGate, PodSpec, TopologySpreadConstraint, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;

use super::{claim_name, name, owner_reference, selector_labels, service_name};
use crate::api::{
    ResilientService, WhenUnsatisfiable, ANNOTATION_AVOIDS_NODE, GATE_SERVING, LABEL_REVISION,
    LABEL_SLOT,
};

/// The node label one-per-node anti-affinity spreads over.
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// `<service>-<ordinal>`: the pod's hostname, stable for the slot's life; with the headless
/// Service as subdomain it is the replica's stable DNS name.
pub fn pod_hostname(svc: &ResilientService, ordinal: i32) -> String {
    format!("{}-{ordinal}", name(svc))
}

/// `<service>-<ordinal>-<revision hash>`. The revision in the name lets a stateless slot
/// hold an old and a new pod at once during a surge, while the hostname (and so DNS) stays
/// `<service>-<ordinal>`. Names are deterministic, so a create repeated on a stale cache is
/// refused by the server rather than making a second pod.
pub fn pod_name(svc: &ResilientService, ordinal: i32, revision: &str) -> String {
    let hash = revision.rsplit('-').next().unwrap_or(revision);
    format!("{}-{hash}", pod_hostname(svc, ordinal))
}

/// The second name of a slot's pod at `revision`, `<pod_name>-b`: a stateless slot whose pod
/// is still terminating gets its replacement at once under this name, as a ReplicaSet
/// would, instead of waiting for the old name to be free. The two names alternate, so a
/// create repeated on a stale cache is still refused by the server.
pub fn second_pod_name(svc: &ResilientService, ordinal: i32, revision: &str) -> String {
    format!("{}-b", pod_name(svc, ordinal, revision))
}

/// The name a new pod of slot `ordinal` at `revision` gets: the first of its two names no
/// pod in `taken` holds. A pod upgraded in place keeps the name it was created with, so a
/// slot can hold a pod named for another revision than the one it runs.
pub fn free_pod_name(
    svc: &ResilientService,
    ordinal: i32,
    revision: &str,
    taken: &[&str],
) -> Option<String> {
    [
        pod_name(svc, ordinal, revision),
        second_pod_name(svc, ordinal, revision),
    ]
    .into_iter()
    .find(|n| !taken.contains(&n.as_str()))
}

/// The pod of slot `ordinal` at `revision`, built from that revision's `template`.
pub fn desired_pod(
    svc: &ResilientService,
    ordinal: i32,
    revision: &str,
    template: &PodTemplateSpec,
) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.extend(selector_labels(svc));
    labels.insert(LABEL_SLOT.to_string(), ordinal.to_string());
    labels.insert(LABEL_REVISION.to_string(), revision.to_string());
    // Only the operator says which node a pod was made to keep off.
    let mut annotations = template_meta.annotations;
    if let Some(a) = annotations.as_mut() {
        a.remove(ANNOTATION_AVOIDS_NODE);
    }

    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(pod_hostname(svc, ordinal));
    spec.subdomain = Some(service_name(svc));
    attach_claims(svc, ordinal, &mut spec);
    spread(svc, &mut spec);
    // The operator's readiness gate: a pod serves only once the operator says so, and stops
    // serving before the operator deletes it or upgrades it in place.
    let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates.iter().any(|g| g.condition_type == GATE_SERVING) {
        gates.push(PodReadinessGate {
            condition_type: GATE_SERVING.to_string(),
        });
    }

    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(svc, ordinal, revision)),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            annotations,
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    }
}

/// Mounts the slot's claims; a claim template wins over a template volume of the same name.
fn attach_claims(svc: &ResilientService, ordinal: i32, spec: &mut PodSpec) {
    if svc.spec.volume_claim_templates.is_empty() {
        return;
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for template in &svc.spec.volume_claim_templates {
        let volume_name = &template.metadata.name;
        volumes.retain(|v| &v.name != volume_name);
        volumes.push(Volume {
            name: volume_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(volume_name, svc, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
}

/// Spreads replicas over failure domains, and over nodes when one per node is asked for.
fn spread(svc: &ResilientService, spec: &mut PodSpec) {
    let redundancy = &svc.spec.redundancy;
    let selector = LabelSelector {
        match_labels: Some(selector_labels(svc)),
        ..Default::default()
    };
    let when_unsatisfiable = match redundancy.when_unsatisfiable {
        WhenUnsatisfiable::ScheduleAnyway => "ScheduleAnyway",
        WhenUnsatisfiable::DoNotSchedule => "DoNotSchedule",
    };
    let constraints = spec
        .topology_spread_constraints
        .get_or_insert_with(Vec::new);
    constraints.retain(|c| c.topology_key != redundancy.topology_key);
    constraints.push(TopologySpreadConstraint {
        topology_key: redundancy.topology_key.clone(),
        max_skew: redundancy.max_skew,
        min_domains: redundancy.min_domains,
        when_unsatisfiable: when_unsatisfiable.to_string(),
        label_selector: Some(selector.clone()),
        ..Default::default()
    });
    if redundancy.one_per_node {
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let anti = affinity
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default);
        anti.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(PodAffinityTerm {
                label_selector: Some(selector),
                topology_key: HOSTNAME_KEY.to_string(),
                ..Default::default()
            });
    }
}

/// Keeps a pod off `node` (the slot's avoidance: a lost node, or an escalation's
/// Reschedule), with a required node affinity, and names the node in an annotation.
pub fn avoid_node(pod: &mut Pod, node: &str) {
    use k8s_openapi::api::core::v1::{
        NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    };
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    (pod.metadata
        .annotations
        .get_or_insert_with(Default::default))
    .insert(ANNOTATION_AVOIDS_NODE.to_string(), node.to_string());
    let rule = NodeSelectorRequirement {
        key: HOSTNAME_KEY.to_string(),
        operator: "NotIn".to_string(),
        values: Some(vec![node.to_string()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm::default()],
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    // Terms are ORed: the rule must be in every one of them.
    for term in &mut required.node_selector_terms {
        term.match_expressions
            .get_or_insert_with(Vec::new)
            .push(rule.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_kept_off_a_node_names_it_and_a_template_cannot_claim_to() {
        let svc: ResilientService = serde_json::from_value(json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
        }))
        .unwrap();
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"annotations": {(ANNOTATION_AVOIDS_NODE): "n9", "team": "a"}},
            "spec": {
                "containers": [{"name": "app", "image": "a:1"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
                    ]}}}
            }
        }))
        .unwrap();
        let mut pod = desired_pod(&svc, 0, "web-r1", &template);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
        assert_eq!(annotations.get(ANNOTATION_AVOIDS_NODE), None);

        avoid_node(&mut pod, "n1");
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(ANNOTATION_AVOIDS_NODE).map(String::as_str),
            Some("n1")
        );
        let affinity = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let terms = affinity
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for term in terms {
            let rules = term.match_expressions.unwrap();
            assert!(
                rules.iter().any(|r| r.key == HOSTNAME_KEY
                    && r.operator == "NotIn"
                    && r.values == Some(vec!["n1".to_string()])),
                "each term keeps off n1: {rules:?}"
            );
        }
    }
}
