//! Nodes and local volumes of a test's own: fake nodes tainted so that only the test's
//! pods land on them, groups of them a test's workloads select, local volumes pinned to
//! them and the claims bound to them, and what a node's status says.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::{json, Value};

use super::{kubectl, unique_suffix, wait_object, TestNamespace};

/// The node label that puts a test's workloads on its own nodes and nowhere else.
pub const GROUP_LABEL: &str = "perennial.dev/test-group";
/// The taint every TestNode carries, its value the test's prefix.
pub const TEST_NODE_TAINT: &str = "perennial.dev/test-node";
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// KWOK takes a new node Ready within seconds; the rest is room for a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A fake node of a test's own, tainted so that no other test's pods land on it; deleted
/// when the guard drops. Faults on it disturb no other test.
pub struct TestNode {
    pub name: String,
}

impl TestNode {
    pub async fn new(client: &Client, prefix: &str, zone: &str) -> Self {
        Self::with_labels(client, prefix, zone, &[]).await
    }

    /// A TestNode, returned once it is Ready.
    pub async fn ready(client: &Client, prefix: &str, zone: &str) -> Self {
        let node = Self::new(client, prefix, zone).await;
        wait_node_ready(client, &node.name).await;
        node
    }

    /// A TestNode that also wears `labels`.
    pub async fn with_labels(
        client: &Client,
        prefix: &str,
        zone: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        let api: Api<Node> = Api::all(client.clone());
        let name = format!("{prefix}-{}", unique_suffix());
        let mut node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "topology.kubernetes.io/zone": zone,
                    "type": "kwok",
                    TEST_NODE_TAINT: "true"
                }
            },
            "spec": {"taints": [{"key": TEST_NODE_TAINT, "value": prefix, "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"}
            }
        });
        for (key, value) in labels {
            node["metadata"]["labels"][*key] = json!(value);
        }
        let node: Node = serde_json::from_value(node).expect("a valid node");
        api.create(&PostParams::default(), &node)
            .await
            .expect("create the test node");
        Self { name }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "node", &self.name, "--wait=false"]);
    }
}

/// TestNodes of one test, labelled with a group value unique to it, each with its own local
/// volumes (deleted when the guard drops, as the nodes are).
pub struct NodeGroup {
    prefix: String,
    group: String,
    nodes: Vec<TestNode>,
    volumes: Vec<String>,
}

