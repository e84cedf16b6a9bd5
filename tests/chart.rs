//! The Helm chart (charts/perennial) on the local control plane: strict lint, a server-side
//! dry run of everything it renders, RBAC without wildcards or Secrets and with exactly the
//! rules the operator uses, an install under the restricted Pod Security Standard, and the
//! proof that its RBAC is enough: the operator, acting as the chart's ServiceAccount,
//! creates, scales, rolls out, rolls back and repairs services without one 403.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use perennial::api::{ResilientService, ANNOTATION_BAD_REVISION, LABEL_SERVICE, LABEL_SLOT};
use serde::Deserialize;
use serde_json::{json, Value};
use support::*;

/// The release name every test installs (each in a namespace of its own).
const RELEASE: &str = "perennial";
/// The leader Lease the chart names for that release.
const LEASE: &str = "perennial-leader";
/// The Kubernetes version `helm template` renders for (the local control plane's).
const KUBE_VERSION: &str = "1.36.0";
/// Scheduling, starting and rolling pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Node loss: the operator's threshold (10 s), fencing, a rebuilt claim and a new pod.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
const TEST_NODE_TAINT: &str = "perennial.dev/test-node";
const GROUP_LABEL: &str = "perennial.dev/test-group";
const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";

/// The chart's directory.
fn chart() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| repo_root().join("charts/perennial").display().to_string())
}

/// Writes `values` (JSON is YAML) to a file of its own for `helm -f`.
fn values_file(values: &Value) -> PathBuf {
    let dir = repo_root().join("target/chart-values");
    std::fs::create_dir_all(&dir).expect("create the values directory");
    let path = dir.join(format!("values-{}.json", unique_suffix()));
    std::fs::write(&path, values.to_string()).expect("write the values");
    path
}

/// What the chart renders for a release in `namespace` with `values`.
fn render(namespace: &str, values: &Value, include_crds: bool) -> String {
    let file = values_file(values);
    let file = file.display().to_string();
    let mut args = vec![
        "template",
        RELEASE,
        chart(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        &file,
    ];
    if include_crds {
        args.push("--include-crds");
    }
    let (ok, out, err) = helm(&args);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "helm template failed: {err}");
    out
}

/// The documents of a multi-document YAML stream, empty ones dropped.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("the chart renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// An installed release, uninstalled when the guard drops, also when a test fails: its
/// ClusterRole and its Roles in other namespaces outlive the release namespace.
struct Release {
    namespace: String,
    installed: bool,
}

impl Release {
    /// `helm install` into `namespace` (which exists) with `values`; returns the release and
    /// helm's stderr, where the API server's warnings land.
    fn install(namespace: &str, values: &Value) -> (Self, String) {
        let file = values_file(values);
        let file = file.display().to_string();
        let (ok, out, err) = helm(&[
            "install",
            RELEASE,
            chart(),
            "--namespace",
            namespace,
            "-f",
            &file,
        ]);
        let _ = std::fs::remove_file(&file);
        assert!(ok, "helm install failed: {err}\n{out}");
        (
            Self {
                namespace: namespace.to_string(),
                installed: true,
            },
            err,
        )
    }

    fn uninstall(&mut self) {
        let (ok, out, err) = helm(&["uninstall", RELEASE, "--namespace", &self.namespace]);
        assert!(ok, "helm uninstall failed: {err}\n{out}");
        self.installed = false;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = helm(&["uninstall", RELEASE, "--namespace", &self.namespace]);
        }
    }
}

/// A file removed when the guard drops (the impersonating kubeconfig holds a token).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ------------------------------------------------------------------------------------------
// Lint, dry run, RBAC content

#[test]
fn helm_lint_strict_passes_without_warnings_and_the_schema_rejects_unknown_values() {
    let chart = chart();
    let variants: [&[&str]; 3] = [
        &[],
        &[
            "--set",
            "watchNamespaces={team-a,team-b}",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "rbac.nodeFencing=false",
        ],
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
        ],
    ];
    for extra in variants {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(extra);
        let (ok, out, err) = helm(&args);
        assert!(ok, "helm lint {extra:?} failed:\n{out}{err}");
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {extra:?} is not clean:\n{out}"
        );
    }
    for (bad, key) in [
        ("operator.logformat=json", "logformat"),
        ("operator.logFormat=yaml", "logFormat"),
        ("replicaCount=-1", "replicaCount"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ] {
        let (ok, out, err) = helm(&["lint", "--strict", chart, "--set", bad]);
        assert!(
            !ok && format!("{out}{err}").contains(key),
            "values.schema.json lets --set {bad} through:\n{out}{err}"
        );
    }
}

