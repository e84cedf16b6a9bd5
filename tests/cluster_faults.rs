//! Proof that the harness's faults do what they claim: each chaos mode of the pod label
//! `chaos.perennial.dev/mode`, and the node and control-plane faults of `e2e/cluster/fault`.
//! Node faults are played on a private tainted `TestNode`, so that no other test notices.
//! (`fault apiserver-restart` has no test: it would fail every test running beside it.)

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::nodes::wait_node_state;
use support::*;

const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";
/// Time for a pod to be scheduled and started by KWOK, with room for a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(60);
/// The node lifecycle controller's grace period (50 s) and a lease (40 s) run out before a
/// lost node turns Unknown, and a controller-manager restart starts that clock again.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);

fn pod_manifest(name: &str, mode: Option<&str>) -> Pod {
    let labels = match mode {
        Some(mode) => json!({ "app": name, CHAOS_LABEL: mode }),
        None => json!({ "app": name }),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    }))
    .expect("a valid pod")
}

/// A pod pinned to `node` that tolerates the TestNode taint, so it runs there and only there.
fn pod_on_node(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "perennial.dev/test-node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "registry.example/app:1"}]
        }
    }))
    .expect("a valid pod")
}

/// Creates a pod, waiting out a namespace's default ServiceAccount not made yet: until it
/// is, admission refuses pods, and the controller-manager restart test delays it.
async fn create_pod(pods: &Api<Pod>, pod: &Pod) {
    wait_for("the pod to be admitted", POD_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            match pods.create(&PostParams::default(), pod).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") => Err(e.message),
                Err(e) => panic!("create the pod: {e}"),
            }
        }
    })
    .await;
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn phase(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.phase.clone()
}

fn container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn restarts(pod: &Pod) -> i32 {
    container(pod).map(|c| c.restart_count).unwrap_or(0)
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    container(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn last_termination(pod: &Pod) -> Option<(String, i32)> {
    let t = container(pod)?.last_state.as_ref()?.terminated.as_ref()?;
    Some((t.reason.clone().unwrap_or_default(), t.exit_code))
}

fn summary(pod: &Pod) -> String {
    format!(
        "phase={:?} Ready={:?} restarts={} waiting={:?} last={:?}",
        phase(pod),
        condition(pod, "Ready"),
        restarts(pod),
        waiting_reason(pod),
        last_termination(pod)
    )
}

/// Waits until the pod `name` reports Ready=`ready`.
async fn wait_pod_ready(pods: &Api<Pod>, name: &str, ready: &str, what: &str) {
    wait_object(pods, name, what, POD_TIMEOUT, |p| {
        (condition(p, "Ready").as_deref() == Some(ready))
            .then_some(())
            .ok_or(summary(p))
    })
    .await
}

#[tokio::test]
async fn crash_loop_pod_waits_in_crash_loop_back_off_with_rising_restarts_and_never_ready() {
    let ns = TestNamespace::new("fault-crash-loop").await;
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod_manifest("crasher", Some("crash-loop"))).await;

    let seen = wait_object(
        &pods,
        "crasher",
        "restartCount >= 2, waiting in CrashLoopBackOff",
        POD_TIMEOUT,
        |p| {
            let crash_looping = restarts(p) >= 2
                && waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
                && phase(p).as_deref() == Some("Running");
            crash_looping.then(|| p.clone()).ok_or(summary(p))
        },
    )
    .await;
    assert_eq!(condition(&seen, "Ready").as_deref(), Some("False"));
    assert_eq!(
        condition(&seen, "ContainersReady").as_deref(),
        Some("False")
    );
    let (reason, exit_code) = last_termination(&seen).expect("a last termination");
    assert_eq!(
        (reason.as_str(), exit_code),
        ("Error", 1),
        "{}",
        summary(&seen)
    );
    assert!(
        !container(&seen).expect("a container status").ready,
        "{}",
        summary(&seen)
    );

    // And it goes on: another restart, still unready.
    let before = restarts(&seen);
    wait_object(
        &pods,
        "crasher",
        "one more restart, still unready",
        POD_TIMEOUT,
        |p| {
            (restarts(p) > before && condition(p, "Ready").as_deref() == Some("False"))
                .then_some(())
                .ok_or(summary(p))
        },
    )
    .await;
}

#[tokio::test]
async fn oom_pod_restarts_again_and_again_with_its_last_termination_oom_killed() {
    let ns = TestNamespace::new("fault-oom").await;
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod_manifest("hog", Some("oom"))).await;

    let first = wait_object(
        &pods,
        "hog",
        "last state terminated OOMKilled",
        POD_TIMEOUT,
        |p| match last_termination(p) {
            Some((reason, 137)) if reason == "OOMKilled" && restarts(p) >= 1 => Ok(restarts(p)),
            _ => Err(summary(p)),
        },
    )
    .await;
    let later = wait_object(
        &pods,
        "hog",
        "restartCount rising, each time OOMKilled",
        POD_TIMEOUT,
        |p| {
            let oom = last_termination(p).is_some_and(|(r, _)| r == "OOMKilled");
            (oom && restarts(p) > first)
                .then(|| p.clone())
                .ok_or(summary(p))
        },
    )
    .await;
    assert_eq!(condition(&later, "Ready").as_deref(), Some("False"));
    assert_eq!(
        waiting_reason(&later).as_deref(),
        Some("CrashLoopBackOff"),
        "{}",
        summary(&later)
    );
}