impl NodeGroup {
    /// One node per zone in `zones`, each with `volumes` local volumes; returns once all
    /// are Ready.
    pub async fn new(client: &Client, prefix: &str, zones: &[&str], volumes: usize) -> Self {
        let group = format!("{prefix}-{}", unique_suffix());
        let mut this = Self {
            prefix: prefix.to_string(),
            group: group.clone(),
            nodes: Vec::new(),
            volumes: Vec::new(),
        };
        for zone in zones {
            let node = TestNode::with_labels(client, prefix, zone, &[(GROUP_LABEL, &group)]).await;
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
            wait_node_ready(client, &node).await;
        }
        this
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Pod spec fields that put a pod on this group's nodes only.
    pub fn placement(&self) -> Value {
        json!({
            "nodeSelector": {GROUP_LABEL: self.group},
            "tolerations": [{
                "key": TEST_NODE_TAINT, "operator": "Equal", "value": self.prefix,
                "effect": "NoSchedule"
            }]
        })
    }
}

impl Drop for NodeGroup {
    fn drop(&mut self) {
        delete_volumes(&self.volumes);
    }
}

fn delete_volumes(names: &[String]) {
    for pv in names {
        let _ = kubectl(&["delete", "pv", pv, "--wait=false", "--ignore-not-found"]);
    }
}

/// A local volume only `node` can use, as e2e/cluster/nodes makes them.
pub fn local_volume(name: &str, node: &str) -> PersistentVolume {
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
pub fn volume_node(pv: &PersistentVolume) -> Option<String> {
    pv.metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/hostname")
        .cloned()
}

/// The node the local volume `volume` is pinned to.
pub async fn volume_node_of(client: &Client, volume: &str) -> Option<String> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    volume_node(&api.get(volume).await.ok()?)
}

/// Local volumes of a test's own, one per slot of claim template `template` of service
/// `svc`, spread over the harness's first three nodes and reserved for their claim
/// (`claimRef`), so that no other test takes them. Deleted on drop.
pub struct Volumes {
    pub names: Vec<String>,
}

impl Volumes {
    pub async fn reserve(ns: &TestNamespace, template: &str, svc: &str, replicas: i32) -> Self {
        let api: Api<PersistentVolume> = Api::all(ns.client.clone());
        let mut names = Vec::new();
        for slot in 0..replicas {
            let name = format!("{}-{template}-{slot}", ns.name);
            let mut pv = local_volume(&name, &format!("kwok-node-{}", slot % 3));
            // Not in the harness's pool of its node: that counts volumes by this label.
            pv.metadata.labels = Some([("perennial.dev/test".into(), "scenario".into())].into());
            let spec = pv.spec.as_mut().expect("a local volume has a spec");
            spec.claim_ref = Some(ObjectReference {
                namespace: Some(ns.name.clone()),
                name: Some(format!("{template}-{svc}-{slot}")),
                ..Default::default()
            });
            api.create(&PostParams::default(), &pv)
                .await
                .expect("create a local volume");
            names.push(name);
        }
        Self { names }
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        delete_volumes(&self.names);
    }
}

/// The status of the node's condition `type_`.
pub fn node_condition(node: &Node, type_: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

pub fn node_ready(node: &Node) -> Option<String> {
    node_condition(node, "Ready")
}

pub fn taint_keys(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| ts.iter().map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

pub fn node_tainted(node: &Node, key: &str) -> bool {
    taint_keys(node).iter().any(|k| k == key)
}

/// Waits until `check` accepts the node `name`.
pub async fn wait_node(
    client: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Node) -> bool,
) {
    let api: Api<Node> = Api::all(client.clone());
    wait_object(&api, name, what, timeout, |node| {
        check(node).then_some(()).ok_or(format!(
            "Ready={:?}, taints={:?}",
            node_ready(node),
            taint_keys(node)
        ))
    })
    .await
}

/// Waits until the node `name` is Ready.
pub async fn wait_node_ready(client: &Client, name: &str) {
    wait_node(client, name, "Ready", READY_TIMEOUT, |n| {
        node_ready(n).as_deref() == Some("True")
    })
    .await
}

/// Waits until the node lifecycle controller has marked `name` Ready=Unknown.
pub async fn wait_node_unknown(client: &Client, name: &str, timeout: Duration) {
    wait_node(client, name, "marked Ready=Unknown", timeout, |n| {
        node_ready(n).as_deref() == Some("Unknown")
    })
    .await
}

/// Waits until the node `name` carries the taint `key`.
pub async fn wait_node_tainted(client: &Client, name: &str, key: &str, timeout: Duration) {
    wait_node(client, name, &format!("tainted {key}"), timeout, |n| {
        node_tainted(n, key)
    })
    .await
}

/// The claim `name`: (uid, bound volume, deleting).
pub async fn claim(ns: &TestNamespace, name: &str) -> Option<(String, Option<String>, bool)> {
    let api: Api<PersistentVolumeClaim> = ns.api();
    let c = api.get_opt(name).await.expect("get the claim")?;
    Some((
        c.metadata.uid.clone().unwrap_or_default(),
        c.spec.as_ref().and_then(|s| s.volume_name.clone()),
        c.metadata.deletion_timestamp.is_some(),
    ))
}

/// Waits until the node `name` reports Ready=`ready` and carries the taint `taint`, or
/// (`tainted` false) no longer does.
pub async fn wait_node_state(
    client: &Client,
    name: &str,
    ready: &str,
    (taint, tainted): (&str, bool),
    timeout: Duration,
) {
    let with = if tainted { "with" } else { "without" };
    let what = format!("Ready={ready} {with} the {taint} taint");
    wait_node(client, name, &what, timeout, |n| {
        node_ready(n).as_deref() == Some(ready) && node_tainted(n, taint) == tainted
    })
    .await
}
