//! A crash-looping revision on the local control plane: rolled back automatically, marked
//! failed and never retried, always to the revision that last served every replica; or,
//! with the Manual policy, stopped and left to a person. An abort is carried out, then
//! cleared.
//!
//! Pods are observed with a watch that runs from before the template changes until the
//! verdict, so that every intermediate state is checked, not only samples.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use perennial::api::{ResilientService, ANNOTATION_BAD_REVISION};
use serde_json::{json, Value};
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

// ------------------------------------------------------------------------------------------
// Where a rollback goes: after a rollout of v2 completes, a crash-looping v3 is rolled back
// to v2, never to the v1 that v2 replaced, however fast v3 follows v2 and whatever is still
// terminating. Twenty cycles back to back in one service: half of them send v3 as a user
// would, once the status says every replica is updated and available; the other half the
// moment the pods show the last slot Ready on v2, before the operator has had a pass to
// record anything.

const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";
const CYCLES_TIMEOUT: Duration = Duration::from_secs(120);
/// Replicas of the rollback-target cycles.
const TARGET_REPLICAS: i32 = 8;
const CYCLES: usize = 20;

fn template(image: &str, crash_loop: bool) -> Value {
    json!({"spec": {"template": {
        "metadata": {"labels": {CHAOS_LABEL: if crash_loop { Value::from("crash-loop") } else { Value::Null }}},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }}})
}

/// The status says what a user waits for: every replica updated and available, and every
/// pod that is not on its way out runs `rev`.
async fn wait_status_says_rolled_out(api: &Api<ResilientService>, pods: &Api<Pod>, rev: &str) {
    wait_for(
        "the status to say the rollout is done",
        CYCLES_TIMEOUT,
        || async move {
            let s = status(&api.get("web").await.map_err(|e| e.to_string())?);
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let live: Vec<&Pod> = list.items.iter().filter(|p| !terminating(p)).collect();
            let done = s.update_revision.as_deref() == Some(rev)
                && s.updated_replicas == TARGET_REPLICAS
                && s.available_replicas == TARGET_REPLICAS
                && live.len() == TARGET_REPLICAS as usize
                && live.iter().all(|p| revision(p) == rev);
            done.then_some(()).ok_or(format!(
                "updated {} available {} live {}",
                s.updated_replicas,
                s.available_replicas,
                live.len()
            ))
        },
    )
    .await
}

