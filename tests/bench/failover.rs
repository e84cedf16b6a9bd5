//! Scenario 5: leader failover. Two operators with the default lease timings (15 s lease,
//! renewed every 5 s); the leader is SIGKILLed and a pod is deleted at the same moment.
//! Measured: the lease taken by the standby, its first completed reconcile, and the
//! replacement pod created.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use perennial::api::ResilientService;
use serde_json::json;

use super::support::*;
use super::{is_ready, ms, percentile, wait_ready_pods, write_results};

const LEASE_SECONDS: u64 = 15;

/// An operator taking part in leader election on `lease`, with the default timings.
fn replica(ns: &str, lease: &str) -> Operator {
    elector_with(ns, lease, &[])
}

fn trials() -> usize {
    std::env::var("BENCH_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Polls every 50 ms until `check` says yes; the instant it first did.
async fn first_instant<F, Fut>(what: &str, mut check: F) -> Instant
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_leader_failover() {
    let ns = TestNamespace::new("bench-failover").await;
    install_crd(&ns.client).await;
    let lease = format!("leader-{}", unique_suffix());
    let mut replicas = [replica(&ns.name, &lease), replica(&ns.name, &lease)];
    let svc: ResilientService = serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "template": super::pod_template("web", json!({}))}
    }))
    .unwrap();
    ns.api::<ResilientService>()
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();
    let (mut lease_taken, mut reconciled, mut replaced) = (vec![], vec![], vec![]);
    for _ in 0..trials() {
        wait_ready_pods(&pods, "web", 3).await;
        let leader = wait_for("a leader", Duration::from_secs(120), || async {
            holder(&ns, &lease).await.ok_or("no holder".to_string())
        })
        .await;
        let idx = replicas
            .iter()
            .position(|o| leader.ends_with(&format!("-{}", o.child.id())))
            .expect("the leader is one of the replicas");
        let standby_addr = metrics_addr(&replicas[1 - idx]).await;
        let victim = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(is_ready)
            .expect("a Ready pod");
        let before: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();

        let t0 = Instant::now();
        let _ = replicas[idx].child.kill();
        let _ = replicas[idx].child.wait();
        pods.delete(
            victim.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
        let leader_now = leader.clone();
        let taken = first_instant("the standby to take the lease", || {
            let (ns, lease, leader) = (&ns, &lease, &leader_now);
            async move { holder(ns, lease).await.is_some_and(|h| &h != leader) }
        })
        .await;
        let first = first_instant("the new leader's first reconcile", || {
            let addr = standby_addr.clone();
            async move {
                metric(
                    &scrape(&addr).await,
                    "perennial_reconciles_total{result=\"ok\"}",
                )
                .is_some_and(|v| v >= 1.0)
            }
        })
        .await;
        let created = first_instant("the replacement pod", || {
            let (pods, before) = (&pods, &before);
            async move {
                pods.list(&ListParams::default().labels("app=web"))
                    .await
                    .map(|l| {
                        l.items.iter().any(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && !before.contains(p.metadata.uid.as_ref().unwrap())
                        })
                    })
                    .unwrap_or(false)
            }
        })
        .await;
        lease_taken.push(taken - t0);
        reconciled.push(first - t0);
        replaced.push(created - t0);
        // A fresh standby for the next trial, in place of the one killed.
        replicas[idx] = replica(&ns.name, &lease);
        metrics_addr(&replicas[idx]).await;
    }
    for v in [&mut lease_taken, &mut reconciled, &mut replaced] {
        v.sort();
    }
    let n = lease_taken.len();
    println!("\nLeader failover after SIGKILL ({n} trials; lease {LEASE_SECONDS} s, the operator's defaults)");
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50", "max", "target");
    let target = format!("{} s", LEASE_SECONDS + 5);
    for (what, v) in [
        ("lease taken by the standby", &lease_taken),
        ("first reconcile by the new leader", &reconciled),
        ("deleted pod replaced", &replaced),
    ] {
        println!(
            "{:<34} {:>9.1}s {:>9.1}s {:>10}",
            what,
            percentile(v, 0.5).as_secs_f64(),
            v.last().copied().unwrap_or_default().as_secs_f64(),
            target
        );
    }
    write_results(
        "failover",
        json!({
            "trials": n, "lease_seconds": LEASE_SECONDS,
            "lease_taken_ms": lease_taken.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "first_reconcile_ms": reconciled.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "replaced_ms": replaced.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        }),
    );
}
