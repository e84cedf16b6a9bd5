//! Zero downtime on real nodes: a client sends requests through a ClusterIP Service, each
//! on a new connection, while the pods behind it are replaced, scaled down or upgraded in
//! place. The operator drains every pod from the EndpointSlices before it deletes or
//! restarts it, so not one request of the ResilientService's client may fail. A Deployment
//! of the same template beside it, where there is one, is counted and printed only: its
//! pods are deleted while kube-proxy still sends them connections, and the test
//! application exits at once on SIGTERM (no DRAIN_SECONDS, no preStop hook), so some of
//! its requests are expected to fail.
//!
//! The tests take turns with the other tests of this binary (`REAL_NODES`): they share the
//! two real nodes.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::GATE_SERVING;
use serde_json::{json, Value};
use support::pods::*;
use support::real::*;
use support::service::*;
use support::*;

/// Replicas of each side: 10 of a tiny Go program fit on the two small real nodes.
const REPLICAS: i32 = 10;
/// Requests per second of each side's client.
const RATE: u32 = 50;
/// Twenty pods starting on two small nodes at once.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// A rollout of ten pods, each drained for a few seconds before it goes.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

/// The test application's container running `image`, its version from the image alone.
fn container(image: &str) -> Value {
    let mut c = testapp_container(&[]);
    c["image"] = json!(image);
    c
}

/// A ResilientService `name` of REPLICAS pods of `container`, its update policy `update`.
fn resilient(name: &str, container: Value, update: Value) -> perennial::api::ResilientService {
    let spec = merged(testapp_spec(name, container), json!({ "update": update }));
    service(name, REPLICAS, TESTAPP_V1_IMAGE, spec)
}

/// What each client does, for the output.
fn describe_client(who: &str, addr: SocketAddr) -> String {
    format!(
        "{who}: {RATE} requests/s from this process to the ClusterIP {addr}, each `GET /` \
         (HTTP/1.0) on a new TCP connection on its own thread, 2 s timeout"
    )
}

/// Waits until exactly `n` pods labelled `app: name` exist, every one Ready and none
/// terminating: the pods that left are gone, processes and all.
async fn wait_pods(ns: &TestNamespace, name: &str, n: usize, timeout: Duration) -> Vec<Pod> {
    let what = format!("exactly {n} Ready pods of {name}, none leaving");
    wait_for(&what, timeout, || async {
        let pods = pods(ns, &format!("app={name}")).await;
        (pods.len() == n && pods.iter().all(available))
            .then(|| pods.clone())
            .ok_or_else(|| flags_of(&pods))
    })
    .await
}

/// Prints one side's counts, and its failures with the time each request was sent (the
/// first 20 of them).
fn print_count(who: &str, count: &TrafficCount) {
    const SHOWN: usize = 20;
    println!("  {who:<16} {count}");
    let mut failed = count.failed_at.clone();
    failed.sort();
    for (at, why) in failed.iter().take(SHOWN) {
        println!("    {who} request sent at {at} failed: {why}");
    }
    if let (Some((first, _)), Some((last, _))) = (failed.first(), failed.last()) {
        if failed.len() > SHOWN {
            println!(
                "    ... {} more; the failed requests were sent from {first} to {last}",
                failed.len() - SHOWN
            );
        }
    }
}

