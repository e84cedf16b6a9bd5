//! Drain before delete, the readiness gate, in-place upgrades and the surge ceiling with
//! pods on their way out.

use super::*;
use crate::api::{InPlacePolicy, PodReplacementPolicy};
use crate::health::{Closed, Gate, Listing, Serving};

/// Every pod of `seen` carries an open gate, as pods this operator made do.
fn gated(seen: &mut Assessment) {
    for p in &mut seen.pods {
        p.serving.gate = Gate::Open;
    }
}

fn names<'a>(p: &'a Plan, kind: &str) -> Vec<&'a str> {
    p.actions
        .iter()
        .filter_map(|a| match (kind, a) {
            ("delete", Action::DeletePod { name, .. })
            | ("close", Action::CloseGate { name, .. })
            | ("open", Action::OpenGate { name })
            | ("upgrade", Action::UpgradeInPlace { name, .. })
            | ("create", Action::CreatePod { name, .. }) => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

fn secs(s: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() + s).unwrap()
}

/// A rolling update of 3 replicas whose surge pod for slot 2 is available: the old pod
/// of slot 2 is the one to go.
fn surge_done() -> (ResilientService, Assessment, String) {
    let (svc, mut seen, old, new) = upgraded(3);
    seen.pods.push(ready_pod(&svc, 2, &new));
    gated(&mut seen);
    let old2 = pod_name(&svc, 2, &old);
    (svc, seen, old2)
}

#[test]
fn a_pod_that_may_serve_has_its_gate_closed_instead_of_being_deleted() {
    let (mut svc, seen, old2) = surge_done();
    let p = pass(&mut svc, &seen);
    assert_eq!(names(&p, "close"), vec![old2.as_str()]);
    assert!(names(&p, "delete").is_empty(), "{:?}", p.actions);
    let waiting = p
        .status
        .rollout
        .as_ref()
        .and_then(|r| r.waiting_for.clone());
    assert!(waiting.is_some_and(|w| w.contains(&old2) && w.contains("drained")));
    let slot2 = &p.status.replica_statuses[2];
    assert!(slot2
        .waiting_for
        .as_deref()
        .is_some_and(|w| w.contains(&old2)));
}

#[test]
fn a_drained_pod_is_deleted_once_no_slice_shows_it_ready_and_the_proxies_settled() {
    let (mut svc, seen, old2) = surge_done();
    let closed = pass(&mut svc, &seen);
    let mut seen = apply(&svc, &seen, &closed.actions);
    fn retiring<'a>(seen: &'a mut Assessment, name: &str) -> &'a mut PodView {
        seen.pods.iter_mut().find(|p| p.name == name).unwrap()
    }
    // Still ready in a slice: it waits, however the rollout would go on.
    retiring(&mut seen, &old2).serving.listing = Listing::Ready;
    let p = pass(&mut svc, &at(5, &seen));
    assert!(names(&p, "delete").is_empty(), "{:?}", p.actions);
    assert!(p.requeue_after.is_some());
    // Not ready anywhere since 1 s ago: the settle (2 s by default) is not over.
    let r = retiring(&mut seen, &old2);
    r.serving.listing = Listing::NotReady;
    r.serving.drained_since = Some(secs(5));
    let p = pass(&mut svc, &at(6, &seen));
    assert!(names(&p, "delete").is_empty());
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(1)));
    let p = pass(&mut svc, &at(7, &seen));
    assert_eq!(names(&p, "delete"), vec![old2.as_str()]);
    assert!(
        matches!(&p.actions[..], [.., Action::DeletePod { reason, .. }] if reason == "drained")
    );
}

#[test]
fn a_drain_the_slices_never_confirm_ends_at_the_timeout() {
    let (mut svc, seen, old2) = surge_done();
    let closed = pass(&mut svc, &seen);
    let mut seen = apply(&svc, &seen, &closed.actions);
    seen.pods
        .iter_mut()
        .find(|p| p.name == old2)
        .unwrap()
        .serving
        .listing = Listing::Ready;
    let timeout = i64::from(svc.spec.drain.timeout_seconds);
    assert!(names(&pass(&mut svc, &at(timeout - 1, &seen)), "delete").is_empty());
    let p = pass(&mut svc, &at(timeout, &seen));
    assert!(
        matches!(&p.actions[..], [.., Action::DeletePod { name, reason }]
        if *name == old2 && reason.contains("timed out"))
    );
}

