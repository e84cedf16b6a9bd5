//! What the operator's caches hold per pod and per service, counted in heap bytes by an
//! allocator that keeps the count: the operator's memory at 10,000 pods is mostly these
//! caches, and a field kept by mistake shows here as bytes, at once, rather than in a
//! benchmark hours later. No cluster: the objects are decoded from JSON as the API server
//! sends it, through the same trims and indexes as the watches.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::Event;
use perennial::api::ResilientService;
use perennial::observe::{CachedPod, CachedService, PodCache, SliceIndex};
use serde_json::{json, Value};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The most bytes live at once since `reset_peak`.
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only a count is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Heap bytes live now. The tests of this file run one at a time (a lock), so that one
/// test's allocations are not counted in another's.
fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts the peak afresh from the bytes live now, and returns them.
fn reset_peak() -> isize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A Running, Ready pod of a ten-replica service as the API server sends it once a kubelet
/// and the operator have written its status: the benchmark's pods, with a few user labels
/// and the CPU and memory a production pod requests and limits.
fn pod(i: usize) -> Value {
    let at = "2026-12-05T10:00:00Z";
    let service = format!("s{:04}", i / 10);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{service}-{}-7c9f5b6d8f", i % 10), "namespace": "bench-scale-abcde",
            "uid": format!("0b8f0c6e-2a39-4a8e-9a5e-{i:012}"), "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": at,
            "labels": {"app": service, "tier": "web", "perennial.dev/service": service,
                "perennial.dev/slot": format!("{}", i % 10), "perennial.dev/revision": format!("{service}-7c9f5b6d8f")},
            "annotations": {"perennial.dev/template-hash": "7c9f5b6d8f", "note": "x".repeat(200)},
            "ownerReferences": [{"apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                "name": service, "uid": format!("5d7d0f8e-3b1b-4e0e-8f4a-{:012}", i / 10),
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "perennial", "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}]
        },
        "spec": {
            "nodeName": format!("bench-scale-{:03}", i % 100), "hostname": format!("{service}-{}", i % 10),
            "readinessGates": [{"conditionType": "perennial.dev/serving"}],
            "containers": [{"name": "app", "image": "example/app:1",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
                "env": [{"name": "MODE", "value": "serve"}]}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.0.0.2", "startTime": at,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": at, "lastProbeTime": null},
                {"type": "Initialized", "status": "True", "lastTransitionTime": at, "lastProbeTime": null},
                {"type": "Ready", "status": "True", "lastTransitionTime": at, "lastProbeTime": null},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": at, "lastProbeTime": null},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at, "lastProbeTime": null},
                {"type": "perennial.dev/serving", "status": "True", "reason": "Serving",
                    "message": "opened by the operator", "lastTransitionTime": at}
            ],
            "containerStatuses": [{"name": "app", "image": "example/app:1", "imageID": "sha256:abc",
                "containerID": "containerd://abc", "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": at}},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}}}]
        }
    })
}

/// A ten-replica service after its first rollout, with the managed fields the API server
/// keeps of its status writes and a client-side `kubectl apply`'s copy of its spec.
fn service(i: usize) -> Value {
    let at = "2026-12-05T10:00:00Z";
    let name = format!("s{i:04}");
    let slots: Vec<Value> = (0..10)
        .map(|o| {
            json!({"ordinal": o, "pod": format!("{name}-{o}-7c9f5b6d8f"), "node": "bench-scale-001",
            "state": "Ready", "restartsInWindow": 0})
        })
        .collect();
    let managed_slots: serde_json::Map<String, Value> = (0..10)
        .map(|o| {
            (
                format!("k:{{\"ordinal\":{o}}}"),
                json!({".": {}, "f:node": {}, "f:ordinal": {}, "f:pod": {}, "f:state": {}, "f:restartsInWindow": {}}),
            )
        })
        .collect();
    let spec = json!({"replicas": 10, "template": {"metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}});
    json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": name, "namespace": "bench-scale-abcde", "uid": format!("5d7d0f8e-3b1b-4e0e-8f4a-{i:012}"),
            "resourceVersion": "123456", "generation": 1, "creationTimestamp": at,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": spec.to_string()},
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}},
                {"manager": "perennial", "operation": "Apply", "subresource": "status", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:replicas": {}, "f:readyReplicas": {}, "f:availableReplicas": {},
                        "f:conditions": {"k:{\"type\":\"Available\"}": {".": {}, "f:status": {}, "f:reason": {}}},
                        "f:replicaStatuses": managed_slots}}}
            ]},
        "spec": spec,
        "status": {"observedGeneration": 1, "replicas": 10, "readyReplicas": 10, "availableReplicas": 10,
            "updatedReplicas": 10, "currentRevision": format!("{name}-7c9f5b6d8f"),
            "updateRevision": format!("{name}-7c9f5b6d8f"), "selector": format!("perennial.dev/service={name}"),
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                "message": "10 of 10 replicas available", "lastTransitionTime": at}],
            "replicaStatuses": slots}
    })
}

