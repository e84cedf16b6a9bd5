//! Supervision of a failing pod: which rung of the escalation ladder its slot is on, the
//! back-off since the slot's last repair, and the repair itself.

use std::time::Duration;

use jiff::Timestamp;

use super::budget::{Budget, WAITING_FOR_BUDGET};
use super::{window, AvoidReason, Avoidance, Settings, SlotPlan};
use crate::api::{EscalationStep, ResilientService, VolumeLostPolicy};
use crate::health::{PodState, PodView};
use crate::plan::Action;

/// First delay between two repairs of a slot; it doubles with each repair in the window.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The supervised failure of a pod, if it has one: (reason, message). A pod the scheduler
/// cannot place, or on a lost node, is not one: those are the scheduler's and node loss's.
pub(super) fn supervised_failure(
    svc: &ResilientService,
    pod: &PodView,
    now: Timestamp,
) -> Option<(String, String)> {
    match &pod.state {
        PodState::Failed { reason, message } => Some((reason.clone(), message.clone())),
        PodState::CrashLooping {
            reason, message, ..
        }
        | PodState::ImagePullFailing { reason, message } => Some((reason.clone(), message.clone())),
        PodState::NotReady { .. } => never_ready(svc, pod, now),
        _ => None,
    }
}

/// The failure the ledger records for a slot's pod: the failure its state is, or
/// NeverReady for a pod that has run unready for a whole progress deadline.
pub(in crate::plan) fn slot_failure(
    svc: &ResilientService,
    pod: &PodView,
    now: Timestamp,
) -> Option<(String, String)> {
    pod.state
        .failure(now)
        .map(|(reason, message)| (reason.to_string(), message.to_string()))
        .or_else(|| never_ready(svc, pod, now))
}

/// NeverReady, for a pod that runs but has not been Ready for
/// `update.progressDeadlineSeconds`. The message names the moment, not the seconds waited:
/// it goes into the status, which must not change on every pass while nothing happens.
fn never_ready(svc: &ResilientService, pod: &PodView, now: Timestamp) -> Option<(String, String)> {
    let PodState::NotReady { since } = pod.state else {
        return None;
    };
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
    (now.as_second() - since.as_second() >= deadline).then(|| {
        (
            "NeverReady".to_string(),
            format!(
                "pod {} has not been Ready since {since}, longer than update.progressDeadlineSeconds ({deadline} s)",
                pod.name
            ),
        )
    })
}

/// The rung of the ladder for a slot with `repairs` repairs in the window: one rung per
/// `maxRestarts` repairs, the last rung once past the end. RebuildStorage applies only where
/// the storage policy allows it; else the next rung.
pub(super) fn ladder_step(s: &Settings, repairs: usize) -> EscalationStep {
    let ladder = &s.svc.spec.supervision.escalation;
    let index = (repairs / s.max_restarts).min(ladder.len().saturating_sub(1));
    let step = ladder
        .get(index)
        .copied()
        .unwrap_or(EscalationStep::Restart);
    let rebuild_allowed =
        s.stateful && s.svc.spec.repair.storage.on_volume_lost == VolumeLostPolicy::Recreate;
    if step == EscalationStep::RebuildStorage && !rebuild_allowed {
        return ladder
            .get(index + 1)
            .copied()
            .unwrap_or(EscalationStep::Quarantine);
    }
    step
}

/// How long until the slot may be repaired again, after its repairs in the window (oldest
/// first); None when it may be now. Exponential back-off between repairs of one slot:
/// never a hot loop. It is capped so that a failure that persists climbs the whole ladder
/// within one window; an uncapped back-off would spread the repairs too thin for the window
/// ever to count enough.
pub(super) fn backoff_left(s: &Settings, recent: &[Timestamp]) -> Option<Duration> {
    let last = recent.last()?;
    let n = recent.len().min(16) as u32;
    let rungs = (s.max_restarts * s.svc.spec.supervision.escalation.len().max(1)) as u64;
    let fits = Duration::from_secs((s.period as u64 / (rungs + 1)).max(1));
    let delay = BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(n - 1))
        .min(BACKOFF_MAX)
        .min(fits);
    let due = last.as_second() + delay.as_secs() as i64;
    (s.now.as_second() < due).then(|| Duration::from_secs((due - s.now.as_second()) as u64))
}

