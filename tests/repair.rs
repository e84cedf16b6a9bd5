//! Repair and supervision on the local control plane: replicas on a lost node, fencing and
//! lost local volumes, waiting for evidence, the crash-loop escalation ladder, the storm
//! guard, a node that comes back before it is repaired, and a fence removed once its node
//! is back.
//!
//! Every test plays its node faults on TestNodes of its own: its workloads select them by
//! a group label unique to the test and tolerate their taint, so no other test notices.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use perennial::api::{
    ReplicaStatus, ResilientService, ResilientServiceStatus, LABEL_SERVICE, LABEL_SLOT,
};
use serde_json::{json, Value};
use support::*;

/// Scheduling and starting pods on KWOK nodes, with room for a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(90);
/// The node lifecycle controller's grace period (50 s) and a lease (40 s) run out before a
/// lost node turns Unknown; the operator's own verdicts come well before that.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);
/// The node label that puts a test's workloads on its own nodes and nowhere else.
const GROUP_LABEL: &str = "perennial.dev/test-group";
const TEST_NODE_TAINT: &str = "perennial.dev/test-node";
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

// ------------------------------------------------------------------------------------------
// A test's own nodes and local volumes

/// TestNodes of one test, labelled with a group value unique to it, each with its own local
/// PersistentVolumes (deleted when the guard drops, as the nodes are).
struct Nodes {
    prefix: String,
    group: String,
    nodes: Vec<TestNode>,
    volumes: Vec<String>,
}

impl Nodes {
    /// One node per zone in `zones`, each with `volumes` local volumes, all Ready.
    async fn new(client: &Client, prefix: &str, zones: &[&str], volumes: usize) -> Self {
        let group = format!("{prefix}-{}", unique_suffix());
        let api: Api<Node> = Api::all(client.clone());
        let mut this = Self {
            prefix: prefix.to_string(),
            group: group.clone(),
            nodes: Vec::new(),
            volumes: Vec::new(),
        };
        for zone in zones {
            let node = TestNode::new(client, prefix, zone).await;
            api.patch(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {GROUP_LABEL: &group}}})),
            )
            .await
            .expect("label the test node with its group");
            this.nodes.push(node);
        }
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        for node in this.names() {
            for i in 0..volumes {
                let name = format!("{node}-pv-{i}");
                pvs.create(&PostParams::default(), &local_volume(&name, &node))
                    .await
                    .expect("create a local volume");
                this.volumes.push(name);
            }
        }
        for node in this.names() {
            wait_for(&format!("node {node} to be Ready"), POD_TIMEOUT, || {
                let api = api.clone();
                let node = node.clone();
                async move {
                    let n = api.get(&node).await.map_err(|e| e.to_string())?;
                    let ready = node_ready(&n);
                    (ready.as_deref() == Some("True"))
                        .then_some(())
                        .ok_or(format!("Ready={ready:?}"))
                }
            })
            .await;
        }
        this
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Pod spec fields that put a pod on this group's nodes only.
    fn placement(&self) -> Value {
        json!({
            "nodeSelector": {GROUP_LABEL: self.group},
            "tolerations": [{
                "key": TEST_NODE_TAINT, "operator": "Equal", "value": self.prefix,
                "effect": "NoSchedule"
            }]
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for pv in &self.volumes {
            let _ = kubectl(&["delete", "pv", pv, "--wait=false", "--ignore-not-found"]);
        }
    }
}

/// A local volume only `node` can use, as e2e/cluster/nodes makes them.
fn local_volume(name: &str, node: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": node}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "local",
            "volumeMode": "Filesystem",
            "local": {"path": "/var/lib/local-volumes/0"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}}
        }
    }))
    .expect("a valid volume")
}

/// The node a local volume is pinned to.
fn volume_node(pv: &PersistentVolume) -> Option<String> {
    pv.metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/hostname")
        .cloned()
}

