//! Rollouts: surge and floor, partitions, canary steps, pauses, aborts and rollbacks.

use super::properties::arb_case;
use super::*;
use crate::api::{Canary, CanaryStep, Pause, RollbackPolicy, ANNOTATION_ABORT, ANNOTATION_PROMOTE};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn with_pod(seen: &mut Assessment, svc: &ResilientService, slot: i32, rev: &str, state: PodState) {
    seen.pods.push(PodView {
        state,
        ..ready_pod(svc, slot, rev)
    });
}

fn annotate(svc: &mut ResilientService, key: &str, value: &str) {
    svc.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
}

fn creates_at(p: &Plan, rev: &str) -> Vec<i32> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod {
                ordinal, revision, ..
            } if revision == rev => Some(*ordinal),
            _ => None,
        })
        .collect()
}

fn condition<'a>(p: &'a Plan, type_: &str) -> Option<(&'a str, &'a str)> {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn marked_bad(p: &Plan) -> bool {
    p.actions
        .iter()
        .any(|a| matches!(a, Action::MarkRevisionBad { .. }))
}

fn crash(restarts: i32) -> PodState {
    PodState::CrashLooping {
        reason: "CrashLoopBackOff".into(),
        message: "container app restarted".into(),
        restarts,
    }
}

#[test]
fn a_recreated_revision_that_never_serves_does_not_become_current_and_is_rolled_back() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    svc.spec.update.strategy = crate::api::UpdateStrategy::Recreate;
    // Every old pod is gone; each slot runs the new revision and crash-loops.
    seen.pods.clear();
    for slot in 0..3 {
        with_pod(&mut seen, &svc, slot, &new, PodState::Starting);
    }
    let p = pass(&mut svc, &seen);
    assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));
    let max_restarts = svc.spec.supervision.max_restarts;
    for pod in &mut seen.pods {
        pod.state = crash(max_restarts);
    }
    let p = pass(&mut svc, &at(120, &seen));
    assert_eq!(
        p.status.current_revision.as_deref(),
        Some(old.as_str()),
        "pods that run a revision without serving do not make it current"
    );
    assert_eq!(
        condition(&p, crate::api::condition::ROLLED_BACK).map(|c| c.0),
        Some("True"),
        "{:?}",
        p.status.conditions
    );
    assert_eq!(creates_at(&pass(&mut svc, &seen), &new), Vec::<i32>::new());
    // Once it serves, it is current.
    let (mut svc, mut seen, _old, new) = upgraded(3);
    seen.pods.clear();
    for slot in 0..3 {
        seen.pods.push(ready_pod(&svc, slot, &new));
    }
    let p = pass(&mut svc, &seen);
    assert_eq!(p.status.current_revision.as_deref(), Some(new.as_str()));
}

#[test]
fn a_replaced_pod_leaves_room_for_a_surge_pod_only_once_it_is_terminating() {
    // The operator creates before it deletes: a pod deleted in a pass still runs while
    // the pass's new pods are created.
    let (mut svc, mut seen, old, new) = upgraded(12);
    svc.spec.update.max_surge = IntOrString::Int(3);
    svc.spec.update.max_unavailable = IntOrString::Int(2);
    let ready = seen.pods[0].state.clone();
    with_pod(&mut seen, &svc, 11, &new, ready);
    with_pod(&mut seen, &svc, 10, &new, PodState::Starting);
    with_pod(&mut seen, &svc, 9, &new, PodState::Starting);
    let p = plan(&svc, &seen);
    assert!(p.actions.contains(&Action::DeletePod {
        name: pod_name(&svc, 11, &old),
        reason: format!("replaced by {} at revision {new}", pod_name(&svc, 11, &new)),
    }));
    let creates = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::CreatePod { .. }))
        .count();
    assert_eq!(
        creates, 0,
        "15 pods run: no room until one terminates: {:?}",
        p.actions
    );

    seen.pods
        .iter_mut()
        .find(|p| p.name == pod_name(&svc, 11, &old))
        .unwrap()
        .state = PodState::Terminating;
    let creates = creates_at(&plan(&svc, &seen), &new);
    assert_eq!(creates.len(), 1, "{creates:?}");
}

