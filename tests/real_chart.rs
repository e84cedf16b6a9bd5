//! The chart's operator as real pods on real nodes: the local image, the in-cluster config
//! from the ServiceAccount token, the restricted profile enforced by a kubelet, probes
//! answered by the real endpoints, one leader that survives its container being killed, and
//! a standby that takes over when the leader's node crashes.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use support::chart::*;
use support::pods::*;
use support::real::*;
use support::service::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(180);
/// The chart's default lease duration and renewal period.
const LEASE_SECONDS: u64 = 15;
const RENEW_SECONDS: u64 = 5;

async fn restricted(ns: &TestNamespace) {
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"
            }}})),
        )
        .await
        .expect("label the namespace restricted");
}

/// The chart's values for real nodes: the imported image, never pulled.
fn real_node_values(workloads: &str) -> serde_json::Value {
    let mut values = on_real_nodes();
    values["image"] =
        json!({"repository": "localhost/perennial", "tag": "dev", "pullPolicy": "Never"});
    values["watchNamespaces"] = json!([workloads]);
    // One operator per real node, so that a node crash leaves a standby.
    values["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}
    }]}});
    values
}

async fn running_operators(ns: &TestNamespace) -> Vec<Pod> {
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    pods(ns, &selector)
        .await
        .into_iter()
        .filter(alive)
        .collect()
}

fn started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .is_some_and(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

#[tokio::test]
async fn the_charts_operator_runs_on_real_nodes_leads_repairs_survives_a_container_kill_and_its_standby_takes_over_from_a_crashed_node(
) {
    let _turn = REAL_NODES.lock().await;
    let system = TestNamespace::new("real-chart").await;
    let work = TestNamespace::new("real-chart-work").await;
    real_nodes(&system.client, 2).await;
    restricted(&system).await;
    install_crd(&system.client).await;
    let (_release, warnings) = Release::install(&system.name, &real_node_values(&work.name));
    assert!(!warnings.contains("PodSecurity"), "{warnings}");

    let deployments: Api<Deployment> = system.api();
    wait_object(
        &deployments,
        RELEASE,
        "2 available operator pods",
        TIMEOUT,
        |d| {
            let s = d.status.clone().unwrap_or_default();
            (s.available_replicas == Some(2) && s.updated_replicas == Some(2))
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    let operators = running_operators(&system).await;
    assert_eq!(operators.len(), 2, "{}", describe_all(&operators));
    for pod in &operators {
        assert!(node_of(pod).starts_with("real-node-"), "{}", describe(pod));
        assert!(
            operators
                .iter()
                .filter(|p| node_of(p) == node_of(pod))
                .count()
                == 1,
            "{}",
            describe_all(&operators)
        );
        assert!(
            started(pod),
            "a kubelet runs {} and its probes pass",
            describe(pod)
        );
    }
    let names: Vec<String> = operators.iter().map(|p| p.name_any()).collect();
    let leader = wait_for("a leader among the operator pods", TIMEOUT, || async {
        match holder(&system, LEASE).await {
            Some(h) if names.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;

    // Its log, read through the API server from the kubelet.
    let (ok, log, err) = kubectl(&["-n", &system.name, "logs", &leader]);
    assert!(ok, "kubectl logs {leader}: {err}");
    println!("{}", log.lines().take(8).collect::<Vec<_>>().join("\n"));
    assert!(
        log.contains("in-cluster: the pod's ServiceAccount token"),
        "{log}"
    );
    assert!(log.contains("became the leader"), "{log}");

    // It does its job on real pods: create, scale, repair.
    let api = create_service(
        &work,
        &service(
            "web",
            2,
            TESTAPP_IMAGE,
            testapp_spec("web", testapp_container(&[])),
        ),
    )
    .await;
    wait_available(&api, "web", 2, TIMEOUT).await;
    scale(&api, "web", 3).await;
    wait_available(&api, "web", 3, TIMEOUT).await;
    let slot0 = slots(&work, "web").await.remove(&0).unwrap_or_default();
    let gone = uid(&slot0[0]);
    let pods_api: Api<Pod> = work.api();
    pods_api
        .delete(&slot0[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete the pod of slot 0");
    wait_for("slot 0 filled by a new Ready pod", TIMEOUT, || async {
        let slot0 = slots(&work, "web").await.remove(&0).unwrap_or_default();
        match slot0
            .iter()
            .filter(|p| alive(p))
            .collect::<Vec<_>>()
            .as_slice()
        {
            [p] if uid(p) != gone && ready(p) => Ok(()),
            _ => Err(describe_all(&slot0)),
        }
    })
    .await;
    wait_available(&api, "web", 3, TIMEOUT).await;

    // The leader's main process dies. Its kubelet starts it again in the same pod, under
    // the same identity, and it goes on leading: the old process is gone for sure.
    let operators: Api<Pod> = system.api();
    real_fault("container-kill", &format!("{}/{leader}", system.name));
    wait_object(
        &operators,
        &leader,
        "the killed container restarted by its kubelet",
        TIMEOUT,
        |p| {
            (restarts(p) >= 1 && started(p))
                .then_some(())
                .ok_or(describe(p))
        },
    )
    .await;
    let restarted_at = Instant::now();
    let renewed = renew_time(&system).await;
    wait_for(
        "the restarted leader to renew its lease",
        TIMEOUT,
        || async {
            let now = renew_time(&system).await;
            match holder(&system, LEASE).await {
                Some(h) if h == leader && now > renewed => Ok(()),
                other => Err(format!("holder {other:?}, renewed {now:?}")),
            }
        },
    )
    .await;
    println!(
        "container-kill of {leader}: restarted, and leading again {:.1} s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );

    // The leader's node dies with it: the standby, on the other real node, takes the lease.
    let leader_node = operators
        .get(&leader)
        .await
        .map(|p| node_of(&p))
        .expect("the leader pod");
    let _back = NodeBack(leader_node.clone());
    let crashed_at = Instant::now();
    real_fault("node-crash", &leader_node);
    let next = wait_for("the standby to take the lease", TIMEOUT, || async {
        match holder(&system, LEASE).await {
            Some(h) if h != leader && names.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let took = crashed_at.elapsed();
    println!(
        "node-crash of {leader_node}: the lease passed from {leader} to {next} {:.1} s later",
        took.as_secs_f64()
    );
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + RENEW_SECONDS + 2),
        "the standby took over within a lease duration and a renewal: {took:?}"
    );

    // The new leader acts: the replicas lost with the node come back on the other one.
    scale(&api, "web", 2).await;
    wait_available(&api, "web", 2, Duration::from_secs(300)).await;
}

/// When the leader Lease was last renewed.
async fn renew_time(ns: &TestNamespace) -> Option<MicroTime> {
    let leases: Api<Lease> = ns.api();
    let lease = leases.get(LEASE).await.ok()?;
    lease.spec?.renew_time
}
