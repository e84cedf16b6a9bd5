//! Stateful replicas on a lost node, on the local control plane: fenced out of service and
//! given a new claim on a node that is alive; waiting for evidence while the node is only
//! silent, and moving once it is deleted; and a node back before the repair, which never
//! doubles a slot; and a fence removed once its node is back, a person's left alone.
//!
//! Every test plays its node faults on TestNodes of its own: its workloads select them by
//! a group label unique to the test and tolerate their taint, so no other test notices.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use perennial::api::ResilientService;
use serde_json::{json, Value};
use support::nodes::*;
use support::pods::*;
use support::scenario::{Bounds, PodWatch};
use support::service::*;
use support::*;

/// Scheduling and starting pods on KWOK nodes, with room for a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(90);
/// The node lifecycle controller's grace period (50 s) and a lease (40 s) run out before a
/// lost node turns Unknown; the operator's own verdicts come well before that.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);
const TWO_ZONES: [&str; 2] = ["zone-a", "zone-b"];

/// Spec fields of a replica with local storage, extended by `extra`.
fn stateful(extra: Value) -> Value {
    merged(local_storage(), extra)
}

/// A namespace `prefix-…` with a service `name` of one replica with a local volume, on two
/// TestNodes of the test's own, lost after 10 s of silence, fenced as `fencing` says and
/// its volume rebuilt when lost; returns the namespace, the nodes, the operator and the
/// service's API once the replica is available.
async fn lone_replica(
    prefix: &str,
    name: &str,
    fencing: &str,
) -> (TestNamespace, NodeGroup, Operator, Api<ResilientService>) {
    let ns = TestNamespace::new(prefix).await;
    let nodes = NodeGroup::new(&ns.client, prefix, &TWO_ZONES, 2).await;
    let operator = Operator::with_crd(&ns).await;
    let spec = stateful(json!({"repair": {
        "nodeLostAfterSeconds": 10,
        "fencing": fencing,
        "storage": {"onVolumeLost": "Recreate"}
    }}));
    let api = create_service(&ns, &placed_service(name, nodes.placement(), spec)).await;
    wait_available(&api, name, 1, POD_TIMEOUT).await;
    (ns, nodes, operator, api)
}

#[tokio::test]
async fn stateful_replica_on_a_lost_node_is_fenced_out_of_service_and_gets_a_new_claim_bound_on_another_node(
) {
    let (ns, _nodes, _operator, api) =
        lone_replica("repair-fence", "db", "TaintOutOfService").await;

    let pod = ready_pod(&ns, "db", 0).await.expect("slot 0 is Ready");
    let lost = node_of(&pod);
    let (old_claim, old_volume, _) = claim(&ns, "data-db-0").await.expect("the claim exists");
    let old_volume = old_volume.expect("the claim is bound");
    assert_eq!(
        volume_node_of(&ns.client, &old_volume).await.as_deref(),
        Some(lost.as_str()),
        "the claim's local volume is on the pod's node"
    );

    fault("node-lost", Some(&lost));
    wait_node_tainted(&ns.client, &lost, OUT_OF_SERVICE_TAINT, NODE_LOST_TIMEOUT).await;

    let (new_volume, new_node) = wait_for(
        "a new claim data-db-0 bound to a volume on another node",
        NODE_LOST_TIMEOUT,
        || {
            let ns = &ns;
            let old_claim = &old_claim;
            async move {
                let (uid, volume, deleting) = claim(ns, "data-db-0").await.ok_or("no claim")?;
                let Some(volume) = volume.filter(|_| &uid != old_claim && !deleting) else {
                    return Err(format!("uid {uid} (old {old_claim}) deleting={deleting}"));
                };
                let node = volume_node_of(&ns.client, &volume).await.ok_or("no node")?;
                Ok((volume, node))
            }
        },
    )
    .await;
    assert_ne!(new_node, lost, "the new volume is on a node that is alive");
    assert_ne!(new_volume, old_volume);

    let replacement = wait_for("slot 0 Ready again", POD_TIMEOUT, || {
        ready_pod(&ns, "db", 0)
    })
    .await;
    assert_eq!(
        node_of(&replacement),
        new_node,
        "the pod runs with its volume"
    );
    let svc = wait_available(&api, "db", 1, POD_TIMEOUT).await;

    let events: Api<KubeEvent> = ns.api();
    let rebuilt: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("VolumeRebuilt"))
        .filter_map(|e| e.note)
        .collect();
    println!(
        "node {lost} fenced; claim data-db-0 moved from {old_volume} to {new_volume} on {new_node}; replica Ready as {}",
        describe(&replacement)
    );
    println!("  VolumeRebuilt: {rebuilt:?}");
    println!("  db: {}", ledger(&svc));
    assert!(
        !rebuilt.is_empty(),
        "an Event with reason VolumeRebuilt tells the story"
    );
}

