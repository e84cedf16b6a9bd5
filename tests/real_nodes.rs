//! The operator against real kubelets: crash loops and OOM kills that a kubelet reports, a
//! real node that crashes or is cut off, and requests through a ClusterIP Service during a
//! rolling update, side by side with a Deployment (none may fail for the ResilientService;
//! tests/zero_downtime.rs has more of those).
//!
//! Every pod here is the test application (testapp/) on the real nodes, which only pods
//! that tolerate their taint reach. The tests take turns (`REAL_NODES`): they share two
//! nodes, and a node fault would disturb a test beside it.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::ResourceExt;
use perennial::api::{ReplicaStatus, ResilientService, ANNOTATION_AVOIDS_NODE};
use serde_json::json;
use support::pods::*;
use support::real::*;
use support::service::*;
use support::*;

/// `repair.nodeLostAfterSeconds` of the node-fault tests: the least the API allows.
const NODE_LOST_AFTER: u64 = 10;

/// Waits until slot 0's last failure is `reason`; returns its ledger entry.
async fn wait_judged(api: &Api<ResilientService>, name: &str, reason: &str) -> ReplicaStatus {
    let what = format!("slot 0 judged {reason}");
    wait_svc(api, name, &what, POD_TIMEOUT, |svc| {
        let e = entry(svc, 0).ok_or("no ledger entry yet")?;
        (e.last_failure.as_ref().map(|f| f.reason.as_str()) == Some(reason))
            .then(|| e.clone())
            .ok_or_else(|| ledger(svc))
    })
    .await
}

async fn pod_on(ns: &TestNamespace, name: &str) -> Vec<Pod> {
    pods(ns, &format!("app={name}")).await
}

