//! The storm guard: many replicas, or much of the cluster, failing together point at the
//! infrastructure; replacing replicas then only adds load.

use super::super::conditions::Decided;
use crate::api::{condition, ResilientService};
use crate::health::{Assessment, PodState};

/// What a slot on a lost node waits for while the guard holds.
pub(super) const WAITING_FOR_CALM: &str = "fewer failures at once (MassFailureSuspected)";

/// The Degraded verdict when more than half the nodes are lost, or more than half the
/// replicas are on lost nodes; node-loss repair pauses meanwhile.
pub(super) fn guard(svc: &ResilientService, seen: &Assessment) -> Option<Decided> {
    let replicas = svc.spec.replicas.max(0);
    let on_lost = seen
        .pods
        .iter()
        .filter(|p| p.slot < replicas && matches!(p.state, PodState::OnLostNode { .. }))
        .count();
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
    fn pods_of_slots_beyond_the_replicas_do_not_count() {
        let svc = fixtures::service(2, false);
        let mut seen = fixtures::converged(&fixtures::service(4, false));
        seen.pods[2].state = lost(false);
        seen.pods[3].state = lost(false);
        assert_eq!(guard(&svc, &seen), None);
    }
}
