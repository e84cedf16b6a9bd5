//! Lost nodes on the local control plane: stateless replicas on a lost node are Ready
//! elsewhere within seconds, while a Deployment and a StatefulSet still wait; three of four
//! nodes lost at once are a suspected mass failure, and nothing is force-deleted; a node
//! back lifts the avoidance of a slot that has no pod there.
//!
//! Every test plays its node faults on TestNodes of its own: its workloads select them by
//! a group label unique to the test and tolerate their taint, so no other test notices.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use perennial::api::LABEL_SERVICE;
use serde_json::{json, Value};
use support::nodes::*;
use support::pods::*;
use support::service::*;
use support::*;

/// Scheduling and starting pods on KWOK nodes, with room for a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(90);
/// The node lifecycle controller's grace period (50 s) and a lease (40 s) run out before a
/// lost node turns Unknown; the operator's own verdicts come well before that.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);
const FOUR_ZONES: [&str; 4] = ["zone-a", "zone-b", "zone-c", "zone-a"];

/// Creates a workload of kind `K` from JSON.
async fn create_json<K>(ns: &TestNamespace, object: Value) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = ns.api();
    let object: K = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create the workload");
    api
}

#[tokio::test]
async fn stateless_replicas_on_a_lost_node_are_ready_elsewhere_within_seconds_while_a_deployment_and_a_statefulset_still_wait(
) {
    const LOST_AFTER: u64 = 10;
    let ns = TestNamespace::new("repair-stateless").await;
    let nodes = NodeGroup::new(&ns.client, "repair-stateless", &FOUR_ZONES, 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({
        "replicas": 3,
        "redundancy": {"onePerNode": true},
        "repair": {"nodeLostAfterSeconds": LOST_AFTER}
    });
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;

    // For contrast: a Deployment and a StatefulSet with a pod on every one of the nodes.
    let one_per_node = |app: &str| {
        let spec = json!({
            "containers": [{"name": "app", "image": "example/app:1"}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": app}},
                "topologyKey": "kubernetes.io/hostname"
            }]}}
        });
        json!({"metadata": {"labels": {"app": app}}, "spec": merged(spec, nodes.placement())})
    };
    let deployments: Api<Deployment> = create_json(
        &ns,
        json!({
            "metadata": {"name": "deploy"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "deploy"}},
                "template": one_per_node("deploy")
            }
        }),
    )
    .await;
    let statefulsets: Api<StatefulSet> = create_json(
        &ns,
        json!({
            "metadata": {"name": "sts"},
            "spec": {
                "replicas": 4,
                "serviceName": "sts",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "sts"}},
                "template": one_per_node("sts")
            }
        }),
    )
    .await;

    wait_available(&api, "web", 3, POD_TIMEOUT).await;
    wait_object(
        &deployments,
        "deploy",
        "4 available replicas",
        POD_TIMEOUT,
        |d| {
            let n = d.status.as_ref().and_then(|s| s.available_replicas);
            (n == Some(4))
                .then_some(())
                .ok_or(format!("{n:?} available"))
        },
    )
    .await;
    wait_object(&statefulsets, "sts", "4 ready replicas", POD_TIMEOUT, |s| {
        let n = s.status.as_ref().and_then(|s| s.ready_replicas);
        (n == Some(4)).then_some(()).ok_or(format!("{n:?} ready"))
    })
    .await;

    let ours = slots(&ns, "web").await;
    let lost = node_of(&ours[&0][0]);
    let survivors: Vec<String> = ours
        .values()
        .flatten()
        .filter(|p| node_of(p) != lost)
        .map(uid)
        .collect();
    let on_lost = |pods: &[Pod]| -> Pod {
        pods.iter()
            .find(|p| node_of(p) == lost)
            .cloned()
            .expect("a pod on the node to lose")
    };
    let deploy_victim = on_lost(&pods(&ns, "app=deploy").await);
    let sts_victim = on_lost(&pods(&ns, "app=sts").await);

    let start = Instant::now();
    let fault_at = jiff::Timestamp::now();
    fault("node-lost", Some(&lost));
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let last_heartbeat = leases
        .get(&lost)
        .await
        .ok()
        .and_then(|l| l.spec?.renew_time)
        .map(|t| t.0);
    let recovered = wait_for(
        "3 Ready replicas of web, none on the lost node",
        NODE_LOST_TIMEOUT,
        || {
            let ns = &ns;
            let lost = &lost;
            async move {
                let pods = pods(ns, &format!("{LABEL_SERVICE}=web")).await;
                let ok = pods.len() == 3
                    && pods
                        .iter()
                        .all(|p| ready(p) && &node_of(p) != lost && !terminating(p));
                if ok {
                    Ok(start.elapsed())
                } else {
                    Err(describe_all(&pods))
                }
            }
        },
    )
    .await;

    // The same moment, for the built-in controllers.
    let deploy_pods = pods(&ns, "app=deploy").await;
    let sts_pods = pods(&ns, "app=sts").await;
    let d = deployments.get("deploy").await.unwrap();
    let s = statefulsets.get("sts").await.unwrap();
    let lost_node: Node = Api::all(ns.client.clone()).get(&lost).await.unwrap();
    let svc = api.get("web").await.unwrap();
    let since_heartbeat =
        last_heartbeat.map(|t| recovered.as_secs_f64() + fault_at.duration_since(t).as_secs_f64());
    println!(
        "node {lost} lost: web's 3 replicas Ready again {:.1} s after the fault (nodeLostAfterSeconds {LOST_AFTER}; {:.1} s after the node's last heartbeat)",
        recovered.as_secs_f64(),
        since_heartbeat.unwrap_or_default()
    );
    println!(
        "  at that moment node {lost} is Ready={:?} to Kubernetes",
        node_ready(&lost_node)
    );
    let on_lost_node = |pods: &[Pod]| {
        pods.iter()
            .find(|p| node_of(p) == lost)
            .map_or("gone".to_string(), describe)
    };
    let ds = d.status.clone().unwrap_or_default();
    println!(
        "  Deployment deploy: {} pods, status replicas={:?} ready={:?} available={:?} unavailable={:?}; its pod on {lost}: {}",
        deploy_pods.len(),
        ds.replicas,
        ds.ready_replicas,
        ds.available_replicas,
        ds.unavailable_replicas,
        on_lost_node(&deploy_pods)
    );
    let ss = s.status.clone().unwrap_or_default();
    println!(
        "  StatefulSet sts: {} pods, status replicas={} ready={:?} available={:?}; its pod on {lost}: {}",
        sts_pods.len(),
        ss.replicas,
        ss.ready_replicas,
        ss.available_replicas,
        on_lost_node(&sts_pods)
    );
    println!("  web: {}", ledger(&svc));

    // The loss counts from the node's last heartbeat, 0 to 10 s before the fault. It is
    // judged once a renewal is missed (12 s of silence at the least) and acted on 11 s later,
    // when every node that failed at the same moment is judged too and the storm guard has
    // seen them all; then the new pod starts, about 2 s on KWOK. Hence ~15 s, plus 2 s.
    assert!(
        recovered <= Duration::from_secs(LOST_AFTER + 17),
        "web took {recovered:?} to recover from the loss of {lost}"
    );
    let kept: Vec<String> = pods(&ns, &format!("{LABEL_SERVICE}=web"))
        .await
        .iter()
        .map(uid)
        .filter(|u| survivors.contains(u))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "the replicas on healthy nodes were left alone"
    );
    for (what, victim, pods) in [
        ("Deployment", &deploy_victim, &deploy_pods),
        ("StatefulSet", &sts_victim, &sts_pods),
    ] {
        let still = pods.iter().find(|p| uid(p) == uid(victim));
        assert!(
            still.is_some_and(|p| !terminating(p)),
            "the {what}'s pod on the lost node is still there, not even terminating: {still:?}"
        );
        assert_eq!(
            pods.len(),
            4,
            "the {what} made no replacement: {}",
            describe_all(pods.iter())
        );
        assert!(
            pods.iter().all(|p| !terminating(p)),
            "nothing of the {what} is being deleted yet"
        );
    }
}

