//! The operator upgraded while it works: `helm upgrade` from the operator built from the
//! previous commit (the one before the last change of its source) to this build, while a
//! rolling update and a node-loss repair are both in progress. The chart replaces its pods
//! one at a time, the lease passes to a pod of the new image, the rollout and the repair
//! finish as if nothing happened, nothing is created or deleted twice, and every write the
//! audit log shows comes from the pod that held the lease at that moment.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::LABEL_SERVICE;
use serde_json::{json, Value};
use support::chart::*;
use support::nodes::*;
use support::pods::*;
use support::real::*;
use support::service::*;
use support::terms::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(300);
const FOUR_ZONES: [&str; 4] = ["zone-a", "zone-b", "zone-c", "zone-a"];
/// What the audit log says a pod's ServiceAccount token was bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

fn operator_values(workloads: &str, tag: &str) -> Value {
    let mut values = on_real_nodes();
    values["image"] =
        json!({"repository": "localhost/perennial", "tag": tag, "pullPolicy": "Never"});
    values["watchNamespaces"] = json!([workloads]);
    // One operator per real node: a leader and a standby, replaced one at a time.
    values["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}
    }]}});
    test_values(&values)
}

/// An accepted or refused write of the operator's ServiceAccount in `namespace`, with the
/// pod its token was bound to.
struct Write {
    at: jiff::Timestamp,
    pod: String,
    what: String,
    code: u64,
}