/// Waits until the operator has marked pod `name`, on a lost node, not ready while the pod
/// still exists: Services stop sending it requests before it is replaced.
async fn wait_unrouted(ns: &TestNamespace, name: &str) {
    let api: Api<Pod> = ns.api();
    wait_object(
        &api,
        name,
        "marked not ready by the operator (NodeLost)",
        POD_TIMEOUT,
        |pod| {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(c) if c.status == "False" && c.reason.as_deref() == Some("NodeLost") => Ok(()),
                other => Err(format!("Ready is {other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_container_crashing_under_a_real_kubelet_is_judged_crash_loop_back_off_and_climbs_the_ladder(
) {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("real-crash-loop").await;
    real_nodes(&ns.client, 2).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"supervision": {"maxRestarts": 1, "periodSeconds": 300}});
    let svc = testapp_service("crashy", 1, &[("CRASH_AFTER_SECONDS", "1")], spec);
    let api = create_service(&ns, &svc).await;

    // The kubelet's own restart count and back-off are the evidence: nothing plays them.
    let judged = wait_judged(&api, "crashy", "CrashLoopBackOff").await;
    println!("judged: {judged:?}");
    let climbed = wait_svc(
        &api,
        "crashy",
        "a Reschedule after the Restart",
        Duration::from_secs(240),
        |svc| {
            let e = entry(svc, 0).ok_or("no ledger entry")?;
            matches!(e.escalation.as_deref(), Some("Reschedule" | "Quarantine"))
                .then(|| e.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let avoided = climbed
        .avoid_node
        .clone()
        .expect("a Reschedule avoids the node it failed on");
    assert!(avoided.starts_with("real-node-"), "{climbed:?}");
    let pods = pod_on(&ns, "crashy").await;
    assert!(
        pods.iter()
            .filter(|p| alive(p))
            .all(|p| node_of(p) != avoided || node_of(p).is_empty()),
        "the rescheduled pod avoids {avoided}: {}",
        describe_all(&pods)
    );
    // The replacement names the node it keeps off: what lets a later pass make it again
    // without that once the slot avoids the node no more.
    let ns_ref = &ns;
    let avoided = &avoided;
    wait_for(
        &format!("a pod of crashy made to keep off {avoided}"),
        Duration::from_secs(60),
        || async move {
            let pods = pod_on(ns_ref, "crashy").await;
            pods.iter()
                .filter(|p| alive(p))
                .find(|p| {
                    p.annotations().get(ANNOTATION_AVOIDS_NODE) == Some(avoided)
                        && node_of(p) != *avoided
                })
                .map(|_| ())
                .ok_or_else(|| describe_all(&pods))
        },
    )
    .await;
}

#[tokio::test]
async fn a_container_killed_for_memory_by_a_real_kubelet_is_judged_oom_killed() {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("real-oom").await;
    real_nodes(&ns.client, 2).await;
    let _operator = Operator::with_crd(&ns).await;
    let mut container = testapp_container(&[("ALLOCATE_MIB", "256")]);
    container["resources"]["limits"] = json!({"memory": "48Mi"});
    let svc = service("hog", 1, TESTAPP_IMAGE, testapp_spec("hog", container));
    let api = create_service(&ns, &svc).await;

    let e = wait_judged(&api, "hog", "OOMKilled").await;
    println!("judged: {e:?}");
    let pods = pod_on(&ns, "hog").await;
    let killed = pods.iter().any(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled") && t.exit_code == 137)
    });
    assert!(
        killed,
        "a kubelet reported the OOM kill: {}",
        describe_all(&pods)
    );
}

#[tokio::test]
async fn the_replicas_of_a_crashed_real_node_are_ready_again_on_the_other_real_node() {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("real-node-crash").await;
    let nodes = real_nodes(&ns.client, 2).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"repair": {"nodeLostAfterSeconds": NODE_LOST_AFTER}});
    let api = create_service(&ns, &testapp_service("web", 2, &[], spec)).await;
    // A Service that routes by readiness, as a client's would.
    cluster_ip_service_of(&ns, "web-client", "web").await;
    wait_available(&api, "web", 2, POD_TIMEOUT).await;

    let before = pod_on(&ns, "web").await;
    let victim = node_of(&before[0]);
    let survivor = nodes
        .iter()
        .find(|n| **n != victim)
        .expect("a second real node")
        .clone();
    let lost: Vec<String> = before
        .iter()
        .filter(|p| node_of(p) == victim)
        .map(uid)
        .collect();
    let _back = NodeBack(victim.clone());
    let crashed_at = Instant::now();
    real_fault("node-crash", &victim);
    wait_unrouted(&ns, &before[0].metadata.name.clone().unwrap_or_default()).await;
    println!(
        "node-crash of {victim}: its pod marked not ready {:.1} s after the crash",
        crashed_at.elapsed().as_secs_f64()
    );

    let svc = wait_svc(
        &api,
        "web",
        "both replicas Ready on the surviving node",
        Duration::from_secs(180),
        |svc| {
            let s = status(svc);
            let on_survivor = s
                .replica_statuses
                .iter()
                .filter(|r| r.state == "Ready" && r.node.as_deref() == Some(survivor.as_str()))
                .count();
            (s.available_replicas == 2 && on_survivor == 2)
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let took = crashed_at.elapsed();
    println!(
        "node-crash of {victim}: both replicas Ready on {survivor} {:.1} s after the crash",
        took.as_secs_f64()
    );
    println!("web: {}", ledger(&svc));
    let after = pod_on(&ns, "web").await;
    assert!(
        after
            .iter()
            .all(|p| !lost.contains(&uid(p)) || terminating(p)),
        "the lost pods were replaced: {}",
        describe_all(&after)
    );
    // The README's bound: silence counted from 12 s, acted on 11 s after being judged,
    // plus a start; a minute and a half leaves room for a busy machine.
    assert!(
        took < Duration::from_secs(90),
        "repaired {took:?} after the crash"
    );
}

#[tokio::test]
async fn a_stateful_slot_on_a_partitioned_real_node_waits_for_evidence_while_its_container_runs_on()
{
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("real-partition").await;
    real_nodes(&ns.client, 2).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = merged(
        local_storage(),
        json!({"repair": {"nodeLostAfterSeconds": NODE_LOST_AFTER, "fencing": "WaitForEvidence"}}),
    );
    let api = create_service(&ns, &testapp_service("store", 1, &[], spec)).await;
    cluster_ip_service_of(&ns, "store-client", "store").await;
    wait_available(&api, "store", 1, POD_TIMEOUT).await;
    let [pod] = pod_on(&ns, "store").await.try_into().expect("one pod");
    let node = node_of(&pod);
    let _back = NodeBack(node.clone());
    real_fault("node-partition", &node);
    // Cut off, it may serve stale data or none: clients are sent elsewhere (here, nowhere).
    wait_unrouted(&ns, &pod.metadata.name.clone().unwrap_or_default()).await;

    let svc = wait_svc(
        &api,
        "store",
        "slot 0 waiting for evidence",
        Duration::from_secs(120),
        |svc| {
            let e = entry(svc, 0).ok_or("no entry")?;
            let degraded = degraded(svc).map(|d| d.1);
            (e.waiting_for.is_some() && degraded.as_deref() == Some("NodeLost"))
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    println!("store while {node} is cut off: {}", ledger(&svc));
    assert!(
        node_runs_containers(&node),
        "the old container still runs on {node}: the reason to wait"
    );
    let now = pod_on(&ns, "store").await;
    assert!(
        now.iter().all(|p| uid(p) == uid(&pod)),
        "no second pod for a slot whose old container may still write: {}",
        describe_all(&now)
    );

    // Its kubelet, back, sets Ready again from what its containers say.
    real_fault("node-back", &node);
    wait_available(&api, "store", 1, POD_TIMEOUT).await;
    let [again] = pod_on(&ns, "store").await.try_into().expect("one pod");
    assert_eq!(
        uid(&again),
        uid(&pod),
        "the same pod serves again once its node is back"
    );
}
