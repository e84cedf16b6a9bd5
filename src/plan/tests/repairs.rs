//! Repairs and supervision: lost nodes, fencing, lost volumes, the escalation ladder, the
//! storm guard and the ledger.

use super::*;
use crate::api::{Fencing, ReplicaStatus, VolumeLostPolicy};
use crate::health::Listing;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A pod on a node lost long enough ago (30 s threshold, 11 s to settle) to act on.
fn lost(fenced: bool) -> PodState {
    lost_for(41, fenced)
}

fn lost_for(seconds: i64, fenced: bool) -> PodState {
    PodState::OnLostNode {
        message: format!("node node-1 has not renewed its lease for {seconds} s"),
        fenced,
        deleting: false,
    }
}

fn crash() -> PodState {
    PodState::CrashLooping {
        reason: "CrashLoopBackOff".into(),
        message: "container app restarted 3 times".into(),
        restarts: 3,
    }
}

fn with_repairs(svc: &mut ResilientService, slot: i32, ages: &[i64]) {
    let mut status = svc.status.clone().unwrap_or_default();
    status.replica_statuses.push(ReplicaStatus {
        ordinal: slot,
        repairs: ages
            .iter()
            .map(|a| Time(Timestamp::from_second(now().as_second() - a).unwrap()))
            .collect(),
        ..Default::default()
    });
    svc.status = Some(status);
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| {
            format!("{a:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn stateless_replica_on_a_lost_node_is_force_deleted_and_its_replacement_avoids_the_node() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.pods[1].state = lost(false);
    let p = plan(&svc, &seen);
    assert_eq!(kinds(&p.actions), vec!["ForceDeletePod"]);
    assert_eq!(p.status.replica_statuses[1].state, "Repairing");
    assert_eq!(
        p.status.replica_statuses[1].avoid_node.as_deref(),
        Some("node-1"),
        "a lost node looks schedulable until it is tainted"
    );
    assert_eq!(
        p.status.replica_statuses[1]
            .last_failure
            .as_ref()
            .unwrap()
            .reason,
        "NodeLost"
    );
}

#[test]
fn stateful_replica_waits_for_evidence_before_it_moves() {
    let svc = service(3, true);
    let mut seen = converged(&svc);
    seen.pods[1].state = lost(false);
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![], "without evidence nothing moves");
    let degraded = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NodeLost")
    );
    assert!(degraded.message.contains("slot 1"), "{}", degraded.message);
}

#[test]
fn taint_out_of_service_fences_then_moves_the_replica_and_rebuilds_its_lost_claim() {
    let mut svc = service(3, true);
    svc.spec.repair.fencing = Fencing::TaintOutOfService;
    svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Recreate;
    let mut seen = converged(&svc);
    seen.pods[1].state = lost(false);
    seen.pods[1].node = Some("node-1".into());
    seen.claims[1].lost_with = Some(("node-1".into(), false));
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![Action::TaintNode {
            node: "node-1".into()
        }]
    );
    seen.pods[1].state = lost(true);
    seen.claims[1].lost_with = Some(("node-1".into(), true));
    assert_eq!(
        kinds(&plan(&svc, &seen).actions),
        vec!["ForceDeletePod", "RebuildClaim"]
    );
}

#[test]
fn a_fenced_stateful_slot_moves_without_being_barred_from_its_node_for_good() {
    // Fencing keeps pods off the node while it is lost; once the node is repaired, a
    // slot whose retained volume lives there must be able to go back.
    let mut svc = service(3, true);
    let mut seen = converged(&svc);
    seen.pods[1].state = lost(true);
    let p = pass(&mut svc, &seen);
    assert_eq!(kinds(&p.actions), vec!["ForceDeletePod"]);
    assert_eq!(p.status.replica_statuses[1].avoid_node, None);
    // The pod is gone; the replacement is not steered away either.
    seen.pods.remove(1);
    let p = pass(&mut svc, &at(1, &seen));
    assert_eq!(p.status.replica_statuses[1].avoid_node, None);
    assert!(
        kinds(&p.actions).contains(&"CreatePod".to_string()),
        "{:?}",
        p.actions
    );
}