/// The version `require`d of `module` in the harness's Helm module (e2e/cluster/go/helm).
fn helm_module_version(module: &str) -> String {
    let go_mod = std::fs::read_to_string(repo_root().join("e2e/cluster/go/helm/go.mod"))
        .expect("read the Helm module's go.mod");
    go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| l.strip_prefix(&format!("{module} ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {module} in the Helm module's go.mod"))
        .to_string()
}

#[test]
fn the_harness_helm_is_a_release_build_and_renders_the_chart_without_a_kube_version_flag() {
    let (ok, version, err) = helm(&[
        "version",
        "--template",
        "{{ .Version }} {{ .GitTreeState }}",
    ]);
    assert!(ok, "helm version failed: {err}");
    assert_eq!(
        version.trim(),
        format!("{} clean", helm_module_version("helm.sh/helm/v3"))
    );

    // As Helm's release build: the Kubernetes version it assumes without a cluster is that
    // of the client-go it is built with (v0.X is Kubernetes 1.X), not its fallback v1.20.
    let client_go = helm_module_version("k8s.io/client-go");
    let minor = client_go
        .trim_start_matches("v0.")
        .split('.')
        .next()
        .unwrap();
    let probe = repo_root().join(format!("target/chart-probe-{}", unique_suffix()));
    std::fs::create_dir_all(probe.join("templates")).unwrap();
    std::fs::write(
        probe.join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        probe.join("templates/kube-version.yaml"),
        "kubeVersion: {{ .Capabilities.KubeVersion.Version }}\n",
    )
    .unwrap();
    let (ok, out, err) = helm(&["template", "probe", &probe.display().to_string()]);
    let _ = std::fs::remove_dir_all(&probe);
    assert!(ok, "helm template of the probe chart failed: {err}");
    assert!(
        out.contains(&format!("kubeVersion: v1.{minor}.0")),
        "helm assumes another Kubernetes than client-go {client_go}:\n{out}"
    );

    // The chart's own kubeVersion constraint (>= 1.30) is met without --kube-version.
    let (ok, out, err) = helm(&["template", RELEASE, chart()]);
    assert!(ok, "helm template {} failed: {err}", chart());
    assert!(out.contains("kind: Deployment"), "{out}");
}

#[tokio::test]
async fn everything_the_chart_renders_is_accepted_by_the_api_server_in_a_server_side_dry_run() {
    let release_ns = TestNamespace::new("chart-dry").await;
    let watched = TestNamespace::new("chart-dry-watched").await;
    for values in [
        json!({}),
        json!({"watchNamespaces": [watched.name], "rbac": {"nodeFencing": false}}),
    ] {
        let manifest = render(&release_ns.name, &values, true);
        let objects = documents(&manifest);
        let (ok, out, err) = kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                // The CRD is already applied by other managers; a dry run changes nothing.
                "--force-conflicts",
                "--field-manager",
                "perennial-chart-test",
                "-f",
                "-",
            ],
            &manifest,
        );
        assert!(
            ok,
            "the API server rejected the chart rendered with {values}: {err}\n{out}"
        );
        let accepted = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            objects.len(),
            "every rendered object is accepted with {values}:\n{out}"
        );
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
        }
    }
}

/// One permission: where it holds ("cluster" or a namespace), API group, resource, verb
/// and, when it is limited to one object, its name.
type Grant = (String, String, String, String, Option<String>);