/// The pods show every slot Ready on `rev`; whatever the status says.
async fn wait_pods_serve(pods: &Api<Pod>, rev: &str) {
    let deadline = Instant::now() + CYCLES_TIMEOUT;
    loop {
        let list = pods.list(&ListParams::default()).await.expect("list pods");
        let serving = (0..TARGET_REPLICAS).all(|s| {
            list.items
                .iter()
                .any(|p| slot(p) == s && revision(p) == rev && ready(p) && !terminating(p))
        });
        if serving {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the slots never all served {rev}"
        );
        // As tight as the API server allows without hammering it: the point is to beat
        // the operator's next pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the rollback; fails at once if it goes anywhere but `to`.
async fn wait_rolled_back(
    api: &Api<ResilientService>,
    pods: &Api<Pod>,
    to: &str,
    older: &[String],
) {
    wait_for("the rollback", CYCLES_TIMEOUT, || async move {
        let svc = api.get("web").await.map_err(|e| e.to_string())?;
        let s = status(&svc);
        let current = s.current_revision.clone().unwrap_or_default();
        assert!(
            !older.contains(&current),
            "rolled back to {current}, older than {to} which served every replica"
        );
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let live: Vec<&Pod> = list.items.iter().filter(|p| !terminating(p)).collect();
        for p in &live {
            assert!(
                !older.iter().any(|o| o == revision(p)),
                "pod {} was made at the older revision {}",
                p.name_any(),
                revision(p)
            );
        }
        let done = condition_status(&svc, "RolledBack").as_deref() == Some("True")
            && current == to
            && s.available_replicas == TARGET_REPLICAS
            && live.len() == TARGET_REPLICAS as usize
            && live.iter().all(|p| revision(p) == to && ready(p));
        done.then_some(()).ok_or(format!(
            "current {current} available {} live {} reason {:?}",
            s.available_replicas,
            live.len(),
            s.reason
        ))
    })
    .await
}

#[tokio::test]
async fn twenty_bad_templates_right_after_good_rollouts_each_go_back_to_the_good_one() {
    let ns = TestNamespace::new("rollback-target").await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({
        "update": {"maxSurge": 1, "maxUnavailable": 1, "minReadySeconds": 0,
                   "progressDeadlineSeconds": 30, "rollback": "Automatic"},
        "supervision": {"maxRestarts": 1},
    });
    let api = create_service(&ns, &service("web", TARGET_REPLICAS, "example/app:1", spec)).await;
    let pods: Api<Pod> = ns.api();
    let revisions: Api<ControllerRevision> = ns.api();
    let mut older = vec![wait_converged(&api, "web", CYCLES_TIMEOUT).await];

    let mut results = Vec::new();
    for cycle in 0..CYCLES {
        let racing = cycle % 2 == 1;
        let image = format!("example/app:{}", cycle + 2);
        let generation = merge_patch(&api, "web", template(&image, false))
            .await
            .metadata
            .generation;
        let good = wait_update_revision(
            &api,
            "web",
            generation.expect("a generation"),
            CYCLES_TIMEOUT,
        )
        .await;
        if racing {
            wait_pods_serve(&pods, &good).await;
        } else {
            wait_status_says_rolled_out(&api, &pods, &good).await;
        }
        let sent = Instant::now();
        let generation = merge_patch(&api, "web", template(&image, true))
            .await
            .metadata
            .generation;
        let recorded_then = status(&api.get("web").await.expect("get the service"))
            .current_revision
            .unwrap_or_default();
        let bad = wait_update_revision(
            &api,
            "web",
            generation.expect("a generation"),
            CYCLES_TIMEOUT,
        )
        .await;
        wait_rolled_back(&api, &pods, &good, &older).await;
        let took = sent.elapsed();
        let marked = revisions
            .get(&bad)
            .await
            .expect("the bad revision")
            .annotations()
            .contains_key(ANNOTATION_BAD_REVISION);
        assert!(marked, "revision {bad} is marked failed");
        println!(
            "cycle {cycle:2}: v3 sent {} (status then named {}), rolled back to {good} in {:.1} s",
            if racing {
                "as the last slot turned Ready"
            } else {
                "once the status said done"
            },
            if recorded_then == good { "v2" } else { "v1" },
            took.as_secs_f64()
        );
        results.push((racing, recorded_then == good));
        older.push(good);
    }
    let raced = results
        .iter()
        .filter(|(r, recorded)| *r && !recorded)
        .count();
    println!(
        "{CYCLES} cycles, every one back on its v2; in {raced} of them v3 arrived before the status named v2"
    );
}

#[tokio::test]
async fn an_abort_is_carried_out_then_cleared_so_the_next_rollout_goes_through() {
    let ns = TestNamespace::new("rollback-abort").await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"update": {"minReadySeconds": 0, "progressDeadlineSeconds": 600}});
    let api = create_service(&ns, &service("web", 3, "example/app:1", spec)).await;
    let v1 = wait_converged(&api, "web", CYCLES_TIMEOUT).await;

    // A rollout that waits for ever: its new pod never turns Ready.
    let stuck = json!({"spec": {"template": {
        "metadata": {"labels": {CHAOS_LABEL: "never-ready"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:2"}]}
    }}});
    let generation = merge_patch(&api, "web", stuck).await.metadata.generation;
    let v2 = wait_update_revision(
        &api,
        "web",
        generation.expect("a generation"),
        CYCLES_TIMEOUT,
    )
    .await;
    merge_patch(
        &api,
        "web",
        json!({"metadata": {"annotations": {"perennial.dev/abort": "true"}}}),
    )
    .await;
    wait_for(
        "the abort to roll back and be cleared",
        CYCLES_TIMEOUT,
        || async {
            let svc = api.get("web").await.map_err(|e| e.to_string())?;
            let s = status(&svc);
            let aborted = s.conditions.iter().any(|c| {
                c.type_ == "RolledBack" && c.status == "True" && c.reason == "RolloutAborted"
            });
            let cleared = !svc.annotations().contains_key("perennial.dev/abort");
            (aborted && cleared && s.current_revision.as_deref() == Some(v1.as_str()))
                .then_some(())
                .ok_or(format!(
                    "aborted {aborted} cleared {cleared} current {:?}",
                    s.current_revision
                ))
        },
    )
    .await;
    // The Event is written beside the status, not before it: wait for it.
    wait_event(&ns, "web", "AbortCleared").await;

    // The next template rolls out: nothing is left to abort it.
    merge_patch(&api, "web", template("example/app:3", false)).await;
    let v3 = wait_converged(&api, "web", CYCLES_TIMEOUT).await;
    assert_ne!(v3, v1);
    assert_ne!(v3, v2);
}
