//! Repair and supervision, as Erlang/OTP supervisors do it: replace what failed, count
//! repairs per slot in a sliding window, and past `maxRestarts` climb the escalation ladder
//! (Restart → Reschedule → RebuildStorage → Quarantine) instead of churning. Node loss is
//! repaired with the fencing the spec asks for, and a storm of failures pauses it.
//!
//! One pass takes each slot through named steps, in order: the storm guard (once, for the
//! whole service), node loss, storage (a claim deleted under its pod, volumes lost with a
//! node), then supervision of a failing pod, and lifts an avoidance whose node is back;
//! then it ends the fences whose nodes are back, and last gives the verdict over the
//! whole ledger.

mod avoidance;
mod budget;
mod fence;
mod node_loss;
mod storage;
mod storm;
mod supervise;
mod verdict;

#[cfg(test)]
mod fixtures;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::conditions::Decided;
use super::Action;
use crate::api::{EscalationStep, ReplicaStatus, ResilientService, ResilientServiceStatus};
use crate::health::{Assessment, PodState, PodView};

pub(super) use avoidance::{AvoidReason, Avoidance};
pub(super) use supervise::slot_failure;

/// What repair decided for one slot, for the ledger.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct SlotNote {
    /// A repair was made this pass.
    pub repaired: bool,
    pub escalation: Option<EscalationStep>,
    /// A node the slot's next pod must avoid, and why.
    pub avoid: Option<Avoidance>,
    pub waiting_for: Option<String>,
    pub quarantined: bool,
}

pub(super) struct RepairPlan {
    pub actions: Vec<Action>,
    pub notes: BTreeMap<i32, SlotNote>,
    pub degraded: Option<Decided>,
    pub requeue: Option<Duration>,
}

/// Repairs within the window, oldest first.
pub(super) fn window(entry: Option<&ReplicaStatus>, now: Timestamp, period: i64) -> Vec<Timestamp> {
    entry
        .map(|e| {
            e.repairs
                .iter()
                .map(|t| t.0)
                .filter(|t| now.as_second() - t.as_second() < period)
                .collect()
        })
        .unwrap_or_default()
}

/// What every step reads: the service, what was judged, and the spec's settings resolved
/// once.
struct Settings<'a> {
    svc: &'a ResilientService,
    seen: &'a Assessment,
    previous: ResilientServiceStatus,
    now: Timestamp,
    /// The supervision window, in seconds (at least 1).
    period: i64,
    /// Repairs per rung of the ladder (at least 1).
    max_restarts: usize,
    stateful: bool,
}

impl<'a> Settings<'a> {
    fn new(svc: &'a ResilientService, seen: &'a Assessment) -> Self {
        Self {
            svc,
            seen,
            previous: svc.status.clone().unwrap_or_default(),
            now: seen.now,
            period: i64::from(svc.spec.supervision.period_seconds.max(1)),
            max_restarts: svc.spec.supervision.max_restarts.max(1) as usize,
            stateful: !svc.spec.volume_claim_templates.is_empty(),
        }
    }

    fn entry(&self, slot: i32) -> Option<&ReplicaStatus> {
        self.previous
            .replica_statuses
            .iter()
            .find(|r| r.ordinal == slot)
    }
}

/// What the steps decided for one slot.
#[derive(Debug, Default, PartialEq)]
struct SlotPlan {
    note: SlotNote,
    actions: Vec<Action>,
    /// Look again after this long (a settling loss, a back-off).
    requeue: Option<Duration>,
}