/// Every permission the rendered Roles and ClusterRoles grant, after checking each rule
/// for wildcards, Secrets and non-resource URLs.
fn granted(objects: &[Value]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let scope = match kind {
            "ClusterRole" => "cluster".to_string(),
            "Role" => object["metadata"]["namespace"]
                .as_str()
                .expect("a Role has a namespace")
                .to_string(),
            _ => continue,
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            object.get("aggregationRule").is_none(),
            "{kind} {name} aggregates other roles"
        );
        for rule in object["rules"].as_array().expect("rules").iter() {
            let list = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().expect("strings").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (groups, resources, verbs, names) = (
                list("apiGroups"),
                list("resources"),
                list("verbs"),
                list("resourceNames"),
            );
            for field in [&groups, &resources, &verbs, &names] {
                assert!(
                    !field.iter().any(|v| v.contains('*')),
                    "{kind} {name} has a wildcard: {rule}"
                );
            }
            assert!(
                !resources
                    .iter()
                    .any(|r| r == "secrets" || r.starts_with("secrets/")),
                "{kind} {name} grants access to Secrets: {rule}"
            );
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{kind} {name} grants non-resource URLs: {rule}"
            );
            assert!(
                !groups.is_empty() && !resources.is_empty() && !verbs.is_empty(),
                "{kind} {name} has an incomplete rule: {rule}"
            );
            let names: Vec<Option<String>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for g in &groups {
                for r in &resources {
                    for v in &verbs {
                        for n in &names {
                            grants.insert((
                                scope.clone(),
                                g.clone(),
                                r.clone(),
                                v.clone(),
                                n.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    grants
}

/// Grants of (group, resource, verbs) in `scope`.
fn grants(scope: &str, table: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    table
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs.iter().map(move |v| {
                (
                    scope.to_string(),
                    g.to_string(),
                    r.to_string(),
                    v.to_string(),
                    None,
                )
            })
        })
        .collect()
}

/// What the operator does in a namespace it watches (src/controller.rs reads through
/// watches; src/act writes).
const NAMESPACED: &[(&str, &str, &[&str])] = &[
    ("perennial.dev", "resilientservices", &["list", "watch"]),
    ("perennial.dev", "resilientservices/status", &["patch"]),
    ("perennial.dev", "resilientservices/finalizers", &["update"]),
    ("", "pods", &["list", "watch", "create", "delete"]),
    (
        "",
        "persistentvolumeclaims",
        &["list", "watch", "create", "delete"],
    ),
    ("", "services", &["list", "watch", "create", "patch"]),
    (
        "apps",
        "controllerrevisions",
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "policy",
        "poddisruptionbudgets",
        &["list", "watch", "create", "patch"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// What the operator reads, and fences, cluster-wide.
const CLUSTER: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["list", "watch"]),
    ("", "persistentvolumes", &["list", "watch"]),
];
const FENCING: &[(&str, &str, &[&str])] = &[("", "nodes", &["get", "patch"])];

/// The start-up check reads the ResilientService CRD, and no other.
fn crd_check_grant() -> Grant {
    (
        "cluster".into(),
        "apiextensions.k8s.io".into(),
        "customresourcedefinitions".into(),
        "get".into(),
        Some("resilientservices.perennial.dev".into()),
    )
}

/// The node heartbeats in kube-node-lease, and the leader Lease in the release namespace.
fn lease_grants(release_ns: &str) -> BTreeSet<Grant> {
    let mut out = grants(
        "kube-node-lease",
        &[("coordination.k8s.io", "leases", &["list", "watch"])],
    );
    out.extend(grants(
        release_ns,
        &[("coordination.k8s.io", "leases", &["create"])],
    ));
    for verb in ["get", "update"] {
        out.insert((
            release_ns.to_string(),
            "coordination.k8s.io".into(),
            "leases".into(),
            verb.into(),
            Some(LEASE.into()),
        ));
    }
    out
}

#[test]
fn rendered_rbac_has_no_wildcard_and_no_secret_access_and_exactly_the_rules_the_operator_uses() {
    let ns = "perennial-system";
    let mut cluster_wide = lease_grants(ns);
    cluster_wide.extend(grants("cluster", CLUSTER));
    cluster_wide.extend(grants("cluster", FENCING));
    cluster_wide.extend(grants("cluster", NAMESPACED));

    cluster_wide.insert(crd_check_grant());

    let mut namespaced = lease_grants(ns);
    namespaced.extend(grants("cluster", CLUSTER));
    namespaced.insert(crd_check_grant());
    namespaced.extend(grants("team-a", NAMESPACED));
    namespaced.extend(grants("team-b", NAMESPACED));

    let cases = [
        ("cluster-wide", json!({}), cluster_wide),
        (
            "watchNamespaces without node fencing",
            json!({"watchNamespaces": ["team-a", "team-b"], "rbac": {"nodeFencing": false}}),
            namespaced,
        ),
    ];
    for (what, values, want) in cases {
        let objects = documents(&render(ns, &values, false));
        let have = granted(&objects);
        let extra: Vec<_> = have.difference(&want).collect();
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{what}: RBAC differs from the operator's needs; granted but not needed: {extra:?}; needed but not granted: {missing:?}"
        );

        // Every binding binds the chart's own ServiceAccount to one of the chart's roles,
        // never to a built-in role such as cluster-admin.
        let roles: BTreeSet<(String, String)> = objects
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("Role" | "ClusterRole")))
            .map(|o| {
                (
                    o["kind"].as_str().unwrap().to_string(),
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let bindings: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some("RoleBinding" | "ClusterRoleBinding")
                )
            })
            .collect();
        assert!(!bindings.is_empty());
        for b in bindings {
            let role_ref = (
                b["roleRef"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                b["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            assert!(
                roles.contains(&role_ref),
                "{what}: a binding to a role the chart does not define: {b}"
            );
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": ns}]),
                "{what}: {b}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Install under the restricted Pod Security Standard

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn helm_install_into_a_restricted_namespace_admits_two_operator_pods_that_become_ready() {
    let ns = TestNamespace::new("chart-install").await;
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/warn-version": "latest"
            }}})),
        )
        .await
        .expect("label the namespace restricted");
    install_crd(&ns.client).await;

    let (mut release, warnings) = Release::install(&ns.name, &json!({}));
    assert!(
        !warnings.contains("PodSecurity"),
        "the Deployment would violate the restricted standard: {warnings}"
    );

    let deployments: Api<Deployment> = ns.api();
    wait_for("2 available operator replicas", TIMEOUT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(RELEASE).await.map_err(|e| e.to_string())?;
            let current =
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation;
            let s = d.status.unwrap_or_default();
            let done = current
                && s.ready_replicas == Some(2)
                && s.available_replicas == Some(2)
                && s.updated_replicas == Some(2);
            done.then_some(()).ok_or(format!(
                "ready={:?} available={:?} updated={:?} conditions={:?}",
                s.ready_replicas,
                s.available_replicas,
                s.updated_replicas,
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .map(|c| format!("{}={} {:?}", c.type_, c.status, c.message))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;

    let pods: Api<Pod> = ns.api();
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let operator_pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list the operator pods");
    assert_eq!(operator_pods.items.len(), 2);
    for pod in &operator_pods.items {
        assert!(ready(pod), "{} is Ready", pod.name_any());
        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap()[..5],
            [
                "run",
                "--metrics-addr",
                "0.0.0.0:8080",
                "--log-format",
                "json"
            ]
        );
        let env: BTreeMap<String, String> = c
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                let path = e
                    .value_from
                    .as_ref()?
                    .field_ref
                    .as_ref()?
                    .field_path
                    .clone();
                Some((e.name.clone(), path))
            })
            .collect();
        assert_eq!(env["POD_NAME"], "metadata.name");
        assert_eq!(env["POD_NAMESPACE"], "metadata.namespace");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
    }
    let nodes: BTreeSet<String> = operator_pods
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    println!("operator pods on nodes {nodes:?}");

    let budgets: Api<PodDisruptionBudget> = ns.api();
    let pdb = budgets.get(RELEASE).await.expect("the operator's PDB");
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let services: Api<Service> = ns.api();
    let metrics = services
        .get(&format!("{RELEASE}-metrics"))
        .await
        .expect("the metrics Service");
    assert_eq!(metrics.spec.unwrap().ports.unwrap()[0].port, 8080);

    release.uninstall();
    let cluster_roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let cluster_role = format!("{}-{RELEASE}", ns.name);
    wait_for(
        "the release's objects to be gone after helm uninstall",
        TIMEOUT,
        || {
            let deployments = deployments.clone();
            let accounts: Api<ServiceAccount> = ns.api();
            let cluster_roles = cluster_roles.clone();
            let cluster_role = cluster_role.clone();
            async move {
                let d = deployments
                    .get_opt(RELEASE)
                    .await
                    .map_err(|e| e.to_string())?;
                let sa = accounts.get_opt(RELEASE).await.map_err(|e| e.to_string())?;
                let cr = cluster_roles
                    .get_opt(&cluster_role)
                    .await
                    .map_err(|e| e.to_string())?;
                (d.is_none() && sa.is_none() && cr.is_none())
                    .then_some(())
                    .ok_or(format!(
                        "deployment={} serviceaccount={} clusterrole={}",
                        d.is_some(),
                        sa.is_some(),
                        cr.is_some()
                    ))
            }
        },
    )
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    assert!(
        crds.get_opt("resilientservices.perennial.dev")
            .await
            .unwrap()
            .is_some(),
        "helm uninstall leaves the CRD (and every ResilientService) in place"
    );
}

// ------------------------------------------------------------------------------------------
// The RBAC proof

/// Two fake nodes of the test's own, each with two local volumes only it can use.
struct Nodes {
    prefix: String,
    group: String,
    nodes: Vec<TestNode>,
    volumes: Vec<String>,
}

impl Nodes {
    async fn new(client: &Client, prefix: &str) -> Self {
        let group = format!("{prefix}-{}", unique_suffix());
        let node_api: Api<Node> = Api::all(client.clone());
        let pv_api: Api<PersistentVolume> = Api::all(client.clone());
        let mut this = Self {
            prefix: prefix.to_string(),
            group: group.clone(),
            nodes: Vec::new(),
            volumes: Vec::new(),
        };
        for zone in ["zone-a", "zone-b"] {
            let node = TestNode::new(client, prefix, zone).await;
            node_api
                .patch(
                    &node.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {GROUP_LABEL: &group}}})),
                )
                .await
                .expect("label the test node with its group");
            for i in 0..2 {
                let name = format!("{}-pv-{i}", node.name);
                let pv: PersistentVolume = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "local",
                        "local": {"path": format!("/var/lib/local-volumes/{i}")},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node.name]}
                        ]}]}}
                    }
                }))
                .expect("a valid volume");
                pv_api
                    .create(&PostParams::default(), &pv)
                    .await
                    .expect("create a local volume");
                this.volumes.push(name);
            }
            this.nodes.push(node);
        }
        for node in &this.nodes {
            wait_for(&format!("node {} to be Ready", node.name), TIMEOUT, || {
                let api = node_api.clone();
                async move {
                    let n = api.get(&node.name).await.map_err(|e| e.to_string())?;
                    node_condition(&n, "Ready")
                        .filter(|s| s == "True")
                        .ok_or("not Ready".to_string())
                }
            })
            .await;
        }
        this
    }

    /// Pod spec fields that put a pod on these nodes and nowhere else.
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

