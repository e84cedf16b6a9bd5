//! Scenario 3: a rolling update of 50 replicas, watched pod by pod: wall time, the fewest
//! Ready pods and the most pods at any moment, for each controller.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use perennial::api::ResilientService;
use serde_json::json;

use super::support::*;
use super::{is_ready, pod_template, wait_ready_pods, write_results, Kind};

const REPLICAS: i32 = 50;
const OLD_IMAGE: &str = "example/app:1";
const NEW_IMAGE: &str = "example/app:2";

/// Creates the workload with update settings as close as each controller allows: 25% surge
/// and 25% unavailable (the Deployment's defaults); a StatefulSet cannot surge and replaces
/// pods one at a time unless its maxUnavailable feature is on.
async fn create(ns: &TestNamespace, kind: Kind, app: &str) {
    let template = pod_template(app, json!({}));
    let selector = json!({"matchLabels": {"app": app}});
    let pp = PostParams::default();
    match kind {
        Kind::Perennial => {
            let svc: ResilientService = serde_json::from_value(json!({
                "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                "metadata": {"name": app},
                "spec": {"replicas": REPLICAS, "template": template,
                         "update": {"maxSurge": "25%", "maxUnavailable": "25%"}}
            }))
            .unwrap();
            ns.api::<ResilientService>()
                .create(&pp, &svc)
                .await
                .unwrap();
        }
        Kind::Deployment => {
            let d: Deployment = serde_json::from_value(json!({
                "metadata": {"name": app},
                "spec": {"replicas": REPLICAS, "selector": selector, "template": template,
                         "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}
            }))
            .unwrap();
            ns.api::<Deployment>().create(&pp, &d).await.unwrap();
        }
        Kind::StatefulSet => {
            let s: StatefulSet = serde_json::from_value(json!({
                "metadata": {"name": app},
                "spec": {"replicas": REPLICAS, "serviceName": app, "podManagementPolicy": "Parallel",
                         "selector": selector, "template": template,
                         "updateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}
            }))
            .unwrap();
            ns.api::<StatefulSet>().create(&pp, &s).await.unwrap();
        }
    }
}

async fn change_image(ns: &TestNamespace, kind: Kind, app: &str) {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": NEW_IMAGE}]}}}});
    let pp = PatchParams::default();
    let patch = Patch::Strategic(&patch);
    match kind {
        Kind::Perennial => {
            // Custom resources take merge patches; the container list is replaced whole.
            let merge = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": NEW_IMAGE}]}}}});
            ns.api::<ResilientService>()
                .patch(app, &pp, &Patch::Merge(&merge))
                .await
                .unwrap();
        }
        Kind::Deployment => {
            ns.api::<Deployment>()
                .patch(app, &pp, &patch)
                .await
                .unwrap();
        }
        Kind::StatefulSet => {
            ns.api::<StatefulSet>()
                .patch(app, &pp, &patch)
                .await
                .unwrap();
        }
    }
}

fn image(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

struct Figures {
    wall: Duration,
    min_ready: usize,
    max_alive: usize,
    max_total: usize,
}

async fn roll(ns: &TestNamespace, kind: Kind) -> Figures {
    let app = format!("roll-{}", kind.label());
    create(ns, kind, &app).await;
    let pods: Api<Pod> = ns.api();
    wait_ready_pods(&pods, &app, REPLICAS as usize).await;

    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let mut events = watcher(pods, cfg).boxed();
    let mut all: BTreeMap<String, Pod> = BTreeMap::new();
    // The watch's initial list, before the update starts.
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitApply(p))) => {
                all.insert(p.metadata.uid.clone().unwrap_or_default(), p);
            }
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(_) => {}
            None => panic!("the pod watch ended"),
        }
    }
    let t0 = Instant::now();
    change_image(ns, kind, &app).await;
    let (mut min_ready, mut max_alive, mut max_total) = (usize::MAX, 0, 0);
    let bound = Duration::from_secs(900);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), events.next())
            .await
            .expect("the pod watch went quiet for two minutes")
            .expect("the pod watch ended");
        match ev {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                all.insert(p.metadata.uid.clone().unwrap_or_default(), p);
            }
            Ok(watcher::Event::Delete(p)) => {
                all.remove(&p.metadata.uid.clone().unwrap_or_default());
            }
            _ => continue,
        }
        let ready = all.values().filter(|p| is_ready(p)).count();
        let alive = all
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        min_ready = min_ready.min(ready);
        max_alive = max_alive.max(alive);
        max_total = max_total.max(all.len());
        let done = all.len() == REPLICAS as usize
            && all.values().all(|p| is_ready(p) && image(p) == NEW_IMAGE);
        if done {
            break;
        }
        assert!(
            t0.elapsed() < bound,
            "{} did not finish the rolling update in {} s",
            kind.label(),
            bound.as_secs()
        );
    }
    let wall = t0.elapsed();
    assert!(all.values().all(|p| image(p) != OLD_IMAGE));
    Figures {
        wall,
        min_ready,
        max_alive,
        max_total,
    }
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_rolling_update_of_50_replicas() {
    let ns = TestNamespace::new("bench-roll").await;
    install_crd(&ns.client).await;
    let _op = Operator::start(&ns.name);
    let mut rows = Vec::new();
    println!("\nRolling update of {REPLICAS} replicas (maxSurge 25%, maxUnavailable 25%; a StatefulSet cannot surge)");
    println!(
        "{:<12} {:>10} {:>14} {:>16} {:>12}",
        "controller", "wall", "min Ready", "max not deleting", "max pods"
    );
    for kind in [Kind::Perennial, Kind::Deployment, Kind::StatefulSet] {
        let f = roll(&ns, kind).await;
        println!(
            "{:<12} {:>9.1}s {:>14} {:>16} {:>12}",
            kind.label(),
            f.wall.as_secs_f64(),
            f.min_ready,
            f.max_alive,
            f.max_total
        );
        rows.push(json!({
            "controller": kind.label(), "replicas": REPLICAS,
            "wall_seconds": f.wall.as_secs_f64(), "min_ready": f.min_ready,
            "max_not_deleting": f.max_alive, "max_pods": f.max_total,
            "floor": REPLICAS - REPLICAS / 4, "ceiling": REPLICAS + (REPLICAS + 3) / 4,
        }));
    }
    write_results("rolling_update", json!(rows));
}
