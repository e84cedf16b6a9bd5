//! What the operator does not expect, on the local control plane, with one operator per
//! test: pods that wear a service's labels but are not its own, a claim deleted by hand,
//! revisions replaced or deleted by hand, a service deleted in the middle of a rollout, and
//! nodes and node Leases with fields missing. After each, the service converges and the
//! operator is still running and has not panicked.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use perennial::api::{ResilientService, LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT};
use serde_json::{json, Value};
use support::scenario::*;
use support::*;

/// Convergence of a handful of pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Creates `object` from JSON in the test's namespace.
async fn create_json<K>(api: &Api<K>, object: Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
}

fn uid<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// (a) pods that are not the service's own

/// A pod wearing `labels`, owned by `owner` (None: by no one).
fn foreign_pod(name: &str, labels: Value, owner: Option<&ConfigMap>) -> Value {
    let owners: Vec<Value> = owner
        .map(|o| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(),
                "uid": uid(o), "controller": true})
        })
        .into_iter()
        .collect();
    json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {"containers": [{"name": "app", "image": "example/stowaway:1"}]}
    })
}

#[tokio::test]
async fn pods_wearing_the_service_labels_but_not_its_own_are_not_adopted_counted_or_deleted() {
    let ns = TestNamespace::new("hostile-foreign").await;
    let mut op = Operator::with_crd(&ns).await;
    let api = create_service(&ns, &service("web", 3, "example/app:1", json!({}))).await;
    let revision = wait_converged(&api, "web", TIMEOUT).await;

    // One by no one, claiming a slot and the current revision; one owned by a ConfigMap,
    // in a slot beyond the replicas, as a scale-down would leave it.
    let pods: Api<Pod> = ns.api();
    let landlord: ConfigMap = create_json(
        &ns.api(),
        json!({"metadata": {"name": "landlord"}, "data": {"x": "y"}}),
    )
    .await;
    let labels =
        |slot: &str| json!({LABEL_SERVICE: "web", LABEL_SLOT: slot, LABEL_REVISION: revision});
    let stowaway = create_json(&pods, foreign_pod("stowaway", labels("1"), None)).await;
    let lodger = create_json(&pods, foreign_pod("lodger", labels("5"), Some(&landlord))).await;
    let pods_ref = &pods;
    for name in ["stowaway", "lodger"] {
        wait_for(&format!("{name} to be Ready"), TIMEOUT, || async move {
            let pods = pods_ref;
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            ready(&p).then_some(()).ok_or("not Ready".to_string())
        })
        .await;
    }

    // A scale-up and a rollout with them in the way: counted, they would hold back both.
    merge_patch(&api, "web", json!({"spec": {"replicas": 4}})).await;
    merge_patch(&api, "web", image_patch("example/app:2")).await;
    let end = wait_settled(&ns, "web", TIMEOUT).await;
    let svc = api.get("web").await.expect("get the service");
    let s = status(&svc);
    assert_eq!(
        (s.replicas, s.ready_replicas, s.available_replicas),
        (4, 4, 4),
        "the foreign pods are not counted"
    );
    assert_eq!(end.pods.len(), 4);
    for (original, name) in [(&stowaway, "stowaway"), (&lodger, "lodger")] {
        let now = pods
            .get(name)
            .await
            .expect("the foreign pod is still there");
        assert_eq!(uid(&now), uid(original), "{name} was not replaced");
        assert_eq!(
            now.metadata.owner_references, original.metadata.owner_references,
            "{name} was not adopted"
        );
        assert!(!terminating(&now), "{name} is not being deleted");
    }
    let writes = support::operator_writes(&ns.name);
    assert!(
        !writes
            .iter()
            .any(|w| w.contains("stowaway") || w.contains("lodger")),
        "the operator wrote to a pod not its own: {writes:?}"
    );
    op.assert_sound("pods not its own");
}

// ------------------------------------------------------------------------------------------
// (b) a claim deleted by hand