impl SlotPlan {
    fn wait(&mut self, d: Duration) {
        self.requeue = earliest(self.requeue, Some(d));
    }
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn plan(
    svc: &ResilientService,
    seen: &Assessment,
    rolling_revision: Option<&str>,
) -> RepairPlan {
    let s = Settings::new(svc, seen);
    let storm = storm::guard(svc, seen);
    let mut budget = budget::Budget::new(svc, &s.previous);
    let mut plan = RepairPlan {
        actions: Vec::new(),
        notes: BTreeMap::new(),
        degraded: storm.clone(),
        requeue: None,
    };
    for slot in 0..svc.spec.replicas.max(0) {
        let slot_plan = plan_slot(&s, slot, storm.is_some(), &mut budget, rolling_revision);
        plan.actions.extend(slot_plan.actions);
        plan.requeue = earliest(plan.requeue, slot_plan.requeue);
        // Every step that decides something leaves a mark on the note.
        if slot_plan.note != SlotNote::default() {
            plan.notes.insert(slot, slot_plan.note);
        }
    }
    let (unfence, requeue) = fence::plan(svc, seen);
    plan.actions.extend(unfence);
    plan.requeue = earliest(plan.requeue, requeue);
    if plan.degraded.is_none() {
        plan.degraded = verdict::ledger_verdict(seen, &plan.notes);
    }
    plan
}

/// The steps for one slot; last, an avoidance whose node is back is lifted, and a pod made
/// to keep off a node the slot avoids no more is made again without that.
fn plan_slot(
    s: &Settings,
    slot: i32,
    mass_failure: bool,
    budget: &mut budget::Budget,
    rolling_revision: Option<&str>,
) -> SlotPlan {
    let mut out = slot_steps(s, slot, mass_failure, budget, rolling_revision);
    let avoided = out.note.avoid.clone();
    avoidance::lift(s.seen, &mut out.note);
    let lifted = avoided.filter(|_| out.note.avoid.is_none());
    let avoid_now = out.note.avoid.as_ref().map(|a| a.node.as_str());
    // A pod made while the node was avoided carries the avoidance in its affinity, and the
    // scheduler may have nowhere else to put it (one pod per node, few nodes): one not
    // placed yet goes, and the next is made without it. Judged from the pod's own record of
    // what it keeps off, not only in the pass that lifts the avoidance: that pass may not
    // see yet the pod the pass before it made.
    let stale = |p: &PodView| match (p.avoids.as_deref(), &lifted) {
        (Some(node), _) => avoid_now != Some(node),
        // Made by an operator that did not record it on the pod.
        (None, Some(_)) => true,
        (None, None) => false,
    };
    let waiting = (s.seen.pods.iter())
        .filter(|p| p.slot == slot && p.node.is_none())
        .filter(|p| matches!(p.state, PodState::Pending | PodState::Unschedulable { .. }))
        .filter(|p| stale(p));
    out.actions.extend(waiting.map(|p| Action::DeletePod {
        name: p.name.clone(),
        reason: format!(
            "made to keep off {}, which the slot avoids no more; made again without that",
            p.avoids
                .as_deref()
                .or(lifted.as_ref().map(|l| l.node.as_str()))
                .unwrap_or_default()
        ),
    }));
    out
}

/// What is decided for one slot, in order: node loss, storage, supervision.
fn slot_steps(
    s: &Settings,
    slot: i32,
    mass_failure: bool,
    budget: &mut budget::Budget,
    rolling_revision: Option<&str>,
) -> SlotPlan {
    let entry = s.entry(slot);
    let pods: Vec<&PodView> = s.seen.pods.iter().filter(|p| p.slot == slot).collect();
    let mut out = SlotPlan {
        note: SlotNote {
            avoid: avoidance::carried(entry),
            ..Default::default()
        },
        ..Default::default()
    };

    // Node loss first: nothing else can be done for a pod nobody runs.
    if let Some(pod) = pods
        .iter()
        .find(|p| matches!(p.state, PodState::OnLostNode { .. }))
    {
        // A slot still served by a pod of its own elsewhere (a rollout's new pod that the
        // scheduler sent to the lost node beside its old one) has lost nothing.
        let served_elsewhere = pods.iter().any(|p| p.state.holds_its_slot());
        if !mass_failure {
            node_loss::stop_routing(&pods, &mut out);
        }
        node_loss::repair(s, pod, mass_failure, served_elsewhere, budget, &mut out);
        return out;
    }

    if let Some(waiting) = storage::claim_deleted_under_pod(s.seen, slot, &pods) {
        out.note.waiting_for = Some(waiting);
    }
    if pods.is_empty() {
        if let Some(node) = storage::node_lost_with_pod(s, entry) {
            out.note.avoid = Some(Avoidance {
                node,
                reason: AvoidReason::NodeLost,
            });
        }
        storage::rebuild_lost_claims(s, slot, &mut out);
    }

    // A failing pod of a revision being rolled out is the rollout's business: it rolls
    // back rather than repairs.
    let failing = pods.iter().find_map(|p| {
        if Some(p.revision.as_str()) == rolling_revision {
            return None;
        }
        supervise::supervised_failure(s.svc, p, s.now).map(|f| (*p, f))
    });
    if let Some((pod, failure)) = failing {
        supervise::repair(s, slot, pod, &failure, budget, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self, crash, lost};
    use super::*;

    #[test]
    fn a_failing_pod_of_the_revision_being_rolled_out_is_left_to_the_rollout() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = crash();
        let rolling = seen.pods[0].revision.clone();
        let p = plan(&svc, &seen, Some(&rolling));
        assert_eq!(p.actions, vec![]);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(
            plan(&svc, &seen, None).actions.len(),
            1,
            "else it is repaired"
        );
    }

    #[test]
    fn a_slot_with_a_pod_on_a_lost_node_is_repaired_for_the_loss_only() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        let mut crashing = seen.pods[1].clone();
        crashing.name.push_str("-b");
        crashing.state = crash();
        seen.pods[1].state = lost(false);
        seen.pods.push(crashing);
        let p = plan(&svc, &seen, None);
        assert!(
            matches!(&p.actions[..], [Action::ForceDeletePod { name, .. }] if *name == seen.pods[1].name),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn healthy_slots_leave_no_note_and_the_soonest_wait_is_asked_for() {
        let mut svc = fixtures::service(3, false);
        fixtures::with_repairs(&mut svc, 0, &[1]);
        fixtures::with_repairs(&mut svc, 2, &[3]);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = crash();
        seen.pods[2].state = crash();
        let p = plan(&svc, &seen, None);
        assert_eq!(p.notes.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(
            p.requeue,
            Some(Duration::from_secs(2)),
            "slot 2's back-off ends first"
        );
        assert_eq!(p.degraded, None, "a back-off is no verdict");
    }

    #[test]
    fn a_never_ready_pod_is_repaired_and_its_failure_recorded_in_the_ledger() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
        seen.pods[2].state = PodState::NotReady {
            since: fixtures::ago(deadline + 1),
        };
        let p = crate::plan::plan(&svc, &seen);
        assert!(
            matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart after NeverReady")),
            "{:?}",
            p.actions
        );
        let failure = p.status.replica_statuses[2]
            .last_failure
            .clone()
            .expect("NeverReady is recorded");
        assert_eq!(failure.reason, "NeverReady");
        assert!(
            failure.message.contains("has not been Ready since"),
            "{}",
            failure.message
        );
        assert_eq!(failure.at.0, seen.now);
    }

    #[test]
    fn a_lost_node_is_avoided_until_it_is_back_and_ready_and_a_rescheduled_one_after() {
        let mut svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        let pass = |svc: &mut ResilientService, seen: &Assessment| {
            let p = crate::plan::plan(svc, seen);
            svc.status = Some(p.status.clone());
            let e = &p.status.replica_statuses[1];
            (e.avoid_node.clone(), e.avoid_node_reason.clone())
        };
        let avoided = (Some("node-1".to_string()), Some("NodeLost".to_string()));
        assert_eq!(pass(&mut svc, &seen), avoided);
        // The pod is gone, its node still down: the replacement keeps off it.
        seen.pods.remove(1);
        assert_eq!(pass(&mut svc, &seen), avoided);
        // The node renews its lease again and is Ready.
        seen.nodes_back.insert("node-1".into());
        assert_eq!(pass(&mut svc, &seen), (None, None));
        assert_eq!(pass(&mut svc, &seen), (None, None), "lifted for good");

        // A Reschedule's avoidance outlasts its node's health.
        let mut svc = fixtures::service(3, false);
        svc.spec.supervision.max_restarts = 1;
        fixtures::with_repairs(&mut svc, 0, &[100]);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = crash();
        seen.nodes_back.insert("node-0".into());
        let p = crate::plan::plan(&svc, &seen);
        let e = &p.status.replica_statuses[0];
        assert_eq!(
            (e.avoid_node.as_deref(), e.avoid_node_reason.as_deref()),
            (Some("node-0"), Some("Reschedule"))
        );
    }

    #[test]
    fn a_pod_the_scheduler_cannot_place_off_a_lost_node_is_made_again_once_the_node_is_back() {
        let mut svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        let p = crate::plan::plan(&svc, &seen);
        svc.status = Some(p.status.clone());
        // Its replacement, made to keep off node-1, finds no other node.
        let name = seen.pods[1].name.clone();
        unplaced_keeping_off(&mut seen.pods[1], Some("node-1"));
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), Vec::<String>::new(), "node-1 is still lost");
        svc.status = Some(p.status.clone());

        seen.nodes_back.insert("node-1".into());
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), vec![name.clone()], "{:?}", p.actions);
        svc.status = Some(p.status.clone());
        // Once lifted, nothing is deleted again: the next pod has no avoidance.
        unplaced_keeping_off(&mut seen.pods[1], None);
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), Vec::<String>::new(), "{:?}", p.actions);

        // A pod made by an operator that did not record the node on the pod goes in the
        // pass that lifts the avoidance.
        let mut svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        svc.status = Some(crate::plan::plan(&svc, &seen).status);
        unplaced_keeping_off(&mut seen.pods[1], None);
        seen.nodes_back.insert("node-1".into());
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), vec![name], "{:?}", p.actions);
    }

    #[test]
    fn a_pod_made_to_keep_off_a_node_the_slot_avoids_no_more_goes_though_the_lift_did_not_see_it() {
        let mut svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        svc.status = Some(crate::plan::plan(&svc, &seen).status);
        let mut replacement = seen.pods.remove(1);
        unplaced_keeping_off(&mut replacement, Some("node-1"));
        // The node is back before the cache shows the replacement: the lift sees no pod.
        seen.nodes_back.insert("node-1".into());
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), Vec::<String>::new(), "{:?}", p.actions);
        assert_eq!(p.status.replica_statuses[1].avoid_node, None);
        svc.status = Some(p.status.clone());
        // The next pass sees it, with nothing left in the ledger to lift.
        seen.pods.push(replacement.clone());
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(
            deletes(&p),
            vec![replacement.name.clone()],
            "{:?}",
            p.actions
        );

        // One that keeps off the node the slot still avoids stays.
        let mut svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        svc.status = Some(crate::plan::plan(&svc, &seen).status);
        unplaced_keeping_off(&mut seen.pods[1], Some("node-1"));
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), Vec::<String>::new(), "{:?}", p.actions);
        // And one placed already is not touched, whatever it keeps off.
        seen.nodes_back.insert("node-1".into());
        seen.pods[1].node = Some("node-0".into());
        seen.pods[1].state = PodState::Starting;
        let p = crate::plan::plan(&svc, &seen);
        assert_eq!(deletes(&p), Vec::<String>::new(), "{:?}", p.actions);
    }

    /// A pod the scheduler cannot place, made to keep off `node`.
    fn unplaced_keeping_off(pod: &mut PodView, node: Option<&str>) {
        pod.node = None;
        pod.state = PodState::Unschedulable {
            message: "0/2 nodes are available".into(),
            since: fixtures::ago(60),
        };
        pod.avoids = node.map(Into::into);
    }

    fn deletes(p: &crate::plan::Plan) -> Vec<String> {
        (p.actions.iter())
            .filter_map(|a| match a {
                Action::DeletePod { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}