fn node_condition(node: &Node, type_: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn service(name: &str, spec: Value) -> ResilientService {
    let mut svc = json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": spec,
    });
    svc["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
    serde_json::from_value(svc).expect("a valid ResilientService")
}

fn status(svc: &ResilientService) -> perennial::api::ResilientServiceStatus {
    svc.status.clone().unwrap_or_default()
}

fn condition(svc: &ResilientService, type_: &str) -> Option<String> {
    status(svc)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Waits until `check` accepts the service.
async fn wait_svc<T>(
    api: &Api<ResilientService>,
    name: &str,
    what: &str,
    check: impl Fn(&ResilientService) -> Result<T, String>,
) -> T {
    let check = &check;
    wait_for(&format!("{name}: {what}"), TIMEOUT, || {
        let api = api.clone();
        async move {
            let svc = api.get(name).await.map_err(|e| e.to_string())?;
            check(&svc)
        }
    })
    .await
}

/// Every replica of generation `generation` or later available at one revision, the
/// rollout (if any) complete; returns that revision.
async fn wait_settled(
    api: &Api<ResilientService>,
    name: &str,
    generation: i64,
    replicas: i32,
) -> String {
    wait_svc(
        api,
        name,
        &format!("{replicas} available replicas of generation {generation}, all current"),
        |svc| {
            let s = status(svc);
            let ok = s.observed_generation >= Some(generation)
                && s.observed_generation == svc.metadata.generation
                && s.replicas == replicas
                && s.available_replicas == replicas
                && s.updated_replicas == replicas
                && s.update_revision.is_some()
                && s.current_revision == s.update_revision;
            if ok {
                Ok(s.update_revision.unwrap_or_default())
            } else {
                Err(format!(
                    "generation={:?} replicas={} available={} updated={} current={:?} update={:?} reason={:?}",
                    s.observed_generation,
                    s.replicas,
                    s.available_replicas,
                    s.updated_replicas,
                    s.current_revision,
                    s.update_revision,
                    s.reason
                ))
            }
        },
    )
    .await
}

/// Merge-patches the spec; returns the new generation.
async fn patch_spec(api: &Api<ResilientService>, name: &str, spec: Value) -> i64 {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .expect("patch the ResilientService")
    .metadata
    .generation
    .expect("a generation")
}

/// A stateless service: created, scaled through the scale subresource, rolled out to a new
/// image (the old revision then deleted: revisionHistoryLimit 0), and rolled back from a
/// crash-looping template (the failed revision annotated).
async fn create_scale_roll_out_and_roll_back(ns: &TestNamespace) {
    let api: Api<ResilientService> = ns.api();
    let web = service(
        "web",
        json!({
            "replicas": 2,
            "revisionHistoryLimit": 0,
            "supervision": {"maxRestarts": 2},
            "update": {"rollback": "Automatic"},
            "template": {"spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}
        }),
    );
    let created = api
        .create(&PostParams::default(), &web)
        .await
        .expect("create web");
    let first = wait_settled(&api, "web", created.metadata.generation.unwrap(), 2).await;

    let scaled = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale web");
    let generation = scaled.metadata.generation.unwrap_or_default();
    wait_settled(&api, "web", generation, 3).await;

    let generation = patch_spec(
        &api,
        "web",
        json!({"template": {"spec": {"containers": [{"name": "app", "image": "example/app:2"}]}}}),
    )
    .await;
    let second = wait_settled(&api, "web", generation, 3).await;
    assert_ne!(first, second, "a new template is a new revision");
    let revisions: Api<ControllerRevision> = ns.api();
    wait_for(
        &format!("revision {first} to be deleted (revisionHistoryLimit 0)"),
        TIMEOUT,
        || {
            let revisions = revisions.clone();
            let first = first.clone();
            async move {
                match revisions.get_opt(&first).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err("still there".into()),
                }
            }
        },
    )
    .await;

    let generation = patch_spec(
        &api,
        "web",
        json!({
            "revisionHistoryLimit": 10,
            "template": {"metadata": {"labels": {"app": "web", CHAOS_LABEL: "crash-loop"}}}
        }),
    )
    .await;
    let bad = wait_svc(
        &api,
        "web",
        "the crash-looping revision to be rolled back",
        |svc| {
            let s = status(svc);
            let rolled_back = condition(svc, "RolledBack");
            let ok = s.observed_generation >= Some(generation)
                && rolled_back.as_deref() == Some("True")
                && s.current_revision.as_deref() == Some(second.as_str())
                && s.available_replicas == 3;
            if ok {
                s.update_revision.clone().ok_or("no update revision".into())
            } else {
                Err(format!(
                    "RolledBack={rolled_back:?} current={:?} update={:?} available={} reason={:?}",
                    s.current_revision, s.update_revision, s.available_replicas, s.reason
                ))
            }
        },
    )
    .await;
    wait_for(
        &format!("revision {bad} to be marked failed"),
        TIMEOUT,
        || {
            let revisions = revisions.clone();
            let bad = bad.clone();
            async move {
                let r = revisions.get(&bad).await.map_err(|e| e.to_string())?;
                r.annotations()
                    .contains_key(ANNOTATION_BAD_REVISION)
                    .then_some(())
                    .ok_or(format!("annotations {:?}", r.annotations()))
            }
        },
    )
    .await;
}

/// A replica with a local volume on a node that is lost: the operator taints the node
/// out-of-service, replaces the claim with a new one and runs the replica on the other node.
async fn repair_after_a_node_loss(ns: &TestNamespace, nodes: &Nodes) {
    let api: Api<ResilientService> = ns.api();
    let mut pod_spec = json!({"containers": [{"name": "db", "image": "example/db:1"}]});
    for (k, v) in nodes.placement().as_object().unwrap() {
        pod_spec[k] = v.clone();
    }
    let db = service(
        "db",
        json!({
            "replicas": 1,
            "template": {"spec": pod_spec},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                    "resources": {"requests": {"storage": "1Gi"}}
                }
            }],
            "repair": {
                "nodeLostAfterSeconds": 10,
                "fencing": "TaintOutOfService",
                "storage": {"onVolumeLost": "Recreate"}
            }
        }),
    );
    let created = api
        .create(&PostParams::default(), &db)
        .await
        .expect("create db");
    wait_settled(&api, "db", created.metadata.generation.unwrap(), 1).await;

    let pods: Api<Pod> = ns.api();
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let selector = format!("{LABEL_SERVICE}=db,{LABEL_SLOT}=0");
    let ready_pod = || {
        let pods = pods.clone();
        let selector = selector.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
                .ok_or("no Ready pod in slot 0".to_string())
        }
    };
    let pod = wait_for("db's slot 0 Ready", TIMEOUT, &ready_pod).await;
    let lost = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let old_claim = claims
        .get("data-db-0")
        .await
        .expect("the claim of slot 0")
        .metadata
        .uid
        .unwrap();

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
                let tainted = n
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t.key == OUT_OF_SERVICE_TAINT);
                tainted.then_some(()).ok_or("not tainted".to_string())
            }
        },
    )
    .await;
    wait_for("a new claim data-db-0, bound", NODE_LOST_TIMEOUT, || {
        let claims = claims.clone();
        let old_claim = old_claim.clone();
        async move {
            let c = claims
                .get_opt("data-db-0")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no claim")?;
            let new = c.metadata.uid.as_deref() != Some(old_claim.as_str())
                && c.metadata.deletion_timestamp.is_none()
                && c.spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_ref())
                    .is_some();
            new.then_some(()).ok_or(format!(
                "uid {:?} (old {old_claim}) volume {:?}",
                c.metadata.uid,
                c.spec.and_then(|s| s.volume_name)
            ))
        }
    })
    .await;
    let replacement = wait_for("db's slot 0 Ready again", NODE_LOST_TIMEOUT, || async {
        let pod = ready_pod().await?;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        (node.as_deref() != Some(lost.as_str()))
            .then_some(pod)
            .ok_or(format!("still on {lost}"))
    })
    .await;
    assert_ne!(replacement.metadata.uid, pod.metadata.uid);
    wait_settled(&api, "db", created.metadata.generation.unwrap(), 1).await;
}