#[tokio::test]
async fn claim_deleted_by_hand_is_reported_then_made_again_and_its_slot_comes_back() {
    let ns = TestNamespace::new("hostile-claim").await;
    let _volumes = Volumes::reserve(&ns, "data", "db", 3).await;
    let mut op = Operator::with_crd(&ns).await;
    let api = create_service(&ns, &service("db", 3, "example/db:1", local_storage())).await;
    let before = wait_settled(&ns, "db", TIMEOUT).await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let old = claims.get("data-db-1").await.expect("the claim of slot 1");

    // Its pod still uses it: the claim only starts terminating, and the service says so.
    claims
        .delete("data-db-1", &DeleteParams::default())
        .await
        .expect("delete the claim");
    let said = wait_for("the service to report the claim", TIMEOUT, || async {
        let svc = api.get("db").await.map_err(|e| e.to_string())?;
        let degraded = status(&svc)
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True");
        match degraded {
            Some(c) if c.message.contains("data-db-1") => Ok(c.message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("Degraded: {said}");
    op.assert_sound("a claim deleted under its pod");

    // A person lets it go by deleting the pod: the slot gets a new claim, then a new pod.
    let pods: Api<Pod> = ns.api();
    let (pod, ..) = before.pods[&1][0].clone();
    pods.delete(&pod, &DeleteParams::default())
        .await
        .expect("delete the pod of slot 1");
    let end = wait_settled(&ns, "db", TIMEOUT).await;
    let new = claims
        .get("data-db-1")
        .await
        .expect("slot 1 has a claim again");
    assert_ne!(uid(&new), uid(&old), "a new claim");
    assert!(new.metadata.deletion_timestamp.is_none());
    assert_eq!(
        end.claims.len(),
        3,
        "no claim lost or added: {:?}",
        end.claims
    );
    let svc = api.get("db").await.expect("get the service");
    assert_ne!(condition_status(&svc, "Degraded").as_deref(), Some("True"));
    op.assert_sound("a claim deleted by hand");
}

// ------------------------------------------------------------------------------------------
// (c) revisions replaced or deleted by hand

#[tokio::test]
async fn revisions_replaced_or_deleted_by_hand_are_recovered_and_pods_stay_as_they_are() {
    let ns = TestNamespace::new("hostile-revision").await;
    let mut op = Operator::with_crd(&ns).await;
    let api = create_service(&ns, &service("web", 3, "example/app:1", json!({}))).await;
    let first = wait_converged(&api, "web", TIMEOUT).await;
    merge_patch(&api, "web", image_patch("example/app:2")).await;
    wait_settled(&ns, "web", TIMEOUT).await;
    let second = wait_converged(&api, "web", TIMEOUT).await;
    let pods: Api<Pod> = ns.api();
    let selector = ListParams::default().labels(&format!("{LABEL_SERVICE}=web"));
    let uids = |list: Vec<Pod>| {
        list.iter()
            .map(uid)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let pods_before = uids(pods.list(&selector).await.expect("list pods").items);

    // A revision's data cannot be edited (the API server refuses: it is immutable), so the
    // old revision is replaced by one of the same name and owner with data not ours; the
    // current one is deleted.
    let revisions: Api<ControllerRevision> = ns.api();
    let original = revisions.get(&first).await.expect("the first revision");
    revisions
        .delete(&first, &DeleteParams::default())
        .await
        .expect("delete the first revision");
    wait_gone(&revisions, &first, TIMEOUT).await;
    let mut forged = original.clone();
    forged.metadata = kube::api::ObjectMeta {
        name: original.metadata.name.clone(),
        labels: original.metadata.labels.clone(),
        owner_references: original.metadata.owner_references.clone(),
        ..Default::default()
    };
    forged.data = Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
        json!({"spec": {"template": "not a pod template"}}),
    ));
    revisions
        .create(&PostParams::default(), &forged)
        .await
        .expect("create the forged revision");
    let deleted = revisions.get(&second).await.expect("the current revision");
    revisions
        .delete(&second, &DeleteParams::default())
        .await
        .expect("delete the current revision");

    let remade = wait_for("the current revision to be made again", TIMEOUT, || async {
        match revisions
            .get_opt(&second)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(r) if uid(&r) != uid(&deleted) => Ok(r),
            other => Err(format!("{:?}", other.map(|r| uid(&r)))),
        }
    })
    .await;
    assert_eq!(remade.data, deleted.data, "it records the same template");
    let end = wait_settled(&ns, "web", TIMEOUT).await;
    assert_eq!(end.current_revision.as_deref(), Some(second.as_str()));
    let pods_after = uids(pods.list(&selector).await.expect("list pods").items);
    assert_eq!(pods_after, pods_before, "no pod was replaced");
    op.assert_sound("a revision replaced and one deleted");

    // Back to the first template: its forged record reaches no pod, and is replaced by a
    // true one, which a later rollback to it would read.
    merge_patch(&api, "web", image_patch("example/app:1")).await;
    let end = wait_settled(&ns, "web", TIMEOUT).await;
    assert_eq!(end.current_revision.as_deref(), Some(first.as_str()));
    wait_for("the forged record to be replaced", TIMEOUT, || async {
        let r = revisions.get(&first).await.map_err(|e| e.to_string())?;
        (r.data == original.data)
            .then_some(())
            .ok_or(format!("{:?}", r.data))
    })
    .await;
    for p in pods.list(&selector).await.expect("list pods") {
        let image = p.spec.as_ref().and_then(|s| s.containers[0].image.clone());
        assert_eq!(image.as_deref(), Some("example/app:1"), "{}", p.name_any());
    }
    op.assert_sound("a rollout to a forged revision");
}

// ------------------------------------------------------------------------------------------
// (d) a service deleted in the middle of a rollout

#[tokio::test]
async fn service_deleted_mid_rollout_is_garbage_collected_and_the_next_service_is_served() {
    let ns = TestNamespace::new("hostile-delete").await;
    let mut op = Operator::with_crd(&ns).await;
    // minReadySeconds keeps the rollout going long enough to be caught in the middle.
    let doomed = service(
        "doomed",
        4,
        "example/app:1",
        json!({"update": {"maxSurge": 1, "maxUnavailable": 0, "minReadySeconds": 3}}),
    );
    let api = create_service(&ns, &doomed).await;
    create_service(&ns, &service("other", 2, "example/app:1", json!({}))).await;
    wait_settled(&ns, "doomed", TIMEOUT).await;
    wait_settled(&ns, "other", TIMEOUT).await;

    merge_patch(&api, "doomed", image_patch("example/app:2")).await;
    wait_for("the rollout to be under way", TIMEOUT, || async {
        let s = status(&api.get("doomed").await.map_err(|e| e.to_string())?);
        (s.updated_replicas >= 1 && s.updated_replicas < 4)
            .then_some(())
            .ok_or(format!("updated {}", s.updated_replicas))
    })
    .await;
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete the service");

    let owned = ListParams::default().labels(&format!("{LABEL_SERVICE}=doomed"));
    let (owned, ns_ref) = (&owned, &ns);
    wait_for(
        "what the service owned to be collected",
        TIMEOUT,
        || async move {
            let pods = ns_ref
                .api::<Pod>()
                .list(owned)
                .await
                .map_err(|e| e.to_string())?;
            let revisions = ns_ref.api::<ControllerRevision>().list(owned).await;
            let revisions = revisions.map_err(|e| e.to_string())?;
            let budget = ns_ref.api::<PodDisruptionBudget>().get_opt("doomed").await;
            let service = ns_ref.api::<Service>().get_opt("doomed").await;
            let left = (
                pods.items.len(),
                revisions.items.len(),
                budget.map_err(|e| e.to_string())?.is_some(),
                service.map_err(|e| e.to_string())?.is_some(),
            );
            (left == (0, 0, false, false))
                .then_some(())
                .ok_or(format!("pods, revisions, budget, Service left: {left:?}"))
        },
    )
    .await;
    op.assert_sound("a service deleted mid-rollout");

    let other: Api<ResilientService> = ns.api();
    merge_patch(&other, "other", json!({"spec": {"replicas": 3}})).await;
    merge_patch(&other, "other", image_patch("example/app:2")).await;
    let end = wait_settled(&ns, "other", TIMEOUT).await;
    assert_eq!(end.pods.len(), 3);
    op.assert_sound("serving the next service");
}

// ------------------------------------------------------------------------------------------
// (e) nodes and node Leases with fields missing

/// Cluster-scoped and kube-node-lease objects of a test's own, deleted on drop.
struct Litter(Vec<[String; 2]>);

impl Drop for Litter {
    fn drop(&mut self) {
        for [kind, name] in &self.0 {
            let mut args = vec!["delete", kind.as_str(), name.as_str(), "--wait=false"];
            if kind == "lease" {
                args.extend(["-n", "kube-node-lease"]);
            }
            let _ = kubectl(&args);
        }
    }
}

#[tokio::test]
async fn nodes_and_leases_with_fields_missing_do_not_stop_the_service_converging() {
    let ns = TestNamespace::new("hostile-node").await;
    let mut op = Operator::with_crd(&ns).await;
    let api = create_service(&ns, &service("web", 3, "example/app:1", json!({}))).await;
    wait_settled(&ns, "web", TIMEOUT).await;

    let suffix = unique_suffix();
    let (bare, odd, ghost) = (
        format!("bare-{suffix}"),
        format!("odd-{suffix}"),
        format!("ghost-{suffix}"),
    );
    let mut litter = Litter(Vec::new());
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    // No labels, no spec, no status: nothing but a name.
    create_json(&nodes, json!({"metadata": {"name": bare}})).await;
    litter.0.push(["node".into(), bare.clone()]);
    // A Ready condition with no times and no reason; no capacity.
    create_json(&nodes, json!({"metadata": {"name": odd, "labels": {}}})).await;
    litter.0.push(["node".into(), odd.clone()]);
    let conditions = |list: Value| Patch::Merge(json!({"status": {"conditions": list}}));
    nodes
        .patch_status(
            &odd,
            &PatchParams::default(),
            &conditions(json!([{"type": "Ready", "status": "Unknown"}])),
        )
        .await
        .expect("give the odd node a bare condition");
    // Leases without renewTime: one of a node that exists, one of a node that never did,
    // one with no spec at all.
    for (name, spec) in [
        (&bare, json!({"holderIdentity": bare})),
        (&ghost, json!({})),
        (&odd, Value::Null),
    ] {
        create_json(&leases, json!({"metadata": {"name": name}, "spec": spec})).await;
        litter.0.push(["lease".into(), name.clone()]);
    }

    // The service is still served: a scale-up and a rollout both finish.
    merge_patch(&api, "web", json!({"spec": {"replicas": 4}})).await;
    merge_patch(&api, "web", image_patch("example/app:2")).await;
    let end = wait_settled(&ns, "web", TIMEOUT).await;
    assert_eq!(end.pods.len(), 4);
    op.assert_sound("nodes and leases with fields missing");

    // The odd node's condition goes too; the service notices nothing.
    nodes
        .patch_status(&odd, &PatchParams::default(), &conditions(json!([])))
        .await
        .expect("clear the odd node's conditions");
    merge_patch(&api, "web", json!({"spec": {"replicas": 2}})).await;
    let end = wait_settled(&ns, "web", TIMEOUT).await;
    assert_eq!(end.pods.len(), 2);
    op.assert_sound("a node without conditions");
    drop(litter);
}