fn node_ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn node_tainted(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

/// Waits until the node lifecycle controller has marked `name` Ready=Unknown.
async fn wait_node_unknown(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    wait_for(
        &format!("node {name} to be marked Ready=Unknown"),
        NODE_LOST_TIMEOUT,
        || {
            let api = api.clone();
            async move {
                let n = api.get(name).await.map_err(|e| e.to_string())?;
                let ready = node_ready(&n);
                (ready.as_deref() == Some("Unknown"))
                    .then_some(())
                    .ok_or(format!("Ready={ready:?}"))
            }
        },
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// The service under test

/// Merges `extra` into `base`, objects key by key, anything else replaced.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// A service `name` whose pods run on `nodes` only, its spec extended by `spec`.
fn service(name: &str, nodes: &Nodes, spec: Value) -> ResilientService {
    let mut pod_spec = json!({"containers": [{"name": "app", "image": "example/app:1"}]});
    merge(&mut pod_spec, nodes.placement());
    let mut body = json!({
        "replicas": 1,
        "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}
    });
    merge(&mut body, spec);
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": body,
    }))
    .expect("a valid ResilientService")
}

/// Spec fields for one local ReadWriteOnce claim per replica.
fn local_storage() -> Value {
    json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }]})
}

/// The CRD first, as Helm installs it, then an operator for the test's namespace.
async fn operator(ns: &TestNamespace) -> Operator {
    install_crd(&ns.client).await;
    Operator::start(&ns.name)
}

async fn create(ns: &TestNamespace, svc: &ResilientService) -> Api<ResilientService> {
    let api: Api<ResilientService> = ns.api();
    api.create(&PostParams::default(), svc)
        .await
        .expect("create the ResilientService");
    api
}

fn status(svc: &ResilientService) -> ResilientServiceStatus {
    svc.status.clone().unwrap_or_default()
}

fn entry(svc: &ResilientService, ordinal: i32) -> Option<ReplicaStatus> {
    status(svc)
        .replica_statuses
        .into_iter()
        .find(|r| r.ordinal == ordinal)
}

fn degraded(svc: &ResilientService) -> Option<(String, String, String)> {
    status(svc)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status, c.reason, c.message))
}

/// The failure ledger, one line per slot, for a person reading the test's output.
fn ledger(svc: &ResilientService) -> String {
    let s = status(svc);
    let mut out = format!(
        "reason={:?} ready={}/{} degraded={:?}",
        s.reason,
        s.ready_replicas,
        svc.spec.replicas,
        degraded(svc)
    );
    for r in &s.replica_statuses {
        out.push_str(&format!(
            "\n  slot {}: {}",
            r.ordinal,
            serde_json::to_string(r).unwrap_or_default()
        ));
    }
    out
}

/// Waits until `check` accepts the service `name`, and returns what it returned.
async fn wait_svc<T>(
    api: &Api<ResilientService>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ResilientService) -> Result<T, String>,
) -> T {
    let check = &check;
    wait_for(&format!("{name}: {what}"), timeout, || {
        let api = api.clone();
        async move {
            let svc = api.get(name).await.map_err(|e| e.to_string())?;
            check(&svc)
        }
    })
    .await
}

