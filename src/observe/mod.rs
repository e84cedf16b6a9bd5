//! Reading what exists into plain data. The reads come from shared watch caches, so a
//! reconcile costs the API server nothing.

mod cached_condition;
mod cached_pod;
mod cached_resources;
mod cached_service;
mod endpoints;
mod heartbeats;
mod node_events;
mod node_facts;
mod owners;
mod pod_cache;

pub use cached_pod::CachedPod;
pub use cached_service::CachedService;
pub use endpoints::SliceIndex;
pub use heartbeats::Heartbeats;
pub use node_events::{heartbeat_changes, node_news};
pub use node_facts::{NodeFacts, NodeFactsCache};
pub use owners::{controller_uid, index_event, OwnerIndex};
pub use pod_cache::PodCache;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{ResilientService, LABEL_SERVICE};
use crate::build;

/// The shared caches the controller keeps.
#[derive(Clone)]
pub struct Caches {
    /// Pods of ours, as `CachedPod` keeps them, by name, service and node.
    pub pods: PodCache,
    pub claims: Store<PersistentVolumeClaim>,
    pub revisions: Store<ControllerRevision>,
    pub services: Store<Service>,
    pub budgets: Store<PodDisruptionBudget>,
    pub nodes: Store<Node>,
    /// Node heartbeats (kube-node-lease).
    pub leases: Store<Lease>,
    pub volumes: Store<PersistentVolume>,
    /// What the operator itself has seen of the node leases.
    pub heartbeats: Heartbeats,
    /// The nodes and their heartbeats as the passes read them, built once per change.
    pub node_facts: NodeFactsCache,
    /// The index by pod the EndpointSlice watch keeps: which slices list each pod.
    pub slice_index: SliceIndex,
    /// Revisions by their controller's uid, claims by `namespace/service`: kept by the
    /// watches, so a pass reads only what concerns it.
    pub revisions_by_owner: OwnerIndex,
    pub claims_by_service: OwnerIndex,
}

/// The key `Caches::claims_by_service` indexes a claim by: its namespace and the service
/// its label names.
pub fn claim_service_key<K: Resource>(object: &K) -> Option<String> {
    let ns = object.meta().namespace.as_deref()?;
    let name = object.meta().labels.as_ref()?.get(LABEL_SERVICE)?;
    Some(format!("{ns}/{name}"))
}

/// What the service cache keeps of a ResilientService: all but its managed fields and the
/// copy of the spec that a client-side `kubectl apply` leaves in an annotation. Nothing reads
/// either, and the managed fields of a service whose ledger the operator writes were two
/// thirds of the memory it held for each service.
pub fn trim_service(svc: &mut ResilientService) {
    svc.metadata.managed_fields = None;
    if let Some(annotations) = svc.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    // A map emptied keeps its node (544 bytes); no map keeps none.
    if (svc.metadata.annotations.as_ref()).is_some_and(|a| a.is_empty()) {
        svc.metadata.annotations = None;
    }
}

/// The annotation in which a client-side `kubectl apply` keeps what it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the node cache keeps of a node: what a node is judged by (its labels, taints,
/// whether it is cordoned or deleted, its Ready condition) and the fence record. A kubelet's
/// node also reports its images, addresses, capacity, system info and every other condition,
/// several kB a node that nothing reads: fencing reads the node afresh before it writes.
pub fn trim_node(node: &mut Node) {
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == crate::api::ANNOTATION_FENCE);
    }
    if (node.metadata.annotations.as_ref()).is_some_and(|a| a.is_empty()) {
        node.metadata.annotations = None;
    }
    if let Some(spec) = node.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::NodeSpec {
            taints: spec.taints.take(),
            unschedulable: spec.unschedulable,
            ..Default::default()
        };
    }
    if let Some(status) = node.status.as_mut() {
        let ready = (status.conditions.take().into_iter().flatten())
            .filter(|c| c.type_ == "Ready")
            .collect::<Vec<_>>();
        *status = k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(ready),
            ..Default::default()
        };
    }
}

impl Caches {
    /// Resolves once every cache has its first full list.
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.pods.wait_until_ready(),
            self.claims.wait_until_ready(),
            self.revisions.wait_until_ready(),
            self.services.wait_until_ready(),
            self.budgets.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.leases.wait_until_ready(),
            self.volumes.wait_until_ready(),
            self.slice_index.wait_until_listed(),
        );
    }
}

