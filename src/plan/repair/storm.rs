//! The storm guard: many replicas, or much of the cluster, failing together point at the
//! infrastructure; replacing replicas then only adds load.

use super::super::conditions::Decided;
use crate::api::{condition, ResilientService};
use std::collections::BTreeSet;

use crate::health::{Assessment, PodState, PodView};

/// What a slot on a lost node waits for while the guard holds.
pub(super) const WAITING_FOR_CALM: &str = "fewer failures at once (MassFailureSuspected)";

/// The Degraded verdict when more than half the nodes are lost, or more than half the
/// replicas are on lost nodes; node-loss repair pauses meanwhile.
pub(super) fn guard(svc: &ResilientService, seen: &Assessment) -> Option<Decided> {
    let replicas = svc.spec.replicas.max(0);
    // Slots, not pods, and only slots with no pod of theirs elsewhere: a pod left on a lost
    // node after its slot was replaced (it stays until it is fenced), or a slot's old and
    // new pods on the same lost node, made one lost node look like most of the service
    // once a rollout had put a pod of each slot there in turn.
    let lost = |p: &&PodView| matches!(p.state, PodState::OnLostNode { .. });
    let ours = || seen.pods.iter().filter(|p| p.slot < replicas);
    let elsewhere: BTreeSet<i32> = ours()
        .filter(|p| p.state.holds_its_slot())
        .map(|p| p.slot)
        .collect();
    let on_lost = ours()
        .filter(lost)
        .map(|p| p.slot)
        .filter(|slot| !elsewhere.contains(slot))
        .collect::<BTreeSet<_>>()
        .len();
    let mass_failure = (seen.nodes_total >= 2 && seen.nodes_lost * 2 > seen.nodes_total)
        || (replicas >= 2 && on_lost * 2 > replicas as usize);
    mass_failure.then(|| Decided {
        type_: condition::DEGRADED,
        status: true,
        reason: "MassFailureSuspected".into(),
        message: format!(
            "{} of {} nodes lost and {on_lost} of {replicas} replicas on lost nodes: node-loss repair pauses until fewer fail at once",
            seen.nodes_lost, seen.nodes_total,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, lost};
    use super::*;

    #[test]
    fn more_than_half_the_replicas_on_lost_nodes_is_a_storm() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = lost(false);
        assert_eq!(
            guard(&svc, &seen),
            None,
            "one of three is a failure, not a storm"
        );
        seen.pods[1].state = lost(false);
        let storm = guard(&svc, &seen).expect("two of three is");
        assert_eq!(storm.reason, "MassFailureSuspected");
        assert!(
            storm.message.contains("2 of 3 replicas"),
            "{}",
            storm.message
        );
    }

    #[test]
    fn more_than_half_the_nodes_lost_is_a_storm_even_with_the_replicas_alive() {
        let svc = fixtures::service(3, false);
        let mut seen = fixtures::converged(&svc);
        seen.nodes_total = 4;
        seen.nodes_lost = 2;
        assert_eq!(guard(&svc, &seen), None, "half is not more than half");
        seen.nodes_lost = 3;
        assert!(guard(&svc, &seen).is_some());
    }

    #[test]
    fn a_single_replica_or_a_single_node_is_never_a_storm() {
        let svc = fixtures::service(1, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = lost(false);
        seen.nodes_total = 1;
        seen.nodes_lost = 1;
        assert_eq!(guard(&svc, &seen), None);
    }

    #[test]
    fn a_slot_with_two_pods_on_a_lost_node_counts_once() {
        let svc = fixtures::service(4, false);
        let mut seen = fixtures::converged(&svc);
        seen.pods[0].state = lost(false);
        // Mid-rollout: slot 0's new pod landed on the same node as its old one.
        let mut surge = seen.pods[0].clone();
        surge.name = format!("{}-b", surge.name);
        seen.pods.push(surge);
        seen.pods[1].state = lost(false);
        assert_eq!(
            guard(&svc, &seen),
            None,
            "two of four slots are on the lost node, three pods"
        );
    }

    #[test]
    fn a_slot_replaced_off_the_lost_node_no_longer_counts() {
        let svc = fixtures::service(4, false);
        let mut seen = fixtures::converged(&svc);
        for slot in 0..3 {
            // Each slot's pod was left on the lost node, and a new one runs elsewhere.
            let mut left = seen.pods[slot].clone();
            left.name = format!("{}-old", left.name);
            left.state = lost(false);
            seen.pods.push(left);
        }
        assert_eq!(guard(&svc, &seen), None, "3 pods left behind, 0 slots down");
        seen.pods[0].state = PodState::Pending;
        assert_eq!(
            guard(&svc, &seen),
            None,
            "a replacement on its way counts too"
        );
    }

    #[test]
    fn pods_of_slots_beyond_the_replicas_do_not_count() {
        let svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&fixtures::service(4, false));
        seen.pods[2].state = lost(false);
        seen.pods[3].state = lost(false);
        assert_eq!(guard(&svc, &seen), None);
    }
}