#[test]
fn a_slot_waiting_for_its_new_pod_counts_against_the_surge_ceiling() {
    // Slots 7 and 8 were replaced in place; the slot planner refills them as soon as
    // there is room, maybe in the same pass as deletions that make the room.
    let (mut svc, mut seen, _old, new) = upgraded(12);
    svc.spec.update.max_surge = IntOrString::Int(3);
    svc.spec.update.max_unavailable = IntOrString::Int(2);
    seen.pods.retain(|p| p.slot != 7 && p.slot != 8);
    for slot in [11, 10, 9] {
        with_pod(&mut seen, &svc, slot, &new, PodState::Starting);
    }
    let p = plan(&svc, &seen);
    assert_eq!(
        creates_at(&p, &new),
        Vec::<i32>::new(),
        "13 pods and 2 slots to refill make 15: no room to surge: {:?}",
        p.actions
    );
}

#[test]
fn manual_rollback_stops_keeps_the_failing_pod_and_does_not_retry() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    svc.spec.update.rollback = RollbackPolicy::Manual;
    svc.spec.supervision.max_restarts = 2;
    pass(&mut svc, &seen);
    with_pod(&mut seen, &svc, 2, &new, crash(2));
    let p = pass(&mut svc, &seen);
    assert_eq!(p.status.reason.as_deref(), Some("RolloutFailed"));
    assert!(!marked_bad(&p), "Manual leaves the verdict to a person");
    assert_eq!(
        p.actions,
        vec![],
        "stopped where it is: the failing pod stays for a person to look at"
    );
    assert_eq!(
        condition(&p, "Progressing"),
        Some(("False", "RolloutFailed"))
    );
    let waiting = p.status.rollout.as_ref().unwrap().waiting_for.clone();
    assert!(waiting.unwrap().starts_with("a person: "));

    // The failing pod is deleted by a person: the rollout stays stopped, nothing new is
    // made at the failed revision, and the slot keeps its old pod.
    seen.pods.retain(|p| p.revision == old);
    let p = pass(&mut svc, &at(5, &seen));
    assert_eq!(p.status.reason.as_deref(), Some("RolloutFailed"));
    assert_eq!(creates_at(&p, &new), Vec::<i32>::new(), "{:?}", p.actions);
    assert_eq!(p.actions, vec![]);

    // A new template starts a new rollout.
    let newer = new_template(&mut svc, &mut seen, "example/app:3", 3);
    let p = pass(&mut svc, &at(10, &seen));
    assert_eq!(p.status.reason, None);
    assert_eq!(creates_at(&p, &newer), vec![2]);
}

#[test]
fn no_slot_moves_while_a_pod_of_the_new_revision_is_being_deleted() {
    // The pass after a rollback deleted a failing pod may read caches that do not show
    // the revision marked failed yet: it must not try the revision on another slot.
    let (mut svc, mut seen, _old, new) = upgraded(3);
    pass(&mut svc, &seen);
    with_pod(&mut seen, &svc, 2, &new, PodState::Terminating);
    let p = plan(&svc, &seen);
    assert_eq!(creates_at(&p, &new), Vec::<i32>::new(), "{:?}", p.actions);
    seen.pods.retain(|p| p.revision != new);
    assert_eq!(creates_at(&plan(&svc, &seen), &new), vec![2]);
}

#[test]
fn abort_rolls_back_under_the_manual_policy_too() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    svc.spec.update.rollback = RollbackPolicy::Manual;
    pass(&mut svc, &seen);
    with_pod(&mut seen, &svc, 2, &new, PodState::Starting);
    annotate(&mut svc, ANNOTATION_ABORT, "true");
    let p = pass(&mut svc, &seen);
    assert!(marked_bad(&p), "{:?}", p.actions);
    assert_eq!(
        condition(&p, "RolledBack"),
        Some(("True", "RolloutAborted"))
    );
    assert!(p.actions.contains(&Action::DeletePod {
        name: pod_name(&svc, 2, &new),
        reason: format!("replaced by {} at revision {old}", pod_name(&svc, 2, &old)),
    }));
}