#[tokio::test]
async fn losing_three_of_four_nodes_at_once_is_a_suspected_mass_failure_and_nothing_is_force_deleted(
) {
    let ns = TestNamespace::new("repair-storm").await;
    let nodes = NodeGroup::new(&ns.client, "repair-storm", &FOUR_ZONES, 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({
        "replicas": 4,
        "redundancy": {"onePerNode": true},
        "repair": {"nodeLostAfterSeconds": 10, "maxConcurrentRepairs": 4}
    });
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 4, POD_TIMEOUT).await;
    let before = slots(&ns, "web").await;
    let lost: Vec<String> = nodes.names().into_iter().take(3).collect();
    let victims: Vec<Pod> = before
        .values()
        .flatten()
        .filter(|p| lost.contains(&node_of(p)))
        .cloned()
        .collect();
    assert_eq!(victims.len(), 3, "one replica on each node to lose");

    // At once: the three faults in parallel.
    std::thread::scope(|s| {
        for node in &lost {
            s.spawn(move || fault("node-lost", Some(node)));
        }
    });
    let svc = wait_svc(
        &api,
        "web",
        "MassFailureSuspected",
        NODE_LOST_TIMEOUT,
        |svc| {
            (status(svc).reason.as_deref() == Some("MassFailureSuspected"))
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    println!("3 of 4 nodes lost: {}", ledger(&svc));

    let untouched = || async {
        let now: Vec<Pod> = slots(&ns, "web").await.into_values().flatten().collect();
        for v in &victims {
            assert!(
                now.iter().any(|p| uid(p) == uid(v) && !terminating(p)),
                "{} is still there: {}",
                describe(v),
                describe_all(&now)
            );
        }
        assert_eq!(now.len(), 4, "and nothing was added");
        assert_eq!(operator_pod_deletes(&ns.name), Vec::<String>::new());
    };
    untouched().await;
    // It holds: still nothing once Kubernetes has marked all three unreachable.
    for node in &lost {
        wait_node_unknown(&ns.client, node, NODE_LOST_TIMEOUT).await;
    }
    untouched().await;
    let svc = api.get("web").await.unwrap();
    println!("after the nodes turned Unknown: {}", ledger(&svc));
    assert_eq!(status(&svc).reason.as_deref(), Some("MassFailureSuspected"));
}

#[tokio::test]
async fn a_lost_node_back_is_avoided_no_more_by_a_slot_whose_replacement_runs_elsewhere() {
    let ns = TestNamespace::new("repair-lift").await;
    let nodes = NodeGroup::new(&ns.client, "repair-lift", &FOUR_ZONES[..3], 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({
        "replicas": 1,
        "repair": {"nodeLostAfterSeconds": 10}
    });
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 1, POD_TIMEOUT).await;
    let lost = node_of(&slots(&ns, "web").await[&0][0]);

    fault("node-lost", Some(&lost));
    // The replacement keeps off the lost node and runs on another.
    let keeps_off = |svc: &perennial::api::ResilientService| {
        let s = status(svc);
        let slot = s.replica_statuses.iter().find(|r| r.ordinal == 0);
        slot.and_then(|r| r.avoid_node.clone())
    };
    wait_svc(
        &api,
        "web",
        "slot 0 keeping off the lost node, Ready elsewhere",
        NODE_LOST_TIMEOUT,
        |svc| {
            let ok =
                keeps_off(svc).as_deref() == Some(lost.as_str()) && status(svc).ready_replicas == 1;
            ok.then_some(()).ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let replacement = slots(&ns, "web").await[&0][0].clone();
    assert_ne!(node_of(&replacement), lost);

    // Nothing of the service is on the node that comes back, and nothing else changes for
    // it: the node's return alone must bring the pass that lifts the avoidance.
    fault("node-back", Some(&lost));
    wait_node_ready(&ns.client, &lost).await;
    wait_svc(&api, "web", "the avoidance lifted", POD_TIMEOUT, |svc| {
        keeps_off(svc)
            .is_none()
            .then_some(())
            .ok_or_else(|| ledger(svc))
    })
    .await;
    // The pod that runs is left alone: lifting the avoidance moves nothing.
    let now = slots(&ns, "web").await[&0].clone();
    assert_eq!(now.len(), 1, "{}", describe_all(&now));
    assert_eq!(uid(&now[0]), uid(&replacement));
}
