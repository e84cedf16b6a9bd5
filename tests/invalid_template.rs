//! A template admission lets through but whose pods the API server refuses: the service
//! turns Degraded with reason InvalidTemplate and the server's message, the operator asks
//! for no pod of it again, and fixing the template clears it.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use perennial::api::{ResilientService, ANNOTATION_INVALID_TEMPLATE};
use serde_json::json;
use support::scenario::{create_service, merge_patch, service, status, wait_converged};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(90);
const REPLICAS: i32 = 2;
/// A node selector key: admission checks the values of a node selector, the pod
/// validation its keys too.
const BAD_KEY: &str = "disk type";

/// The Degraded condition: (status, reason, message).
fn degraded(svc: &ResilientService) -> Option<(String, String, String)> {
    status(svc)
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Pod creates of the operator in `ns` that the API server refused, from its audit log.
fn refused_pod_creates(ns: &str) -> usize {
    operator_write_entries(ns)
        .iter()
        .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "pods")
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_i64()
                .is_some_and(|c| c == 400 || c == 422)
        })
        .count()
}

/// Waits until `name` is Degraded for `InvalidTemplate` at its current generation; returns
/// the condition's message.
async fn wait_invalid_template(api: &Api<ResilientService>, name: &str) -> String {
    wait_for(
        "Degraded with reason InvalidTemplate",
        TIMEOUT,
        || async move {
            let svc = api.get(name).await.map_err(|e| e.to_string())?;
            let seen = status(&svc).observed_generation == svc.metadata.generation;
            match degraded(&svc) {
                Some((s, reason, message))
                    if seen && s == "True" && reason == "InvalidTemplate" =>
                {
                    Ok(message)
                }
                other => Err(format!("observed {seen}, Degraded {other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_template_only_the_pod_validation_refuses_ends_degraded_invalid_template_until_fixed() {
    let ns = TestNamespace::new("invalid-template").await;
    install_crd(&ns.client).await;
    let _operator = Operator::start(&ns.name);
    let svc = service(
        "web",
        REPLICAS,
        "example/app:1",
        json!({"template": {"spec": {"nodeSelector": {BAD_KEY: "ssd"}}}}),
    );
    let api = create_service(&ns, &svc).await;

    let message = wait_invalid_template(&api, "web").await;
    println!("Degraded: InvalidTemplate: {message}");
    assert!(
        message.contains("is invalid: spec.nodeSelector") && message.contains(BAD_KEY),
        "the API server's message is quoted: {message}"
    );
    let served = api.get("web").await.expect("the service");
    assert_eq!(status(&served).reason.as_deref(), Some("InvalidTemplate"));
    let pods: Api<Pod> = ns.api();
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let revisions: Api<ControllerRevision> = ns.api();
    let revision = status(&served).update_revision.expect("an update revision");
    let marked = revisions.get(&revision).await.expect("the revision");
    assert!(
        marked
            .metadata
            .annotations
            .unwrap_or_default()
            .get(ANNOTATION_INVALID_TEMPLATE)
            .is_some_and(|m| m.contains(BAD_KEY)),
        "revision {revision} carries the refusal"
    );
    let events: Api<KubeEvent> = ns.api();
    let warned = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .any(|e| e.reason.as_deref() == Some("InvalidTemplate"));
    assert!(warned, "an InvalidTemplate Event");

    // No hot loop: a pass at a new generation asks for no pod of the refused revision.
    let refused = refused_pod_creates(&ns.name);
    println!("pod creates refused before the revision was marked: {refused}");
    assert!(
        (1..=2 * REPLICAS as usize).contains(&refused),
        "{refused} refused creates for {REPLICAS} replicas"
    );
    merge_patch(&api, "web", json!({"spec": {"revisionHistoryLimit": 9}})).await;
    wait_invalid_template(&api, "web").await;
    assert_eq!(refused_pod_creates(&ns.name), refused, "a create storm");

    // Fixed: the pods come, and the condition clears.
    merge_patch(
        &api,
        "web",
        json!({"spec": {"template": {"spec": {"nodeSelector": null}}}}),
    )
    .await;
    wait_converged(&api, "web", TIMEOUT).await;
    let fixed = api.get("web").await.expect("the service");
    let (s, reason, _) = degraded(&fixed).expect("a Degraded condition");
    assert_eq!((s.as_str(), reason.as_str()), ("False", "ReplicasHealthy"));
    assert_eq!(status(&fixed).reason, None);
}
