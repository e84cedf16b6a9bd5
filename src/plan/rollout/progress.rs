//! A rollout that goes on: how far it may go in this pass (stopped for a person, paused, a
//! canary step, a partition), whether it is held on purpose, and its progress deadline.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::canary::canary_step;
use super::{
    is_available, not_rolling, Decision, Targets, ROLLOUT_FAILED, WAITING_FOR_A_PERSON,
    WAITING_FOR_UNPAUSE,
};
use crate::api::{condition, ResilientService, RolloutStatus, ANNOTATION_PROMOTE};
use crate::health::{Assessment, PodView};
use crate::plan::conditions::Decided;

/// How far the rollout may go in this pass.
#[derive(Debug, Default, PartialEq)]
struct Gate {
    partition: i32,
    kept: BTreeSet<i32>,
    reason: Option<String>,
    conditions: Vec<Decided>,
    requeue: Option<Duration>,
}

/// Decides a pass of a rollout that is not rolled back: the update revision for the slots
/// the gate lets move, the stable one for the rest.
pub(super) fn advance(
    svc: &ResilientService,
    seen: &Assessment,
    update: &str,
    stable: &str,
    new_pods: &[&PodView],
    prev_rollout: Option<RolloutStatus>,
    failure: Option<String>,
) -> Decision {
    let now = seen.now;
    let rolling = stable != update;
    let mut status = prev_rollout.unwrap_or_else(|| fresh_status(svc, update, now));
    resume_if_unpaused(svc, &mut status, now);
    let mut gate = gate(svc, rolling, new_pods, now, failure, &mut status);
    if !rolling {
        gate.conditions.push(not_rolling(update));
    }
    hold_at_partition(svc, rolling, stable, new_pods, now, &gate, &mut status);
    track_progress(new_pods, now, min_ready(svc), &mut status);
    deadline(svc, update, rolling, now, &status, &mut gate);
    Decision {
        targets: Targets {
            target: update.to_string(),
            hold: stable.to_string(),
            partition: gate.partition,
            kept: gate.kept,
        },
        actions: Vec::new(),
        status: rolling.then_some(status),
        conditions: gate.conditions,
        requeue: gate.requeue,
        reason: gate.reason,
        record_stable_first: false,
    }
}

fn min_ready(svc: &ResilientService) -> i64 {
    i64::from(svc.spec.update.min_ready_seconds.max(0))
}

/// The status of a rollout that starts in this pass.
fn fresh_status(svc: &ResilientService, update: &str, now: Timestamp) -> RolloutStatus {
    RolloutStatus {
        revision: update.to_string(),
        started_at: Time(now),
        last_progress_at: Time(now),
        progress: String::new(),
        canary_step: None,
        paused_since: None,
        // A promotion is a new value of the annotation: one left from an earlier rollout
        // promotes nothing in this one.
        promoted: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_PROMOTE))
            .cloned(),
        waiting_for: None,
    }
}

/// Unpaused: the progress deadline counts from now, and a canary pause step in progress
/// starts its wait again.
fn resume_if_unpaused(svc: &ResilientService, status: &mut RolloutStatus, now: Timestamp) {
    if !svc.spec.paused && status.waiting_for.as_deref() == Some(WAITING_FOR_UNPAUSE) {
        status.paused_since = None;
        status.last_progress_at = Time(now);
    }
}

