//! The Helm chart (charts/perennial) installed on the local control plane: under the
//! restricted Pod Security Standard, and the proof that its RBAC is enough: the operator,
//! acting as the chart's ServiceAccount, creates, scales, rolls out, rolls back and repairs
//! services without one 403.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use perennial::api::{ResilientService, ANNOTATION_BAD_REVISION};
use serde_json::json;
use support::chart::*;
use support::nodes::*;
use support::pods::*;
use support::service::*;
use support::*;

/// Scheduling, starting and rolling pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Node loss: the operator's threshold (10 s), fencing, a rebuilt claim and a new pod.
const NODE_LOST_TIMEOUT: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------------------------------
// Install under the restricted Pod Security Standard

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
    wait_object(
        &deployments,
        RELEASE,
        "2 available operator replicas",
        TIMEOUT,
        |d| {
            let current =
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation;
            let s = d.status.clone().unwrap_or_default();
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
        },
    )
    .await;

    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let operator_pods = pods(&ns, &selector).await;
    assert_eq!(operator_pods.len(), 2);
    for pod in &operator_pods {
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
    let nodes: BTreeSet<String> = operator_pods.iter().map(node_of).collect();
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
    let accounts: Api<ServiceAccount> = ns.api();
    let cluster_roles: Api<ClusterRole> = Api::all(ns.client.clone());
    // The release's objects are gone after helm uninstall.
    wait_gone(&deployments, RELEASE, TIMEOUT).await;
    wait_gone(&accounts, RELEASE, TIMEOUT).await;
    wait_gone(&cluster_roles, &format!("{}-{RELEASE}", ns.name), TIMEOUT).await;
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

/// Creates `svc`; returns its generation.
async fn create(api: &Api<ResilientService>, svc: &ResilientService) -> i64 {
    let created = api
        .create(&PostParams::default(), svc)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", svc.name_any()));
    created
        .meta()
        .generation
        .expect("the server sets a generation")
}

/// Waits until every replica of generation `generation` or later is available at one
/// revision, the rollout (if any) complete; returns that revision.
async fn wait_settled(
    api: &Api<ResilientService>,
    name: &str,
    generation: i64,
    replicas: i32,
) -> String {
    let what = format!("{replicas} available replicas of generation {generation}, all current");
    wait_svc(api, name, &what, TIMEOUT, |svc| {
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
    })
    .await
}

/// A stateless service: created, scaled through the scale subresource, rolled out to a new
/// image (the old revision then deleted: revisionHistoryLimit 0), and rolled back from a
/// crash-looping template (the failed revision annotated).
async fn create_scale_roll_out_and_roll_back(ns: &TestNamespace) {
    let api: Api<ResilientService> = ns.api();
    let web = service(
        "web",
        2,
        "example/app:1",
        json!({
            "revisionHistoryLimit": 0,
            "supervision": {"maxRestarts": 2},
            "update": {"rollback": "Automatic"}
        }),
    );
    let generation = create(&api, &web).await;
    let first = wait_settled(&api, "web", generation, 2).await;

    let generation = scale(&api, "web", 3).await;
    wait_settled(&api, "web", generation, 3).await;

    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let second = wait_settled(&api, "web", generation, 3).await;
    assert_ne!(first, second, "a new template is a new revision");
    let revisions: Api<ControllerRevision> = ns.api();
    // Deleted: revisionHistoryLimit 0.
    wait_gone(&revisions, &first, TIMEOUT).await;

    let crash = merged(json!({"revisionHistoryLimit": 10}), crash_looping("web"));
    let generation = patch_spec(&api, "web", crash).await;
    let bad = wait_svc(
        &api,
        "web",
        "the crash-looping revision to be rolled back",
        TIMEOUT,
        |svc| {
            let s = status(svc);
            let rolled_back = condition_status(svc, "RolledBack");
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
    wait_object(&revisions, &bad, "marked failed", TIMEOUT, |r| {
        r.annotations()
            .contains_key(ANNOTATION_BAD_REVISION)
            .then_some(())
            .ok_or(format!("annotations {:?}", r.annotations()))
    })
    .await;
}

/// A Ready pod of slot 0 of `name`, not leaving (others may still be).
async fn ready_in_slot_0(ns: &TestNamespace, name: &str) -> Result<Pod, String> {
    slots(ns, name)
        .await
        .remove(&0)
        .unwrap_or_default()
        .into_iter()
        .find(|p| ready(p) && !terminating(p))
        .ok_or("no Ready pod in slot 0".to_string())
}

/// A replica with a local volume on a node that is lost: the operator taints the node
/// out-of-service, replaces the claim with a new one and runs the replica on the other node.
async fn repair_after_a_node_loss(ns: &TestNamespace, nodes: &NodeGroup) {
    let api: Api<ResilientService> = ns.api();
    let spec = merged(
        local_storage(),
        json!({"repair": {
            "nodeLostAfterSeconds": 10,
            "fencing": "TaintOutOfService",
            "storage": {"onVolumeLost": "Recreate"}
        }}),
    );
    let generation = create(&api, &placed_service("db", nodes.placement(), spec)).await;
    wait_settled(&api, "db", generation, 1).await;

    let pod = wait_for("db's slot 0 Ready", TIMEOUT, || ready_in_slot_0(ns, "db")).await;
    let lost = node_of(&pod);
    let (old_claim, _, _) = claim(ns, "data-db-0").await.expect("the claim of slot 0");

    fault("node-lost", Some(&lost));
    wait_node_tainted(&ns.client, &lost, OUT_OF_SERVICE_TAINT, NODE_LOST_TIMEOUT).await;
    wait_for(
        "a new claim data-db-0, bound",
        NODE_LOST_TIMEOUT,
        || async {
            let (uid, volume, deleting) = claim(ns, "data-db-0").await.ok_or("no claim")?;
            (uid != old_claim && !deleting && volume.is_some())
                .then_some(())
                .ok_or(format!("uid {uid} (old {old_claim}) volume {volume:?}"))
        },
    )
    .await;
    let replacement = wait_for("db's slot 0 Ready again", NODE_LOST_TIMEOUT, || async {
        let pod = ready_in_slot_0(ns, "db").await?;
        (node_of(&pod) != lost)
            .then_some(pod)
            .ok_or(format!("still on {lost}"))
    })
    .await;
    assert_ne!(uid(&replacement), uid(&pod));
    wait_settled(&api, "db", generation, 1).await;
}

/// An operator watching `watched` with the identity of `kubeconfig`, once it holds the
/// chart's leader Lease in the release namespace.
async fn leader_as(
    system: &TestNamespace,
    watched: &str,
    kubeconfig: &std::path::Path,
) -> Operator {
    let operator = Operator::start_with_kubeconfig(
        watched,
        kubeconfig,
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
    wait_for("the operator to hold the leader Lease", TIMEOUT, || async {
        holder(system, LEASE).await.ok_or("no holder".to_string())
    })
    .await;
    operator
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

    let nodes = NodeGroup::new(&app.client, prefix, &["zone-a", "zone-b"], 2).await;
    let operator = leader_as(&system, &app.name, &kubeconfig.0).await;

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
    let writes = impersonated_requests(&user, &[&app.name, &system.name]);
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
    let operator = leader_as(&system, &system.name, &kubeconfig.0).await;
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