#[test]
fn retained_volume_on_a_lost_node_waits_for_a_person() {
    let svc = service(3, true);
    let mut seen = converged(&svc);
    seen.pods.remove(2);
    seen.claims[2].lost_with = Some(("node-2".into(), true));
    let p = plan(&svc, &seen);
    assert!(!kinds(&p.actions).contains(&"RebuildClaim".to_string()));
    assert_eq!(p.status.reason.as_deref(), Some("VolumeLost"));
}

#[test]
fn crash_looping_slot_climbs_the_ladder_and_ends_in_quarantine() {
    let mut svc = service(3, false);
    svc.spec.supervision.max_restarts = 2;
    let step = |svc: &ResilientService| {
        let mut seen = converged(svc);
        seen.pods[0].state = crash();
        plan(svc, &seen)
    };
    // No repair yet: Restart.
    let p = step(&svc);
    assert!(
        matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart"))
    );
    // Two repairs in the window: Reschedule, away from the node.
    let mut s2 = svc.clone();
    with_repairs(&mut s2, 0, &[200, 100]);
    let p = step(&s2);
    assert!(
        matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Reschedule")),
        "{:?}",
        p.actions
    );
    assert_eq!(
        p.status.replica_statuses[0].avoid_node.as_deref(),
        Some("node-0")
    );
    // Stateless: RebuildStorage does not apply; six repairs reach Quarantine.
    let mut s3 = svc.clone();
    with_repairs(&mut s3, 0, &[290, 250, 200, 150, 100, 60]);
    let p = step(&s3);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.status.replica_statuses[0].state, "Quarantined");
    assert_eq!(p.status.reason.as_deref(), Some("Quarantined"));
}

#[test]
fn a_persistent_crash_loop_reaches_quarantine_with_the_default_supervision() {
    // Replays the passes the controller would make, at the times the plan asks for,
    // while slot 0's pod keeps crash-looping: the backoff must leave room for the
    // window to count enough repairs for every rung.
    let mut svc = service(3, false);
    let period = i64::from(svc.spec.supervision.period_seconds);
    let mut t = now();
    let mut steps = Vec::new();
    for _ in 0..500 {
        let mut seen = converged(&svc);
        seen.now = t;
        seen.pods[0].state = crash();
        let p = plan(&svc, &seen);
        for a in &p.actions {
            if let Action::DeletePod { reason, .. } = a {
                let step = reason.split(' ').next().unwrap_or_default().to_string();
                if steps.last() != Some(&step) {
                    steps.push(step);
                }
            }
        }
        let quarantined = p.status.replica_statuses[0].state == "Quarantined";
        svc.status = Some(p.status.clone());
        if quarantined {
            break;
        }
        // After a repair the pod's own events bring the next pass; say a second later.
        let wait = p.requeue_after.unwrap_or(Duration::from_secs(1));
        assert!(wait >= Duration::from_secs(1), "never a hot loop");
        t = Timestamp::from_second(t.as_second() + wait.as_secs() as i64).unwrap();
    }
    let took = t.as_second() - now().as_second();
    assert_eq!(
        svc.status.as_ref().unwrap().replica_statuses[0].state,
        "Quarantined",
        "steps taken: {steps:?}"
    );
    assert_eq!(steps, vec!["Restart", "Reschedule"]);
    assert!(took <= period, "quarantined after {took} s");
}

#[test]
fn repairs_back_off_exponentially_and_the_window_slides() {
    let mut svc = service(3, false);
    with_repairs(&mut svc, 0, &[3]);
    let mut seen = converged(&svc);
    seen.pods[0].state = crash();
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![], "5 s back-off after one repair");
    assert!(p.requeue_after.is_some_and(|d| d.as_secs() <= 2));
    // Repairs older than the period no longer count.
    let mut old = service(3, false);
    with_repairs(&mut old, 0, &[400, 350, 320, 310, 305, 301]);
    let p = plan(&old, &seen);
    assert!(
        matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart"))
    );
}

#[test]
fn storm_guard_pauses_node_loss_repair_when_most_replicas_fail_together() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.pods[0].state = lost(false);
    seen.pods[1].state = lost(false);
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
}

