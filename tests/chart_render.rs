//! What the Helm chart (charts/perennial) renders: strict lint with a values schema that
//! rejects unknown values, a server-side dry run of everything it renders on the local
//! control plane, and RBAC without wildcards or Secrets and with exactly the rules the
//! operator uses.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::chart::*;
use support::*;

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
            "--set",
            "grafana.dashboards.enabled=true",
            "--set",
            "prometheusRule.enabled=true",
        ],
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "crds.install=false",
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
        ("crds.install=maybe", "install"),
        ("crds.upgrade=true", "upgrade"),
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
        json!({"crds": {"install": true}}),
        json!({"crds": {"install": true}, "watchNamespaces": [watched.name], "rbac": {"nodeFencing": false}}),
    ] {
        let manifest = render(&release_ns.name, &values);
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
    ("", "pods", &["list", "watch", "create", "delete", "patch"]),
    ("", "pods/status", &["patch"]),
    ("", "pods/resize", &["patch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
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
        let objects = documents(&render(ns, &values));
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

#[tokio::test]
async fn the_dashboard_configmap_and_the_prometheusrule_carry_the_charts_own_files() {
    let ns = TestNamespace::new("chart-observe").await;
    let objects = |values: Value| documents(&render(&ns.name, &values));
    let off = objects(json!({}));
    assert!(
        !off.iter()
            .any(|o| o["kind"] == "PrometheusRule" || o["kind"] == "ConfigMap"),
        "neither is rendered by default"
    );

    let values = json!({
        "grafana": {"dashboards": {"enabled": true, "label": "dashboards.example/load", "labelValue": "yes",
                                   "annotations": {"grafana_folder": "Perennial"}}},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus"},
                           "runbookBaseUrl": "https://runbooks.example/perennial/"}
    });
    let on = objects(values.clone());
    let one = |kind: &str| -> Value {
        let found: Vec<&Value> = on.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}: {found:?}");
        found[0].clone()
    };

    let config_map = one("ConfigMap");
    assert_eq!(
        config_map["metadata"]["labels"]["dashboards.example/load"],
        "yes"
    );
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Perennial"
    );
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/perennial/dashboards/perennial.json"))
            .unwrap(),
    )
    .unwrap();
    let carried: Value = serde_json::from_str(
        config_map["data"]["perennial.json"]
            .as_str()
            .expect("the dashboard is a data key"),
    )
    .expect("the ConfigMap carries valid JSON");
    assert_eq!(
        carried, file,
        "the ConfigMap carries dashboards/perennial.json"
    );
    let (ok, out, err) = kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &serde_json::to_string(&config_map).unwrap(),
    );
    assert!(
        ok,
        "the API server rejects the dashboard ConfigMap: {out}{err}"
    );

    let rule = one("PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    let mut groups: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("charts/perennial/alerts/perennial.rules.yaml"))
            .unwrap(),
    )
    .unwrap();
    // The same rules, their runbook links moved to runbookBaseUrl.
    for group in groups["groups"].as_array_mut().unwrap() {
        for r in group["rules"].as_array_mut().unwrap() {
            let url = r["annotations"]["runbook_url"].as_str().unwrap().replace(
                "https://github.com/perennial/perennial/blob/main/docs/alerts.md",
                "https://runbooks.example/perennial",
            );
            r["annotations"]["runbook_url"] = json!(url);
        }
    }
    assert!(!groups["groups"][0]["rules"].as_array().unwrap().is_empty());
    assert_eq!(
        rule["spec"], groups,
        "the PrometheusRule carries alerts/perennial.rules.yaml"
    );
}
