//! Real nodes (a kubelet and a containerd each, beside the KWOK nodes): finding them,
//! placing the test application on them (as a ResilientService or a Deployment), their
//! faults, and requests through a Service.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use perennial::api::ResilientService;
use serde_json::{json, Value};

use super::service::{merged, service};
use super::{harness::cluster_dir, repo_root, wait_for, wait_object, TestNamespace};

/// The label that tells real nodes (`real`) from KWOK nodes (`kwok`).
pub const NODE_KIND_LABEL: &str = "e2e.perennial.dev/node";
/// The taint every real node registers with: only pods that ask for one land there.
pub const REAL_NODE_TAINT: &str = "e2e.perennial.dev/real-node";
pub const TESTAPP_IMAGE: &str = "localhost/perennial-testapp:dev";
/// The test application again, the same layer, with `APP_VERSION=v1` (or v2) in the image's
/// config: a change of image alone changes its answer.
pub const TESTAPP_V1_IMAGE: &str = "localhost/perennial-testapp:v1";
pub const TESTAPP_V2_IMAGE: &str = "localhost/perennial-testapp:v2";
pub const OPERATOR_IMAGE: &str = "localhost/perennial:dev";
/// The operator built from the commit before the last change of its source: the release
/// an upgrade to this build replaces.
pub const OPERATOR_PREVIOUS_IMAGE: &str = "localhost/perennial:previous";
const IMAGES: [&str; 6] = [
    OPERATOR_IMAGE,
    OPERATOR_PREVIOUS_IMAGE,
    TESTAPP_IMAGE,
    TESTAPP_V1_IMAGE,
    TESTAPP_V2_IMAGE,
    "localhost/pause:dev",
];
/// A real pod starts in about a second; this leaves room for a busy machine.
pub const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// Serialises the real-node tests of one binary: they share two nodes and two cores, and
/// a node fault would disturb any test beside it.
pub static REAL_NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The names of the Ready real nodes, at least `want` of them, each holding the images;
/// fails saying why not (never a silent skip).
pub async fn real_nodes(client: &Client, want: usize) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes
        .list(&ListParams::default().labels(&format!("{NODE_KIND_LABEL}=real")))
        .await
        .expect("list the real nodes");
    let ready: Vec<String> = listed
        .items
        .iter()
        .filter(|n| super::nodes::node_ready(n).as_deref() == Some("True"))
        .map(|n| n.name_any())
        .collect();
    assert!(
        ready.len() >= want,
        "this test needs {want} Ready real nodes and finds {} ({:?}): the cluster runs with \
         REAL_NODES={}; start it with real nodes (`make cluster`, as root, with containerd, \
         runc and the CNI plugins installed) and see `make cluster-status`",
        ready.len(),
        ready,
        std::env::var("REAL_NODES").unwrap_or_else(|_| "its default".into())
    );
    for node in &ready {
        let missing = missing_images(node);
        assert!(
            missing.is_empty(),
            "real node {node} lacks the images {missing:?}: run `make images` (it builds them and loads them into every real node)"
        );
    }
    ready
}

/// The socket of `node`'s containerd, for `ctr --address`.
pub fn node_socket(node: &str) -> std::path::PathBuf {
    cluster_dir()
        .join("real")
        .join(node)
        .join("containerd.sock")
}

/// The test images not imported into `node`'s containerd.
fn missing_images(node: &str) -> Vec<&'static str> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(node_socket(node))
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap_or_else(|e| panic!("run ctr (apt-get install containerd): {e}"));
    let listed = String::from_utf8_lossy(&out.stdout);
    IMAGES
        .into_iter()
        .filter(|image| !listed.lines().any(|l| l.trim() == *image))
        .collect()
}