/// The client kept its rate (half of it at least, for a busy machine) over `took`.
fn assert_rate(who: &str, count: &TrafficCount, took: Duration) {
    let expected = (took.as_secs_f64() * f64::from(RATE) * 0.5) as u64;
    assert!(
        count.sent >= expected,
        "{who}: the client kept its rate over {took:?}: {count}"
    );
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

#[tokio::test]
async fn a_rolling_update_through_a_cluster_ip_fails_no_request_of_perennial_beside_a_deployment() {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("zero-rolling").await;
    real_nodes(&ns.client, 2).await;
    let operator = Operator::with_crd(&ns).await;
    println!("operator log: {}", operator.log.display());

    let update = json!({"maxSurge": 1, "maxUnavailable": 0, "inPlace": "Never"});
    let api = create_service(
        &ns,
        &resilient("perennial", container(TESTAPP_V1_IMAGE), update),
    )
    .await;
    let deployment = testapp_deployment("deployment", REPLICAS, container(TESTAPP_V1_IMAGE), 1, 0);
    let deployments = create_deployment(&ns, &deployment).await;
    let ours = cluster_ip_service(&ns, "perennial").await;
    let theirs = cluster_ip_service(&ns, "deployment").await;
    wait_available(&api, "perennial", REPLICAS, START_TIMEOUT).await;
    wait_deployment(&deployments, "deployment", REPLICAS, 1).await;
    wait_serving(ours, "v1").await;
    wait_serving(theirs, "v1").await;

    // Both roll out at once, each with a client of its own; the image alone changes.
    println!("{}", describe_client("ResilientService", ours));
    println!("{}", describe_client("Deployment", theirs));
    let ours_traffic = Traffic::start(ours, RATE);
    let theirs_traffic = Traffic::start(theirs, RATE);
    let v2 = container(TESTAPP_V2_IMAGE);
    let started = Instant::now();
    println!("{}: rolling both to {TESTAPP_V2_IMAGE}", now());
    let generation = patch_spec(
        &api,
        "perennial",
        json!({"template": {"spec": {"containers": [v2.clone()]}}}),
    )
    .await;
    let patched = merge_patch(
        &deployments,
        "deployment",
        json!({"spec": {"template": {"spec": {"containers": [v2]}}}}),
    )
    .await;
    let revision = wait_update_revision(&api, "perennial", generation, POD_TIMEOUT).await;
    tokio::join!(
        async {
            wait_svc(
                &api,
                "perennial",
                "the rollout to v2 to complete",
                ROLLOUT_TIMEOUT,
                |svc| complete(svc, REPLICAS, &revision),
            )
            .await;
            // Until the last old pod is gone, its process may still take connections.
            wait_pods(&ns, "perennial", REPLICAS as usize, ROLLOUT_TIMEOUT).await;
            println!("{}: ResilientService rolled out, old pods gone", now());
        },
        async {
            let generation = patched.metadata.generation.unwrap_or(2);
            wait_deployment(&deployments, "deployment", REPLICAS, generation).await;
            wait_pods(&ns, "deployment", REPLICAS as usize, ROLLOUT_TIMEOUT).await;
            println!("{}: Deployment rolled out, old pods gone", now());
        },
    );
    let rolled = started.elapsed();
    wait_serving(ours, "v2").await;
    wait_serving(theirs, "v2").await;
    let ours_count = ours_traffic.stop();
    let theirs_count = theirs_traffic.stop();
    println!(
        "rolling update of {REPLICAS} replicas ({TESTAPP_V1_IMAGE} to {TESTAPP_V2_IMAGE}, maxSurge 1, \
         maxUnavailable 0), {RATE} requests/s each, {:.0} s:",
        rolled.as_secs_f64()
    );
    print_count("ResilientService", &ours_count);
    print_count("Deployment", &theirs_count);

    for (who, count) in [
        ("ResilientService", &ours_count),
        ("Deployment", &theirs_count),
    ] {
        assert_rate(who, count, rolled);
        assert!(
            count.versions.get("v1").copied().unwrap_or(0) > 0
                && count.versions.get("v2").copied().unwrap_or(0) > 0,
            "{who}: requests were answered by both versions during the update: {count}"
        );
    }
    assert_eq!(
        ours_count.failed,
        0,
        "no request of the ResilientService failed during its rolling update: {ours_count} \
         (operator log {})",
        operator.log.display()
    );
}

#[tokio::test]
async fn a_scale_down_through_a_cluster_ip_fails_no_request_of_perennial_beside_a_deployment() {
    const DOWN_TO: i32 = 4;
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("zero-scale-down").await;
    real_nodes(&ns.client, 2).await;
    let operator = Operator::with_crd(&ns).await;
    println!("operator log: {}", operator.log.display());

    let api = create_service(
        &ns,
        &resilient(
            "perennial",
            container(TESTAPP_V1_IMAGE),
            json!({"maxSurge": 1, "maxUnavailable": 0}),
        ),
    )
    .await;
    let deployment = testapp_deployment("deployment", REPLICAS, container(TESTAPP_V1_IMAGE), 1, 0);
    let deployments = create_deployment(&ns, &deployment).await;
    let ours = cluster_ip_service(&ns, "perennial").await;
    let theirs = cluster_ip_service(&ns, "deployment").await;
    wait_available(&api, "perennial", REPLICAS, START_TIMEOUT).await;
    wait_deployment(&deployments, "deployment", REPLICAS, 1).await;
    wait_pods(&ns, "perennial", REPLICAS as usize, START_TIMEOUT).await;
    wait_pods(&ns, "deployment", REPLICAS as usize, START_TIMEOUT).await;
    wait_serving(ours, "v1").await;
    wait_serving(theirs, "v1").await;

    println!("{}", describe_client("ResilientService", ours));
    println!("{}", describe_client("Deployment", theirs));
    let ours_traffic = Traffic::start(ours, RATE);
    let theirs_traffic = Traffic::start(theirs, RATE);
    let started = Instant::now();
    println!("{}: scaling both from {REPLICAS} to {DOWN_TO}", now());
    let generation = scale(&api, "perennial", DOWN_TO).await;
    let patched = merge_patch(
        &deployments,
        "deployment",
        json!({"spec": {"replicas": DOWN_TO}}),
    )
    .await;
    tokio::join!(
        async {
            wait_svc(
                &api,
                "perennial",
                &format!("{DOWN_TO} available replicas of generation {generation}"),
                ROLLOUT_TIMEOUT,
                |svc| {
                    let s = status(svc);
                    (current_generation(svc)
                        && s.replicas == DOWN_TO
                        && s.available_replicas == DOWN_TO)
                        .then_some(())
                        .ok_or_else(|| ledger(svc))
                },
            )
            .await;
            wait_pods(&ns, "perennial", DOWN_TO as usize, ROLLOUT_TIMEOUT).await;
            println!("{}: ResilientService scaled down, the others gone", now());
        },
        async {
            let generation = patched.metadata.generation.unwrap_or(2);
            wait_deployment(&deployments, "deployment", DOWN_TO, generation).await;
            wait_pods(&ns, "deployment", DOWN_TO as usize, ROLLOUT_TIMEOUT).await;
            println!("{}: Deployment scaled down, the others gone", now());
        },
    );
    let took = started.elapsed();
    wait_serving(ours, "v1").await;
    wait_serving(theirs, "v1").await;
    let ours_count = ours_traffic.stop();
    let theirs_count = theirs_traffic.stop();
    println!(
        "scale-down from {REPLICAS} to {DOWN_TO} replicas, {RATE} requests/s each, {:.0} s:",
        took.as_secs_f64()
    );
    print_count("ResilientService", &ours_count);
    print_count("Deployment", &theirs_count);

    for (who, count) in [
        ("ResilientService", &ours_count),
        ("Deployment", &theirs_count),
    ] {
        assert_rate(who, count, took);
    }
    assert_eq!(
        ours_count.failed,
        0,
        "no request of the ResilientService failed while it scaled down: {ours_count} \
         (operator log {})",
        operator.log.display()
    );
}

/// Each pod's identity (uid, node) and its container's restart count, by name.
fn identities(pods: &[Pod]) -> BTreeMap<String, (String, String, i32)> {
    pods.iter()
        .map(|p| (p.name_any(), (uid(p), node_of(p), restarts(p))))
        .collect()
}

/// The image the first container of `pod` runs, as its kubelet reports it.
fn running_image(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

/// One state of a pod, as a watch delivered it.
#[derive(Clone, Debug)]
struct PodState {
    at: jiff::Timestamp,
    name: String,
    spec_image: String,
    image: String,
    container_id: String,
    restarts: i32,
    container_ready: bool,
    /// The status and reason of the operator's gate condition.
    gate: Option<(String, String)>,
    ready: bool,
}

impl PodState {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let container = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first());
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        };
        Self {
            at: now(),
            name: pod.name_any(),
            spec_image: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image: container.map(|c| c.image.clone()).unwrap_or_default(),
            container_id: container
                .and_then(|c| c.container_id.clone())
                .unwrap_or_default(),
            restarts: container.map_or(0, |c| c.restart_count),
            container_ready: container.is_some_and(|c| c.ready),
            gate: condition(GATE_SERVING)
                .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default())),
            ready: condition("Ready").is_some_and(|c| c.status == "True"),
        }
    }

    fn gate_open(&self) -> bool {
        self.gate.as_ref().is_some_and(|(s, _)| s == "True")
    }
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.container_id.rsplit('/').next().unwrap_or_default();
        write!(
            f,
            "{} {}: spec {} runs {} (container {}, restarts {}, ready {}), gate {:?}, Ready {}",
            self.at,
            self.name,
            self.spec_image,
            self.image,
            &id[..12.min(id.len())],
            self.restarts,
            self.container_ready,
            self.gate,
            self.ready
        )
    }
}

