//! Shared support for the integration tests: a client for the local control plane, a
//! namespace per test, waits on conditions, and the harness's faults.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use tokio::sync::OnceCell;

/// What the API server says about raw ResilientServices: creates, rejections, case tables;
/// imported by name by the admission tests.
pub mod admission;
mod leadership;
/// Scenario helpers (services, snapshots, pod watches) of the crash-safety and hostile-input
/// tests; imported by name, since the soak keeps helpers of the same names for itself.
pub mod scenario;
#[allow(unused_imports)] // each test binary uses its own part
pub use leadership::*;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The admin kubeconfig of the local control plane (`make cluster`).
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("PERENNIAL_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("e2e/.cluster/kubeconfig"))
}

/// A client for the local control plane; fails with a hint when it is not running.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Start the local control plane with `make cluster`.",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the harness kubeconfig is valid");
    Client::try_from(config).expect("a client can be built")
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last reason it
/// gave, so that a failure says what was seen rather than only that time ran out.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A namespace of a test's own, deleted when the test ends (also when it fails).
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([("perennial.dev/test".to_string(), prefix.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        let name = created
            .metadata
            .name
            .expect("the server names the namespace");
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl is synchronous and needs no runtime.
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// The kubectl the harness built, matching the API server's version.
pub fn kubectl_bin() -> PathBuf {
    let dirs = harness(&["--print-dirs"], "build");
    let kube_dir = dirs
        .lines()
        .find(|l| l.contains("/kubernetes-"))
        .expect("build --print-dirs lists the Kubernetes binaries");
    Path::new(kube_dir.trim()).join("kubectl")
}

/// Runs kubectl against the local cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl with `stdin` as input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("write kubectl's input");
    let out = child.wait_with_output().expect("kubectl finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn harness(args: &[&str], script: &str) -> String {
    let out = Command::new(repo_root().join("e2e/cluster").join(script))
        .args(args)
        .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
        .output()
        .unwrap_or_else(|e| panic!("run e2e/cluster/{script}: {e}"));
    assert!(
        out.status.success(),
        "e2e/cluster/{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cluster_dir() -> PathBuf {
    kubeconfig_path()
        .parent()
        .expect("the kubeconfig lives in the cluster's state directory")
        .to_path_buf()
}

/// Injects a fault with the harness (`e2e/cluster/fault WHAT [NODE]`).
pub fn fault(what: &str, node: Option<&str>) {
    let mut args = vec![what];
    args.extend(node);
    harness(&args, "fault");
}

/// A fake node of a test's own, tainted so that no other test's pods land on it; deleted
/// when the guard drops. Faults on it disturb no other test.
pub struct TestNode {
    pub name: String,
}

impl TestNode {
    pub async fn new(client: &Client, prefix: &str, zone: &str) -> Self {
        let api: Api<Node> = Api::all(client.clone());
        let name = format!("{prefix}-{}", unique_suffix());
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "topology.kubernetes.io/zone": zone,
                    "type": "kwok",
                    "perennial.dev/test-node": "true"
                }
            },
            "spec": {"taints": [{"key": "perennial.dev/test-node", "value": prefix, "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"}
            }
        }))
        .expect("a valid node");
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

static CRD_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Installs the ResilientService CRD generated from the Rust types, once per test binary,
/// and waits until it is served.
pub async fn install_crd(client: &Client) {
    CRD_INSTALLED
        .get_or_init(|| async {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let crd = perennial::api::ResilientService::crd();
            let name = crd.metadata.name.clone().expect("the CRD has a name");
            api.patch(
                &name,
                &PatchParams::apply("perennial-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("apply the CRD");
            wait_for("the CRD to be established", Duration::from_secs(30), || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established
                        .then_some(())
                        .ok_or("not established".to_string())
                }
            })
            .await;
        })
        .await;
}

/// Deletes an object and ignores "not found".
pub async fn delete_quietly<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// A short suffix unique enough for names made by concurrent tests and test runs.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = nanos ^ std::process::id().rotate_left(16) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:06x}", n & 0xff_ffff)
}

/// The kubeconfig of the operator's own identity (user perennial-operator).
pub fn operator_kubeconfig() -> PathBuf {
    cluster_dir().join("operator.kubeconfig")
}

/// An operator process watching one namespace, stopped when the guard drops. Its log is
/// kept in target/operator-logs/ for a failing test to be read.
pub struct Operator {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Operator {
    /// One operator for `namespace`, alone: no leader election, metrics on a free port.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(
            namespace,
            &["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"],
        )
    }

    /// An operator for `namespace` with extra arguments.
    pub fn start_with(namespace: &str, extra: &[&str]) -> Self {
        let dir = repo_root().join("target/operator-logs");
        std::fs::create_dir_all(&dir).expect("create the operator log directory");
        let log = dir.join(format!("{namespace}-{}.log", unique_suffix()));
        let out = std::fs::File::create(&log).expect("create the operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_perennial"))
            .args(["run", "--namespaces", namespace])
            .args(extra)
            .arg("--kubeconfig")
            .arg(operator_kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("PERENNIAL_TEST_LOG")
                    .unwrap_or_else(|_| "info,perennial=debug".into()),
            )
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes (create, update, patch, delete) the operator's identity made in `namespace`,
/// from the API server's audit log: counted by the server, not by the operator.
pub fn operator_writes(namespace: &str) -> Vec<String> {
    operator_write_entries(namespace)
        .iter()
        .map(describe_write)
        .collect()
}

/// The audit entries (completed) of writes the operator's identity made in `namespace`.
pub fn operator_write_entries(namespace: &str) -> Vec<serde_json::Value> {
    let path = cluster_dir().join("logs/audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|line| line.contains("perennial-operator") && line.contains(namespace))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["user"]["username"] == "perennial-operator")
        .filter(|e| {
            let verb = e["verb"].as_str().unwrap_or_default();
            ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
        })
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect()
}

/// `<verb> <resource> <name>` of an audit entry.
pub fn describe_write(e: &serde_json::Value) -> String {
    format!(
        "{} {} {}",
        e["verb"].as_str().unwrap_or_default(),
        e["objectRef"]["resource"].as_str().unwrap_or_default(),
        e["objectRef"]["name"].as_str().unwrap_or_default()
    )
}

/// The Helm the harness built, matching the cluster's version.
pub fn helm_bin() -> PathBuf {
    let dirs = harness(&["--print-dirs"], "build");
    let helm_dir = dirs
        .lines()
        .find(|l| l.contains("/helm-"))
        .expect("build --print-dirs lists Helm");
    Path::new(helm_dir.trim()).join("helm")
}

/// Runs helm against the local cluster as the admin; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a kubeconfig that authenticates as the harness's admin but acts as `user`
/// (the kubeconfig's `as:` impersonation), readable by its owner only.
pub fn write_impersonating_kubeconfig(user: &str, path: &Path) {
    let mut kubeconfig =
        Kubeconfig::read_from(kubeconfig_path()).expect("read the admin kubeconfig");
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_string());
        }
    }
    let text = serde_yaml::to_string(&kubeconfig).expect("serialize the kubeconfig");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the kubeconfig's directory");
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).expect("create the kubeconfig");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write the kubeconfig");
}