fn operator_writes_by_pod(user: &str, namespace: &str) -> Vec<Write> {
    audit_entries(&[user, namespace])
        .into_iter()
        .filter(|e| e["user"]["username"] == user && e["objectRef"]["namespace"] == namespace)
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .filter_map(|e| {
            Some(Write {
                at: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                pod: e["user"]["extra"][POD_NAME_EXTRA][0].as_str()?.to_string(),
                what: describe_write(&e),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// The names of the pods in `ns` that a watch sees bound to `node`, until the task ends.
fn pods_ever_on(ns: &TestNamespace, node: &str) -> Arc<Mutex<BTreeSet<String>>> {
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let pods: Api<Pod> = ns.api();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let names = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher(pods, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(pod) = event {
                names.lock().unwrap().insert(pod.name_any());
            }
        }
    });
    seen
}

/// The live operator pods of the release by name, each of which must run `image`.
async fn operator_pods_running(
    system: &TestNamespace,
    image: &str,
    what: &str,
) -> BTreeMap<String, String> {
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let images: BTreeMap<String, String> = (pods(system, &selector).await.iter())
        .filter(|p| alive(p))
        .map(|p| {
            let image = (p.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            (p.name_any(), image)
        })
        .collect();
    assert!(
        images.values().all(|i| i == image),
        "every operator pod runs {what}: {images:?}"
    );
    images
}

#[tokio::test]
async fn helm_upgrade_during_a_rollout_and_a_node_loss_repair_hands_the_lease_on_and_does_nothing_twice(
) {
    let _turn = REAL_NODES.lock().await;
    let system = TestNamespace::new("upgrade").await;
    let work = TestNamespace::new("upgrade-work").await;
    real_nodes(&system.client, 2).await;
    install_crd(&system.client).await;
    let (release, _) = Release::install(&system.name, &operator_values(&work.name, "previous"));
    let deployments: Api<Deployment> = system.api();
    let rolled_out = |generation: i64| {
        move |d: &Deployment| {
            let s = d.status.clone().unwrap_or_default();
            let done = s.observed_generation >= Some(generation)
                && s.updated_replicas == Some(2)
                && s.available_replicas == Some(2)
                && s.replicas == Some(2);
            done.then_some(()).ok_or(format!("{s:?}"))
        }
    };
    wait_object(
        &deployments,
        RELEASE,
        "2 operator pods",
        TIMEOUT,
        rolled_out(1),
    )
    .await;
    let first: Vec<String> =
        operator_pods_running(&system, OPERATOR_PREVIOUS_IMAGE, "the previous build first")
            .await
            .into_keys()
            .collect();
    let leader = wait_for("a leader among the operator pods", TIMEOUT, || async {
        match holder(&system, LEASE).await {
            Some(h) if first.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let (terms, term_watch) = watch_terms(&system.client, &system.name, LEASE);

    // Work for it on KWOK nodes: a service to roll out, and one to repair.
    let nodes = NodeGroup::new(&work.client, "upgrade", &FOUR_ZONES, 0).await;
    // web's pods may land on the node lost below too: it repairs as soon as api does.
    let spec = json!({
        "replicas": 4,
        "update": {"minReadySeconds": 8, "maxSurge": 1, "maxUnavailable": 0},
        "repair": {"nodeLostAfterSeconds": 10}
    });
    let web = create_service(&work, &placed_service("web", nodes.placement(), spec)).await;
    // One pod per node: the node lost below holds one of api's three, since a node under
    // two of them would be a suspected storm, which repairs nothing.
    let spec = json!({
        "replicas": 3,
        "redundancy": {"whenUnsatisfiable": "DoNotSchedule", "onePerNode": true},
        "repair": {"nodeLostAfterSeconds": 10}
    });
    let api = create_service(&work, &placed_service("api", nodes.placement(), spec)).await;
    wait_available(&web, "web", 4, TIMEOUT).await;
    wait_available(&api, "api", 3, TIMEOUT).await;

    // Both at once: a rolling update of web, and the node under api's slot 0 lost.
    let generation = patch_spec(&web, "web", new_image("example/app:2")).await;
    let revision = wait_update_revision(&web, "web", generation, TIMEOUT).await;
    let slot0 = ready_pod(&work, "api", 0)
        .await
        .expect("api's slot 0 is Ready");
    let lost = node_of(&slot0);
    // Every pod that is ever bound to the lost node, also those scheduled there after the
    // fault and before the node was judged lost.
    let on_lost = pods_ever_on(&work, &lost);
    fault("node-lost", Some(&lost));

    // The upgrade, while both are in flight.
    let (ok, out, err) = release.upgrade(chart(), &operator_values(&work.name, "dev"), &[]);
    assert!(ok, "helm upgrade to this build: {err}\n{out}");
    let in_flight = web.get("web").await.expect("get web");
    assert!(
        complete(&in_flight, 4, &revision).is_err(),
        "the rollout was still in flight when the upgrade began: {}",
        ledger(&in_flight)
    );
    wait_object(
        &deployments,
        RELEASE,
        "2 pods of this build",
        TIMEOUT,
        rolled_out(2),
    )
    .await;
    let images = operator_pods_running(&system, OPERATOR_IMAGE, "this build").await;
    let new_leader = wait_for("a pod of this build to lead", TIMEOUT, || async {
        match holder(&system, LEASE).await {
            Some(h) if images.contains_key(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;

    // The rollout and the repair finish under the new leader.
    wait_svc(&web, "web", "the rollout complete", TIMEOUT, |svc| {
        complete(svc, 4, &revision)
    })
    .await;
    wait_for(
        "api's 3 replicas Ready off the lost node",
        TIMEOUT,
        || async {
            let pods = pods(&work, &format!("{LABEL_SERVICE}=api")).await;
            let live: Vec<_> = pods.iter().filter(|p| alive(p)).collect();
            let ok = live.len() == 3 && live.iter().all(|p| ready(p) && node_of(p) != lost);
            ok.then_some(()).ok_or(describe_all(&pods))
        },
    )
    .await;
    wait_available(&api, "api", 3, TIMEOUT).await;
    fault("node-back", Some(&lost));
    term_watch.abort();
    let terms = all_terms(&terms.lock().unwrap(), &system.name, LEASE);
    println!("lease states: {terms:?}");
    assert!(
        (terms.iter()).any(|t| t.holder.as_deref() == Some(&leader))
            && (terms.iter()).any(|t| t.holder.as_deref() == Some(&new_leader)),
        "the lease went from {leader} to {new_leader}: {terms:?}"
    );

    // Every write came from the holder of its moment, and nothing was done twice.
    let user = format!("system:serviceaccount:{}:{RELEASE}", system.name);
    let writes = operator_writes_by_pod(&user, &work.name);
    assert!(
        writes.iter().any(|w| w.pod == leader) && writes.iter().any(|w| w.pod == new_leader),
        "the audit log attributes writes to both leaders ({} writes)",
        writes.len()
    );
    let foreign: Vec<String> = (writes.iter())
        .filter(|w| holder_at(&terms, w.at) != Some(w.pod.as_str()))
        .map(|w| {
            let holder = holder_at(&terms, w.at);
            format!(
                "{} by {} at {} (code {}), holder {holder:?}",
                w.what, w.pod, w.at, w.code
            )
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "writes outside their writer's lease term:\n{}",
        foreign.join("\n")
    );
    let on_lost = on_lost.lock().unwrap().clone();
    let mut creates: BTreeMap<&str, usize> = BTreeMap::new();
    let mut deletes: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &writes {
        if let Some(name) = w.what.strip_prefix("create pods ") {
            if w.code == 201 {
                *creates.entry(name).or_default() += 1;
            }
        } else if let Some(name) = w.what.strip_prefix("delete pods ") {
            *deletes.entry(name).or_default() += 1;
        }
    }
    // A pod is created once. A slot's pod on the lost node is replaced under its second
    // name, and once the lost one is gone a later replacement may take the first name
    // again: a second create of a name on the lost node, after its delete, and no more.
    let twice: Vec<_> = (creates.iter())
        .filter(|(name, n)| {
            let deleted = deletes.get(*name).copied().unwrap_or(0);
            **n > 1 && !(on_lost.contains(**name) && **n == 2 && deleted >= 1)
        })
        .collect();
    assert!(twice.is_empty(), "pods created twice: {twice:?}");
    // A pod is deleted once; one on the lost node may be deleted again with no grace once
    // it is fenced, and no more.
    let twice: Vec<_> = (deletes.iter())
        .filter(|(name, n)| **n > 1 && !(on_lost.contains(**name) && **n == 2))
        .collect();
    assert!(twice.is_empty(), "pods deleted twice: {twice:?}");
    println!(
        "upgraded mid-rollout and mid-repair: the lease went from {leader} to {new_leader}; {} writes, each by the holder of its moment; {} pods created once each",
        writes.len(),
        creates.len()
    );
}