/// Pod spec fields that put a pod on a real node, and only there.
pub fn on_real_nodes() -> Value {
    json!({
        "nodeSelector": {NODE_KIND_LABEL: "real"},
        "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    })
}

/// The test application's container `app`, with its environment `env` (see testapp/),
/// readiness from its `/readyz`, non-root on a read-only root filesystem.
pub fn testapp_container(env: &[(&str, &str)]) -> Value {
    let mut vars = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    vars.extend(env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    json!({
        "name": "app",
        "image": TESTAPP_IMAGE,
        "imagePullPolicy": "Never",
        "env": vars,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}},
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// ResilientService spec fields: pods of the test application labelled `app: name` on the
/// real nodes, the container given (`testapp_container`).
pub fn testapp_spec(name: &str, container: Value) -> Value {
    let mut pod = on_real_nodes();
    pod["containers"] = json!([container]);
    pod["terminationGracePeriodSeconds"] = json!(5);
    json!({"template": {"metadata": {"labels": {"app": name}}, "spec": pod}})
}

/// A ResilientService `name` of `replicas` test applications with the environment `env`,
/// its spec extended by `spec`.
pub fn testapp_service(
    name: &str,
    replicas: i32,
    env: &[(&str, &str)],
    spec: Value,
) -> ResilientService {
    let body = merged(testapp_spec(name, testapp_container(env)), spec);
    service(name, replicas, TESTAPP_IMAGE, body)
}

/// A Deployment `name` of `replicas` pods labelled `app: name`, of the template
/// `testapp_spec` makes of `container`, rolled out with at most `max_surge` pods above
/// `replicas` and `max_unavailable` below.
pub fn testapp_deployment(
    name: &str,
    replicas: i32,
    container: Value,
    max_surge: i32,
    max_unavailable: i32,
) -> Deployment {
    let template = testapp_spec(name, container)["template"].clone();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": max_surge, "maxUnavailable": max_unavailable
            }},
            "template": template
        }
    }))
    .expect("a valid Deployment")
}

/// Creates `deployment` in the test's namespace; returns the namespace's Deployments.
pub async fn create_deployment(ns: &TestNamespace, deployment: &Deployment) -> Api<Deployment> {
    let api: Api<Deployment> = ns.api();
    api.create(&PostParams::default(), deployment)
        .await
        .expect("create the Deployment");
    api
}

/// Waits until the Deployment `name` runs `replicas` updated, available pods of its
/// generation `generation`.
pub async fn wait_deployment(api: &Api<Deployment>, name: &str, replicas: i32, generation: i64) {
    wait_object(
        api,
        name,
        "the Deployment's rollout to complete",
        Duration::from_secs(300),
        |d| {
            let s = d.status.clone().unwrap_or_default();
            let done = s.observed_generation.unwrap_or_default() >= generation
                && s.updated_replicas == Some(replicas)
                && s.available_replicas == Some(replicas)
                && s.replicas == Some(replicas);
            done.then_some(()).ok_or(format!("{s:?}"))
        },
    )
    .await
}

// ------------------------------------------------------------------------------------------
// Faults

/// `e2e/cluster/fault WHAT TARGET` for the real-node faults: node-crash, node-partition,
/// node-back, container-kill (TARGET `namespace/pod`).
pub fn real_fault(what: &str, target: &str) -> String {
    super::harness::harness(&[what, target], "fault")
}

/// Brings a real node back when dropped, also when the test failed, so the next test finds
/// every real node Ready.
pub struct NodeBack(pub String);

impl Drop for NodeBack {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/cluster/fault"))
            .args(["node-back", &self.0])
            .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
            .output();
    }
}

/// Whether any process of `node`'s containers still runs (partitioned nodes keep them).
pub fn node_runs_containers(node: &str) -> bool {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(node_socket(node))
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .expect("run ctr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
}

// ------------------------------------------------------------------------------------------
// Traffic

/// A ClusterIP Service `name` in front of the pods labelled `app: name`, port 80 to 8080;
/// returns its address.
pub async fn cluster_ip_service(ns: &TestNamespace, name: &str) -> SocketAddr {
    cluster_ip_service_of(ns, name, name).await
}

/// A ClusterIP Service `name` in front of the pods labelled `app: app`, port 80 to 8080;
/// returns its address. A ResilientService with claims owns a headless Service of its own
/// name, so a Service in front of it takes another.
pub async fn cluster_ip_service_of(ns: &TestNamespace, name: &str, app: &str) -> SocketAddr {
    let api: Api<Service> = ns.api();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("a valid Service");
    let created = api
        .create(&PostParams::default(), &svc)
        .await
        .expect("create the Service");
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    format!("{ip}:80").parse().expect("an address")
}

/// What one request got: `Ok(body)` for a 200, else why it failed.
pub fn request(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| kind(&e))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: testapp\r\n\r\n")
        .map_err(|e| kind(&e))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| kind(&e))?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200") =>
        {
            Ok(body.to_string())
        }
        Some((head, _)) => Err(format!("status {}", head.split(' ').nth(1).unwrap_or("?"))),
        None if reply.is_empty() => Err("empty reply".into()),
        None => Err("truncated reply".into()),
    }
}

fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

/// Waits until every request of a short burst to `addr` is answered by `version`.
pub async fn wait_serving(addr: SocketAddr, version: &str) {
    let want = format!("version={version}");
    wait_for(
        &format!("{addr} to answer with {want}"),
        POD_TIMEOUT,
        || {
            let want = want.clone();
            async move {
                let answers: Vec<_> = (0..10)
                    .map(|_| request(addr, Duration::from_secs(2)))
                    .collect();
                answers
                    .iter()
                    .all(|a| a.as_ref().is_ok_and(|b| b.contains(&want)))
                    .then_some(())
                    .ok_or(format!("{answers:?}"))
            }
        },
    )
    .await
}

/// Requests sent and how they ended.
#[derive(Debug, Default, Clone)]
pub struct TrafficCount {
    pub sent: u64,
    pub failed: u64,
    /// Failures by what went wrong (ConnectionRefused, TimedOut, status 503, ...).
    pub failures: BTreeMap<String, u64>,
    /// Answers by the `version=` of their body.
    pub versions: BTreeMap<String, u64>,
    /// How long each answered request took, connect to last byte, in the order they ended.
    pub latencies: Vec<Duration>,
    /// When each failed request was sent, and why it failed, in the order they ended: to
    /// be read beside the operator's log and the pods' conditions.
    pub failed_at: Vec<(jiff::Timestamp, String)>,
}

impl TrafficCount {
    /// The `q`-quantile (0 to 1) of the answered requests' durations, nearest rank; zero
    /// when none was answered.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

impl std::fmt::Display for TrafficCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} sent, {} failed {:?}, answered by version {:?}, latency p50 {:.1} ms p99 {:.1} ms",
            self.sent,
            self.failed,
            self.failures,
            self.versions,
            ms(self.p50()),
            ms(self.p99())
        )
    }
}

/// A client sending `per_second` requests to `addr`, each on a new connection, until
/// `stop`: the rate holds whatever a slow request does, since each runs on its own thread.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<TrafficCount>>,
    ticker: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Traffic {
    pub fn start(addr: SocketAddr, per_second: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(TrafficCount::default()));
        let every = Duration::from_secs(1) / per_second.max(1);
        let ticker = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut requests = Vec::new();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let counts = counts.clone();
                    requests.push(std::thread::spawn(move || {
                        let (began, sent_at) = (Instant::now(), jiff::Timestamp::now());
                        let outcome = request(addr, Duration::from_secs(2));
                        let took = began.elapsed();
                        let mut c = counts.lock().unwrap();
                        c.sent += 1;
                        match outcome {
                            Ok(body) => {
                                c.latencies.push(took);
                                let version = body
                                    .split_whitespace()
                                    .find_map(|w| w.strip_prefix("version="))
                                    .unwrap_or("?")
                                    .to_string();
                                *c.versions.entry(version).or_default() += 1;
                            }
                            Err(why) => {
                                c.failed += 1;
                                *c.failures.entry(why.clone()).or_default() += 1;
                                c.failed_at.push((sent_at, why));
                            }
                        }
                    }));
                    requests.retain(|r| !r.is_finished());
                    // Pacing of the client, not a wait on the system under test.
                    next += every;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
                requests
            })
        };
        Self {
            stop,
            counts,
            ticker: Some(ticker),
        }
    }

    /// The counts so far.
    pub fn so_far(&self) -> TrafficCount {
        self.counts.lock().unwrap().clone()
    }

    /// Stops sending, waits for the requests in flight, and returns the counts.
    pub fn stop(mut self) -> TrafficCount {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            for r in ticker.join().expect("the traffic client") {
                let _ = r.join();
            }
        }
        self.so_far()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
