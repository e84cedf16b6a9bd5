//! On KWOK nodes: every pod that may serve is drained (its readiness gate closed) before it
//! is deleted; upgrades in place keep every pod and roll a crash-looping revision back in
//! place; TerminationComplete keeps terminating pods under the surge ceiling.
//!
//! KWOK plays the kubelet's part: Ready follows the readiness gate, and a container whose
//! image is changed on a running pod is restarted (e2e/cluster/stages/pod.yaml).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::PostParams;
use kube::ResourceExt;
use perennial::api::GATE_SERVING;
use serde_json::json;
use support::pods::*;
use support::service::*;
use support::watch::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(180);
const IMAGE: &str = "example/app:1";

/// The pod's readiness gate condition: Some(true) open, Some(false) closed.
fn gate(pod: &Pod) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == GATE_SERVING)
        .map(|c| c.status == "True")
}

fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// A ClusterIP Service in front of the pods of `name`, so that EndpointSlices list them.
async fn fronted(ns: &TestNamespace, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-front")},
        "spec": {"selector": {"perennial.dev/service": name}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    ns.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await
        .expect("create the Service");
}

#[tokio::test]
async fn every_pod_deleted_by_a_rolling_update_and_a_scale_down_was_drained_first() {
    let ns = TestNamespace::new("drain").await;
    let _operator = Operator::with_crd(&ns).await;
    fronted(&ns, "web").await;
    let update = json!({"update": {"maxSurge": 1, "maxUnavailable": 0}});
    let (api, _, mut watch) = watched_service(&ns, &service("web", 4, IMAGE, update)).await;
    assert!(
        watch.pods().all(|p| gate(p) == Some(true) && ready(p)),
        "every pod serves through an open gate: {}",
        watch.describe()
    );
    // The first sight of a deletion, per pod: was the gate closed and the pod unready then?
    let mut deletions: BTreeMap<String, (Option<bool>, bool)> = BTreeMap::new();
    let mut record = |w: &Watch| {
        for p in w.pods().filter(|p| terminating(p)) {
            deletions.entry(p.name_any()).or_insert((gate(p), ready(p)));
        }
    };
    let new = change_spec(&api, "web", new_image("example/app:2")).await;
    watch
        .until("the rollout to complete", TIMEOUT, &mut record, |w| {
            complete(w.svc(), 4, &new)
        })
        .await;
    scale(&api, "web", 2).await;
    watch
        .until("the scale-down to 2", TIMEOUT, &mut record, |w| {
            let live = w.pods().filter(|p| alive(p)).count();
            (live == 2 && complete(w.svc(), 2, &new).is_ok())
                .then_some(())
                .ok_or(w.describe())
        })
        .await;
    println!("deletions seen (gate, ready at the first sight of the deletion): {deletions:?}");
    assert!(
        deletions.len() >= 6,
        "4 old pods and 2 scaled away: {deletions:?}"
    );
    for (pod, (gate, ready)) in &deletions {
        assert_eq!(*gate, Some(false), "{pod} was deleted with its gate open");
        assert!(!ready, "{pod} was deleted while Ready");
    }
}

#[tokio::test]
async fn an_image_change_in_place_keeps_every_pod_its_name_uid_and_node_and_restarts_it() {
    let ns = TestNamespace::new("in-place").await;
    let _operator = Operator::with_crd(&ns).await;
    fronted(&ns, "web").await;
    let replicas = 4;
    let update = json!({"update": {"inPlace": "IfPossible", "maxUnavailable": 1}});
    let (api, _, mut watch) = watched_service(&ns, &service("web", replicas, IMAGE, update)).await;
    let before: BTreeMap<String, (String, String)> = watch
        .pods()
        .map(|p| (p.name_any(), (uid(p), node_of(p))))
        .collect();
    let mut bounds = FloorAndCeiling::new(replicas - 1, replicas);
    let new = change_spec(&api, "web", new_image("example/app:2")).await;
    watch
        .until(
            "the in-place rollout to complete",
            TIMEOUT,
            |w| bounds.observe(w),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    let after: BTreeMap<String, (String, String)> = watch
        .pods()
        .map(|p| (p.name_any(), (uid(p), node_of(p))))
        .collect();
    println!(
        "in-place rollout of {replicas}: minimum available {}, maximum alive {}, {} observations",
        bounds.min_available, bounds.max_alive, watch.observations
    );
    assert_eq!(after, before, "the same pods, on the same nodes");
    for p in watch.pods() {
        assert_eq!(revision(p), new, "{} runs the new revision", p.name_any());
        assert_eq!(image(p), "example/app:2");
        assert_eq!(restarts(p), 1, "{} was restarted once", p.name_any());
        assert_eq!(gate(p), Some(true), "{} serves again", p.name_any());
    }
    assert!(
        bounds.violations.is_empty(),
        "{:?}",
        bounds.violations.first()
    );
}

#[tokio::test]
async fn a_revision_that_crash_loops_after_an_in_place_patch_is_rolled_back_in_place() {
    let ns = TestNamespace::new("in-place-back").await;
    let _operator = Operator::with_crd(&ns).await;
    let update = json!({"update": {"inPlace": "IfPossible", "maxUnavailable": 1}});
    let spec = merged(update, json!({"supervision": {"maxRestarts": 2}}));
    let (api, old, mut watch) = watched_service(&ns, &service("web", 3, IMAGE, spec)).await;
    let uids: Vec<String> = watch.pods().map(uid).collect();
    // A new image and a label that makes KWOK crash-loop the container: both move in place.
    let bad = change_spec(
        &api,
        "web",
        merged(new_image("example/app:2"), crash_looping("web")),
    )
    .await;
    watch
        .until(
            "the crash-looping revision to be rolled back",
            TIMEOUT,
            |_| {},
            |w| {
                let s = status(w.svc());
                let back = s.current_revision.as_deref() == Some(old.as_str())
                    && condition_status(w.svc(), "RolledBack").as_deref() == Some("True");
                let serving = w.pods().filter(|p| alive(p)).count() == 3
                    && w.pods()
                        .all(|p| revision(p) == old && gate(p) == Some(true) && ready(p));
                (back && serving && s.available_replicas == 3)
                    .then_some(())
                    .ok_or(format!("{} | {}", ledger(w.svc()), w.describe()))
            },
        )
        .await;
    let mut now: Vec<String> = watch.pods().map(uid).collect();
    let mut was = uids.clone();
    now.sort();
    was.sort();
    assert_eq!(now, was, "rolled back in place: the same pods");
    assert!(watch
        .pods()
        .all(|p| image(p) == IMAGE && revision(p) == old));
    assert!(
        revision_annotations(&ns, &bad)
            .await
            .contains_key(perennial::api::ANNOTATION_BAD_REVISION),
        "the crash-looping revision is marked failed"
    );
}

#[tokio::test]
async fn a_change_a_running_pod_cannot_take_replaces_the_pods_even_with_in_place_asked_for() {
    let ns = TestNamespace::new("in-place-no").await;
    let _operator = Operator::with_crd(&ns).await;
    let update = json!({"update": {"inPlace": "IfPossible"}});
    let (api, _, mut watch) = watched_service(&ns, &service("web", 2, IMAGE, update)).await;
    let before: Vec<String> = watch.pods().map(uid).collect();
    let env = json!({"template": {"spec": {"containers": [{"name": "app", "image": IMAGE,
        "env": [{"name": "MODE", "value": "fast"}]}]}}});
    let new = change_spec(&api, "web", env).await;
    watch.until_complete("the rollout", 2, &new).await;
    assert!(
        watch
            .pods()
            .filter(|p| alive(p))
            .all(|p| !before.contains(&uid(p))),
        "an env change needs new pods: {}",
        watch.describe()
    );
}

#[tokio::test]
async fn with_termination_complete_terminating_pods_count_toward_the_surge_ceiling() {
    let ns = TestNamespace::new("until-gone").await;
    let _operator = Operator::with_crd(&ns).await;
    let (replicas, surge) = (6, 1);
    let update = json!({"update": {"maxSurge": surge, "maxUnavailable": 0,
        "podReplacementPolicy": "TerminationComplete"}});
    let (api, _, mut watch) = watched_service(&ns, &service("web", replicas, IMAGE, update)).await;
    let (mut max_existing, mut over) = (0usize, Vec::new());
    let new = change_spec(&api, "web", new_image("example/app:2")).await;
    watch
        .until(
            "the rollout to complete",
            TIMEOUT,
            |w| {
                // Terminating pods count: only ended ones do not.
                let existing = w.pods().filter(|p| !ended(p)).count();
                max_existing = max_existing.max(existing);
                if existing > (replicas + surge) as usize {
                    over.push(w.describe());
                }
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    println!(
        "TerminationComplete: at most {max_existing} pods, terminating ones included (ceiling {})",
        replicas + surge
    );
    assert!(
        over.is_empty(),
        "{} observations over the ceiling, first: {:?}",
        over.len(),
        over.first()
    );
}
