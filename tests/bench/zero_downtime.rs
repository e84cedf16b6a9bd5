//! Zero downtime counted in requests, on the real nodes: a client sends requests through a
//! ClusterIP Service, each on a new connection, while the workload is rolled to a new image
//! or scaled down; Perennial (replacing pods, and upgrading them in place), a Deployment and
//! a StatefulSet of the same template, one after the other in the same run.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use perennial::api::ResilientService;
use serde_json::{json, Value};

use super::support::real::*;
use super::support::service::{merged, service};
use super::support::*;
use super::write_results;

const REPLICAS: i32 = 10;
const RATE: u32 = 50;
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Perennial,
    InPlace,
    Deployment,
    StatefulSet,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Perennial => "perennial",
            Way::InPlace => "perennial-in-place",
            Way::Deployment => "deployment",
            Way::StatefulSet => "statefulset",
        }
    }
}

/// The test application on `image`, its version from the image alone; with `pre_stop`, the
/// usual workaround of a 5 s sleep before SIGTERM.
fn container(image: &str, pre_stop: bool) -> Value {
    let mut c = testapp_container(&[]);
    c["image"] = json!(image);
    if pre_stop {
        c["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 5}}});
    }
    c
}

/// Creates the workload `name` of REPLICAS pods and returns the address of a ClusterIP
/// Service in front of it. Each moves one pod at a time (a StatefulSet can do no other).
async fn create(ns: &TestNamespace, way: Way, name: &str, pre_stop: bool) -> std::net::SocketAddr {
    let c = container(TESTAPP_V1_IMAGE, pre_stop);
    let pp = PostParams::default();
    let template = testapp_spec(name, c.clone())["template"].clone();
    match way {
        Way::Perennial | Way::InPlace => {
            let in_place = if way == Way::InPlace {
                "IfPossible"
            } else {
                "Never"
            };
            let spec = merged(
                testapp_spec(name, c),
                json!({"update": {"maxSurge": 1, "maxUnavailable": 0, "inPlace": in_place}}),
            );
            let svc: ResilientService = service(name, REPLICAS, TESTAPP_V1_IMAGE, spec);
            ns.api::<ResilientService>()
                .create(&pp, &svc)
                .await
                .unwrap();
        }
        Way::Deployment => {
            create_deployment(ns, &testapp_deployment(name, REPLICAS, c, 1, 0)).await;
        }
        Way::StatefulSet => {
            let headless: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-pods")},
                "spec": {"clusterIP": "None", "selector": {"app": name}}
            }))
            .unwrap();
            ns.api::<Service>().create(&pp, &headless).await.unwrap();
            let s: StatefulSet = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": REPLICAS, "serviceName": format!("{name}-pods"),
                    "podManagementPolicy": "Parallel",
                    "selector": {"matchLabels": {"app": name}}, "template": template}
            }))
            .unwrap();
            ns.api::<StatefulSet>().create(&pp, &s).await.unwrap();
        }
    }
    cluster_ip_service(ns, name).await
}

/// Changes the workload's image to v2.
async fn upgrade(ns: &TestNamespace, way: Way, name: &str) {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": TESTAPP_V2_IMAGE}]}}}});
    let pp = PatchParams::default();
    match way {
        Way::Perennial | Way::InPlace => {
            // A merge patch replaces the container list: send the whole container.
            let pre_stop = ns
                .api::<ResilientService>()
                .get(name)
                .await
                .unwrap()
                .spec
                .template
                .spec
                .and_then(|s| s.containers.first().and_then(|c| c.lifecycle.clone()))
                .is_some();
            let c = container(TESTAPP_V2_IMAGE, pre_stop);
            let merge = json!({"spec": {"template": {"spec": {"containers": [c]}}}});
            ns.api::<ResilientService>()
                .patch(name, &pp, &Patch::Merge(&merge))
                .await
                .unwrap();
        }
        Way::Deployment => {
            ns.api::<Deployment>()
                .patch(name, &pp, &Patch::Strategic(&patch))
                .await
                .unwrap();
        }
        Way::StatefulSet => {
            ns.api::<StatefulSet>()
                .patch(name, &pp, &Patch::Strategic(&patch))
                .await
                .unwrap();
        }
    }
}

