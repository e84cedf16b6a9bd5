//! Shared support for the integration tests: a client for the local control plane, a
//! namespace per test, and one module a concern.
//!
//! The infrastructure (waits, kubectl and Helm, the harness's faults, the operator process,
//! the audit log, leader election, test nodes) is exported here as a whole. The helpers
//! about pods, services, nodes, watches, the chart and scenarios are imported by module
//! (`use support::pods::*`), since the soak keeps helpers of the same names for itself.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// What the API server says about raw ResilientServices: creates, rejections, case tables;
/// imported by name by the admission tests.
pub mod admission;
mod audit;
mod harness;
mod kubectl;
mod leadership;
mod operator;
mod wait;

pub mod chart;
pub mod fault_proxy;
pub mod nodes;
pub mod pods;
pub mod real;
/// Scenario helpers (snapshots, pod watches) of the crash-safety and hostile-input tests.
pub mod scenario;
pub mod service;
pub mod terms;
pub mod watch;

#[allow(unused_imports)] // each test binary uses its own part
pub use audit::*;
#[allow(unused_imports)]
pub use harness::*;
#[allow(unused_imports)]
pub use kubectl::*;
#[allow(unused_imports)]
pub use leadership::*;
#[allow(unused_imports)]
pub use nodes::TestNode;
#[allow(unused_imports)]
pub use operator::*;
#[allow(unused_imports)]
pub use wait::*;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The admin kubeconfig of the local control plane (`make cluster`).
/// Absolute, also when PERENNIAL_KUBECONFIG is relative: the cluster's scripts and the
/// kubelets it starts are handed directories made from it, and a kubelet cannot find the
/// mount point of a relative one.
pub fn kubeconfig_path() -> PathBuf {
    let path = std::env::var_os("PERENNIAL_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("e2e/.cluster/kubeconfig"));
    std::path::absolute(&path).unwrap_or(path)
}

/// A client for the local control plane; fails with a hint when it is not running.
pub async fn client() -> Client {
    Client::try_from(config().await).expect("a client can be built")
}

/// The admin config of the local control plane; fails with a hint when it is not running.
pub async fn config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Start the local control plane with `make cluster`.",
            path.display()
        )
    });
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the harness kubeconfig is valid")
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

static CRD_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Installs the ResilientService CRD generated from the Rust types (stamped, as `make crds`
/// writes it, so that the operator's start-up check passes), once per test binary, and
/// waits until it is served.
pub async fn install_crd(client: &Client) {
    CRD_INSTALLED
        .get_or_init(|| async {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let mut crd = perennial::api::crd();
            let name = crd.metadata.name.clone().expect("the CRD has a name");
            // The stamp is applied by a field manager of its own. A test binary built from a
            // tree without the stamp applies the CRD as perennial-tests too; had that manager
            // owned the stamp, such an apply on the same cluster would strip it, and every
            // operator started after it would wait for its CRD.
            let stamp = crd.metadata.annotations.take();
            api.patch(
                &name,
                &PatchParams::apply("perennial-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("apply the CRD");
            let stamp = serde_json::json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": name, "annotations": stamp},
            });
            api.patch(
                &name,
                &PatchParams::apply("perennial-tests-stamp").force(),
                &Patch::Apply(&stamp),
            )
            .await
            .expect("stamp the CRD");
            wait_object(&api, &name, "established", Duration::from_secs(30), |crd| {
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                established
                    .then_some(())
                    .ok_or("not established".to_string())
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