#[test]
fn a_promotion_left_from_an_earlier_rollout_does_not_promote_the_next_one() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    svc.spec.update.canary = Some(Canary {
        steps: vec![
            CanaryStep {
                replicas: Some(IntOrString::Int(1)),
                pause: None,
            },
            CanaryStep {
                replicas: None,
                pause: Some(Pause::default()),
            },
        ],
    });
    // The value that promoted the previous rollout is still on the object.
    annotate(&mut svc, ANNOTATION_PROMOTE, "1700000000");
    let p = pass(&mut svc, &seen);
    assert_eq!(creates_at(&p, &new), vec![2], "step 0 moves one slot");
    seen.pods.retain(|p| p.slot != 2);
    let ready = seen.pods[0].state.clone();
    with_pod(&mut seen, &svc, 2, &new, ready);
    let p = pass(&mut svc, &at(5, &seen));
    let rollout = p.status.rollout.clone().unwrap();
    assert_eq!(rollout.canary_step, Some(1), "{rollout:?}");
    assert!(rollout.waiting_for.unwrap().contains("promotion"));
    assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
    assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));

    annotate(&mut svc, ANNOTATION_PROMOTE, "1700000100");
    let p = pass(&mut svc, &at(10, &seen));
    assert_eq!(p.status.rollout.as_ref().unwrap().canary_step, Some(2));
    assert_eq!(creates_at(&p, &new), vec![1]);
}

#[test]
fn unpausing_after_a_pause_longer_than_the_deadline_resumes_the_rollout() {
    let (mut svc, seen, _old, new) = upgraded(3);
    svc.spec.update.progress_deadline_seconds = 10;
    svc.spec.paused = true;
    let p = pass(&mut svc, &seen);
    assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
    let p = pass(&mut svc, &at(60, &seen));
    assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
    assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));

    svc.spec.paused = false;
    let p = pass(&mut svc, &at(120, &seen));
    assert!(!marked_bad(&p), "{:?}", p.actions);
    assert_ne!(condition(&p, "RolledBack").map(|c| c.0), Some("True"));
    assert_eq!(creates_at(&p, &new), vec![2]);
    let p = pass(&mut svc, &at(125, &seen));
    assert!(!marked_bad(&p));
    assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));
}

#[test]
fn a_rollout_held_at_its_partition_is_not_stalled_and_resumes_when_it_is_lowered() {
    let (mut svc, mut seen, old, new) = upgraded(4);
    svc.spec.update.progress_deadline_seconds = 10;
    svc.spec.update.partition = 2;
    pass(&mut svc, &seen);
    let ready = seen.pods[0].state.clone();
    seen.pods.retain(|p| p.slot < 2);
    with_pod(&mut seen, &svc, 2, &new, ready.clone());
    with_pod(&mut seen, &svc, 3, &new, ready);
    let p = pass(&mut svc, &at(5, &seen));
    let rollout = p.status.rollout.clone().unwrap();
    assert!(rollout.waiting_for.unwrap().contains("partition"));
    for later in [60, 600] {
        let p = pass(&mut svc, &at(later, &seen));
        assert!(!marked_bad(&p), "{:?}", p.actions);
        assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));
    }

    svc.spec.update.partition = 0;
    let p = pass(&mut svc, &at(700, &seen));
    assert!(!marked_bad(&p), "{:?}", p.actions);
    assert_eq!(creates_at(&p, &new), vec![1]);
}

proptest! {
    /// The operator creates before it deletes, so a pass's creates land while its
    /// deletions still run. Pods plus slots waiting for one never pass the surge
    /// ceiling because of a pass (unless they were past it before).
    #[test]
    fn creates_landing_before_deletions_stay_within_the_surge_ceiling((svc, seen) in arb_case()) {
        let mut seen = seen;
        seen.pods.retain(|p| p.slot < svc.spec.replicas);
        let replicas = svc.spec.replicas;
        // A pod on its way out (deleted, drained, or on a lost node with its deletion
        // started) leaves its slot waiting for a pod, as the surge ceiling counts them.
        let live =
            |p: &PodView| !p.state.is_leaving() && !matches!(p.state, PodState::Failed { .. });
        let taken = |s: &Assessment| {
            let pods = s.pods.iter().filter(|p| live(p)).count();
            let vacant = (0..replicas)
                .filter(|slot| !s.pods.iter().any(|p| p.slot == *slot && live(p)))
                .count();
            pods + vacant
        };
        let creates: Vec<Action> = plan(&svc, &seen)
            .actions
            .into_iter()
            .filter(|a| !matches!(a, Action::DeletePod { .. } | Action::ForceDeletePod { .. }))
            .collect();
        let landed = apply(&svc, &seen, &creates);
        let surge = resolve(&svc.spec.update.max_surge, replicas, true) as usize;
        prop_assert!(
            taken(&landed) <= (replicas as usize + surge).max(taken(&seen)),
            "{} -> {}: {:?}",
            taken(&seen),
            taken(&landed),
            creates
        );
    }
}
