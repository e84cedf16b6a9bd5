//! The end of a fencing cycle. A node this service fenced (tainted out-of-service) is
//! unfenced once it renews its lease again and is Ready, and nothing of ours is left on it
//! from before the fence: the pods the fence exists to clear are gone, and the node can
//! take pods again. Only the taint the service recorded applying is removed, and only
//! while it is still exactly as recorded (see build::fence).

use std::time::Duration;

use crate::api::{NodeRecoveredPolicy, ResilientService};
use crate::health::Assessment;
use crate::plan::Action;

/// How soon a fence whose node is back is looked at again while pods of ours are still on
/// the node: pods of other services leave without an event this service hears of.
const PODS_LEFT_RECHECK: Duration = Duration::from_secs(10);

/// The actions that end this service's fences, and when to look again.
pub(super) fn plan(svc: &ResilientService, seen: &Assessment) -> (Vec<Action>, Option<Duration>) {
    let mut actions = Vec::new();
    let mut requeue = None;
    if svc.spec.repair.on_node_recovered == NodeRecoveredPolicy::KeepFence {
        return (actions, requeue);
    }
    for fence in &seen.fences {
        let node = fence.node.clone();
        if !fence.in_place {
            actions.push(Action::ForgetFence { node });
        } else if fence.back.is_err() {
            // The node's return is an event (a renewal after silence, Ready again).
        } else if !fence.pods_left.is_empty() {
            requeue = Some(PODS_LEFT_RECHECK);
        } else {
            actions.push(Action::UntaintNode { node });
        }
    }
    (actions, requeue)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use crate::health::FenceView;

    fn fence(in_place: bool, back: bool, pods_left: &[&str]) -> FenceView {
        FenceView {
            node: "n1".into(),
            in_place,
            back: if back {
                Ok(())
            } else {
                Err("node n1 to be Ready".into())
            },
            pods_left: pods_left.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn decide(policy: NodeRecoveredPolicy, f: FenceView) -> (Vec<Action>, Option<Duration>) {
        let mut svc = fixtures::service(1, true);
        svc.spec.repair.on_node_recovered = policy;
        let mut seen = fixtures::converged(&svc);
        seen.fences = vec![f];
        plan(&svc, &seen)
    }

    const REMOVE: NodeRecoveredPolicy = NodeRecoveredPolicy::RemoveFence;

    #[test]
    fn a_fence_is_removed_once_its_node_is_back_and_nothing_of_ours_is_left_on_it() {
        assert_eq!(
            decide(REMOVE, fence(true, true, &[])),
            (vec![Action::UntaintNode { node: "n1".into() }], None)
        );
    }

    #[test]
    fn a_fence_stays_while_its_node_is_not_back() {
        assert_eq!(decide(REMOVE, fence(true, false, &[])), (vec![], None));
    }

    #[test]
    fn a_fence_stays_while_pods_it_clears_are_on_the_node_and_is_looked_at_again() {
        assert_eq!(
            decide(REMOVE, fence(true, true, &["shop/db-0"])),
            (vec![], Some(PODS_LEFT_RECHECK))
        );
    }

    #[test]
    fn a_taint_no_longer_as_recorded_is_left_and_only_the_record_is_forgotten() {
        for back in [true, false] {
            assert_eq!(
                decide(REMOVE, fence(false, back, &["shop/db-0"])),
                (vec![Action::ForgetFence { node: "n1".into() }], None)
            );
        }
    }

    #[test]
    fn keep_fence_leaves_every_fence_to_a_person() {
        let keep = NodeRecoveredPolicy::KeepFence;
        assert_eq!(decide(keep, fence(true, true, &[])), (vec![], None));
        assert_eq!(decide(keep, fence(false, true, &[])), (vec![], None));
    }
}