/// Waits until `n` replicas of the current generation are available.
async fn wait_available(api: &Api<ResilientService>, name: &str, n: i32) -> ResilientService {
    wait_svc(
        api,
        name,
        &format!("{n} available replicas"),
        POD_TIMEOUT,
        |svc| {
            let s = status(svc);
            let current = s.observed_generation == svc.metadata.generation;
            (current && s.available_replicas == n && s.replicas == n)
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await
}

// ------------------------------------------------------------------------------------------
// Pods and claims

async fn pods(ns: &TestNamespace, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = ns.api();
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

/// The pods of service `name`, by slot (every pod, terminating ones included).
async fn slots(ns: &TestNamespace, name: &str) -> BTreeMap<i32, Vec<Pod>> {
    let mut out: BTreeMap<i32, Vec<Pod>> = BTreeMap::new();
    for pod in pods(ns, &format!("{LABEL_SERVICE}={name}")).await {
        out.entry(slot(&pod)).or_default().push(pod);
    }
    out
}

fn slot(pod: &Pod) -> i32 {
    pod.labels()
        .get(LABEL_SLOT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

fn describe(pod: &Pod) -> String {
    format!(
        "{} (uid {}, node {}, Ready={}, deleting={})",
        pod.name_any(),
        &uid(pod)[..8.min(uid(pod).len())],
        node_of(pod),
        ready(pod),
        pod.metadata.deletion_timestamp.is_some()
    )
}

/// The one pod of `slot` when it is Ready and not leaving.
async fn ready_pod(ns: &TestNamespace, name: &str, slot: i32) -> Result<Pod, String> {
    let slots = slots(ns, name).await;
    match slots.get(&slot).map(Vec::as_slice) {
        Some([pod]) if ready(pod) && pod.metadata.deletion_timestamp.is_none() => Ok(pod.clone()),
        Some(pods) => Err(pods.iter().map(describe).collect::<Vec<_>>().join(", ")),
        None => Err(format!("no pod in slot {slot}")),
    }
}

/// A claim: (uid, bound volume, deleting).
async fn claim(ns: &TestNamespace, name: &str) -> Option<(String, Option<String>, bool)> {
    let api: Api<PersistentVolumeClaim> = ns.api();
    let c = api.get_opt(name).await.expect("get the claim")?;
    Some((
        c.metadata.uid.clone().unwrap_or_default(),
        c.spec.as_ref().and_then(|s| s.volume_name.clone()),
        c.metadata.deletion_timestamp.is_some(),
    ))
}

async fn volume_node_of(client: &Client, volume: &str) -> Option<String> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    volume_node(&api.get(volume).await.ok()?)
}

/// Pod deletions the operator made in the namespace, from the API server's audit log.
fn operator_pod_deletes(namespace: &str) -> Vec<String> {
    operator_writes(namespace)
        .into_iter()
        .filter(|w| w.starts_with("delete pods"))
        .collect()
}

/// Every pod seen for every slot at once, from a watch that runs for the whole test: any
/// moment two pods share a slot is recorded.
struct SlotWatch {
    task: tokio::task::JoinHandle<()>,
    overlaps: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<usize>>,
}

impl SlotWatch {
    fn start(ns: &TestNamespace, name: &str) -> Self {
        let api: Api<Pod> = ns.api();
        let (reader, writer) = reflector::store();
        let config = watcher::Config::default().labels(&format!("{LABEL_SERVICE}={name}"));
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
        let events: Arc<Mutex<usize>> = Arc::default();
        let (o, e) = (overlaps.clone(), events.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if event.is_err() {
                    continue;
                }
                *e.lock().unwrap() += 1;
                let mut by_slot: BTreeMap<i32, Vec<String>> = BTreeMap::new();
                for pod in reader.state() {
                    by_slot.entry(slot(&pod)).or_default().push(describe(&pod));
                }
                for (slot, pods) in by_slot.into_iter().filter(|(_, p)| p.len() > 1) {
                    o.lock().unwrap().push(format!("slot {slot}: {pods:?}"));
                }
            }
        });
        Self {
            task,
            overlaps,
            events,
        }
    }

    fn overlaps(&self) -> Vec<String> {
        self.overlaps.lock().unwrap().clone()
    }
}

impl Drop for SlotWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn stateless_replicas_on_a_lost_node_are_ready_elsewhere_within_seconds_while_a_deployment_and_a_statefulset_still_wait(
) {
    const LOST_AFTER: u64 = 10;
    let ns = TestNamespace::new("repair-stateless").await;
    let nodes = Nodes::new(
        &ns.client,
        "repair-stateless",
        &["zone-a", "zone-b", "zone-c", "zone-a"],
        0,
    )
    .await;
    let _operator = operator(&ns).await;
    let api = create(
        &ns,
        &service(
            "web",
            &nodes,
            json!({
                "replicas": 3,
                "redundancy": {"onePerNode": true},
                "repair": {"nodeLostAfterSeconds": LOST_AFTER}
            }),
        ),
    )
    .await;

    // For contrast: a Deployment and a StatefulSet with a pod on every one of the nodes.
    let one_per_node = |app: &str| {
        let mut spec = json!({
            "containers": [{"name": "app", "image": "example/app:1"}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": app}},
                "topologyKey": "kubernetes.io/hostname"
            }]}}
        });
        merge(&mut spec, nodes.placement());
        json!({"metadata": {"labels": {"app": app}}, "spec": spec})
    };
    let deployments: Api<Deployment> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "deploy"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "deploy"}},
            "template": one_per_node("deploy")
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    let statefulsets: Api<StatefulSet> = ns.api();
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "sts"},
        "spec": {
            "replicas": 4,
            "serviceName": "sts",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "sts"}},
            "template": one_per_node("sts")
        }
    }))
    .unwrap();
    statefulsets
        .create(&PostParams::default(), &statefulset)
        .await
        .expect("create the StatefulSet");

    wait_available(&api, "web", 3).await;
    wait_for("4 available Deployment replicas", POD_TIMEOUT, || {
        let d = deployments.clone();
        async move {
            let d = d.get("deploy").await.map_err(|e| e.to_string())?;
            let n = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            (n == 4).then_some(()).ok_or(format!("{n} available"))
        }
    })
    .await;
    wait_for("4 ready StatefulSet replicas", POD_TIMEOUT, || {
        let s = statefulsets.clone();
        async move {
            let s = s.get("sts").await.map_err(|e| e.to_string())?;
            let n = s.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (n == 4).then_some(()).ok_or(format!("{n} ready"))
        }
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
                    && pods.iter().all(|p| {
                        ready(p) && &node_of(p) != lost && p.metadata.deletion_timestamp.is_none()
                    });
                if ok {
                    Ok(start.elapsed())
                } else {
                    Err(pods.iter().map(describe).collect::<Vec<_>>().join(", "))
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
    let ds = d.status.clone().unwrap_or_default();
    println!(
        "  Deployment deploy: {} pods, status replicas={:?} ready={:?} available={:?} unavailable={:?}; its pod on {lost}: {}",
        deploy_pods.len(),
        ds.replicas,
        ds.ready_replicas,
        ds.available_replicas,
        ds.unavailable_replicas,
        deploy_pods
            .iter()
            .find(|p| node_of(p) == lost)
            .map_or("gone".to_string(), describe)
    );
    let ss = s.status.clone().unwrap_or_default();
    println!(
        "  StatefulSet sts: {} pods, status replicas={} ready={:?} available={:?}; its pod on {lost}: {}",
        sts_pods.len(),
        ss.replicas,
        ss.ready_replicas,
        ss.available_replicas,
        sts_pods
            .iter()
            .find(|p| node_of(p) == lost)
            .map_or("gone".to_string(), describe)
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
            still.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
            "the {what}'s pod on the lost node is still there, not even terminating: {still:?}"
        );
        assert_eq!(
            pods.len(),
            4,
            "the {what} made no replacement: {:?}",
            pods.iter().map(describe).collect::<Vec<_>>()
        );
        assert!(
            pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()),
            "nothing of the {what} is being deleted yet"
        );
    }
}