/// Repairs `pod` of `slot`, failing with `failure` (reason, message): the ladder's step,
/// unless the slot is quarantined, backing off, or the budget is spent.
pub(super) fn repair(
    s: &Settings,
    slot: i32,
    pod: &PodView,
    failure: &(String, String),
    budget: &mut Budget,
    out: &mut SlotPlan,
) {
    let (reason, message) = failure;
    let recent = window(s.entry(slot), s.now, s.period);
    let step = ladder_step(s, recent.len());
    if step == EscalationStep::Quarantine {
        out.note.quarantined = true;
        out.note.escalation = Some(step);
        out.note.waiting_for = Some(format!(
            "a person: {} repairs in {} s; last failure {reason}: {message}",
            recent.len(),
            s.period
        ));
        return;
    }
    if let Some(left) = backoff_left(s, &recent) {
        out.note.waiting_for = Some(format!("back-off: next repair in {} s", left.as_secs()));
        out.wait(left);
        return;
    }
    if !budget.take(slot) {
        out.note.waiting_for = Some(WAITING_FOR_BUDGET.into());
        return;
    }
    let what = format!("{reason}: {message}");
    out.actions.push(Action::DeletePod {
        name: pod.name.clone(),
        reason: format!("{step:?} after {what}"),
    });
    if step == EscalationStep::Reschedule {
        out.note.avoid = pod.node.clone().map(|node| Avoidance {
            node,
            reason: AvoidReason::Reschedule,
        });
    }
    if step == EscalationStep::RebuildStorage {
        for c in s
            .seen
            .claims
            .iter()
            .filter(|c| c.slot == slot && !c.deleting)
        {
            out.actions.push(Action::RebuildClaim {
                name: c.name.clone(),
                ordinal: slot,
                reason: what.clone(),
            });
        }
    }
    out.note.repaired = true;
    out.note.escalation = Some(step);
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, crash, with_repairs};
    use super::*;
    use crate::api::EscalationStep::*;

    #[test]
    fn only_terminal_crashing_unpullable_or_long_unready_pods_are_supervised_failures() {
        let svc = fixtures::service(1, false);
        let seen = fixtures::converged(&svc);
        let mut pod = seen.pods[0].clone();
        assert_eq!(supervised_failure(&svc, &pod, seen.now), None, "Ready");
        pod.state = crash();
        assert_eq!(
            supervised_failure(&svc, &pod, seen.now)
                .map(|f| f.0)
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        pod.state = PodState::Unschedulable {
            message: "0/3 nodes".into(),
            since: fixtures::now(),
        };
        assert_eq!(
            supervised_failure(&svc, &pod, seen.now),
            None,
            "the scheduler's business"
        );
        let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
        pod.state = PodState::NotReady {
            since: fixtures::ago(deadline - 1),
        };
        assert_eq!(supervised_failure(&svc, &pod, seen.now), None);
        pod.state = PodState::NotReady {
            since: fixtures::ago(deadline),
        };
        assert_eq!(
            supervised_failure(&svc, &pod, seen.now)
                .map(|f| f.0)
                .as_deref(),
            Some("NeverReady")
        );
    }

    #[test]
    fn each_max_restarts_repairs_climb_one_rung_and_the_last_rung_holds() {
        let mut svc = fixtures::service(1, true);
        svc.spec.supervision.max_restarts = 2;
        svc.spec.supervision.escalation = vec![Restart, Reschedule, RebuildStorage, Quarantine];
        let seen = fixtures::converged(&svc);
        let steps = |svc: &ResilientService| -> Vec<EscalationStep> {
            let s = Settings::new(svc, &seen);
            (0..10).map(|n| ladder_step(&s, n)).collect()
        };
        // Retain (the default) skips RebuildStorage.
        assert_eq!(
            steps(&svc),
            vec![
                Restart, Restart, Reschedule, Reschedule, Quarantine, Quarantine, Quarantine,
                Quarantine, Quarantine, Quarantine
            ]
        );
        svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Recreate;
        assert_eq!(steps(&svc)[4..6], [RebuildStorage, RebuildStorage]);
        svc.spec.supervision.escalation = vec![Restart, RebuildStorage];
        svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Retain;
        assert_eq!(
            steps(&svc)[2],
            Quarantine,
            "past a skipped last rung comes Quarantine"
        );
        svc.spec.supervision.escalation = vec![];
        assert_eq!(steps(&svc)[9], Restart, "an empty ladder restarts");
    }

    #[test]
    fn the_back_off_doubles_from_five_seconds_and_fits_the_ladder_in_the_window() {
        let mut svc = fixtures::service(1, false);
        svc.spec.supervision.period_seconds = 3000;
        let seen = fixtures::converged(&svc);
        let s = Settings::new(&svc, &seen);
        let repairs =
            |ages: &[i64]| -> Vec<Timestamp> { ages.iter().map(|a| fixtures::ago(*a)).collect() };
        assert_eq!(backoff_left(&s, &[]), None, "a first repair at once");
        assert_eq!(
            backoff_left(&s, &repairs(&[2])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoff_left(&s, &repairs(&[5])), None);
        assert_eq!(
            backoff_left(&s, &repairs(&[30, 20, 1])),
            Some(Duration::from_secs(19)),
            "20 s after the third repair"
        );
        // The default window of 300 s with 5 restarts on 4 rungs: at most 14 s apart.
        let svc = fixtures::service(1, false);
        let s = Settings::new(&svc, &seen);
        assert_eq!(
            backoff_left(&s, &repairs(&[100, 80, 60, 40, 1])),
            Some(Duration::from_secs(13))
        );
    }

    fn run(svc: &ResilientService, pod: usize) -> SlotPlan {
        let mut seen = fixtures::converged(svc);
        seen.pods[pod].state = crash();
        let s = Settings::new(svc, &seen);
        let mut budget = Budget::new(svc, &s.previous);
        let mut out = SlotPlan::default();
        let failure = supervised_failure(svc, &seen.pods[pod], seen.now).unwrap();
        repair(
            &s,
            pod as i32,
            &seen.pods[pod],
            &failure,
            &mut budget,
            &mut out,
        );
        out
    }

    #[test]
    fn a_repair_deletes_the_pod_and_a_reschedule_avoids_its_node() {
        let mut svc = fixtures::service(3, false);
        let out = run(&svc, 1);
        assert!(
            matches!(&out.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart after CrashLoopBackOff"))
        );
        assert_eq!((out.note.repaired, out.note.avoid), (true, None));
        svc.spec.supervision.max_restarts = 1;
        with_repairs(&mut svc, 1, &[100]);
        let out = run(&svc, 1);
        assert_eq!(out.note.escalation, Some(Reschedule));
        assert_eq!(
            out.note.avoid,
            Some(Avoidance {
                node: "node-1".into(),
                reason: AvoidReason::Reschedule
            })
        );
    }

    #[test]
    fn rebuild_storage_deletes_the_pod_and_rebuilds_its_claims() {
        let mut svc = fixtures::service(2, true);
        svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Recreate;
        svc.spec.supervision.max_restarts = 1;
        with_repairs(&mut svc, 0, &[200, 100]);
        let out = run(&svc, 0);
        let kinds: Vec<String> = out
            .actions
            .iter()
            .map(|a| format!("{a:?}").split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(kinds, vec!["DeletePod", "RebuildClaim"]);
        assert_eq!(out.note.escalation, Some(RebuildStorage));
    }

    #[test]
    fn a_quarantined_slot_is_left_alone_with_its_story_for_a_person() {
        let mut svc = fixtures::service(1, false);
        svc.spec.supervision.max_restarts = 1;
        with_repairs(&mut svc, 0, &[250, 200, 150, 100]);
        let out = run(&svc, 0);
        assert_eq!(out.actions, vec![]);
        assert!(out.note.quarantined);
        assert_eq!(
            out.note.waiting_for.as_deref(),
            Some("a person: 4 repairs in 300 s; last failure CrashLoopBackOff: container app restarted 3 times")
        );
    }

    #[test]
    fn a_slot_backing_off_asks_to_be_looked_at_when_it_may_be_repaired() {
        let mut svc = fixtures::service(1, false);
        with_repairs(&mut svc, 0, &[2]);
        let out = run(&svc, 0);
        assert_eq!(out.actions, vec![]);
        assert_eq!(out.requeue, Some(Duration::from_secs(3)));
        assert_eq!(
            out.note.waiting_for.as_deref(),
            Some("back-off: next repair in 3 s")
        );
    }

    #[test]
    fn the_ledger_records_never_ready_as_it_records_the_other_failures() {
        let svc = fixtures::service(1, false);
        let seen = fixtures::converged(&svc);
        let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
        let mut pod = seen.pods[0].clone();
        pod.state = PodState::NotReady {
            since: fixtures::ago(deadline - 1),
        };
        assert_eq!(slot_failure(&svc, &pod, seen.now), None, "not for long yet");
        pod.state = PodState::NotReady {
            since: fixtures::ago(deadline + 5),
        };
        let (reason, message) = slot_failure(&svc, &pod, seen.now).unwrap();
        assert_eq!(reason, "NeverReady");
        assert!(
            message.starts_with(&format!("pod {} has not been Ready since 20", pod.name)),
            "{message}"
        );
        let later = fixtures::ago(-30);
        assert_eq!(
            slot_failure(&svc, &pod, later).unwrap().1,
            message,
            "the message stays the same while the pod stays unready"
        );
        pod.state = crash();
        assert_eq!(
            slot_failure(&svc, &pod, seen.now).map(|f| f.0).as_deref(),
            Some("CrashLoopBackOff")
        );
        pod.state = PodState::Unschedulable {
            message: "0/3 nodes are available".into(),
            since: fixtures::ago(60),
        };
        assert_eq!(
            slot_failure(&svc, &pod, seen.now).map(|f| f.0).as_deref(),
            Some("Unschedulable"),
            "the ledger also records what is not supervised"
        );
    }
}