/// Every state of the pods labelled `app: name` a watch delivers, from now until dropped.
struct PodStates {
    seen: Arc<Mutex<Vec<PodState>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodStates {
    fn start(ns: &TestNamespace, name: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = watcher::Config::default().labels(&format!("app={name}"));
        let stream = watcher(ns.api::<Pod>(), config)
            .default_backoff()
            .applied_objects();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                futures::pin_mut!(stream);
                while let Some(pod) = stream.next().await {
                    if let Ok(pod) = pod {
                        seen.lock().unwrap().push(PodState::of(&pod));
                    }
                }
            }
        });
        Self { seen, task }
    }

    fn of(&self, pod: &str) -> Vec<PodState> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.name == pod).cloned().collect()
    }
}

impl Drop for PodStates {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_in_place_upgrade_through_a_cluster_ip_fails_no_request_and_keeps_every_pod() {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("zero-in-place").await;
    real_nodes(&ns.client, 2).await;
    let operator = Operator::with_crd(&ns).await;
    println!("operator log: {}", operator.log.display());

    let update = json!({"maxSurge": 1, "maxUnavailable": 0, "inPlace": "IfPossible"});
    let api = create_service(
        &ns,
        &resilient("perennial", container(TESTAPP_V1_IMAGE), update),
    )
    .await;
    let ours = cluster_ip_service(&ns, "perennial").await;
    wait_available(&api, "perennial", REPLICAS, START_TIMEOUT).await;
    let before = identities(&wait_pods(&ns, "perennial", REPLICAS as usize, START_TIMEOUT).await);
    wait_serving(ours, "v1").await;