impl Operator {
    /// An operator for `namespace` that connects with `kubeconfig` rather than the
    /// operator's own identity, with extra arguments.
    pub fn start_with_kubeconfig(namespace: &str, kubeconfig: &Path, extra: &[&str]) -> Self {
        let dir = repo_root().join("target/operator-logs");
        std::fs::create_dir_all(&dir).expect("create the operator log directory");
        let log = dir.join(format!("{namespace}-{}.log", unique_suffix()));
        let out = std::fs::File::create(&log).expect("create the operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_perennial"))
            .args(["run", "--namespaces", namespace])
            .args(extra)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("PERENNIAL_TEST_LOG")
                    .unwrap_or_else(|_| "info,perennial=debug".into()),
            )
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }
}

/// Injects a fault with the harness (`e2e/cluster/fault WHAT [NODE]`) like `fault`, but
/// returns what the harness said instead of panicking: for a soak that records a fault it
/// could not inject (the API server may be restarting) and keeps going.
pub fn try_fault(what: &str, node: Option<&str>) -> Result<String, String> {
    let mut args = vec![what];
    args.extend(node);
    let out = Command::new(repo_root().join("e2e/cluster/fault"))
        .args(&args)
        .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
        .output()
        .map_err(|e| format!("run e2e/cluster/fault: {e}"))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(said)
    } else {
        Err(format!("e2e/cluster/fault {args:?} failed: {said}"))
    }
}

/// The local control plane's processes, as `e2e/cluster/lib.sh` names them.
pub const CONTROL_PLANE: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// Starts `component` of the local control plane again from its saved command line when it
/// no longer runs, as a kubelet restarts a static pod; returns whether it had to. Some exit
/// on purpose and rely on being restarted: kube-scheduler exits when it finds its cache
/// corrupted, which an API server restart can bring about.
pub fn relaunch_if_stopped(component: &str) -> Result<bool, String> {
    let script = r#". "$0" || exit 2
[ -f "$STATE_DIR/pids/$1.cmd" ] || { echo "$1 was never started by e2e/cluster/up" >&2; exit 2; }
if component_pid "$1" >/dev/null; then echo running; else launch "$1" && echo relaunched; fi"#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(repo_root().join("e2e/cluster/lib.sh"))
        .arg(component)
        .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run bash: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "relaunched")
}
