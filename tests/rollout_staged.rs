//! Rollouts held on purpose, on the local control plane: a partition that moves only the
//! slots at or above it, canary steps that pause until promoted, and `spec.paused`. Held
//! past the progress deadline, none of them counts as stalled.
//!
//! Pods are observed with a watch that runs from before the template changes until the
//! rollout completes, so that every intermediate state is checked, not only samples.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use perennial::api::{ANNOTATION_BAD_REVISION, ANNOTATION_PROMOTE};
use serde_json::json;
use support::pods::*;
use support::service::*;
use support::watch::*;
use support::*;

/// Time for a whole rollout of a few pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
const IMAGE: &str = "example/app:1";

/// Promotes the paused canary of `name` with the annotation's value `value`.
fn promote(ns: &TestNamespace, name: &str, value: &str) {
    let annotation = format!("{ANNOTATION_PROMOTE}={value}");
    let (ok, out, err) = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "rsvc",
        name,
        &annotation,
        "--overwrite",
    ]);
    assert!(ok, "kubectl annotate: {out} {err}");
}

/// Not rolled back: the RolledBack condition is not True.
fn not_rolled_back(w: &Watch, what: &str) {
    let svc = w.svc();
    assert_ne!(
        condition_status(svc, "RolledBack").as_deref(),
        Some("True"),
        "{what}: {:?}",
        status(svc).conditions
    );
}

#[tokio::test]
async fn partition_moves_only_the_slots_at_or_above_it_and_holds_the_rest() {
    let ns = TestNamespace::new("roll-partition").await;
    let _operator = Operator::with_crd(&ns).await;
    let replicas = 4;
    // A short deadline: a rollout held at its partition is waiting on purpose, not stuck.
    let deadline = 5;
    let update = json!({"update": {"partition": 2, "progressDeadlineSeconds": deadline}});
    let (api, old, mut watch) = watched_service(&ns, &service("kv", replicas, IMAGE, update)).await;

    let new = change_spec(&api, "kv", new_image("example/kv:2")).await;
    let below_stays_old = |w: &Watch| {
        for p in w.pods().filter(|p| slot(p) < 2) {
            assert_eq!(
                revision(p),
                old,
                "slot {} is below the partition: {}",
                slot(p),
                w.describe()
            );
        }
    };
    let at_partition = |w: &Watch| {
        let live: BTreeMap<i32, Vec<&Pod>> = w.pods().filter(|p| alive(p)).fold(
            BTreeMap::new(),
            |mut m: BTreeMap<i32, Vec<&Pod>>, p| {
                m.entry(slot(p)).or_default().push(p);
                m
            },
        );
        let want = |s: i32| if s >= 2 { new.as_str() } else { old.as_str() };
        let settled = (0..replicas).all(|s| {
            live.get(&s).is_some_and(|pods| {
                pods.len() == 1 && revision(pods[0]) == want(s) && ready(pods[0])
            })
        });
        let s = status(w.svc());
        (settled && s.updated_replicas == 2 && s.available_replicas == replicas)
            .then_some(())
            .ok_or(format!(
                "updated={} available={} pods: {}",
                s.updated_replicas,
                s.available_replicas,
                w.describe()
            ))
    };
    watch
        .until(
            "slots 2 and 3 to move",
            TIMEOUT,
            below_stays_old,
            at_partition,
        )
        .await;
    let s = status(watch.svc());
    assert_eq!(s.current_revision.as_deref(), Some(old.as_str()));
    assert_eq!(s.update_revision.as_deref(), Some(new.as_str()));

    // Held well past the progress deadline: nothing moves either way, nothing fails.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), |w| {
            below_stays_old(w);
            for p in w.pods().filter(|p| alive(p) && slot(p) >= 2) {
                assert_eq!(
                    revision(p),
                    new,
                    "slots 2 and 3 stay moved: {}",
                    w.describe()
                );
            }
            not_rolled_back(w, "a rollout held at its partition was rolled back");
        })
        .await;
    let annotations = revision_annotations(&ns, &new).await;
    assert!(!annotations.contains_key(ANNOTATION_BAD_REVISION));

    // Lowering the partition lets the rest move.
    patch_spec(&api, "kv", json!({"update": {"partition": 0}})).await;
    watch
        .until_complete("the rollout to complete", replicas, &new)
        .await;
}

