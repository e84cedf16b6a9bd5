//! Proof that the local control plane is the real thing: admission with CEL, the real
//! scheduler spreading pods, the PV controller binding local volumes, and the node lifecycle
//! controller reacting to a lost node.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::json;
use support::nodes::wait_node_state;
use support::*;

#[tokio::test]
async fn api_server_rejects_an_object_that_breaks_a_cel_rule_with_the_rules_message() {
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.proof.perennial.dev"},
        "spec": {
            "group": "proof.perennial.dev",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                        "x-kubernetes-validations": [
                            {"rule": "self.min <= self.max", "message": "spec.min must not exceed spec.max"}
                        ]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    crds.patch(
        "gadgets.proof.perennial.dev",
        &PatchParams::apply("perennial-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the proof CRD");

    let ns = TestNamespace::new("proof-cel").await;
    let gvk = GroupVersionKind::gvk("proof.perennial.dev", "v1", "Gadget");
    let resource = kube::core::ApiResource::from_gvk_with_plural(&gvk, "gadgets");
    let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "proof.perennial.dev/v1", "kind": "Gadget",
        "metadata": {"name": "bad"}, "spec": {"min": 5, "max": 1}
    }))
    .unwrap();
    // The CRD may take a moment to be served; wait until the answer is the rule's rejection.
    let message = wait_for(
        "the CEL rule to reject the gadget",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            let bad = bad.clone();
            async move {
                match api.create(&PostParams::default(), &bad).await {
                    Err(kube::Error::Api(s)) if s.code == 422 => Ok(s.message),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert!(
        message.contains("spec.min must not exceed spec.max"),
        "unexpected rejection: {message}"
    );
}

#[tokio::test]
async fn scheduler_spreads_a_deployment_over_three_zones_and_it_becomes_available() {
    let ns = TestNamespace::new("proof-spread").await;
    let deployments: Api<Deployment> = ns.api();
    let labels = json!({"app": "spread"});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/app:1"}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": labels}
                    }]
                }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    wait_object(
        &deployments,
        "spread",
        "3/3 available replicas",
        Duration::from_secs(60),
        |d| {
            let available = d.status.as_ref().and_then(|s| s.available_replicas);
            (available == Some(3))
                .then_some(())
                .ok_or(format!("{available:?} available"))
        },
    )
    .await;

    let pods: Api<Pod> = ns.api();
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let mut zones = BTreeSet::new();
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let node_name = pod
            .spec
            .and_then(|s| s.node_name)
            .expect("pod is scheduled");
        let node = nodes.get(&node_name).await.unwrap();
        let zone = node.metadata.labels.unwrap()["topology.kubernetes.io/zone"].clone();
        zones.insert(zone);
    }
    assert_eq!(zones.len(), 3, "pods landed in zones {zones:?}");
}

#[tokio::test]
async fn local_claim_binds_once_its_pod_is_scheduled() {
    let ns = TestNamespace::new("proof-storage").await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    // WaitForFirstConsumer: no pod, no binding.
    let phase = claims
        .get("data")
        .await
        .unwrap()
        .status
        .and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Pending"));

    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "user"},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let (volume, node) = wait_for(
        "the claim to bind and the pod to be placed",
        Duration::from_secs(60),
        || {
            let claims = claims.clone();
            let pods = pods.clone();
            async move {
                let c = claims.get("data").await.map_err(|e| e.to_string())?;
                let node = pods
                    .get("user")
                    .await
                    .map_err(|e| e.to_string())?
                    .spec
                    .and_then(|s| s.node_name);
                match (
                    c.status.and_then(|s| s.phase),
                    c.spec.and_then(|s| s.volume_name),
                    node,
                ) {
                    (Some(phase), Some(volume), Some(node)) if phase == "Bound" => {
                        Ok((volume, node))
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert!(
        volume.starts_with(&format!("{node}-pv-")),
        "volume {volume} is not local to the pod's node {node}"
    );
}

#[tokio::test]
async fn lost_node_turns_unknown_and_gets_the_unreachable_taint() {
    let client = client().await;
    let node = TestNode::ready(&client, "proof-lost", "zone-a").await;

    fault("node-lost", Some(&node.name));

    // The node lifecycle controller's grace period is 50 s by default.
    wait_node_state(
        &client,
        &node.name,
        "Unknown",
        ("node.kubernetes.io/unreachable", true),
        Duration::from_secs(120),
    )
    .await;
}