/// Everything that exists for one ResilientService.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Pods the service controls (by controller owner reference).
    pub pods: Vec<Arc<Pod>>,
    /// Claims labelled for the service (owned or retained).
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    /// ControllerRevisions the service controls.
    pub revisions: Vec<Arc<ControllerRevision>>,
    /// The Service named by spec.serviceName, whoever owns it.
    pub service: Option<Arc<Service>>,
    /// The PodDisruptionBudget the service controls.
    pub budget: Option<Arc<PodDisruptionBudget>>,
    /// The cluster's nodes, their Leases and heartbeats, shared by the passes.
    pub nodes: Arc<NodeFacts>,
    /// The volumes bound to the service's claims, by name.
    pub volumes: BTreeMap<String, Arc<PersistentVolume>>,
    /// For each node whose fence record names this service, the pods of ours (of every
    /// service the pod cache holds) bound to it: what its fence may still be needed for.
    pub pods_on_fenced_nodes: BTreeMap<String, Vec<Arc<Pod>>>,
    /// How the EndpointSlices of Services that route by readiness list each pod of the
    /// service, by pod name; a pod in none is absent.
    pub listings: BTreeMap<String, crate::health::Listing>,
    /// Pods drained with their gate closed, by name: since when the operator saw them so.
    pub drained: BTreeMap<String, jiff::Timestamp>,
    /// Pods whose gate the operator opened, though their cached copy predates the patch.
    pub gates_opened: std::collections::BTreeSet<String>,
}

/// Collects what exists for `svc` from the caches.
pub fn observe(svc: &ResilientService, caches: &Caches) -> Observed {
    let namespace = svc.namespace().unwrap_or_default();
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let name = svc.name_any();
    let same_ns = |m: &kube::api::ObjectMeta| m.namespace.as_deref() == Some(namespace.as_str());
    let controlled = |m: &kube::api::ObjectMeta| {
        same_ns(m)
            && m.owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
    };
    let labelled = |m: &kube::api::ObjectMeta| {
        same_ns(m)
            && m.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE))
                .is_some_and(|v| v == &name)
    };

    let service_ref = ObjectRef::<Service>::new(&build::service_name(svc)).within(&namespace);
    let budget_ref = ObjectRef::<PodDisruptionBudget>::new(&name).within(&namespace);
    let claims: Vec<Arc<PersistentVolumeClaim>> = caches
        .claims_by_service
        .owned(&format!("{namespace}/{name}"), &caches.claims)
        .into_iter()
        .filter(|c| labelled(c.meta()))
        .collect();
    let now = jiff::Timestamp::now();
    let nodes = (caches.node_facts).get(&caches.nodes, &caches.leases, &caches.heartbeats, now);
    let pods_on_fenced_nodes = pods_on_fenced_nodes(svc, &nodes, caches);
    let volumes = claims
        .iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.clone())
        .filter_map(|v| {
            let pv = caches.volumes.get(&ObjectRef::new(&v))?;
            Some((v, pv))
        })
        .collect();
    let pods: Vec<Arc<Pod>> = (caches.pods.controlled_by(&uid).into_iter())
        .filter(|p| same_ns(p.meta()))
        .map(|p| Arc::new(p.to_pod()))
        .collect();
    let (listings, drained) = drains(&namespace, &pods, caches, now);
    Observed {
        pods,
        listings,
        drained,
        claims,
        revisions: caches
            .revisions_by_owner
            .owned(&uid, &caches.revisions)
            .into_iter()
            .filter(|r| controlled(r.meta()))
            .collect(),
        service: caches.services.get(&service_ref),
        budget: caches
            .budgets
            .get(&budget_ref)
            .filter(|b| controlled(b.meta())),
        nodes,
        pods_on_fenced_nodes,
        volumes,
        gates_opened: Default::default(),
    }
}

/// How the slices list each pod, and since when each pod with a closed gate is drained.
type Drains = (
    BTreeMap<String, crate::health::Listing>,
    BTreeMap<String, jiff::Timestamp>,
);

fn drains(namespace: &str, pods: &[Arc<Pod>], caches: &Caches, now: jiff::Timestamp) -> Drains {
    use crate::health::{gate_of, Gate, Listing};
    let mut listings = BTreeMap::new();
    let mut drained = BTreeMap::new();
    for pod in pods {
        let name = pod.name_any();
        let listing = caches
            .slice_index
            .listing(namespace, &name, &caches.services);
        let closed = matches!(gate_of(pod), Gate::Closed { .. });
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let since = caches
            .slice_index
            .drained_since(uid, closed && listing != Listing::Ready, now);
        if let Some(since) = since {
            drained.insert(name.clone(), since);
        }
        if listing != Listing::Unlisted {
            listings.insert(name, listing);
        }
    }
    (listings, drained)
}