#[test]
fn a_pod_in_no_slice_that_routes_by_readiness_goes_as_soon_as_its_gate_is_closed() {
    let (mut svc, seen, old2) = surge_done();
    let closed = pass(&mut svc, &seen);
    let seen = apply(&svc, &seen, &closed.actions);
    assert_eq!(names(&pass(&mut svc, &seen), "delete"), vec![old2.as_str()]);
}

#[test]
fn pods_on_lost_nodes_failed_pods_and_pods_without_a_gate_are_not_drained() {
    let (mut svc, mut seen, old2) = surge_done();
    // An older pod, made before the operator added the gate.
    seen.pods
        .iter_mut()
        .find(|p| p.name == old2)
        .unwrap()
        .serving
        .gate = Gate::Absent;
    assert_eq!(names(&pass(&mut svc, &seen), "delete"), vec![old2.as_str()]);
    // A crash-looping pod is repaired at once.
    let mut svc = service(3, false);
    let mut seen = converged(&svc);
    gated(&mut seen);
    seen.pods[1].state = PodState::CrashLooping {
        reason: "CrashLoopBackOff".into(),
        message: "restarting".into(),
        restarts: 5,
    };
    let p = pass(&mut svc, &seen);
    assert_eq!(names(&p, "delete"), vec![seen.pods[1].name.as_str()]);
    assert!(names(&p, "close").is_empty());
}

#[test]
fn a_drained_pod_stays_on_its_way_out_and_its_slot_is_refilled() {
    // A Retiring pod of a slot the plan would keep: the closed gate is the record.
    let mut svc = service(3, false);
    let mut seen = converged(&svc);
    gated(&mut seen);
    let name = seen.pods[0].name.clone();
    seen.pods[0].serving.gate = Gate::Closed {
        since: now(),
        why: Closed::Retire,
    };
    seen.pods[0].serving.listing = Listing::Ready;
    seen.pods[0].state = PodState::Retiring { since: now() };
    let p = pass(&mut svc, &seen);
    assert!(names(&p, "open").is_empty(), "a drain is never undone");
    assert!(names(&p, "delete").is_empty());
    // The drained pod holds its place until it terminates (no create yet).
    assert!(names(&p, "create").is_empty(), "{:?}", p.actions);
    seen.pods[0].serving.listing = Listing::Unlisted;
    let p = pass(&mut svc, &seen);
    assert_eq!(names(&p, "delete"), vec![name.as_str()]);
    let seen = apply(&svc, &seen, &p.actions);
    let p = pass(&mut svc, &seen);
    assert_eq!(names(&p, "create").len(), 1, "{:?}", p.actions);
}

#[test]
fn a_new_pod_gets_its_gate_opened_once_its_containers_are_ready() {
    let mut svc = service(2, false);
    let mut seen = converged(&svc);
    for p in &mut seen.pods {
        p.state = PodState::NotReady { since: now() };
        p.serving = Serving {
            gate: Gate::Unset,
            containers_ready: false,
            ..Default::default()
        };
    }
    assert!(names(&pass(&mut svc, &seen), "open").is_empty());
    seen.pods[1].serving.containers_ready = true;
    assert_eq!(
        names(&pass(&mut svc, &seen), "open"),
        vec![seen.pods[1].name.as_str()]
    );
}

#[test]
fn a_scale_down_drains_the_pods_it_removes() {
    let mut svc = service(5, false);
    let mut seen = converged(&svc);
    gated(&mut seen);
    svc.spec.replicas = 2;
    let p = pass(&mut svc, &seen);
    let mut closed = names(&p, "close");
    closed.sort();
    let mut want: Vec<&str> = seen.pods[2..].iter().map(|p| p.name.as_str()).collect();
    want.sort();
    assert_eq!(closed, want);
    assert!(names(&p, "delete").is_empty());
}