const PODS: usize = 2_000;

/// The JSON bodies of `count` objects, as the API server sends them.
fn bodies(count: usize, object: impl Fn(usize) -> Value) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| serde_json::to_vec(&object(i)).unwrap())
        .collect()
}

/// Heap bytes per object of a store fed `bodies` as its watch feeds it (decoded, trimmed,
/// stored), and the store.
fn heap_per_cached<K>(bodies: &[Vec<u8>], trim: fn(&mut K)) -> (isize, Store<K>)
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + 'static,
{
    let mut writer: Writer<K> = Writer::default();
    let store = writer.as_reader();
    let before = live();
    for body in bodies {
        let mut object: K = serde_json::from_slice(body).unwrap();
        trim(&mut object);
        writer.apply_watcher_event(&Event::Apply(object));
    }
    ((live() - before) / bodies.len() as isize, store)
}

#[test]
fn a_cached_pod_with_its_entries_by_name_service_and_node_costs_under_1_700_bytes_of_heap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bodies = bodies(PODS, pod);
    let cache = PodCache::default();
    let before = live();
    for body in &bodies {
        // As the watch does: decode, trim, cache (by name, service and node).
        let mut pod: CachedPod = serde_json::from_slice(body).unwrap();
        pod.trim();
        cache.apply(&Event::Apply(pod));
    }
    let per_pod = (live() - before) / PODS as isize;
    println!("{per_pod} bytes of heap per cached pod, with its entries by name, service and node");
    assert_eq!(cache.len(), PODS);
    assert_eq!(
        cache
            .controlled_by("5d7d0f8e-3b1b-4e0e-8f4a-000000000007")
            .len(),
        10
    );
    assert_eq!(cache.on_node("bench-scale-007").len(), PODS / 100);
    // 4,138 bytes before the cache dropped the conditions nothing reads; 3,752 after;
    // 3,059 since each condition is kept compact and no unread container state is kept;
    // 2,487 without a label map (ours kept apart), 2,167 with the index's keys shared;
    // 1,606 in a cache of our own (one key for the three lookups) and of the owners only
    // the controlling service kept. With CPU and memory requested and limited: 3,840
    // with each container's resources as two maps in the spec and two in the status,
    // 1,602 with the CPU and memory alone, as text.
    assert!(per_pod < 1_700, "{per_pod} bytes per pod");
    let pod = cache
        .get("bench-scale-abcde", "s0007-3-7c9f5b6d8f")
        .unwrap();
    assert_eq!(
        (
            pod.metadata.annotations.as_ref(),
            pod.metadata.managed_fields.as_ref(),
            pod.metadata.labels.as_ref(),
            pod.metadata.owner_references.as_ref()
        ),
        (None, None, None, None)
    );
    assert!(pod.label("perennial.dev/slot").is_some());
}

