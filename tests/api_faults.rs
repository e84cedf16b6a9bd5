//! Faults between one operator and the API server only, through toxiproxy: latency, a
//! bandwidth limit and connection resets slow the operator down but change nothing it
//! does; a blackhole makes a leader stop within its renew deadline, before a standby that
//! still reaches the server takes the lease and finishes the rollout.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use perennial::api::ResilientService;
use serde_json::json;
use support::fault_proxy::FaultProxy;
use support::nodes::*;
use support::service::*;
use support::*;

const THREE_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Every request of the operator is slowed here: room for a busy machine on top.
const SLOW: Duration = Duration::from_secs(360);
/// Pods the operator's identity created in `namespace`, by name, counting only creates
/// the server accepted: a create retried after a reset must find the pod there, not make
/// a second one.
fn accepted_pod_creates(namespace: &str) -> BTreeMap<String, usize> {
    let mut creates = BTreeMap::new();
    for e in operator_write_entries(namespace) {
        if e["verb"] == "create"
            && e["objectRef"]["resource"] == "pods"
            && e["responseStatus"]["code"] == 201
        {
            let name = e["objectRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *creates.entry(name).or_default() += 1;
        }
    }
    creates
}

/// Waits until `op` holds `lease` (its identity ends in its process id).
async fn wait_holder(ns: &TestNamespace, lease: &str, op: &Operator, what: &str) {
    let id = format!("-{}", op.child.id());
    wait_for(what, SLOW, || async {
        match holder(ns, lease).await {
            Some(h) if h.ends_with(&id) => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
}

fn assert_each_pod_created_once(namespace: &str) {
    let creates = accepted_pod_creates(namespace);
    assert!(
        !creates.is_empty(),
        "the audit log shows the operator's creates"
    );
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pods created more than once: {twice:?}");
}

#[tokio::test]
async fn through_latency_a_bandwidth_limit_and_connection_resets_the_operator_rolls_out_and_creates_each_pod_once(
) {
    let proxy = Arc::new(FaultProxy::start());
    let ns = TestNamespace::new("api-slow").await;
    let nodes = NodeGroup::new(&ns.client, "api-slow", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    // 300 to 500 ms on every answer, and 256 KiB/s for all of them together.
    proxy.add("slow", "latency", &[("latency", "400"), ("jitter", "100")]);
    proxy.add("narrow", "bandwidth", &[("rate", "256")]);
    let mut operator = Operator::start_with_kubeconfig(
        &ns.name,
        &proxy.kubeconfig,
        &["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"],
    );
    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 0}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, SLOW).await;

    // Then, while a rolling update goes on, every connection (watches included) is reset
    // at once every 5 s, as a load balancer dropping its connections does.
    proxy.remove("slow");
    proxy.remove("narrow");
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let resets = Arc::new(AtomicUsize::new(0));
    let resetter = {
        let (proxy, resets) = (proxy.clone(), resets.clone());
        tokio::spawn(async move {
            loop {
                proxy.reset_all();
                resets.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await; // the fault's period
            }
        })
    };
    let revision = wait_update_revision(&api, "web", generation, SLOW).await;
    wait_svc(
        &api,
        "web",
        "the rollout complete through the resets",
        SLOW,
        |svc| complete(svc, 3, &revision),
    )
    .await;
    resetter.abort();
    let resets = resets.load(Ordering::SeqCst);
    println!("the rollout completed through {resets} resets of every connection");
    assert!(
        resets >= 2,
        "the rollout outlasted at least two resets, or they proved nothing"
    );
    operator.assert_sound("the resets");
    let log = operator.output();
    assert!(
        log.contains("error") || log.contains("WARN"),
        "the resets were felt by the operator (else they did not happen): {}",
        operator.log.display()
    );
    assert_each_pod_created_once(&ns.name);
    let svc: ResilientService = api.get("web").await.unwrap();
    assert_eq!(status(&svc).replicas, 3);
}

#[tokio::test]
async fn a_leader_cut_off_by_a_blackhole_stops_within_its_renew_deadline_before_a_standby_takes_over_and_finishes_the_rollout(
) {
    let proxy = FaultProxy::start();
    let ns = TestNamespace::new("api-blackhole").await;
    let nodes = NodeGroup::new(&ns.client, "api-blackhole", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    let lease = "blackhole-leader";
    let mut args = vec![
        "--leader-elect=true",
        "--lease-namespace",
        &ns.name,
        "--lease-name",
        lease,
    ];
    args.extend(SHORT_LEASE);
    args.extend(["--metrics-addr", "127.0.0.1:0"]);
    let mut cut_off = Operator::start_with_kubeconfig(&ns.name, &proxy.kubeconfig, &args);
    wait_holder(&ns, lease, &cut_off, "the proxied operator to lead").await;
    let standby = elector_with(&ns.name, lease, &SHORT_LEASE);

    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 0}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, SLOW).await;
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let revision = wait_update_revision(&api, "web", generation, SLOW).await;

    // Its connections hang: nothing comes back and nothing it sends arrives.
    proxy.add_both_ways("blackhole", "timeout", &[("timeout", "0")]);
    let cut_at = Instant::now();
    let exited_at = wait_for("the cut-off leader to stop", SLOW, || {
        let exited = cut_off.child.try_wait().expect("poll the operator");
        async move {
            exited
                .map(|_| jiff::Timestamp::now())
                .ok_or("still running".to_string())
        }
    })
    .await;
    let stopped_after = cut_at.elapsed();
    println!(
        "the cut-off leader stopped {stopped_after:?} after the blackhole (renew deadline 4 s)"
    );
    assert!(
        stopped_after <= Duration::from_secs(4 + 2 + 5),
        "a leader that cannot renew stops at its renew deadline, not {stopped_after:?} later"
    );

    wait_holder(&ns, lease, &standby, "the standby to take the lease").await;
    let leases: Api<Lease> = ns.api();
    let acquired = (leases.get(lease).await.unwrap().spec)
        .and_then(|s| s.acquire_time)
        .expect("the lease says when it was taken")
        .0;
    assert!(
        acquired >= exited_at - jiff::SignedDuration::from_secs(1),
        "one term at a time: the standby took the lease at {acquired}, the cut-off leader stopped at {exited_at}"
    );
    wait_svc(
        &api,
        "web",
        "the standby to finish the rollout",
        SLOW,
        |svc| complete(svc, 3, &revision),
    )
    .await;
    proxy.remove("blackhole-up");
    proxy.remove("blackhole-down");
    assert_each_pod_created_once(&ns.name);
    let log = cut_off.output();
    assert!(!log.contains("panicked at"), "{}", cut_off.log.display());
}
