//! Supervision of a failing pod on the local control plane: a crash-looping replica climbs
//! the escalation ladder (restart, reschedule elsewhere, quarantine) and is then left
//! alone.
//!
//! The test runs on TestNodes of its own: its workload selects them by a group label
//! unique to the test and tolerates their taint, so no other test notices.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::ResourceExt;
use serde_json::json;
use support::nodes::*;
use support::pods::*;
use support::service::*;
use support::*;

/// Scheduling, starting and crashing pods on KWOK nodes, with room for a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn crash_looping_replica_climbs_restart_reschedule_quarantine_and_is_then_left_alone() {
    let ns = TestNamespace::new("repair-ladder").await;
    let nodes = NodeGroup::new(&ns.client, "repair-ladder", &["zone-a", "zone-b"], 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({
        "template": {"metadata": {"labels": {CHAOS_LABEL: "crash-loop"}}},
        "supervision": {"maxRestarts": 1, "periodSeconds": 300}
    });
    let api = create_service(&ns, &placed_service("crashy", nodes.placement(), spec)).await;

    // Every step the ledger shows, in order: (escalation, avoidNode, the nodes its pods ran
    // on while the slot was at that step).
    type Step = (String, Option<String>, Vec<String>);
    let steps: Arc<Mutex<Vec<Step>>> = Arc::default();
    let svc = wait_svc(
        &api,
        "crashy",
        "slot 0 quarantined",
        Duration::from_secs(240),
        |svc| {
            let e = entry(svc, 0).ok_or("no ledger entry yet")?;
            if let Some(step) = e.escalation.clone() {
                let mut steps = steps.lock().unwrap();
                if steps.last().map(|s| &s.0) != Some(&step) {
                    steps.push((step, e.avoid_node.clone(), Vec::new()));
                }
                let nodes = &mut steps.last_mut().expect("a step").2;
                if let Some(node) = e.node.filter(|n| nodes.last() != Some(n)) {
                    nodes.push(node);
                }
            }
            (e.state == "Quarantined")
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let steps = steps.lock().unwrap().clone();
    println!("escalation steps seen (escalation, avoidNode, nodes): {steps:?}");
    println!("crashy: {}", ledger(&svc));
    let names: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["Restart", "Reschedule", "Quarantine"]);
    let avoided = steps[1].1.clone().expect("Reschedule sets avoidNode");
    assert_eq!(
        Some(&avoided),
        steps[0].2.last(),
        "the node avoided is where the restarted pod failed again"
    );
    assert_eq!(
        degraded(&svc).map(|d| (d.0, d.1)),
        Some(("True".to_string(), "Quarantined".to_string()))
    );
    assert_eq!(status(&svc).reason.as_deref(), Some("Quarantined"));
    let e = entry(&svc, 0).unwrap();
    assert_eq!(e.state, "Quarantined");
    assert_eq!(e.avoid_node.as_deref(), Some(avoided.as_str()));

    // Left alone: the quarantined pod goes on crashing, and nobody replaces it.
    let slot = slots(&ns, "crashy").await.remove(&0).unwrap_or_default();
    let [pod] = slot.as_slice() else {
        panic!("one pod in slot 0: {slot:?}")
    };
    assert_ne!(
        node_of(pod),
        avoided,
        "the rescheduled pod avoided the node"
    );
    let deletes = operator_pod_deletes(&ns.name);
    assert!(
        deletes.len() >= 2,
        "a Restart and a Reschedule: {deletes:?}"
    );
    let (quarantined, before) = (uid(pod), restarts(pod));
    let pods_api: Api<Pod> = ns.api();
    wait_object(
        &pods_api,
        &pod.name_any(),
        "the quarantined pod to crash three more times",
        POD_TIMEOUT,
        |p| {
            (restarts(p) >= before + 3)
                .then_some(())
                .ok_or(format!("{} restarts", restarts(p)))
        },
    )
    .await;
    let slot = slots(&ns, "crashy").await.remove(&0).unwrap_or_default();
    assert!(
        matches!(slot.as_slice(), [p] if uid(p) == quarantined && !terminating(p)),
        "still the same pod: {}",
        describe_all(&slot)
    );
    assert_eq!(
        operator_pod_deletes(&ns.name),
        deletes,
        "no pod deleted after quarantine"
    );
    let svc = api.get("crashy").await.unwrap();
    assert_eq!(entry(&svc, 0).unwrap().state, "Quarantined");
}
