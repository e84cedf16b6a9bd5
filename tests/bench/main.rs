//! Benchmarks on the local control plane, Perennial side by side with the built-in
//! controllers measured in the same run. Not part of `make test`: `make bench` runs them
//! (`cargo test --release --test bench -- --ignored --nocapture --test-threads=1`), prints a
//! table per scenario and writes JSON to bench-results/.

#[path = "../support/mod.rs"]
mod support;

mod failover;
mod queue;
mod reaction;
mod rolling_update;
mod scale;
mod zero_downtime;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use perennial::api::ResilientService;
use serde_json::json;
use support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Perennial,
    Deployment,
    StatefulSet,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Perennial => "perennial",
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
        }
    }
}

fn trials() -> usize {
    std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// Pod labels, node selector and tolerations shared by every workload of a scenario.
fn pod_template(app: &str, extra_spec: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "example/app:1"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": {"labels": {"app": app}}, "spec": spec})
}

async fn create_workload(
    ns: &TestNamespace,
    kind: Kind,
    name: &str,
    replicas: i32,
    extra: serde_json::Value,
    svc_extra: serde_json::Value,
) {
    let template = pod_template(name, extra);
    match kind {
        Kind::Perennial => {
            let mut spec = json!({"replicas": replicas, "template": template});
            if let (Some(s), Some(e)) = (spec.as_object_mut(), svc_extra.as_object()) {
                for (k, v) in e {
                    s.insert(k.clone(), v.clone());
                }
            }
            let svc: ResilientService = serde_json::from_value(json!({
                "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                "metadata": {"name": name}, "spec": spec
            }))
            .unwrap();
            ns.api::<ResilientService>()
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
        }
        Kind::Deployment => {
            let d: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template}
            }))
            .unwrap();
            ns.api::<Deployment>()
                .create(&PostParams::default(), &d)
                .await
                .unwrap();
        }
        Kind::StatefulSet => {
            let s: StatefulSet = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                         "selector": {"matchLabels": {"app": name}}, "template": template}
            }))
            .unwrap();
            ns.api::<StatefulSet>()
                .create(&PostParams::default(), &s)
                .await
                .unwrap();
        }
    }
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods of `app` as a watch sees them, with the instant each uid was first seen and first Ready.
#[derive(Default)]
struct Seen {
    live: BTreeMap<String, Pod>,
    first_seen: BTreeMap<String, Instant>,
    first_ready: BTreeMap<String, Instant>,
}

async fn wait_ready_pods(pods: &Api<Pod>, app: &str, n: usize) {
    let selector = format!("app={app}");
    wait_for(
        &format!("{n} Ready pods of {app}"),
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = list.items.iter().filter(|p| is_ready(p)).count();
                (ready == n).then_some(()).ok_or(format!("{ready} Ready"))
            }
        },
    )
    .await;
}