#[tokio::test]
async fn canary_stops_with_one_new_pod_at_a_pause_until_promoted_then_completes() {
    let ns = TestNamespace::new("roll-canary").await;
    let _operator = Operator::with_crd(&ns).await;
    let replicas = 4;
    let deadline = 5;
    let update = json!({"update": {"progressDeadlineSeconds": deadline, "canary": {"steps": [
        {"replicas": 1}, {"pause": {}}, {"replicas": "50%"}
    ]}}});
    let (api, old, mut watch) =
        watched_service(&ns, &service("shop", replicas, IMAGE, update)).await;

    let new = change_spec(&api, "shop", new_image("example/shop:2")).await;
    let new_pods = |w: &Watch| w.pods().filter(|p| revision(p) == new).count();
    let at_most_one = |w: &Watch| {
        assert!(
            w.pods().filter(|p| revision(p) == new).count() <= 1,
            "more than one new pod before promotion: {}",
            w.describe()
        );
    };
    let rollout = watch
        .until("the canary to pause at step 1", TIMEOUT, at_most_one, |w| {
            let s = status(w.svc());
            let rollout = s.rollout.clone().ok_or("no rollout status")?;
            let one_new = w
                .pods()
                .filter(|p| revision(p) == new && available(p))
                .count()
                == 1;
            let paused = rollout.canary_step == Some(1)
                && rollout.paused_since.is_some()
                && rollout
                    .waiting_for
                    .as_deref()
                    .is_some_and(|w| w.contains("promot"));
            (one_new && paused && s.updated_replicas == 1 && s.available_replicas == replicas)
                .then_some(rollout.clone())
                .ok_or(format!("{rollout:?}; pods: {}", w.describe()))
        })
        .await;
    println!(
        "paused canary: step {:?}, waiting for {:?}",
        rollout.canary_step, rollout.waiting_for
    );
    assert_eq!(rollout.revision, new);

    // It stays there, well past the progress deadline.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), |w| {
            at_most_one(w);
            let s = status(w.svc());
            assert_eq!(s.updated_replicas, 1, "{:?}", s.rollout);
            assert_eq!(
                s.rollout.as_ref().and_then(|r| r.canary_step),
                Some(1),
                "{:?}",
                s.rollout
            );
            not_rolled_back(w, "a paused canary was rolled back");
        })
        .await;
    assert_eq!(new_pods(&watch), 1);

    promote(&ns, "shop", "first");
    let mut most_new = 0;
    watch
        .until(
            "the promoted rollout to complete",
            TIMEOUT,
            |w| most_new = most_new.max(new_pods(w)),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    watch
        .until(
            "the rollout status to be cleared",
            TIMEOUT,
            |_| {},
            |w| {
                let s = status(w.svc());
                s.rollout
                    .is_none()
                    .then_some(())
                    .ok_or(format!("{:?}", s.rollout))
            },
        )
        .await;
    println!("canary: at most {most_new} new pods at once after the promotion");
    let old_left: Vec<&Pod> = watch
        .pods()
        .filter(|p| alive(p) && revision(p) == old)
        .collect();
    assert!(old_left.is_empty(), "{}", watch.describe());
}

#[tokio::test]
async fn a_promotion_left_from_an_earlier_rollout_does_not_promote_the_next_one() {
    let ns = TestNamespace::new("roll-repromote").await;
    let _operator = Operator::with_crd(&ns).await;
    let replicas = 3;
    let canary = json!({"update": {"canary": {"steps": [{"replicas": 1}, {"pause": {}}]}}});
    let (api, _, mut watch) = watched_service(&ns, &service("shop", replicas, IMAGE, canary)).await;

    for (round, image) in ["example/shop:2", "example/shop:3"].into_iter().enumerate() {
        let new = change_spec(&api, "shop", new_image(image)).await;
        watch
            .until(
                &format!("rollout {round} to pause at the canary"),
                TIMEOUT,
                |w| {
                    let n = w.pods().filter(|p| revision(p) == new).count();
                    assert!(n <= 1, "round {round}: {}", w.describe());
                },
                |w| {
                    let rollout = status(w.svc()).rollout.ok_or("no rollout")?;
                    let one = w
                        .pods()
                        .filter(|p| revision(p) == new && available(p))
                        .count()
                        == 1;
                    (one && rollout.revision == new && rollout.canary_step == Some(1))
                        .then_some(())
                        .ok_or(format!("{rollout:?}"))
                },
            )
            .await;
        // Each round promotes with a value of its own; the first round's value, still on
        // the object, must not promote the second.
        promote(&ns, "shop", &format!("round-{round}"));
        watch
            .until_complete(&format!("rollout {round} to complete"), replicas, &new)
            .await;
    }
}

#[tokio::test]
async fn paused_service_does_not_roll_but_still_replaces_a_deleted_pod_and_resumes_when_unpaused() {
    let ns = TestNamespace::new("roll-paused").await;
    let _operator = Operator::with_crd(&ns).await;
    let replicas = 3;
    // A pause longer than the progress deadline must not count as a stalled rollout.
    let deadline = 5;
    let update = json!({"update": {"progressDeadlineSeconds": deadline}});
    let (api, old, mut watch) =
        watched_service(&ns, &service("web", replicas, IMAGE, update)).await;

    patch_spec(&api, "web", json!({"paused": true})).await;
    let new = change_spec(&api, "web", new_image("example/web:2")).await;
    let frozen = |w: &Watch| {
        assert!(
            w.pods().all(|p| revision(p) == old),
            "a pod moved while paused: {}",
            w.describe()
        );
    };
    watch
        .until(
            "the rollout to wait for spec.paused",
            TIMEOUT,
            frozen,
            |w| {
                let rollout = status(w.svc()).rollout.ok_or("no rollout status")?;
                (rollout.revision == new
                    && rollout
                        .waiting_for
                        .as_deref()
                        .is_some_and(|w| w.contains("paused")))
                .then_some(())
                .ok_or(format!("{rollout:?}"))
            },
        )
        .await;

    // Repairs go on while paused: a deleted pod comes back, at the old revision.
    let replacement = watch.replace_pod(&ns, 1, frozen).await;
    assert_eq!(revision(&replacement), old);
    // Paused well past the progress deadline.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), frozen)
        .await;

    patch_spec(&api, "web", json!({"paused": false})).await;
    watch
        .until(
            "the rollout to complete once unpaused",
            TIMEOUT,
            |w| not_rolled_back(w, "the resumed rollout was rolled back"),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    let annotations = revision_annotations(&ns, &new).await;
    assert!(!annotations.contains_key(ANNOTATION_BAD_REVISION));
}