/// API requests the audit log recorded for `user` (acting through impersonation) in
/// `namespaces` or cluster-scoped: (verb, resource[/subresource], HTTP code).
fn audited_writes(user: &str, namespaces: &[&str]) -> Vec<(String, String, u64)> {
    let path = kubeconfig_path()
        .parent()
        .expect("the cluster directory")
        .join("logs/audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(user))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["impersonatedUser"]["username"] == user)
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| match e["objectRef"]["namespace"].as_str() {
            Some(ns) => namespaces.contains(&ns),
            None => true,
        })
        .map(|e| {
            let r = &e["objectRef"];
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or_default()),
                None => r["resource"].as_str().unwrap_or_default().to_string(),
            };
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                resource,
                e["responseStatus"]["code"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Lines of the operator log that tell of a request the API server refused.
fn refusals(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden") || l.contains("code: 403"))
        .map(str::to_string)
        .collect()
}

/// `kubectl auth can-i` with `kubeconfig`: "yes" or "no".
fn can_i(kubeconfig: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "can-i"])
        .args(args)
        .output()
        .expect("run kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Installs only the chart's ServiceAccount and RBAC (replicaCount 0), runs the operator
/// binary as that ServiceAccount (the admin's token with `as:` impersonation) and plays a
/// service's life through it: nothing may be forbidden.
async fn operator_with_only_the_charts_rbac_does_its_whole_job(prefix: &str, namespaced: bool) {
    let system = TestNamespace::new(&format!("{prefix}-sys")).await;
    let app = TestNamespace::new(&format!("{prefix}-app")).await;
    install_crd(&app.client).await;
    let mut values = json!({"replicaCount": 0});
    if namespaced {
        values["watchNamespaces"] = json!([app.name]);
    }
    let (mut release, _) = Release::install(&system.name, &values);

    let user = format!("system:serviceaccount:{}:{RELEASE}", system.name);
    let kubeconfig = TempFile(
        repo_root()
            .join("target/chart-kubeconfigs")
            .join(format!("{}.kubeconfig", system.name)),
    );
    write_impersonating_kubeconfig(&user, &kubeconfig.0);
    // The identity is the ServiceAccount's, not the admin's: no Secrets, not even Helm's.
    assert_eq!(
        can_i(&kubeconfig.0, &["list", "secrets", "-n", &app.name]),
        "no"
    );
    assert_eq!(
        can_i(&kubeconfig.0, &["get", "secrets", "-n", &system.name]),
        "no"
    );
    assert_eq!(
        can_i(&kubeconfig.0, &["create", "pods", "-n", &app.name]),
        "yes"
    );
    assert_eq!(
        can_i(&kubeconfig.0, &["list", "pods", "--all-namespaces"]),
        if namespaced { "no" } else { "yes" }
    );

    let nodes = Nodes::new(&app.client, prefix).await;
    let operator = Operator::start_with_kubeconfig(
        &app.name,
        &kubeconfig.0,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--leader-elect=true",
            "--lease-namespace",
            &system.name,
            "--lease-name",
            LEASE,
        ],
    );
    let leases: Api<Lease> = system.api();
    wait_for("the operator to hold the leader Lease", TIMEOUT, || {
        let leases = leases.clone();
        async move {
            let lease = leases.get_opt(LEASE).await.map_err(|e| e.to_string())?;
            lease
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty())
                .map(|_| ())
                .ok_or("no holder".to_string())
        }
    })
    .await;

    // The scenario, stopped at the first refusal so that a failure names it.
    tokio::select! {
        _ = async {
            tokio::join!(
                create_scale_roll_out_and_roll_back(&app),
                repair_after_a_node_loss(&app, &nodes)
            )
        } => {}
        refused = wait_for("a refusal in the operator log", Duration::from_secs(3600), || async {
            let lines = refusals(&operator.log);
            if lines.is_empty() { Err("none".to_string()) } else { Ok(lines) }
        }) => panic!(
            "the operator was refused with the chart's RBAC ({}):\n{}",
            operator.log.display(),
            refused.join("\n")
        ),
    }
    let refused = refusals(&operator.log);
    assert!(
        refused.is_empty(),
        "the operator was refused with the chart's RBAC ({}):\n{}",
        operator.log.display(),
        refused.join("\n")
    );
    let writes = audited_writes(&user, &[&app.name, &system.name]);
    let refused: Vec<_> = writes.iter().filter(|(_, _, code)| *code == 403).collect();
    assert!(
        refused.is_empty(),
        "the API server refused writes: {refused:?}"
    );
    let made: BTreeSet<(String, String)> = writes
        .iter()
        // kubectl auth can-i above made the access reviews, not the operator.
        .filter(|(_, resource, _)| resource != "selfsubjectaccessreviews")
        .map(|(verb, resource, _)| (verb.clone(), resource.clone()))
        .collect();
    println!("writes made as {user}: {made:?}");
    for (verb, resource) in [
        ("create", "leases"),
        ("update", "leases"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "persistentvolumeclaims"),
        ("delete", "persistentvolumeclaims"),
        ("patch", "services"),
        ("patch", "poddisruptionbudgets"),
        ("create", "controllerrevisions"),
        ("patch", "controllerrevisions"),
        ("delete", "controllerrevisions"),
        ("patch", "resilientservices/status"),
        ("patch", "nodes"),
        ("create", "events"),
    ] {
        assert!(
            made.contains(&(verb.to_string(), resource.to_string())),
            "the scenario made no {verb} on {resource} as {user}: {made:?}"
        );
    }
    drop(operator);
    release.uninstall();
}