/// Deletes a Ready pod `trials` times; measures delete → replacement seen, and → Ready.
async fn pod_reaction(
    ns: &TestNamespace,
    kind: Kind,
    trials: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let app = format!("react-{}", kind.label());
    create_workload(ns, kind, &app, 3, json!({}), json!({})).await;
    let pods: Api<Pod> = ns.api();
    wait_ready_pods(&pods, &app, 3).await;

    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let mut events = watcher(pods.clone(), cfg).boxed();
    let mut seen = Seen::default();
    let mut created = Vec::new();
    let mut ready = Vec::new();
    let deadline = Duration::from_secs(60);
    for _ in 0..trials {
        // Settle: 3 Ready pods and none terminating, as the watch sees them.
        while !(seen.live.values().filter(|p| is_ready(p)).count() == 3 && seen.live.len() == 3) {
            pump(&mut events, &mut seen, deadline).await;
        }
        let victim = seen.live.values().find(|p| is_ready(p)).unwrap().clone();
        let before: Vec<String> = seen.first_seen.keys().cloned().collect();
        let t0 = Instant::now();
        pods.delete(
            victim.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
        let new_uid = loop {
            pump(&mut events, &mut seen, deadline).await;
            if let Some(uid) = seen.first_seen.keys().find(|u| !before.contains(u)) {
                break uid.clone();
            }
        };
        created.push(seen.first_seen[&new_uid] - t0);
        while !seen.first_ready.contains_key(&new_uid) {
            pump(&mut events, &mut seen, deadline).await;
        }
        ready.push(seen.first_ready[&new_uid] - t0);
    }
    (created, ready)
}

async fn pump<S>(events: &mut S, seen: &mut Seen, deadline: Duration)
where
    S: futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    let ev = tokio::time::timeout(deadline, events.next())
        .await
        .expect("the pod watch went quiet for a minute")
        .expect("the pod watch ended");
    let now = Instant::now();
    let record = |p: Pod, seen: &mut Seen| {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        seen.first_seen.entry(uid.clone()).or_insert(now);
        if is_ready(&p) {
            seen.first_ready.entry(uid.clone()).or_insert(now);
        }
        if p.metadata.deletion_timestamp.is_some() {
            seen.live.remove(&uid);
            seen.live.insert(format!("terminating-{uid}"), p);
        } else {
            seen.live.insert(uid, p);
        }
    };
    match ev {
        Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => record(p, seen),
        Ok(watcher::Event::Delete(p)) => {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            seen.live.remove(&uid);
            seen.live.remove(&format!("terminating-{uid}"));
        }
        _ => {}
    }
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_pod_deleted_to_replacement() {
    let ns = TestNamespace::new("bench-react").await;
    install_crd(&ns.client).await;
    let _op = Operator::start(&ns.name);
    let n = trials();
    let mut rows = Vec::new();
    for kind in [Kind::Perennial, Kind::Deployment, Kind::StatefulSet] {
        let from = scale::audit_len();
        let (mut created, mut ready) = pod_reaction(&ns, kind, n).await;
        let mut server = reaction::server_reactions(&ns.name, from, scale::audit_len());
        created.sort();
        ready.sort();
        server.sort();
        rows.push(json!({
            "controller": kind.label(), "trials": n,
            "created_p50_ms": ms(percentile(&created, 0.5)), "created_p99_ms": ms(percentile(&created, 0.99)),
            "server_trials": server.len(),
            "server_p50_ms": ms(percentile(&server, 0.5)), "server_p99_ms": ms(percentile(&server, 0.99)),
            "ready_p50_ms": ms(percentile(&ready, 0.5)), "ready_p99_ms": ms(percentile(&ready, 0.99)),
        }));
    }
    println!("\nPod deleted -> replacement seen / Ready ({n} trials each); on the server: the deletion answered -> the create received (audit log)");
    println!(
        "{:<12} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}",
        "controller",
        "created p50",
        "created p99",
        "server p50",
        "server p99",
        "ready p50",
        "ready p99"
    );
    for r in &rows {
        let f = |k: &str| format!("{:.1}ms", r[k].as_f64().unwrap_or_default());
        println!(
            "{:<12} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}",
            r["controller"].as_str().unwrap_or_default(),
            f("created_p50_ms"),
            f("created_p99_ms"),
            f("server_p50_ms"),
            f("server_p99_ms"),
            f("ready_p50_ms"),
            f("ready_p99_ms")
        );
    }
    write_results("pod_reaction", json!(rows));
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_node_lost_to_all_ready() {
    let ns = TestNamespace::new("bench-nodeloss").await;
    install_crd(&ns.client).await;
    let _op = Operator::start(&ns.name);
    let client = client().await;
    let group = format!("nl-{}", unique_suffix());
    let mut nodes = Vec::new();
    for zone in ["zone-a", "zone-b", "zone-c", "zone-a"] {
        let node = TestNode::new(&client, "bench-nl", zone).await;
        support::kubectl(&["label", "node", &node.name, &format!("bench-group={group}")]);
        nodes.push(node);
    }
    let pin = json!({
        "nodeSelector": {"bench-group": group},
        "tolerations": [{"key": "perennial.dev/test-node", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "bench", "operator": "Exists"}]}, "topologyKey": "kubernetes.io/hostname"}
        ]}}
    });
    // One pod of each workload per node: the lost node carries one of each.
    let lost_after = 10;
    for kind in [Kind::Perennial, Kind::Deployment, Kind::StatefulSet] {
        let app = format!("nl-{}", kind.label());
        let mut extra = pin.clone();
        extra["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            ["labelSelector"] = json!({"matchLabels": {"app": app}});
        create_workload(
            &ns,
            kind,
            &app,
            3,
            extra,
            json!({"repair": {"nodeLostAfterSeconds": lost_after}}),
        )
        .await;
        wait_ready_pods(&ns.api(), &app, 3).await;
    }
    // Lose a node that carries a pod of every workload.
    let pods: Api<Pod> = ns.api();
    let list = pods.list(&ListParams::default()).await.unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        *per_node
            .entry(
                p.spec
                    .as_ref()
                    .unwrap()
                    .node_name
                    .clone()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    let victim = per_node
        .iter()
        .find(|(_, n)| **n == 3)
        .map(|(n, _)| n.clone())
        .expect("a node with one pod of each");
    let bound = Duration::from_secs(
        std::env::var("BENCH_NODE_LOSS_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let t0 = Instant::now();
    fault("node-lost", Some(&victim));
    let mut recovered: BTreeMap<&str, Option<Duration>> = BTreeMap::new();
    while t0.elapsed() < bound && recovered.len() < 3 {
        for kind in [Kind::Perennial, Kind::Deployment, Kind::StatefulSet] {
            if recovered.contains_key(kind.label()) {
                continue;
            }
            let app = format!("nl-{}", kind.label());
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .unwrap();
            let ready_elsewhere = list
                .items
                .iter()
                .filter(|p| {
                    is_ready(p)
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            != Some(victim.as_str())
                })
                .count();
            if ready_elsewhere == 3 {
                recovered.insert(kind.label(), Some(t0.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fault("node-back", Some(&victim));
    println!("\nNode lost -> all 3 replicas Ready on other nodes (Perennial nodeLostAfterSeconds {lost_after}; built-in defaults)");
    let mut rows = Vec::new();
    for kind in [Kind::Perennial, Kind::Deployment, Kind::StatefulSet] {
        let r = recovered.get(kind.label()).copied().flatten();
        let text = r.map_or(format!("not recovered after {} s", bound.as_secs()), |d| {
            format!("{:.1} s", d.as_secs_f64())
        });
        println!("{:<12} {text}", kind.label());
        rows.push(json!({"controller": kind.label(), "recovered_seconds": r.map(|d| d.as_secs_f64()), "bound_seconds": bound.as_secs()}));
    }
    write_results("node_loss", json!(rows));
}

fn write_results(name: &str, value: serde_json::Value) {
    let dir = repo_root().join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let body = json!({"scenario": name, "results": value, "machine": machine()});
    let _ = std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&body).unwrap(),
    );
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpus} cores, local control plane (Kubernetes 1.36, KWOK nodes)")
}