#[test]
fn at_most_max_concurrent_repairs_at_once() {
    let mut svc = service(5, false);
    svc.spec.repair.max_concurrent_repairs = 1;
    let mut seen = converged(&svc);
    seen.pods[0].state = crash();
    seen.pods[1].state = crash();
    let p = plan(&svc, &seen);
    assert_eq!(kinds(&p.actions), vec!["DeletePod"]);
    assert_eq!(
        p.status.replica_statuses[1].waiting_for.as_deref(),
        Some("a free repair slot (maxConcurrentRepairs)")
    );
}

#[test]
fn replacement_of_a_pod_lost_with_its_node_avoids_the_node_even_from_a_stale_status() {
    // The status as it was before the pass that force-deleted the pod: waiting for the
    // loss to settle, no avoidNode yet.
    let mut svc = service(3, false);
    svc.status = Some(crate::api::ResilientServiceStatus {
        replica_statuses: vec![ReplicaStatus {
            ordinal: 1,
            node: Some("node-1".into()),
            state: "Waiting".into(),
            last_failure: Some(Box::new(crate::api::Failure {
                reason: "NodeLost".into(),
                message: "node node-1 has not renewed its lease for 20 s".into(),
                at: Time(now()),
                recovered_at: None,
            })),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut seen = converged(&svc);
    seen.pods.remove(1);
    let p = plan(&svc, &seen);
    assert_eq!(kinds(&p.actions), vec!["CreatePod"]);
    assert_eq!(
        p.status.replica_statuses[1].avoid_node.as_deref(),
        Some("node-1")
    );
}

#[test]
fn a_silent_node_not_yet_lost_brings_the_service_back_when_it_would_be() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.node_recheck_seconds = Some(3);
    let p = plan(&svc, &seen);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(3)));
}

#[test]
fn a_long_failure_stays_in_the_ledger_for_a_whole_quiet_period_after_recovery() {
    let mut svc = service(3, false);
    let period = i64::from(svc.spec.supervision.period_seconds);
    let failed_long_ago = Timestamp::from_second(now().as_second() - 10 * period).unwrap();
    let entry = |recovered_at: Option<Time>| ReplicaStatus {
        ordinal: 0,
        state: "Failing".into(),
        last_failure: Some(Box::new(crate::api::Failure {
            reason: "CrashLoopBackOff".into(),
            message: "back-off restarting".into(),
            at: Time(failed_long_ago),
            recovered_at,
        })),
        ..Default::default()
    };
    svc.status = Some(crate::api::ResilientServiceStatus {
        replica_statuses: vec![entry(None)],
        ..Default::default()
    });
    let seen = converged(&svc);
    let p = plan(&svc, &seen);
    let kept = p.status.replica_statuses[0].last_failure.as_ref();
    assert_eq!(
        kept.and_then(|f| f.recovered_at.as_ref()),
        Some(&Time(now())),
        "the recovery is recorded and the entry kept"
    );
    assert!(p
        .requeue_after
        .is_some_and(|d| d.as_secs() as i64 <= period));

    let long_recovered = Timestamp::from_second(now().as_second() - period - 1).unwrap();
    svc.status = Some(crate::api::ResilientServiceStatus {
        replica_statuses: vec![entry(Some(Time(long_recovered)))],
        ..Default::default()
    });
    let p = plan(&svc, &seen);
    assert_eq!(
        p.status.replica_statuses[0].last_failure, None,
        "cleared a quiet period after the recovery"
    );
}

#[test]
fn slot_under_repair_takes_its_next_step_within_its_own_share_of_the_budget() {
    let mut svc = service(3, false);
    svc.spec.supervision.max_restarts = 1;
    svc.spec.repair.max_concurrent_repairs = 1;
    with_repairs(&mut svc, 0, &[60]);
    let status = svc.status.as_mut().unwrap();
    status.replica_statuses[0].state = "Repairing".into();
    let mut seen = converged(&svc);
    seen.pods[0].state = crash();
    seen.pods[1].state = crash();
    let p = plan(&svc, &seen);
    assert!(
        matches!(&p.actions[..], [Action::DeletePod { name, reason }]
            if name == &seen.pods[0].name && reason.starts_with("Reschedule")),
        "slot 0 goes on with its repair; slot 1 waits: {:?}",
        p.actions
    );
    assert_eq!(
        p.status.replica_statuses[1].waiting_for.as_deref(),
        Some("a free repair slot (maxConcurrentRepairs)")
    );
}

#[test]
fn fresh_node_loss_settles_before_anything_moves_so_the_storm_guard_sees_nodes_failing_together() {
    let mut svc = service(4, false);
    svc.spec.repair.node_lost_after_seconds = 10;
    let mut seen = converged(&svc);
    // Judged lost at 12 s (a renewal missed), acted on at 23 s.
    seen.pods[0].state = lost_for(12, false);
    let p = plan(&svc, &seen);
    assert_eq!(
        p.actions,
        vec![],
        "the first node of a storm may be alone yet"
    );
    assert!(
        p.status.replica_statuses[0]
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.contains("settle")),
        "{:?}",
        p.status.replica_statuses[0]
    );
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(11)));
    // Settled, with two more replicas' nodes lost meanwhile: the storm guard holds.
    seen.pods[0].state = lost_for(23, false);
    seen.pods[1].state = lost_for(14, false);
    seen.pods[2].state = lost_for(13, false);
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
    // Settled and alone: repaired.
    seen.pods[1] = ready_pod(&svc, 1, &revision_name(&svc));
    seen.pods[2] = ready_pod(&svc, 2, &revision_name(&svc));
    assert_eq!(kinds(&plan(&svc, &seen).actions), vec!["ForceDeletePod"]);
    // Evidence needs no settling.
    seen.pods[0].state = lost_for(12, true);
    assert_eq!(kinds(&plan(&svc, &seen).actions), vec!["ForceDeletePod"]);
}