#[tokio::test]
async fn with_only_the_charts_rbac_the_operator_reads_its_own_crd_and_no_other_and_passes_its_start_up_check(
) {
    let system = TestNamespace::new("chart-crd-check").await;
    install_crd(&system.client).await;
    let (mut release, _) = Release::install(&system.name, &json!({"replicaCount": 0}));
    let user = format!("system:serviceaccount:{}:{RELEASE}", system.name);
    let kubeconfig = TempFile(
        repo_root()
            .join("target/chart-kubeconfigs")
            .join(format!("{}.kubeconfig", system.name)),
    );
    write_impersonating_kubeconfig(&user, &kubeconfig.0);
    for (what, answer) in [
        (
            "customresourcedefinitions/resilientservices.perennial.dev",
            "yes",
        ),
        ("customresourcedefinitions/deployments.example.com", "no"),
        ("customresourcedefinitions", "no"),
    ] {
        assert_eq!(can_i(&kubeconfig.0, &["get", what]), answer, "get {what}");
    }
    assert_eq!(
        can_i(&kubeconfig.0, &["list", "customresourcedefinitions"]),
        "no"
    );

    // The check comes before leader election: holding the Lease means it passed.
    let operator = Operator::start_with_kubeconfig(
        &system.name,
        &kubeconfig.0,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            &system.name,
            "--lease-name",
            LEASE,
        ],
    );
    wait_for("the operator to hold the leader Lease", TIMEOUT, || async {
        holder(&system, LEASE).await.ok_or("no holder".to_string())
    })
    .await;
    let refused = refusals(&operator.log);
    assert!(refused.is_empty(), "refused: {}", refused.join("\n"));
    drop(operator);
    release.uninstall();
}

#[tokio::test]
async fn operator_with_only_the_charts_cluster_wide_rbac_creates_scales_rolls_out_and_repairs_without_a_403(
) {
    operator_with_only_the_charts_rbac_does_its_whole_job("chart-rbac", false).await;
}

#[tokio::test]
async fn operator_with_only_the_charts_namespaced_rbac_creates_scales_rolls_out_and_repairs_without_a_403(
) {
    operator_with_only_the_charts_rbac_does_its_whole_job("chart-rbac-ns", true).await;
}
