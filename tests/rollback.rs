//! A crash-looping revision on the local control plane: rolled back automatically, marked
//! failed and never retried; or, with the Manual policy, stopped and left to a person.
//!
//! Pods are observed with a watch that runs from before the template changes until the
//! verdict, so that every intermediate state is checked, not only samples.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use perennial::api::ANNOTATION_BAD_REVISION;
use serde_json::json;
use support::pods::*;
use support::service::*;
use support::watch::*;
use support::*;

/// Time for a rollout and its verdict on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
const REPLICAS: i32 = 3;
/// Longer than two crash-loop detections: a retried revision, or a move, would show up.
const QUIET: Duration = Duration::from_secs(15);

/// A service `api` of three replicas with rollback policy `policy`, rolled out, then
/// changed to a template that crash-loops; returns the old and the bad revision and the
/// watch, started before the change.
async fn crash_looping_rollout(ns: &TestNamespace, policy: &str) -> (String, String, Watch) {
    let spec = json!({"supervision": {"maxRestarts": 2}, "update": {"rollback": policy}});
    let svc = service("api", REPLICAS, "example/app:1", spec);
    let (api, old, watch) = watched_service(ns, &svc).await;
    let bad = change_spec(&api, "api", crash_looping("api")).await;
    assert_ne!(bad, old);
    (old, bad, watch)
}

/// Waits for an Event about `name` with reason `reason`.
async fn wait_event(ns: &TestNamespace, name: &str, reason: &str) {
    let events: Api<KubeEvent> = ns.api();
    wait_for(&format!("a {reason} Event"), TIMEOUT, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let reasons: Vec<String> = list.iter().filter_map(|e| e.reason.clone()).collect();
            let found = list.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            });
            found.then_some(()).ok_or(format!("{reasons:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn crash_looping_revision_is_rolled_back_automatically_marked_failed_and_not_retried() {
    let ns = TestNamespace::new("roll-back").await;
    let _operator = Operator::with_crd(&ns).await;
    let (old, bad, mut watch) = crash_looping_rollout(&ns, "Automatic").await;
    let mut bad_pods = BTreeSet::new();
    watch
        .until(
            "the rollback to the old revision",
            TIMEOUT,
            |w| uids_at(w, &bad, &mut bad_pods),
            |w| {
                let svc = w.svc();
                let s = status(svc);
                let rolled_back = condition(svc, "RolledBack");
                let live: Vec<&Pod> = w.pods().filter(|p| alive(p)).collect();
                let done = current_generation(svc)
                    && rolled_back.as_ref().is_some_and(|(st, _)| st == "True")
                    && condition_status(svc, "Available").as_deref() == Some("True")
                    && s.available_replicas == REPLICAS
                    && s.current_revision.as_deref() == Some(old.as_str())
                    && s.updated_replicas == 0
                    && live.len() == REPLICAS as usize
                    && live.iter().all(|p| revision(p) == old && ready(p));
                done.then_some(()).ok_or(format!(
                    "RolledBack={rolled_back:?} reason={:?} current={:?} updated={} available={}",
                    s.reason, s.current_revision, s.updated_replicas, s.available_replicas
                ))
            },
        )
        .await;
    assert!(!bad_pods.is_empty(), "a pod of the bad revision was tried");
    assert_eq!(status(watch.svc()).reason.as_deref(), Some("RolledBack"));

    // The failed revision carries the annotation, and an Event tells the story.
    let annotations = revision_annotations(&ns, &bad).await;
    assert!(
        annotations.contains_key(ANNOTATION_BAD_REVISION),
        "revision {bad} is marked failed: {annotations:?}"
    );
    wait_event(&ns, "api", "RolledBack").await;

    // Not retried: with the template unchanged, a deleted pod comes back at the old
    // revision, and no pod of the bad revision is made again.
    let replacement = watch
        .replace_pod(&ns, 1, |w| uids_at(w, &bad, &mut bad_pods))
        .await;
    assert_eq!(revision(&replacement), old);
    watch
        .hold(QUIET, |w| {
            uids_at(w, &bad, &mut bad_pods);
            for p in w.pods().filter(|p| alive(p)) {
                assert_eq!(
                    revision(p),
                    old,
                    "{} is not on the old revision",
                    p.name_any()
                );
            }
            assert_eq!(
                condition_status(w.svc(), "RolledBack").as_deref(),
                Some("True")
            );
        })
        .await;
    assert_eq!(
        bad_pods.len(),
        1,
        "the bad revision was tried once (maxSurge 1), never again: {bad_pods:?}"
    );
}

#[tokio::test]
async fn manual_rollback_policy_stops_a_crash_looping_rollout_and_keeps_unmoved_slots_old() {
    let ns = TestNamespace::new("roll-manual").await;
    let _operator = Operator::with_crd(&ns).await;
    let (old, bad, mut watch) = crash_looping_rollout(&ns, "Manual").await;
    let mut bad_pods = BTreeSet::new();
    let mut moved_slots = BTreeSet::new();
    watch
        .until(
            "the rollout to be marked failed",
            TIMEOUT,
            |w| {
                uids_at(w, &bad, &mut bad_pods);
                moved_slots.extend(w.pods().filter(|p| revision(p) == bad).map(slot));
            },
            |w| {
                let s = status(w.svc());
                (current_generation(w.svc()) && s.reason.as_deref() == Some("RolloutFailed"))
                    .then_some(())
                    .ok_or(format!("reason={:?} rollout={:?}", s.reason, s.rollout))
            },
        )
        .await;
    let s = status(watch.svc());
    println!(
        "manual stop: reason {:?}, waiting for {:?}",
        s.reason,
        s.rollout.as_ref().and_then(|r| r.waiting_for.clone())
    );
    assert!(
        s.rollout
            .as_ref()
            .and_then(|r| r.waiting_for.as_deref())
            .is_some_and(|w| w.contains("a person")),
        "{:?}",
        s.rollout
    );

    // Stopped: nothing moves and it stays failed.
    watch
        .hold(QUIET, |w| {
            uids_at(w, &bad, &mut bad_pods);
            moved_slots.extend(w.pods().filter(|p| revision(p) == bad).map(slot));
            let svc = w.svc();
            let s = status(svc);
            assert_eq!(
                s.reason.as_deref(),
                Some("RolloutFailed"),
                "{:?}",
                s.rollout
            );
            assert_eq!(condition_status(svc, "Available").as_deref(), Some("True"));
            assert_ne!(
                condition_status(svc, "RolledBack").as_deref(),
                Some("True"),
                "Manual does not roll back"
            );
        })
        .await;
    assert_eq!(
        bad_pods.len(),
        1,
        "one pod of the failing revision (maxSurge 1), kept for a person to look at, not made again: {bad_pods:?}"
    );
    for s in 0..REPLICAS {
        let old_ready = watch
            .pods()
            .any(|p| alive(p) && slot(p) == s && revision(p) == old && ready(p));
        assert!(
            old_ready,
            "slot {s} keeps its old pod: {}",
            watch.describe()
        );
        if !moved_slots.contains(&s) {
            assert!(watch
                .pods()
                .filter(|p| slot(p) == s)
                .all(|p| revision(p) == old));
        }
    }
    let annotations = revision_annotations(&ns, &bad).await;
    assert!(
        !annotations.contains_key(ANNOTATION_BAD_REVISION),
        "Manual leaves the verdict to a person"
    );
}