    println!("{}", describe_client("ResilientService", ours));
    let states = PodStates::start(&ns, "perennial");
    let traffic = Traffic::start(ours, RATE);
    let started = Instant::now();
    println!("{}: upgrading in place to {TESTAPP_V2_IMAGE}", now());
    let generation = patch_spec(
        &api,
        "perennial",
        json!({"template": {"spec": {"containers": [container(TESTAPP_V2_IMAGE)]}}}),
    )
    .await;
    let revision = wait_update_revision(&api, "perennial", generation, POD_TIMEOUT).await;
    wait_svc(
        &api,
        "perennial",
        "the in-place upgrade to v2 to complete",
        ROLLOUT_TIMEOUT,
        |svc| complete(svc, REPLICAS, &revision),
    )
    .await;
    let after = wait_pods(&ns, "perennial", REPLICAS as usize, ROLLOUT_TIMEOUT).await;
    println!("{}: upgraded in place", now());
    let took = started.elapsed();
    // Every pod runs v2 by now: a burst is answered by v2 alone, with no waiting.
    let burst: Vec<_> = (0..50)
        .map(|_| request(ours, Duration::from_secs(2)))
        .collect();
    let count = traffic.stop();
    println!(
        "in-place upgrade of {REPLICAS} replicas ({TESTAPP_V1_IMAGE} to {TESTAPP_V2_IMAGE}), \
         {RATE} requests/s, {:.0} s:",
        took.as_secs_f64()
    );
    print_count("ResilientService", &count);