/// The partition of this pass: stopped for a person (rollback: Manual) keeps every slot
/// where it is, a pause moves none, a canary step moves its share, else the spec's
/// partition.
fn gate(
    svc: &ResilientService,
    rolling: bool,
    new_pods: &[&PodView],
    now: Timestamp,
    failure: Option<String>,
    status: &mut RolloutStatus,
) -> Gate {
    let replicas = svc.spec.replicas.max(0);
    let mut gate = Gate {
        partition: svc.spec.update.partition.clamp(0, replicas),
        ..Gate::default()
    };
    if let Some(why) = failure {
        // Slots that have a pod of the new revision keep it; the others stay on the
        // stable revision.
        let update = &status.revision;
        gate.partition = replicas;
        gate.kept = new_pods.iter().map(|p| p.slot).collect();
        gate.reason = Some(ROLLOUT_FAILED.to_string());
        gate.conditions.push(Decided {
            type_: condition::PROGRESSING,
            status: false,
            reason: ROLLOUT_FAILED.into(),
            message: format!("the rollout of revision {update} stopped: {why}"),
        });
        status.waiting_for = Some(format!("{WAITING_FOR_A_PERSON}{why}"));
    } else if svc.spec.paused {
        gate.partition = replicas;
        status.waiting_for = Some(WAITING_FOR_UNPAUSE.to_string());
    } else if let Some(canary) = svc.spec.update.canary.as_ref().filter(|_| rolling) {
        let (step_partition, wait) =
            canary_step(svc, canary, new_pods, now, min_ready(svc), status);
        gate.partition = gate.partition.max(step_partition);
        gate.requeue = wait;
    } else {
        status.canary_step = None;
        status.waiting_for = None;
    }
    gate
}

/// Held on purpose: paused, or every slot the partition (or canary step) lets move has
/// moved and is available. The progress deadline does not run while held, and starts
/// afresh when the hold ends (spec.paused cleared, the partition lowered, a promotion).
fn hold_at_partition(
    svc: &ResilientService,
    rolling: bool,
    stable: &str,
    new_pods: &[&PodView],
    now: Timestamp,
    gate: &Gate,
    status: &mut RolloutStatus,
) {
    let replicas = svc.spec.replicas.max(0);
    let partition = gate.partition;
    let moved_available = new_pods
        .iter()
        .filter(|p| {
            p.slot >= partition && p.slot < replicas && is_available(p, now, min_ready(svc))
        })
        .map(|p| p.slot)
        .collect::<BTreeSet<i32>>()
        .len() as i32;
    let held_at_partition = partition > 0 && moved_available >= replicas - partition;
    let held = rolling && gate.reason.is_none() && (svc.spec.paused || held_at_partition);
    if held {
        status.paused_since.get_or_insert(Time(now));
        if status.waiting_for.is_none() {
            status.waiting_for = Some(format!(
                "spec.update.partition ({partition}) to be lowered: slots below it stay on revision {stable}"
            ));
        }
    } else if gate.reason.is_none() && status.paused_since.take().is_some() {
        status.last_progress_at = Time(now);
    }
}

/// Progress is more new pods, or more of them available.
fn track_progress(
    new_pods: &[&PodView],
    now: Timestamp,
    min_ready: i64,
    status: &mut RolloutStatus,
) {
    let available = new_pods
        .iter()
        .filter(|p| is_available(p, now, min_ready))
        .count();
    let marker = format!("{}/{available}", new_pods.len());
    if status.progress != marker {
        status.progress = marker;
        status.last_progress_at = Time(now);
    }
}