async fn scale_to(ns: &TestNamespace, way: Way, name: &str, replicas: i32) {
    let patch = json!({"spec": {"replicas": replicas}});
    let pp = PatchParams::default();
    let p = Patch::Merge(&patch);
    match way {
        Way::Perennial | Way::InPlace => {
            ns.api::<ResilientService>()
                .patch(name, &pp, &p)
                .await
                .unwrap();
        }
        Way::Deployment => {
            ns.api::<Deployment>().patch(name, &pp, &p).await.unwrap();
        }
        Way::StatefulSet => {
            ns.api::<StatefulSet>().patch(name, &pp, &p).await.unwrap();
        }
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Waits until exactly `n` pods of `name` exist, none terminating, all Ready on `image`.
async fn settled(ns: &TestNamespace, name: &str, n: usize, want: &str) {
    let pods: Api<Pod> = ns.api();
    let lp = ListParams::default().labels(&format!("app={name}"));
    wait_for(
        &format!("{n} Ready pods of {name} on {want}"),
        TIMEOUT,
        || {
            let (pods, lp) = (pods.clone(), lp.clone());
            async move {
                let list = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
                let done = list.len() == n
                    && list.iter().all(|p| {
                        p.metadata.deletion_timestamp.is_none() && ready(p) && image(p) == want
                    });
                done.then_some(()).ok_or(format!(
                    "{} pods: {:?}",
                    list.len(),
                    list.iter().map(|p| p.name_any()).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

struct Row {
    scenario: &'static str,
    way: Way,
    count: TrafficCount,
    seconds: f64,
}

/// One scenario for one workload, in a namespace of its own.
async fn run(scenario: &'static str, way: Way, pre_stop: bool, scale: bool) -> Row {
    let ns = TestNamespace::new(&format!("bench-zd-{}", way.label())).await;
    let _op = Operator::start(&ns.name);
    let name = way.label();
    let addr = create(&ns, way, name, pre_stop).await;
    settled(&ns, name, REPLICAS as usize, TESTAPP_V1_IMAGE).await;
    wait_serving(addr, "v1").await;
    let traffic = Traffic::start(addr, RATE);
    let t0 = Instant::now();
    if scale {
        scale_to(&ns, way, name, 4).await;
        settled(&ns, name, 4, TESTAPP_V1_IMAGE).await;
    } else {
        upgrade(&ns, way, name).await;
        settled(&ns, name, REPLICAS as usize, TESTAPP_V2_IMAGE).await;
        wait_serving(addr, "v2").await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let count = traffic.stop();
    println!(
        "  {:<20} {:>7} sent {:>6} failed {:>9.1} ms p99 {:>7.1} s  {:?}",
        way.label(),
        count.sent,
        count.failed,
        count.p99().as_secs_f64() * 1000.0,
        seconds,
        count.failures
    );
    Row {
        scenario,
        way,
        count,
        seconds,
    }
}

/// The time until a slot with storage serves the new revision: one replica with a claim.
async fn stateful_slot(way: Way) -> f64 {
    let ns = TestNamespace::new(&format!("bench-slot-{}", way.label())).await;
    let _op = Operator::start(&ns.name);
    let name = way.label();
    let pp = PostParams::default();
    let c = container(TESTAPP_V1_IMAGE, false);
    let claim = json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
        "storageClassName": "local", "resources": {"requests": {"storage": "1Gi"}}}});
    let mut mounted = c.clone();
    mounted["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    match way {
        Way::Perennial | Way::InPlace => {
            let in_place = if way == Way::InPlace {
                "IfPossible"
            } else {
                "Never"
            };
            let spec = merged(
                testapp_spec(name, mounted),
                json!({"volumeClaimTemplates": [claim], "update": {"inPlace": in_place}}),
            );
            let svc = service(name, 1, TESTAPP_V1_IMAGE, spec);
            ns.api::<ResilientService>()
                .create(&pp, &svc)
                .await
                .unwrap();
        }
        _ => {
            let template = testapp_spec(name, mounted)["template"].clone();
            let s: StatefulSet = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": 1, "serviceName": name,
                    "selector": {"matchLabels": {"app": name}}, "template": template,
                    "volumeClaimTemplates": [claim]}
            }))
            .unwrap();
            ns.api::<StatefulSet>().create(&pp, &s).await.unwrap();
        }
    }
    let addr = cluster_ip_service(&ns, name).await;
    settled(&ns, name, 1, TESTAPP_V1_IMAGE).await;
    wait_serving(addr, "v1").await;
    let t0 = Instant::now();
    if way == Way::StatefulSet {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": TESTAPP_V2_IMAGE}]}}}});
        ns.api::<StatefulSet>()
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
    } else {
        let mut c = container(TESTAPP_V2_IMAGE, false);
        c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        let merge = json!({"spec": {"template": {"spec": {"containers": [c]}}}});
        ns.api::<ResilientService>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&merge))
            .await
            .unwrap();
    }
    wait_serving(addr, "v2").await;
    t0.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_zero_downtime_on_real_nodes() {
    let _turn = REAL_NODES.lock().await;
    let admin = TestNamespace::new("bench-zd").await;
    real_nodes(&admin.client, 2).await;
    install_crd(&admin.client).await;
    println!(
        "\nZero downtime on {} real nodes: {REPLICAS} replicas of the test application \
         (exits at once on SIGTERM), {RATE} requests/s through a ClusterIP, each on a new connection",
        2
    );
    let mut rows = Vec::new();
    for (scenario, pre_stop, scale, ways) in [
        (
            "rolling update",
            false,
            false,
            &[
                Way::Perennial,
                Way::InPlace,
                Way::Deployment,
                Way::StatefulSet,
            ][..],
        ),
        (
            "rolling update, preStop sleep 5 s",
            true,
            false,
            &[
                Way::Perennial,
                Way::InPlace,
                Way::Deployment,
                Way::StatefulSet,
            ][..],
        ),
        (
            "scale 10 -> 4",
            false,
            true,
            &[Way::Perennial, Way::Deployment, Way::StatefulSet][..],
        ),
    ] {
        println!("{scenario}:");
        for way in ways {
            rows.push(run(scenario, *way, pre_stop, scale).await);
        }
    }
    println!(
        "stateful slot upgrade (one replica with a ReadWriteOnce claim), time until it serves v2:"
    );
    let mut slots = Vec::new();
    for way in [Way::Perennial, Way::InPlace, Way::StatefulSet] {
        let s = stateful_slot(way).await;
        println!("  {:<20} {s:>7.1} s", way.label());
        slots.push(json!({"controller": way.label(), "seconds": s}));
    }
    write_results(
        "zero_downtime",
        json!({
            "requests": rows.iter().map(|r| json!({
                "scenario": r.scenario, "controller": r.way.label(), "sent": r.count.sent,
                "failed": r.count.failed, "failures": r.count.failures,
                "p99_ms": r.count.p99().as_secs_f64() * 1000.0, "seconds": r.seconds,
            })).collect::<Vec<_>>(),
            "stateful_slot_upgrade": slots,
        }),
    );
}