    assert_rate("ResilientService", &count, took);
    assert_eq!(
        count.failed,
        0,
        "no request failed during the in-place upgrade: {count} (operator log {})",
        operator.log.display()
    );
    assert!(
        burst
            .iter()
            .all(|a| a.as_ref().is_ok_and(|b| b.contains("version=v2"))),
        "every answer after the upgrade comes from v2: {burst:?}"
    );
    let now_ids = identities(&after);
    assert_eq!(
        now_ids.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same pods, by name, before and after"
    );
    // The first pod upgraded, state by state, as its watch saw it.
    if let Some(first) = after.iter().map(|p| p.name_any()).max() {
        println!("  {first}, every state the watch saw:");
        for state in states.of(&first) {
            println!("    {state}");
        }
    }
    for pod in &after {
        let name = pod.name_any();
        // Never open while the kubelet has yet to restart the container into v2: it would
        // be Ready in the endpoints when its process is killed.
        let (_, _, restarts_then) = &before[&name];
        let early: Vec<String> = states
            .of(&name)
            .iter()
            .filter(|s| s.spec_image == TESTAPP_V2_IMAGE && s.gate_open())
            .filter(|s| s.restarts <= *restarts_then || s.image != TESTAPP_V2_IMAGE)
            .map(|s| s.to_string())
            .collect();
        assert!(
            early.is_empty(),
            "{name}'s gate was open after its patch before its container ran v2: {early:?}"
        );
        let (uid_then, node_then, restarts_then) = &before[&name];
        let (uid_now, node_now, restarts_now) = &now_ids[&name];
        println!(
            "  {name}: uid {uid_now}, node {node_now}, restarts {restarts_then} -> {restarts_now}, \
             image {}",
            running_image(pod)
        );
        assert_eq!(uid_now, uid_then, "{name} keeps its UID");
        assert_eq!(node_now, node_then, "{name} stays on its node");
        assert!(
            restarts_now > restarts_then,
            "{name}'s container was restarted by its kubelet: {restarts_then} -> {restarts_now}"
        );
        assert_eq!(
            running_image(pod),
            TESTAPP_V2_IMAGE,
            "{name}'s kubelet runs the new image"
        );
    }
}

/// Turns the readiness of the test application at `ip` to 503 for good (`POST /unready`),
/// while it goes on answering `/`.
fn post_unready(ip: &str) {
    use std::io::{Read, Write};
    let addr: SocketAddr = format!("{ip}:8080").parse().expect("a pod address");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connect to the pod");
    stream
        .write_all(b"POST /unready HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .expect("send POST /unready");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
}

#[tokio::test]
async fn a_reschedule_of_a_pod_that_runs_but_fails_its_readiness_fails_no_request() {
    let _turn = REAL_NODES.lock().await;
    let ns = TestNamespace::new("zero-reschedule").await;
    real_nodes(&ns.client, 2).await;
    let operator = Operator::with_crd(&ns).await;
    println!("operator log: {}", operator.log.display());
    // Unready for 10 s is NeverReady; the first rung moves the slot off its node.
    let svc = merged(
        serde_json::to_value(resilient(
            "perennial",
            container(TESTAPP_V1_IMAGE),
            json!({}),
        ))
        .unwrap(),
        json!({"spec": {"update": {"progressDeadlineSeconds": 10},
            "supervision": {"escalation": ["Reschedule", "Quarantine"]}}}),
    );
    let svc: perennial::api::ResilientService = serde_json::from_value(svc).unwrap();
    let api = create_service(&ns, &svc).await;
    let ours = cluster_ip_service(&ns, "perennial").await;
    wait_available(&api, "perennial", REPLICAS, START_TIMEOUT).await;
    wait_serving(ours, "v1").await;

    let victim = pods(&ns, "perennial.dev/slot=3")
        .await
        .into_iter()
        .find(|p| !terminating(p))
        .expect("the pod of slot 3");
    let (name, node) = (victim.name_any(), node_of(&victim));
    let ip = victim
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a pod IP");
    println!(
        "{describe}",
        describe = describe_client("ResilientService", ours)
    );
    let traffic = Traffic::start(ours, RATE);
    let started = Instant::now();
    println!(
        "{}: {name} on {node} fails its readiness from now on",
        now()
    );
    post_unready(&ip);
    let entry = wait_svc(
        &api,
        "perennial",
        "slot 3 to be rescheduled off its node and every replica available",
        ROLLOUT_TIMEOUT,
        |svc| {
            let e = entry(svc, 3).ok_or("no entry for slot 3")?;
            // The escalation is cleared once the slot is Ready again; the avoidance stays.
            let moved = e.avoid_node_reason.as_deref() == Some("Reschedule")
                && e.avoid_node.as_deref() == Some(node.as_str())
                && e.restarts_in_window >= 1
                && e.pod.as_deref() != Some(name.as_str())
                && e.node.as_deref().is_some_and(|n| n != node)
                && status(svc).available_replicas == REPLICAS;
            moved.then_some(e.clone()).ok_or(ledger(svc))
        },
    )
    .await;
    wait_pods(&ns, "perennial", REPLICAS as usize, ROLLOUT_TIMEOUT).await;
    let took = started.elapsed();
    let count = traffic.stop();
    println!(
        "Reschedule of slot 3 ({name} on {node}, NeverReady after 10 s) to {:?} on {:?}, {RATE} requests/s, {:.0} s:",
        entry.pod,
        entry.node,
        took.as_secs_f64()
    );
    print_count("ResilientService", &count);
    assert_eq!(
        entry.last_failure.map(|f| f.reason).as_deref(),
        Some("NeverReady"),
        "the failure the Reschedule repaired"
    );
    assert_rate("ResilientService", &count, took);
    assert_eq!(
        count.failed,
        0,
        "no request failed while slot 3 was rescheduled: {count} (operator log {})",
        operator.log.display()
    );
}