#[tokio::test]
async fn stateful_replica_on_a_lost_node_is_fenced_out_of_service_and_gets_a_new_claim_bound_on_another_node(
) {
    let ns = TestNamespace::new("repair-fence").await;
    let nodes = Nodes::new(&ns.client, "repair-fence", &["zone-a", "zone-b"], 2).await;
    let _operator = operator(&ns).await;
    let mut spec = local_storage();
    merge(
        &mut spec,
        json!({"repair": {
            "nodeLostAfterSeconds": 10,
            "fencing": "TaintOutOfService",
            "storage": {"onVolumeLost": "Recreate"}
        }}),
    );
    let api = create(&ns, &service("db", &nodes, spec)).await;
    wait_available(&api, "db", 1).await;

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
    let node_api: Api<Node> = Api::all(ns.client.clone());
    wait_for(
        &format!("node {lost} to be tainted {OUT_OF_SERVICE_TAINT}"),
        NODE_LOST_TIMEOUT,
        || {
            let api = node_api.clone();
            let lost = lost.clone();
            async move {
                let n = api.get(&lost).await.map_err(|e| e.to_string())?;
                node_tainted(&n, OUT_OF_SERVICE_TAINT)
                    .then_some(())
                    .ok_or("not tainted yet".to_string())
            }
        },
    )
    .await;

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
    let svc = wait_available(&api, "db", 1).await;

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
    let ns = TestNamespace::new("repair-evidence").await;
    let nodes = Nodes::new(&ns.client, "repair-evidence", &["zone-a", "zone-b"], 2).await;
    let _operator = operator(&ns).await;
    let mut spec = local_storage();
    merge(
        &mut spec,
        json!({"repair": {
            "nodeLostAfterSeconds": 10,
            "fencing": "WaitForEvidence",
            "storage": {"onVolumeLost": "Recreate"}
        }}),
    );
    let api = create(&ns, &service("store", &nodes, spec)).await;
    wait_available(&api, "store", 1).await;
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
            matches!(slot.as_slice(), [p] if uid(p) == uid(&pod) && p.metadata.deletion_timestamp.is_none()),
            "the pod stays: {:?}",
            slot.iter().map(describe).collect::<Vec<_>>()
        );
        let (uid, _, deleting) = claim(&ns, "data-store-0").await.expect("the claim stays");
        assert!(uid == old_claim && !deleting, "the claim stays");
        let n: Node = Api::all(ns.client.clone()).get(&lost).await.unwrap();
        assert!(!node_tainted(&n, OUT_OF_SERVICE_TAINT), "nobody fenced it");
        assert_eq!(operator_pod_deletes(&ns.name), Vec::<String>::new());
    };
    unmoved().await;
    wait_node_unknown(&ns.client, &lost).await;
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
    let svc = wait_available(&api, "store", 1).await;
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
async fn crash_looping_replica_climbs_restart_reschedule_quarantine_and_is_then_left_alone() {
    let ns = TestNamespace::new("repair-ladder").await;
    let nodes = Nodes::new(&ns.client, "repair-ladder", &["zone-a", "zone-b"], 0).await;
    let _operator = operator(&ns).await;
    let api = create(
        &ns,
        &service(
            "crashy",
            &nodes,
            json!({
                "template": {"metadata": {"labels": {"chaos.perennial.dev/mode": "crash-loop"}}},
                "supervision": {"maxRestarts": 1, "periodSeconds": 300}
            }),
        ),
    )
    .await;

    // Every step the ledger shows, in order: (escalation, avoidNode, the nodes its pods ran
    // on while the slot was at that step).
    type Step = (String, Option<String>, Vec<String>);
    let steps: Arc<Mutex<Vec<Step>>> = Arc::default();
    let svc = wait_for("slot 0 quarantined", Duration::from_secs(240), || {
        let api = api.clone();
        let steps = steps.clone();
        async move {
            let svc = api.get("crashy").await.map_err(|e| e.to_string())?;
            let e = entry(&svc, 0).ok_or("no ledger entry yet")?;
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
                .ok_or_else(|| ledger(&svc))
        }
    })
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
    let name = pod.name_any();
    wait_for(
        "the quarantined pod to crash three more times",
        POD_TIMEOUT,
        || {
            let api = pods_api.clone();
            let name = name.clone();
            async move {
                let p = api.get(&name).await.map_err(|e| e.to_string())?;
                (restarts(&p) >= before + 3)
                    .then_some(())
                    .ok_or(format!("{} restarts", restarts(&p)))
            }
        },
    )
    .await;
    let slot = slots(&ns, "crashy").await.remove(&0).unwrap_or_default();
    assert!(
        matches!(slot.as_slice(), [p] if uid(p) == quarantined && p.metadata.deletion_timestamp.is_none()),
        "still the same pod: {:?}",
        slot.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(
        operator_pod_deletes(&ns.name),
        deletes,
        "no pod deleted after quarantine"
    );
    let svc = api.get("crashy").await.unwrap();
    assert_eq!(entry(&svc, 0).unwrap().state, "Quarantined");
}

#[tokio::test]
async fn losing_three_of_four_nodes_at_once_is_a_suspected_mass_failure_and_nothing_is_force_deleted(
) {
    let ns = TestNamespace::new("repair-storm").await;
    let nodes = Nodes::new(
        &ns.client,
        "repair-storm",
        &["zone-a", "zone-b", "zone-c", "zone-a"],
        0,
    )
    .await;
    let _operator = operator(&ns).await;
    let api = create(
        &ns,
        &service(
            "web",
            &nodes,
            json!({
                "replicas": 4,
                "redundancy": {"onePerNode": true},
                "repair": {"nodeLostAfterSeconds": 10, "maxConcurrentRepairs": 4}
            }),
        ),
    )
    .await;
    wait_available(&api, "web", 4).await;
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
                now.iter()
                    .any(|p| uid(p) == uid(v) && p.metadata.deletion_timestamp.is_none()),
                "{} is still there: {:?}",
                describe(v),
                now.iter().map(describe).collect::<Vec<_>>()
            );
        }
        assert_eq!(now.len(), 4, "and nothing was added");
        assert_eq!(operator_pod_deletes(&ns.name), Vec::<String>::new());
    };
    untouched().await;
    // It holds: still nothing once Kubernetes has marked all three unreachable.
    for node in &lost {
        wait_node_unknown(&ns.client, node).await;
    }
    untouched().await;
    let svc = api.get("web").await.unwrap();
    println!("after the nodes turned Unknown: {}", ledger(&svc));
    assert_eq!(status(&svc).reason.as_deref(), Some("MassFailureSuspected"));
}