#[test]
fn a_cached_service_keeps_neither_managed_fields_nor_the_applied_copy_and_costs_under_3_5_kib() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let services = 200;
    let bodies = bodies(services, service);
    let (per_service, store) = heap_per_cached::<CachedService>(&bodies, |_| {});
    println!("{per_service} bytes of heap per cached service");
    assert_eq!(store.len(), services);
    // 23,510 bytes with its managed fields and the applied copy; 9,588 without; 8,788
    // with each slot's last failure boxed (room for one is 88 bytes a slot) and no
    // annotation map left empty; 3,157 with the spec and status kept as JSON text.
    assert!(
        per_service < 3 * 1024 + 512,
        "{per_service} bytes per service"
    );
    let kept = store.state().pop().unwrap();
    let svc = kept.decode().unwrap();
    assert_eq!(svc.metadata.managed_fields, None);
    assert_eq!(svc.metadata.annotations, None);
    let sent: ResilientService = (bodies.iter())
        .map(|b| serde_json::from_slice::<ResilientService>(b).unwrap())
        .find(|s| s.metadata.name == svc.metadata.name)
        .unwrap();
    assert_eq!((svc.spec, svc.status), (sent.spec, sent.status));
}

/// A node as a kubelet reports it: 40 images, addresses, capacity, system info, five
/// conditions and a few annotations.
fn node(i: usize) -> Value {
    let at = "2026-12-05T10:00:00Z";
    let name = format!("node-{i:04}");
    let condition = |t: &str| {
        json!({"type": t, "status": if t == "Ready" { "True" } else { "False" }, "reason": format!("Kubelet{t}"),
            "message": "kubelet is posting ready status", "lastHeartbeatTime": at, "lastTransitionTime": at})
    };
    let images: Vec<Value> = (0..40)
        .map(|n| {
            json!({"names": [format!("registry.example/app{n}@sha256:{:064}", n),
            format!("registry.example/app{n}:v{n}")], "sizeBytes": 50_000_000 + n})
        })
        .collect();
    let conditions = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"].map(condition);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("0b8f0c6e-2a39-4a8e-9a5e-{i:012}"), "resourceVersion": "4242",
            "creationTimestamp": at,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": format!("example://{name}")},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110", "ephemeral-storage": "90Gi"},
            "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1",
                "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.36.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": images,
            "conditions": conditions
        }
    })
}

#[test]
fn a_cached_node_keeps_what_it_is_judged_by_and_costs_under_3_kib() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = 100;
    let bodies = bodies(nodes, node);
    let (whole, _) = heap_per_cached::<k8s_openapi::api::core::v1::Node>(&bodies, |n| {
        n.metadata.managed_fields = None
    });
    let (per_node, store) = heap_per_cached(&bodies, perennial::observe::trim_node);
    println!("{per_node} bytes of heap per cached node ({whole} untrimmed)");
    assert_eq!(store.len(), nodes);
    // 2,616 bytes, against 13,607 with only its managed fields dropped: most of a kubelet's
    // node is its images, capacity, system info and conditions nothing reads.
    assert!(per_node < 3 * 1024, "{per_node} bytes per node");
    let node = store.state().pop().unwrap();
    assert_eq!(node.metadata.labels.as_ref().map(|l| l.len()), Some(4));
}

#[test]
fn a_cached_revision_keeps_its_record_as_text_and_costs_under_2_kib() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let revisions = 200;
    let bodies = bodies(revisions, |i| {
        let svc: ResilientService = serde_json::from_value(service(i)).unwrap();
        let mut revision =
            serde_json::to_value(perennial::build::desired_revision(&svc, 1)).unwrap();
        revision["metadata"]["uid"] = format!("9a1e7c2d-5b4f-4c3a-8e6d-{i:012}").into();
        revision["metadata"]["resourceVersion"] = "123457".into();
        revision
    });
    let (per_revision, store) =
        heap_per_cached::<ControllerRevision>(&bodies, perennial::build::record_as_text);
    println!("{per_revision} bytes of heap per cached revision");
    assert_eq!(store.len(), revisions);
    // 6,020 bytes with its record as a tree of JSON maps, 1,593 with it as text.
    assert!(per_revision < 2 * 1024, "{per_revision} bytes per revision");
    let revision = store.state().pop().unwrap();
    assert!(perennial::build::recorded_template(&revision).is_some());
}