#[test]
fn a_pod_unready_is_looked_at_again_when_its_progress_deadline_makes_it_never_ready() {
    let mut svc = service(3, false);
    svc.spec.update.progress_deadline_seconds = 10;
    let mut seen = converged(&svc);
    seen.pods[1].state = PodState::NotReady {
        since: Timestamp::from_second(now().as_second() - 4).unwrap(),
    };
    let p = plan(&svc, &seen);
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(6)));
}

/// The loop a real cluster runs: pods created are placed by `place` (a node and a state),
/// pods deleted go; returns what the slots run once nothing more is done.
fn run_to_rest(
    svc: &mut ResilientService,
    mut seen: Assessment,
    place: impl Fn() -> (&'static str, PodState),
) -> Vec<(i32, String, Option<String>)> {
    for _ in 0..30 {
        let p = pass(svc, &seen);
        if p.actions.is_empty() {
            break;
        }
        seen = apply(svc, &seen, &p.actions);
        seen.pods.retain(|p| !p.state.is_leaving());
        for pod in seen
            .pods
            .iter_mut()
            .filter(|p| p.state == PodState::Pending)
        {
            let (node, state) = place();
            pod.node = Some(node.into());
            pod.state = state;
            pod.serving.gate = crate::health::Gate::Open;
        }
    }
    let mut slots: Vec<_> = seen
        .pods
        .iter()
        .map(|p| (p.slot, p.revision.clone(), p.node.clone()))
        .collect();
    slots.sort();
    slots
}

#[test]
fn a_rollout_whose_new_pods_land_on_a_lost_node_replaces_them_and_ends_off_the_node() {
    let (mut svc, mut seen, _, new) = upgraded(4);
    svc.spec.update.max_surge = IntOrString::Int(1);
    svc.spec.update.max_unavailable = IntOrString::Int(0);
    // Slot 3 has moved to the new revision, and its node is lost under it; the scheduler
    // still sends the next new pod there, as it does until the node is tainted.
    seen.pods.retain(|p| p.slot != 3);
    let mut moved = ready_pod(&svc, 3, &new);
    moved.node = Some("node-1".into());
    moved.state = lost(false);
    seen.pods.push(moved);
    let first_new_pod_lands_on_the_lost_node = std::cell::Cell::new(true);
    let slots = run_to_rest(&mut svc, seen, || {
        if first_new_pod_lands_on_the_lost_node.replace(false) {
            ("node-1", lost(false))
        } else {
            ("node-2", PodState::Ready { since: now() })
        }
    });
    let on_new: Vec<i32> = slots
        .iter()
        .filter(|(_, rev, _)| *rev == new)
        .map(|(slot, _, _)| *slot)
        .collect();
    assert_eq!(on_new, vec![0, 1, 2, 3], "{slots:?}");
    assert!(
        slots
            .iter()
            .all(|(_, _, node)| node.as_deref() != Some("node-1")),
        "{slots:?}"
    );
}

#[test]
fn an_old_pod_on_a_lost_node_whose_deletion_started_is_not_deleted_again_but_forced_once_settled() {
    let (mut svc, mut seen, old, new) = upgraded(3);
    svc.spec.update.max_surge = IntOrString::Int(1);
    svc.spec.update.max_unavailable = IntOrString::Int(0);
    // Slot 1's new pod serves; its old one was deleted on a node that was lost since, and
    // nobody there confirms the deletion.
    let mut replacement = ready_pod(&svc, 1, &new);
    replacement.node = Some("node-2".into());
    seen.pods.push(replacement);
    let at_lost = |seconds| {
        let mut seen = seen.clone();
        for p in seen
            .pods
            .iter_mut()
            .filter(|p| p.slot == 1 && p.revision == old)
        {
            p.state = PodState::OnLostNode {
                message: format!("node node-1 has not renewed its lease for {seconds} s"),
                fenced: false,
                deleting: true,
            };
        }
        seen
    };
    let old_name = pod_name(&svc, 1, &old);
    let deletes_of_old = |p: &Plan| -> Vec<&str> {
        (p.actions.iter())
            .filter_map(|a| match a {
                Action::DeletePod { name, .. } if *name == old_name => Some("DeletePod"),
                Action::ForceDeletePod { name, .. } if *name == old_name => Some("ForceDeletePod"),
                _ => None,
            })
            .collect()
    };
    // Settling: a graceful delete again would ask nothing new of a node that is gone.
    let settling = plan(&svc, &at_lost(35));
    assert_eq!(deletes_of_old(&settling), Vec::<&str>::new());
    let settled = pass(&mut svc, &at_lost(41));
    assert_eq!(deletes_of_old(&settled), vec!["ForceDeletePod"]);
}

#[test]
fn a_pod_on_a_lost_node_that_services_still_route_to_is_marked_not_ready_while_its_loss_settles() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    let name = seen.pods[1].name.clone();
    seen.pods[1].serving.listing = Listing::Ready;
    // Lost at 30 s of silence, acted on 11 s later: clients are not sent there meanwhile.
    seen.pods[1].state = lost_for(35, false);
    let p = plan(&svc, &seen);
    assert_eq!(
        p.actions,
        vec![Action::MarkPodNotReady {
            name: name.clone(),
            reason: "NodeLost: node node-1 has not renewed its lease for 35 s".into(),
        }]
    );
    assert!(p.status.replica_statuses[1]
        .waiting_for
        .as_deref()
        .is_some_and(|w| w.contains("settle")));
    // Settled: unrouted first, and replaced.
    seen.pods[1].state = lost(false);
    assert_eq!(
        kinds(&plan(&svc, &seen).actions),
        vec!["MarkPodNotReady", "ForceDeletePod"]
    );
    // Once the slices list it not ready, nothing is written again.
    seen.pods[1].serving.listing = Listing::NotReady;
    assert_eq!(kinds(&plan(&svc, &seen).actions), vec!["ForceDeletePod"]);
}

#[test]
fn a_stateful_pod_on_a_lost_node_is_unrouted_while_it_waits_for_evidence() {
    let svc = service(3, true);
    let mut seen = converged(&svc);
    seen.pods[2].serving.listing = Listing::Ready;
    seen.pods[2].state = lost(false);
    let p = plan(&svc, &seen);
    assert_eq!(kinds(&p.actions), vec!["MarkPodNotReady"]);
    assert!(p.status.replica_statuses[2]
        .waiting_for
        .as_deref()
        .is_some_and(|w| w.starts_with("evidence that node")));
}

#[test]
fn under_a_suspected_storm_pods_on_lost_nodes_stay_routed() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    for pod in &mut seen.pods[..2] {
        pod.serving.listing = Listing::Ready;
        pod.state = lost(false);
    }
    let p = plan(&svc, &seen);
    assert_eq!(
        p.actions,
        vec![],
        "a false alarm must not unlist most of the service"
    );
    assert_eq!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
}
