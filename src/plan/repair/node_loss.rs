//! Repair of a slot whose pod is on a lost node: let the loss settle, then replace the pod
//! (a stateless one at once, a stateful one once its node is fenced), or fence the node
//! as `repair.fencing` says.

use std::time::Duration;

use super::budget::{Budget, WAITING_FOR_BUDGET};
use super::storm::WAITING_FOR_CALM;
use super::{storage, AvoidReason, Avoidance, Settings, SlotPlan};
use crate::api::{EscalationStep, Fencing};
use crate::health::{Listing, NodeHealth, PodState, PodView};

/// Decides for `pod`, which is on a lost node; `served_elsewhere` when another pod of its
/// slot runs.
pub(super) fn repair(
    s: &Settings,
    pod: &PodView,
    mass_failure: bool,
    served_elsewhere: bool,
    budget: &mut Budget,
    out: &mut SlotPlan,
) {
    let PodState::OnLostNode {
        fenced, message, ..
    } = &pod.state
    else {
        return;
    };
    let node = pod.node.as_deref().unwrap_or_default();
    if mass_failure {
        out.note.waiting_for = Some(WAITING_FOR_CALM.into());
    } else if let Some(settling) = settling(s, *fenced, message) {
        out.note.waiting_for = Some(format!(
            "the loss of node {node} to settle: nodes failing together fall silent up to a lease renewal apart, and the storm guard must see them all first"
        ));
        out.wait(settling);
    } else if !s.stateful && served_elsewhere {
        clear_away(pod, out);
    } else if !s.stateful || *fenced {
        replace(s, pod, budget, out);
    } else {
        fence(s, node, out);
    }
}

/// Marks not ready every pod of the slot on a lost node that a Service still routes to, so
/// that clients stop reaching a node nothing answers on. Not under a storm: nodes that all
/// look lost at once more likely share a fault of their heartbeats than of their pods, and
/// unlisting every pod would turn a false alarm into an outage.
pub(super) fn stop_routing(pods: &[&PodView], out: &mut SlotPlan) {
    for pod in pods {
        let PodState::OnLostNode { message, .. } = &pod.state else {
            continue;
        };
        if pod.serving.listing == Listing::Ready {
            out.actions.push(crate::plan::Action::MarkPodNotReady {
                name: pod.name.clone(),
                reason: format!("NodeLost: {message}"),
            });
        }
    }
}

/// How long until a loss this pass would act on (force-delete the pod, or fence the node)
/// has lasted long enough to be acted on; None when it has, or when nothing would be done.
fn settling(s: &Settings, fenced: bool, message: &str) -> Option<Duration> {
    let acts = !s.stateful || fenced || s.svc.spec.repair.fencing == Fencing::TaintOutOfService;
    let lost_after = i64::from(s.svc.spec.repair.node_lost_after_seconds);
    // A node known down (deleted, or fenced) needs no settling: there is nothing to wait for.
    let left = if fenced {
        0
    } else {
        NodeHealth::settling_seconds(message, lost_after)
    };
    (acts && left > 0).then(|| Duration::from_secs(left as u64))
}

/// Force-deletes the pod, within the budget, and rebuilds its claims lost with the node.
fn replace(s: &Settings, pod: &PodView, budget: &mut Budget, out: &mut SlotPlan) {
    if !budget.take(pod.slot) {
        out.note.waiting_for = Some(WAITING_FOR_BUDGET.into());
        return;
    }
    let PodState::OnLostNode { message, .. } = &pod.state else {
        return;
    };
    out.actions.push(crate::plan::Action::ForceDeletePod {
        name: pod.name.clone(),
        reason: format!("NodeLost: {message}"),
    });
    out.note.repaired = true;
    out.note.escalation = Some(EscalationStep::Reschedule);
    // Until the node lifecycle controller taints it, a lost node still looks schedulable:
    // the replacement must not land where nothing runs it. A stateful slot is replaced
    // only once its node is fenced (deleted, or tainted out-of-service), which keeps pods
    // off it already; avoiding the node for good would strand a slot whose retained volume
    // lives there once the node is repaired.
    if !s.stateful {
        out.note.avoid = pod.node.clone().map(|node| Avoidance {
            node,
            reason: AvoidReason::NodeLost,
        });
    }
    storage::rebuild_lost_claims(s, pod.slot, out);
}

/// Force-deletes a pod on a lost node whose slot another pod still serves: no repair of
/// the slot, so no share of the budget and no mark in the ledger (a repair under way would
/// hold the budget until this slot is Ready again, and a rollout waits for this pod's room
/// while the slot it would repair waits for the budget). Its next pod keeps off the node.
fn clear_away(pod: &PodView, out: &mut SlotPlan) {
    let PodState::OnLostNode { message, .. } = &pod.state else {
        return;
    };
    out.actions.push(crate::plan::Action::ForceDeletePod {
        name: pod.name.clone(),
        reason: format!("NodeLost: {message}; its slot is served by another pod"),
    });
    out.note.avoid = pod.node.clone().map(|node| Avoidance {
        node,
        reason: AvoidReason::NodeLost,
    });
}