/// For each node `svc` fenced (its record names the service), the pods of ours bound to it.
/// The pod cache is read only when there is such a node.
fn pods_on_fenced_nodes(
    svc: &ResilientService,
    nodes: &NodeFacts,
    caches: &Caches,
) -> BTreeMap<String, Vec<Arc<Pod>>> {
    (nodes.fenced_by(&build::service_key(svc)).iter())
        .map(|(node, _)| {
            let on = (caches.pods.on_node(node).iter())
                .map(|p| Arc::new(p.to_pod()))
                .collect();
            (node.clone(), on)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ANNOTATION_ABORT;

    #[test]
    fn the_service_cache_drops_managed_fields_and_the_applied_copy_but_keeps_every_other_annotation(
    ) {
        let mut svc: ResilientService = serde_json::from_value(serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                "annotations": {LAST_APPLIED: "{\"spec\":{}}", ANNOTATION_ABORT: "web-abc"},
                "managedFields": [{"manager": "perennial", "operation": "Apply",
                    "subresource": "status", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:replicaStatuses": {}}}}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
        }))
        .unwrap();
        let spec = serde_json::to_value(&svc.spec).unwrap();
        trim_service(&mut svc);
        assert_eq!(svc.metadata.managed_fields, None);
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [ANNOTATION_ABORT]);
        assert_eq!(serde_json::to_value(&svc.spec).unwrap(), spec);
        assert_eq!(svc.metadata.resource_version.as_deref(), Some("7"));

        // A service whose only annotation was the applied copy keeps no map at all.
        svc.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        trim_service(&mut svc);
        assert_eq!(svc.metadata.annotations, None);
    }

    /// A node as a kubelet reports it: images, addresses, capacity, system info and five
    /// conditions, a fence record among other annotations.
    fn kubelet_node() -> Node {
        let fence = serde_json::json!({"service": "shop/web",
            "taint": {"key": crate::health::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}});
        let condition = |t: &str, status: &str| {
            serde_json::json!({"type": t, "status": status, "reason": format!("Kubelet{t}"),
                "message": "kubelet is posting ready status", "lastHeartbeatTime": "2026-12-05T10:00:00Z",
                "lastTransitionTime": "2026-12-05T09:00:00Z"})
        };
        let images: Vec<_> = (0..40)
            .map(|i| serde_json::json!({"names": [format!("registry.example/app{i}@sha256:{}", "0".repeat(64)),
                format!("registry.example/app{i}:v{i}")], "sizeBytes": 50_000_000 + i}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-1", "resourceVersion": "42",
                "labels": {"kubernetes.io/hostname": "node-1", "topology.kubernetes.io/zone": "zone-a"},
                "annotations": {crate::api::ANNOTATION_FENCE: fence.to_string(),
                    "node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "kind://node-1",
                "unschedulable": true,
                "taints": [{"key": crate::health::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110", "ephemeral-storage": "90Gi"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}, {"type": "Hostname", "address": "node-1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1",
                    "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.36.0",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "images": images,
                "conditions": [condition("MemoryPressure", "False"), condition("DiskPressure", "False"),
                    condition("PIDPressure", "False"), condition("Ready", "False"), condition("NetworkUnavailable", "False")]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_node_cache_keeps_what_a_node_is_judged_by_and_its_fence_record_and_nothing_else() {
        let node = kubelet_node();
        let mut trimmed = node.clone();
        trim_node(&mut trimmed);
        // Judged the same, heard of the same, fenced by the same service.
        assert_eq!(
            crate::health::node_fingerprint(&trimmed),
            crate::health::node_fingerprint(&node)
        );
        assert_eq!(trimmed.metadata.labels, node.metadata.labels);
        assert_eq!(
            build::FenceRecord::of(&trimmed).and_then(|r| r.fencer()),
            Some(("shop".to_string(), "web".to_string()))
        );
        let annotations = trimmed.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [crate::api::ANNOTATION_FENCE]
        );
        let spec = trimmed.spec.clone().unwrap_or_default();
        assert_eq!(spec.unschedulable, Some(true));
        assert_eq!(spec.taints.unwrap_or_default().len(), 1);
        assert_eq!((spec.pod_cidr, spec.provider_id), (None, None));
        let status = trimmed.status.clone().unwrap_or_default();
        let conditions = status.conditions.clone().unwrap_or_default();
        assert_eq!(
            conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str()))
                .collect::<Vec<_>>(),
            [("Ready", "False")]
        );
        assert_eq!(
            status,
            k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(conditions),
                ..Default::default()
            }
        );
        // A node with nothing to trim is left as it is.
        let mut bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap();
        trim_node(&mut bare);
        assert_eq!(
            (bare.spec, bare.status, bare.metadata.annotations),
            (None, None, None)
        );
    }
}