#[tokio::test]
async fn stateful_replica_waits_for_evidence_while_its_node_is_lost_and_moves_once_the_node_is_deleted(
) {
    let (ns, _nodes, _operator, api) =
        lone_replica("repair-evidence", "store", "WaitForEvidence").await;
    let pod = ready_pod(&ns, "store", 0).await.expect("slot 0 is Ready");
    let lost = node_of(&pod);
    let (old_claim, _, _) = claim(&ns, "data-store-0").await.expect("the claim exists");

    fault("node-lost", Some(&lost));
    let svc = wait_svc(
        &api,
        "store",
        "NodeLost, slot 0 waiting for evidence",
        NODE_LOST_TIMEOUT,
        |svc| {
            let waiting = entry(svc, 0)
                .and_then(|e| e.waiting_for)
                .unwrap_or_default();
            (status(svc).reason.as_deref() == Some("NodeLost") && waiting.contains("evidence"))
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    println!("node {lost} lost, no evidence: {}", ledger(&svc));

    // Nothing moves, not even once Kubernetes itself has marked the node unreachable.
    let unmoved = || async {
        let slot = slots(&ns, "store").await.remove(&0).unwrap_or_default();
        assert!(
            matches!(slot.as_slice(), [p] if uid(p) == uid(&pod) && !terminating(p)),
            "the pod stays: {}",
            describe_all(&slot)
        );
        let (uid, _, deleting) = claim(&ns, "data-store-0").await.expect("the claim stays");
        assert!(uid == old_claim && !deleting, "the claim stays");
        let n: Node = Api::all(ns.client.clone()).get(&lost).await.unwrap();
        assert!(!node_tainted(&n, OUT_OF_SERVICE_TAINT), "nobody fenced it");
        assert_eq!(operator_pod_deletes(&ns.name), Vec::<String>::new());
    };
    unmoved().await;
    wait_node_unknown(&ns.client, &lost, NODE_LOST_TIMEOUT).await;
    unmoved().await;
    let svc = api.get("store").await.unwrap();
    assert_eq!(status(&svc).reason.as_deref(), Some("NodeLost"));

    // The node's deletion is the evidence.
    let start = Instant::now();
    fault("node-delete", Some(&lost));
    let replacement = wait_for("slot 0 Ready on another node", NODE_LOST_TIMEOUT, || {
        let (ns, pod) = (&ns, &pod);
        async move {
            let p = ready_pod(ns, "store", 0).await?;
            (uid(&p) != uid(pod))
                .then_some(p)
                .ok_or("still the old pod".to_string())
        }
    })
    .await;
    let (new_claim, volume, _) = claim(&ns, "data-store-0").await.expect("a claim");
    let volume = volume.expect("the new claim is bound");
    let volume_on = volume_node_of(&ns.client, &volume).await;
    let svc = wait_available(&api, "store", 1, POD_TIMEOUT).await;
    println!(
        "node {lost} deleted: slot 0 Ready again {:.1} s later as {}, claim on {volume} ({volume_on:?})",
        start.elapsed().as_secs_f64(),
        describe(&replacement)
    );
    println!("  store: {}", ledger(&svc));
    assert_ne!(node_of(&replacement), lost);
    assert_ne!(new_claim, old_claim, "the lost volume's claim was rebuilt");
    assert_eq!(volume_on.as_deref(), Some(node_of(&replacement).as_str()));
    assert_eq!(status(&svc).reason, None);
}

#[tokio::test]
async fn node_back_before_a_stateful_repair_never_doubles_a_slot_and_the_ledger_forgets_after_a_quiet_period(
) {
    let ns = TestNamespace::new("repair-back").await;
    let nodes = NodeGroup::new(&ns.client, "repair-back", &TWO_ZONES, 2).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = stateful(json!({
        "replicas": 2,
        "redundancy": {"onePerNode": true},
        "repair": {"nodeLostAfterSeconds": 10},
        "supervision": {"periodSeconds": 10}
    }));
    // Every pod seen for every slot at once, for the whole test: never two in one slot.
    let bounds = Bounds {
        max_alive: usize::MAX,
        one_per_slot: true,
    };
    let watch = PodWatch::start(&ns, "kv", bounds).await;
    let api = create_service(&ns, &placed_service("kv", nodes.placement(), spec)).await;
    wait_available(&api, "kv", 2, POD_TIMEOUT).await;
    let pod = ready_pod(&ns, "kv", 0).await.expect("slot 0 is Ready");
    let lost = node_of(&pod);

    fault("node-lost", Some(&lost));
    let svc = wait_svc(
        &api,
        "kv",
        "slot 0 failed with NodeLost, waiting for evidence",
        NODE_LOST_TIMEOUT,
        |svc| {
            let e = entry(svc, 0).unwrap_or_default();
            let lost = e
                .last_failure
                .as_ref()
                .is_some_and(|f| f.reason == "NodeLost");
            let waiting = e.waiting_for.as_deref().unwrap_or_default();
            (lost && waiting.contains("evidence"))
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    println!("node {lost} lost: {}", ledger(&svc));
    let failed_at = entry(&svc, 0)
        .and_then(|e| e.last_failure)
        .expect("a last failure")
        .at
        .0;

    let back = Instant::now();
    fault("node-back", Some(&lost));
    let recovered = wait_svc(
        &api,
        "kv",
        "slot 0 Ready again, waiting for nothing",
        NODE_LOST_TIMEOUT,
        |svc| {
            let e = entry(svc, 0).unwrap_or_default();
            (e.state == "Ready" && e.waiting_for.is_none() && status(svc).ready_replicas == 2)
                .then(|| (back.elapsed(), svc.clone()))
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    println!(
        "node {lost} back: slot 0 Ready in the ledger {:.1} s later: {}",
        recovered.0.as_secs_f64(),
        ledger(&recovered.1)
    );
    let cleared = wait_svc(
        &api,
        "kv",
        "slot 0's lastFailure cleared",
        Duration::from_secs(60),
        |svc| {
            (entry(svc, 0).unwrap_or_default().last_failure.is_none())
                .then(|| (back.elapsed(), svc.clone(), jiff::Timestamp::now()))
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let quiet = cleared.2.duration_since(failed_at).as_secs_f64();
    println!(
        "  lastFailure (recorded at {failed_at}) cleared {:.1} s after node-back, {quiet:.1} s after it was recorded: {}",
        cleared.0.as_secs_f64(),
        ledger(&cleared.1)
    );
    // Not before a whole quiet period (periodSeconds 10) since the failure was recorded.
    assert!(quiet >= 10.0, "cleared only {quiet:.1} s after {failed_at}");

    let now = ready_pod(&ns, "kv", 0).await.expect("slot 0 is Ready");
    assert_eq!(uid(&now), uid(&pod), "the same pod went on, never replaced");
    assert_eq!(operator_pod_deletes(&ns.name), Vec::<String>::new());
    let seen = watch.seen();
    assert!(seen.events > 0, "the watch saw the pods");
    assert_eq!(
        seen.violations,
        Vec::<String>::new(),
        "never two pods in one slot ({} pod events watched)",
        seen.events
    );
    assert_eq!(status(&cleared.1).reason, None);
}

/// The out-of-service taint on a node, if any.
fn out_of_service_taint(node: &Node) -> Option<k8s_openapi::api::core::v1::Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == OUT_OF_SERVICE_TAINT)
        .cloned()
}

/// The operator's fence record on a node (its annotation), if any.
fn fence_record(node: &Node) -> Option<Value> {
    let raw = node.annotations().get(perennial::api::ANNOTATION_FENCE)?;
    serde_json::from_str(raw).ok()
}

/// Patches of `node` the operator's identity made that the API server accepted, from its
/// audit log.
fn operator_node_patches(node: &str) -> usize {
    audit_entries(&["perennial-operator", node])
        .into_iter()
        .filter(|e| {
            e["user"]["username"] == "perennial-operator"
                && e["verb"] == "patch"
                && e["objectRef"]["resource"] == "nodes"
                && e["objectRef"]["name"] == node
                && e["stage"] == "ResponseComplete"
                && e["responseStatus"]["code"] == 200
        })
        .count()
}

#[tokio::test]
async fn the_operators_fence_is_removed_once_its_node_is_back_and_ready_and_a_persons_is_left_alone(
) {
    let ns = TestNamespace::new("repair-unfence").await;
    let nodes = NodeGroup::new(
        &ns.client,
        "repair-unfence",
        &["zone-a", "zone-b", "zone-c"],
        2,
    )
    .await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = stateful(json!({"repair": {
        "nodeLostAfterSeconds": 10,
        "fencing": "TaintOutOfService",
        "storage": {"onVolumeLost": "Recreate"}
    }}));
    let api = create_service(&ns, &placed_service("db", nodes.placement(), spec)).await;
    wait_available(&api, "db", 1, POD_TIMEOUT).await;
    let node_api: Api<Node> = Api::all(ns.client.clone());
    let node = |name: String| {
        let api = node_api.clone();
        async move { api.get(&name).await.map_err(|e| e.to_string()) }
    };
    let moved_off = |from: String| {
        let ns = &ns;
        async move {
            let p = ready_pod(ns, "db", 0).await?;
            (node_of(&p) != from)
                .then_some(p)
                .ok_or(format!("still on {from}"))
        }
    };

    // The operator fences the first node it loses, and records that it did.
    let first = node_of(&ready_pod(&ns, "db", 0).await.expect("slot 0 is Ready"));
    fault("node-lost", Some(&first));
    let (ours, record) = wait_for(
        &format!("node {first} tainted {OUT_OF_SERVICE_TAINT}, with a record"),
        NODE_LOST_TIMEOUT,
        || async {
            let n = node(first.clone()).await?;
            match (out_of_service_taint(&n), fence_record(&n)) {
                (Some(t), Some(r)) => Ok((t, r)),
                seen => Err(format!("{seen:?}")),
            }
        },
    )
    .await;
    assert_eq!(record["service"], format!("{}/db", ns.name));
    assert_eq!(
        record["taint"],
        serde_json::to_value(&ours).unwrap(),
        "the record holds the taint exactly as applied"
    );
    let on_second = wait_for(
        "slot 0 Ready off the fenced node",
        NODE_LOST_TIMEOUT,
        || moved_off(first.clone()),
    )
    .await;
    let second = node_of(&on_second);

    // A person fences the second node by hand as soon as it is lost.
    fault("node-lost", Some(&second));
    let (ok, _, err) = kubectl(&[
        "taint",
        "node",
        &second,
        &format!("{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute"),
    ]);
    assert!(ok, "kubectl taint: {err}");
    let theirs = out_of_service_taint(&node(second.clone()).await.unwrap()).expect("tainted");
    let on_third = wait_for(
        "slot 0 Ready off the node a person fenced",
        NODE_LOST_TIMEOUT,
        || moved_off(second.clone()),
    )
    .await;
    println!(
        "fenced {first} (by the operator: {ours:?}) and {second} (by a person: {theirs:?}); slot 0 now {}",
        describe(&on_third)
    );

    // The person's node comes back first, then the operator's.
    fault("node-back", Some(&second));
    wait_for(&format!("node {second} Ready"), POD_TIMEOUT, || async {
        let n = node(second.clone()).await?;
        let ready = node_ready(&n);
        (ready.as_deref() == Some("True"))
            .then_some(())
            .ok_or(format!("Ready={ready:?}"))
    })
    .await;
    let back = Instant::now();
    fault("node-back", Some(&first));
    wait_for(
        &format!("the operator's fence on {first} removed with its record"),
        NODE_LOST_TIMEOUT,
        || async {
            let n = node(first.clone()).await?;
            let left = (out_of_service_taint(&n), fence_record(&n));
            (left == (None, None))
                .then_some(())
                .ok_or(format!("{left:?}, Ready={:?}", node_ready(&n)))
        },
    )
    .await;
    let unfenced_in = back.elapsed();
    let events: Api<KubeEvent> = ns.api();
    let notes = wait_for("a NodeUnfenced Event", POD_TIMEOUT, || {
        let events = events.clone();
        async move {
            let notes: Vec<String> = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("NodeUnfenced"))
                .filter_map(|e| e.note)
                .collect();
            (!notes.is_empty())
                .then_some(notes)
                .ok_or("none yet".to_string())
        }
    })
    .await;
    println!(
        "node {first} unfenced {:.1} s after it came back; NodeUnfenced: {notes:?}",
        unfenced_in.as_secs_f64()
    );
    assert!(
        notes
            .iter()
            .all(|n| n.contains(&first) && !n.contains(&second)),
        "{notes:?}"
    );

    // The person's fence is as they put it, and the operator never wrote to that node.
    let n = node(second.clone()).await.unwrap();
    assert_eq!(out_of_service_taint(&n), Some(theirs));
    assert_eq!(fence_record(&n), None);
    assert_eq!(
        operator_node_patches(&second),
        0,
        "no operator write to {second}"
    );
    assert_eq!(
        operator_node_patches(&first),
        2,
        "one patch fenced {first}, one unfenced it"
    );
    let svc = wait_available(&api, "db", 1, POD_TIMEOUT).await;
    println!("  db: {}", ledger(&svc));
}