/// A stateful slot on a lost node without evidence: fence the node, or wait for evidence or
/// for a person, as `repair.fencing` says.
fn fence(s: &Settings, node: &str, out: &mut SlotPlan) {
    out.note.waiting_for = Some(match s.svc.spec.repair.fencing {
        Fencing::TaintOutOfService => {
            out.actions.push(crate::plan::Action::TaintNode {
                node: node.to_string(),
            });
            format!("node {node} to be tainted out-of-service")
        }
        Fencing::WaitForEvidence => format!(
            "evidence that node {node} is down: its deletion or the node.kubernetes.io/out-of-service taint"
        ),
        Fencing::None => format!("a person: node {node} is lost and repair.fencing is None"),
    });
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, lost, lost_for};
    use super::*;
    use crate::plan::Action;

    fn decide(
        svc: &crate::api::ResilientService,
        seen: &crate::health::Assessment,
        slot: usize,
        mass_failure: bool,
    ) -> SlotPlan {
        let s = Settings::new(svc, seen);
        let mut budget = Budget::new(svc, &s.previous);
        let mut out = SlotPlan::default();
        repair(
            &s,
            &seen.pods[slot],
            mass_failure,
            false,
            &mut budget,
            &mut out,
        );
        out
    }

    #[test]
    fn a_storm_holds_every_node_loss_repair() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(true);
        let out = decide(&svc, &seen, 1, true);
        assert_eq!(out.actions, vec![]);
        assert_eq!(out.note.waiting_for.as_deref(), Some(WAITING_FOR_CALM));
    }

    #[test]
    fn a_fresh_loss_without_evidence_settles_before_the_pod_is_replaced() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        // Lost at 30 s of silence; acted on 11 s later.
        seen.pods[1].state = lost_for(35, false);
        let out = decide(&svc, &seen, 1, false);
        assert_eq!(out.actions, vec![]);
        assert_eq!(out.requeue, Some(Duration::from_secs(6)));
        assert!(out
            .note
            .waiting_for
            .unwrap()
            .starts_with("the loss of node node-1 to settle"));
        // A fenced node needs no settling.
        seen.pods[1].state = lost_for(35, true);
        assert!(out_kinds(&decide(&svc, &seen, 1, false)).contains(&"ForceDeletePod"));
    }

    fn out_kinds(out: &SlotPlan) -> Vec<&'static str> {
        out.actions
            .iter()
            .map(|a| match a {
                Action::ForceDeletePod { .. } => "ForceDeletePod",
                Action::TaintNode { .. } => "TaintNode",
                Action::RebuildClaim { .. } => "RebuildClaim",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn a_stateless_pod_is_replaced_and_its_slot_avoids_the_node_a_stateful_one_does_not() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        let out = decide(&svc, &seen, 1, false);
        assert_eq!(out_kinds(&out), vec!["ForceDeletePod"]);
        assert!(out.note.repaired);
        assert_eq!(out.note.escalation, Some(EscalationStep::Reschedule));
        assert_eq!(
            out.note.avoid,
            Some(Avoidance {
                node: "node-1".into(),
                reason: AvoidReason::NodeLost
            })
        );

        let svc = fixtures::service(3, true);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(true);
        let out = decide(&svc, &seen, 1, false);
        assert_eq!(out_kinds(&out), vec!["ForceDeletePod"]);
        assert_eq!(out.note.avoid, None);
    }

    #[test]
    fn a_replacement_beyond_the_budget_waits_for_a_free_repair_slot() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = lost(false);
        seen.pods[1].state = lost(false);
        let s = Settings::new(&svc, &seen);
        let mut budget = Budget::new(&svc, &s.previous);
        let mut first = SlotPlan::default();
        repair(&s, &seen.pods[0], false, false, &mut budget, &mut first);
        let mut second = SlotPlan::default();
        repair(&s, &seen.pods[1], false, false, &mut budget, &mut second);
        assert_eq!(out_kinds(&first), vec!["ForceDeletePod"]);
        assert_eq!(second.actions, vec![]);
        assert_eq!(second.note.waiting_for.as_deref(), Some(WAITING_FOR_BUDGET));
    }

    #[test]
    fn a_stateful_pod_without_evidence_waits_or_fences_as_the_spec_says() {
        let mut svc = fixtures::service(3, true);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        let waits = decide(&svc, &seen, 1, false);
        assert_eq!(waits.actions, vec![]);
        assert!(waits
            .note
            .waiting_for
            .unwrap()
            .starts_with("evidence that node node-1"));

        svc.spec.repair.fencing = Fencing::None;
        let person = decide(&svc, &seen, 1, false);
        assert!(person.note.waiting_for.unwrap().starts_with("a person"));

        svc.spec.repair.fencing = Fencing::TaintOutOfService;
        let fences = decide(&svc, &seen, 1, false);
        assert_eq!(
            fences.actions,
            vec![Action::TaintNode {
                node: "node-1".into()
            }]
        );
        assert_eq!(
            fences.note.waiting_for.as_deref(),
            Some("node node-1 to be tainted out-of-service")
        );
        // Fencing also waits for the loss to settle.
        seen.pods[1].state = lost_for(31, false);
        assert_eq!(decide(&svc, &seen, 1, false).actions, vec![]);
    }

    #[test]
    fn a_pod_on_a_lost_node_beside_one_that_serves_its_slot_goes_without_taking_the_budget() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[1].state = lost(false);
        let s = Settings::new(&svc, &seen);
        let mut budget = Budget::new(&svc, &s.previous);
        assert!(budget.take(0), "another slot's repair holds the only share");
        let mut out = SlotPlan::default();
        repair(&s, &seen.pods[1], false, true, &mut budget, &mut out);
        assert_eq!(out_kinds(&out), vec!["ForceDeletePod"]);
        assert!(!out.note.repaired, "the slot lost nothing");
        assert_eq!(out.note.escalation, None);
        assert_eq!(out.note.avoid.map(|a| a.node).as_deref(), Some("node-1"));
    }
}