/// A rollout of a new image with inPlace: IfPossible, every old pod gated and ready.
fn in_place(replicas: i32) -> (ResilientService, Assessment, String, String) {
    let (mut svc, mut seen, old, new) = upgraded(replicas);
    svc.spec.update.in_place = InPlacePolicy::IfPossible;
    let old_template = {
        let mut t = svc.spec.template.clone();
        t.spec.as_mut().unwrap().containers[0].image = Some("example/app:1".into());
        t
    };
    for r in &mut seen.revisions {
        r.in_place_key = Some(crate::build::in_place_key(&old_template));
    }
    gated(&mut seen);
    (svc, seen, old, new)
}

#[test]
fn an_image_change_moves_one_pod_at_a_time_in_place_after_draining_it() {
    let (mut svc, seen, old, new) = in_place(3);
    let p = pass(&mut svc, &seen);
    assert!(
        names(&p, "create").is_empty(),
        "no surge pod: {:?}",
        p.actions
    );
    let first = pod_name(&svc, 2, &old);
    assert_eq!(names(&p, "close"), vec![first.as_str()]);
    assert!(matches!(
        &p.actions[..],
        [.., Action::CloseGate { upgrade: true, .. }]
    ));
    // Drained (in no routing slice): patched to the new revision, same pod.
    let seen = apply(&svc, &seen, &p.actions);
    let p = pass(&mut svc, &seen);
    assert!(
        p.actions.iter().any(
            |a| matches!(a, Action::UpgradeInPlace { name, from, revision }
            if *name == first && *from == old && *revision == new)
        ),
        "{:?}",
        p.actions
    );
    assert!(
        names(&p, "close").is_empty(),
        "one at a time: {:?}",
        p.actions
    );
    // The kubelet restarts it: the gate opens once it runs the new image, ready.
    let mut seen = apply(&svc, &seen, &p.actions);
    let pod = seen.pods.iter_mut().find(|p| p.name == first).unwrap();
    pod.serving.current = false;
    assert!(names(&pass(&mut svc, &seen), "open").is_empty());
    let pod = seen.pods.iter_mut().find(|p| p.name == first).unwrap();
    pod.serving.current = true;
    assert_eq!(names(&pass(&mut svc, &seen), "open"), vec![first.as_str()]);
}

#[test]
fn a_change_a_running_pod_cannot_take_replaces_the_pod() {
    let (mut svc, seen, _, _) = in_place(3);
    let mut seen = seen;
    for r in &mut seen.revisions {
        r.in_place_key = Some("another".into());
    }
    let p = pass(&mut svc, &seen);
    assert!(names(&p, "upgrade").is_empty());
    assert_eq!(names(&p, "create").len(), 1, "a surge pod: {:?}", p.actions);
}

#[test]
fn a_revision_rolled_back_while_a_pod_drains_for_it_reopens_the_pod() {
    let (mut svc, seen, old, _) = in_place(3);
    let first = pod_name(&svc, 2, &old);
    let p = pass(&mut svc, &seen);
    let seen = apply(&svc, &seen, &p.actions);
    // The template goes back before the patch: the pod already runs the target.
    svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:1".into());
    let mut seen = seen;
    let pod = seen.pods.iter_mut().find(|p| p.name == first).unwrap();
    pod.state = PodState::NotReady { since: now() };
    assert_eq!(names(&pass(&mut svc, &seen), "open"), vec![first.as_str()]);
}

#[test]
fn termination_complete_keeps_terminating_pods_under_the_ceiling() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    // Slot 2 moved: its old pod terminating, the new one available.
    seen.pods[2].state = PodState::Terminating;
    seen.pods.push(ready_pod(&svc, 2, &new));
    let started = pass(&mut svc.clone(), &seen);
    assert_eq!(
        creates(&started),
        1,
        "TerminationStarted surges again: {:?}",
        started.actions
    );
    svc.spec.update.pod_replacement_policy = PodReplacementPolicy::TerminationComplete;
    let complete = pass(&mut svc, &seen);
    assert_eq!(creates(&complete), 0, "{:?}", complete.actions);
    let _ = old;
}

fn creates(p: &Plan) -> usize {
    names(p, "create").len()
}