/// No progress within progressDeadlineSeconds, unless held on purpose, is a verdict;
/// otherwise the pass looks again when the deadline would pass.
fn deadline(
    svc: &ResilientService,
    update: &str,
    rolling: bool,
    now: Timestamp,
    status: &RolloutStatus,
    gate: &mut Gate,
) {
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds.max(1));
    let stalled = now.as_second() - status.last_progress_at.0.as_second();
    let waiting_on_purpose = svc.spec.paused || status.paused_since.is_some();
    if gate.reason.as_deref() == Some(ROLLOUT_FAILED) || !rolling || waiting_on_purpose {
        // Stopped (Progressing says so already), done, or held: nothing to time.
    } else if stalled >= deadline {
        gate.conditions.push(Decided {
            type_: condition::PROGRESSING,
            status: false,
            reason: "ProgressDeadlineExceeded".into(),
            message: format!("no progress towards revision {update} for {stalled} s"),
        });
        gate.reason
            .get_or_insert_with(|| "ProgressDeadlineExceeded".to_string());
    } else {
        let left = Duration::from_secs((deadline - stalled).max(1) as u64);
        gate.requeue = Some(gate.requeue.map_or(left, |r| r.min(left)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PodState;

    fn svc(replicas: i32) -> ResilientService {
        super::super::test_service(replicas)
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn pod(slot: i32, state: PodState) -> PodView {
        PodView {
            name: format!("web-{slot}-new"),
            slot,
            revision: "web-2".into(),
            node: None,
            state,
            serving: Default::default(),
            avoids: None,
        }
    }

    #[test]
    fn a_stop_for_a_person_keeps_the_moved_slots_and_moves_no_other() {
        let s = svc(4);
        let mut status = fresh_status(&s, "web-2", t(0));
        let p = pod(3, PodState::Starting);
        let g = gate(
            &s,
            true,
            &[&p],
            t(0),
            Some("it crashed".into()),
            &mut status,
        );
        assert_eq!(g.partition, 4);
        assert_eq!(g.kept, BTreeSet::from([3]));
        assert_eq!(g.reason.as_deref(), Some(ROLLOUT_FAILED));
        assert_eq!(status.waiting_for.as_deref(), Some("a person: it crashed"));
    }

    #[test]
    fn a_paused_service_moves_no_slot_and_says_what_it_waits_for() {
        let mut s = svc(4);
        s.spec.paused = true;
        let mut status = fresh_status(&s, "web-2", t(0));
        let g = gate(&s, true, &[], t(0), None, &mut status);
        assert_eq!(g.partition, 4);
        assert_eq!(status.waiting_for.as_deref(), Some(WAITING_FOR_UNPAUSE));
        s.spec.paused = false;
        resume_if_unpaused(&s, &mut status, t(90));
        assert_eq!(
            status.last_progress_at,
            Time(t(90)),
            "the deadline counts from the unpause"
        );
    }

    #[test]
    fn a_rollout_whose_moved_slots_are_all_available_is_held_at_its_partition() {
        let mut s = svc(4);
        s.spec.update.partition = 2;
        let mut status = fresh_status(&s, "web-2", t(0));
        let ready = PodState::Ready { since: t(0) };
        let (a, b) = (pod(2, ready.clone()), pod(3, ready));
        let g = gate(&s, true, &[&a, &b], t(5), None, &mut status);
        hold_at_partition(&s, true, "web-1", &[&a, &b], t(5), &g, &mut status);
        assert_eq!(status.paused_since, Some(Time(t(5))));
        assert!(status
            .waiting_for
            .as_deref()
            .unwrap()
            .contains("partition (2)"));
    }

    #[test]
    fn progress_is_more_new_pods_or_more_of_them_available() {
        let mut status = fresh_status(&svc(2), "web-2", t(0));
        let starting = pod(1, PodState::Starting);
        track_progress(&[&starting], t(10), 0, &mut status);
        assert_eq!(
            (status.progress.as_str(), status.last_progress_at.0),
            ("1/0", t(10))
        );
        track_progress(&[&starting], t(20), 0, &mut status);
        assert_eq!(
            status.last_progress_at.0,
            t(10),
            "the same marker is no progress"
        );
    }

    #[test]
    fn the_deadline_is_a_verdict_only_for_a_rollout_that_is_not_held() {
        let mut s = svc(2);
        s.spec.update.progress_deadline_seconds = 30;
        let status = fresh_status(&s, "web-2", t(0));
        let mut g = Gate::default();
        deadline(&s, "web-2", true, t(10), &status, &mut g);
        assert_eq!(
            (g.reason.clone(), g.requeue),
            (None, Some(Duration::from_secs(20)))
        );
        deadline(&s, "web-2", true, t(30), &status, &mut g);
        assert_eq!(g.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        let mut held = Gate::default();
        let mut paused = status.clone();
        paused.paused_since = Some(Time(t(1)));
        deadline(&s, "web-2", true, t(300), &paused, &mut held);
        assert_eq!(held, Gate::default());
    }
}