#[tokio::test]
async fn node_back_before_a_stateful_repair_never_doubles_a_slot_and_the_ledger_forgets_after_a_quiet_period(
) {
    let ns = TestNamespace::new("repair-back").await;
    let nodes = Nodes::new(&ns.client, "repair-back", &["zone-a", "zone-b"], 2).await;
    let _operator = operator(&ns).await;
    let mut spec = local_storage();
    merge(
        &mut spec,
        json!({
            "replicas": 2,
            "redundancy": {"onePerNode": true},
            "repair": {"nodeLostAfterSeconds": 10},
            "supervision": {"periodSeconds": 10}
        }),
    );
    let watch = SlotWatch::start(&ns, "kv");
    let api = create(&ns, &service("kv", &nodes, spec)).await;
    wait_available(&api, "kv", 2).await;
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
    let events = *watch.events.lock().unwrap();
    assert!(events > 0, "the watch saw the pods");
    assert_eq!(
        watch.overlaps(),
        Vec::<String>::new(),
        "never two pods in one slot ({events} pod events watched)"
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
    let path = kubeconfig_path()
        .parent()
        .expect("the kubeconfig lives in the cluster's state directory")
        .join("logs/audit.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("perennial-operator") && l.contains(node))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
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
    let nodes = Nodes::new(
        &ns.client,
        "repair-unfence",
        &["zone-a", "zone-b", "zone-c"],
        2,
    )
    .await;
    let _operator = operator(&ns).await;
    let mut spec = local_storage();
    merge(
        &mut spec,
        json!({"repair": {
            "nodeLostAfterSeconds": 10,
            "fencing": "TaintOutOfService",
            "storage": {"onVolumeLost": "Recreate"}
        }}),
    );
    let api = create(&ns, &service("db", &nodes, spec)).await;
    wait_available(&api, "db", 1).await;
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
    let svc = wait_available(&api, "db", 1).await;
    println!("  db: {}", ledger(&svc));
}