#[tokio::test]
async fn fail_pod_ends_in_phase_failed_with_a_reason() {
    let ns = TestNamespace::new("fault-fail").await;
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod_manifest("quitter", Some("fail"))).await;

    let failed = wait_object(&pods, "quitter", "phase Failed", POD_TIMEOUT, |p| {
        (phase(p).as_deref() == Some("Failed"))
            .then(|| p.clone())
            .ok_or(summary(p))
    })
    .await;
    let status = failed.status.as_ref().expect("a status");
    let reason = status.reason.clone().unwrap_or_default();
    assert!(!reason.is_empty(), "no reason: {status:?}");
    assert!(
        status.message.as_deref().is_some_and(|m| !m.is_empty()),
        "no message: {status:?}"
    );
    let terminated = container(&failed)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("the container is terminated");
    assert_ne!(terminated.exit_code, 0, "{terminated:?}");
    assert_eq!(condition(&failed, "Ready").as_deref(), Some("False"));
}

#[tokio::test]
async fn never_ready_pod_runs_but_stays_unready_after_a_healthy_twin_became_ready() {
    let ns = TestNamespace::new("fault-never-ready").await;
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod_manifest("sulky", Some("never-ready"))).await;
    create_pod(&pods, &pod_manifest("twin", None)).await;

    // Both start; the healthy twin's Ready is the clock that says "long enough".
    wait_object(&pods, "sulky", "Running", POD_TIMEOUT, |p| {
        (phase(p).as_deref() == Some("Running"))
            .then_some(())
            .ok_or(summary(p))
    })
    .await;
    wait_pod_ready(&pods, "twin", "True", "Ready").await;

    let sulky = pods.get("sulky").await.expect("get the never-ready pod");
    assert_eq!(
        phase(&sulky).as_deref(),
        Some("Running"),
        "{}",
        summary(&sulky)
    );
    assert_eq!(
        condition(&sulky, "Ready").as_deref(),
        Some("False"),
        "{}",
        summary(&sulky)
    );
    let c = container(&sulky).expect("a container status");
    assert!(
        !c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()),
        "{c:?}"
    );
    assert_eq!(c.restart_count, 0, "{c:?}");
}

#[tokio::test]
async fn not_ready_node_reports_ready_false_until_node_back_makes_it_ready_again() {
    let client = client().await;
    let node = TestNode::ready(&client, "fault-not-ready", "zone-b").await;

    fault("node-not-ready", Some(&node.name));
    // The node says so itself (its Lease is still renewed, so not Unknown), and the node
    // lifecycle controller taints it for that.
    wait_node_state(
        &client,
        &node.name,
        "False",
        ("node.kubernetes.io/not-ready", true),
        POD_TIMEOUT,
    )
    .await;

    fault("node-back", Some(&node.name));
    wait_node_state(
        &client,
        &node.name,
        "True",
        ("node.kubernetes.io/not-ready", false),
        POD_TIMEOUT,
    )
    .await;
}

#[tokio::test]
async fn lost_node_turns_unknown_and_node_back_makes_it_ready_and_untainted_again() {
    let client = client().await;
    let node = TestNode::ready(&client, "fault-lost", "zone-c").await;
    let ns = TestNamespace::new("fault-lost").await;
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod_on_node("resident", &node.name)).await;
    wait_pod_ready(&pods, "resident", "True", "Ready on the test node").await;

    fault("node-lost", Some(&node.name));
    wait_node_state(
        &client,
        &node.name,
        "Unknown",
        ("node.kubernetes.io/unreachable", true),
        NODE_LOST_TIMEOUT,
    )
    .await;
    wait_pod_ready(&pods, "resident", "False", "Ready=False").await;

    fault("node-back", Some(&node.name));
    wait_node_state(
        &client,
        &node.name,
        "True",
        ("node.kubernetes.io/unreachable", false),
        POD_TIMEOUT,
    )
    .await;
    wait_pod_ready(&pods, "resident", "True", "Ready again").await;
}

fn controller_manager_pid() -> String {
    std::fs::read_to_string(cluster_dir().join("pids/kube-controller-manager.pid"))
        .expect("read the controller manager's pid file")
        .trim()
        .to_string()
}

#[tokio::test]
async fn deployment_created_after_a_controller_manager_restart_gets_its_pods() {
    let ns = TestNamespace::new("fault-kcm-restart").await;
    let before = controller_manager_pid();
    fault("controller-manager-restart", None);
    let after = controller_manager_pid();
    assert_ne!(before, after, "the controller manager was not restarted");

    let deployments: Api<Deployment> = ns.api();
    let labels = json!({"app": "after-restart"});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "after-restart"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .expect("a valid deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the deployment");

    wait_object(
        &deployments,
        "after-restart",
        "2/2 available replicas after the restart",
        POD_TIMEOUT,
        |d| {
            let available = d.status.as_ref().and_then(|s| s.available_replicas);
            (available == Some(2))
                .then_some(())
                .ok_or(format!("{available:?} available"))
        },
    )
    .await;
    let pods: Api<Pod> = ns.api();
    let listed = pods
        .list(&ListParams::default().labels("app=after-restart"))
        .await
        .expect("list the pods");
    assert_eq!(listed.items.len(), 2, "pods: {:?}", listed.items);
}