/// An EndpointSlice of a ten-replica service's Service as the EndpointSlice controller
/// writes it: every pod ready, with its address, node, zone and target.
fn slice(i: usize) -> Value {
    let service = format!("s{i:04}");
    let endpoints: Vec<Value> = (0..10)
        .map(|o| {
            json!({"addresses": [format!("10.1.{}.{o}", i % 250)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("bench-scale-{:03}", (i * 10 + o) % 100), "zone": "zone-a",
                "targetRef": {"kind": "Pod", "namespace": "bench-scale-abcde",
                    "name": format!("{service}-{o}-7c9f5b6d8f"),
                    "uid": format!("0b8f0c6e-2a39-4a8e-9a5e-{:012}", i * 10 + o)}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{service}-x7k2p"), "namespace": "bench-scale-abcde",
            "uid": format!("7e3c1a9b-4d2f-4b6e-9c8a-{i:012}"), "resourceVersion": "123458",
            "generateName": format!("{service}-"),
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T10:00:00Z"}},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[test]
fn the_slice_index_keeps_no_copy_of_a_slice_and_costs_under_250_bytes_a_listed_pod() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let slices = PODS / 10;
    let bodies = bodies(slices, slice);
    let index = SliceIndex::default();
    let before = live();
    for body in &bodies {
        let slice: EndpointSlice = serde_json::from_slice(body).unwrap();
        index.apply(&Event::Apply(slice));
    }
    let per_pod = (live() - before) / PODS as isize;
    println!("{per_pod} bytes of heap per pod the slice index lists");
    let services = kube::runtime::reflector::store::<k8s_openapi::api::core::v1::Service>().0;
    assert_eq!(
        index.listing("bench-scale-abcde", "s0007-3-7c9f5b6d8f", &services),
        perennial::health::Listing::Ready
    );
    // With a store of the trimmed slices beside it, about 1 kB a pod (the heap profile at
    // 10,000 pods: 5.4 MiB of slices in the store, 4.5 MiB of index); 418 bytes without
    // it; 200 with the namespace kept once, each pod's name once, and a pod's one slice
    // without a list of its own.
    assert!(per_pod < 250, "{per_pod} bytes per pod");
}

/// A ten-replica service's status as a pass leaves it: every slot Ready, Available.
fn pass_status() -> perennial::api::ResilientServiceStatus {
    serde_json::from_value(json!({
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
            "message": "", "lastTransitionTime": "2026-12-05T10:00:00Z"}],
        "replicaStatuses": (0..10).map(|o| json!({"ordinal": o, "state": "Ready"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[test]
fn the_fifteen_metric_series_of_a_service_cost_under_200_bytes_of_heap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let metrics = perennial::metrics::Metrics::default();
    let status = pass_status();
    let services = 1_000;
    let names: Vec<String> = (0..services).map(|i| format!("s{i:04}")).collect();
    let before = live();
    for name in &names {
        metrics.observe_pass("bench-scale-abcde", name, None, &status, &[]);
    }
    let per_service = (live() - before) / services as isize;
    println!("{per_service} bytes of heap per service's metric series");
    let text = metrics.render();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("perennial_replicas{namespace=\"bench-scale-abcde\""))
            .count(),
        services * 10
    );
    assert!(text.contains(
        "perennial_replicas{namespace=\"bench-scale-abcde\",name=\"s0042\",state=\"Ready\"} 10"
    ));
    // 3,033 bytes as gauge families (three label strings and a gauge a series); 128 as
    // numbers kept by service and written out at each scrape.
    assert!(per_service < 200, "{per_service} bytes per service");
}

#[test]
fn a_scrape_of_a_thousand_services_holds_one_copy_of_the_text() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let metrics = perennial::metrics::Metrics::default();
    let status = pass_status();
    for i in 0..1_000 {
        metrics.observe_pass("bench-scale-abcde", &format!("s{i:04}"), None, &status, &[]);
    }
    // Prometheus scrapes again and again: the second scrape is the one that counts.
    drop(metrics.render());
    let before = reset_peak();
    let text = metrics.render();
    let held = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "{held} bytes of heap at most while rendering {} bytes of text",
        text.len()
    );
    assert!(text.len() > 1_000_000, "{} bytes", text.len());
    assert!(text.contains("# TYPE perennial_reconciles_total counter"));
    // The text, room for a scrape's worth more, and the encoder's buffers: no second copy.
    assert!(
        (held as usize) < text.len() + 64 * 1024,
        "{held} bytes held for {} bytes of text",
        text.len()
    );
}
