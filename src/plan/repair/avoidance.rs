//! The node a slot's next pod must avoid. After a Reschedule, the node where the pod kept
//! failing, until a later repair replaces it. After a node loss, the lost node: until the
//! node lifecycle controller taints it, a lost node still looks schedulable, and the
//! replacement must not land where nothing runs it. Once that node renews its lease again
//! and is Ready, there is nothing left to avoid, and the avoidance is lifted: kept, it would
//! bar the slot from a healthy node for good.

use crate::api::ReplicaStatus;
use crate::health::Assessment;

use super::SlotNote;

/// A node a slot's next pod must avoid, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::plan) struct Avoidance {
    pub node: String,
    pub reason: AvoidReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::plan) enum AvoidReason {
    /// The slot's pod was lost with the node.
    NodeLost,
    /// The slot's pod kept failing on the node.
    Reschedule,
}

impl AvoidReason {
    /// The word in status.replicaStatuses[].avoidNodeReason.
    pub fn word(self) -> &'static str {
        match self {
            AvoidReason::NodeLost => "NodeLost",
            AvoidReason::Reschedule => "Reschedule",
        }
    }
}

/// The avoidance the ledger carries from the last pass. One recorded without a reason (by
/// an operator from before reasons were recorded) is kept as a Reschedule's: whether its
/// node was ever lost cannot be told.
pub(super) fn carried(entry: Option<&ReplicaStatus>) -> Option<Avoidance> {
    let entry = entry?;
    Some(Avoidance {
        node: entry.avoid_node.clone()?,
        reason: match entry.avoid_node_reason.as_deref() {
            Some("NodeLost") => AvoidReason::NodeLost,
            _ => AvoidReason::Reschedule,
        },
    })
}

/// Lifts an avoidance of a lost node once the node is back.
pub(super) fn lift(seen: &Assessment, note: &mut SlotNote) {
    let back = note
        .avoid
        .as_ref()
        .is_some_and(|a| a.reason == AvoidReason::NodeLost && seen.nodes_back.contains(&a.node));
    if back {
        note.avoid = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    fn entry(node: Option<&str>, reason: Option<&str>) -> ReplicaStatus {
        ReplicaStatus {
            avoid_node: node.map(Into::into),
            avoid_node_reason: reason.map(Into::into),
            ..Default::default()
        }
    }

    fn avoid(node: &str, reason: AvoidReason) -> Option<Avoidance> {
        Some(Avoidance {
            node: node.into(),
            reason,
        })
    }

    #[test]
    fn the_ledger_carries_the_avoidance_and_its_reason() {
        assert_eq!(
            carried(Some(&entry(Some("n1"), Some("NodeLost")))),
            avoid("n1", AvoidReason::NodeLost)
        );
        assert_eq!(
            carried(Some(&entry(Some("n1"), Some("Reschedule")))),
            avoid("n1", AvoidReason::Reschedule)
        );
        assert_eq!(
            carried(Some(&entry(Some("n1"), None))),
            avoid("n1", AvoidReason::Reschedule),
            "an avoidance of unknown cause is kept"
        );
        assert_eq!(carried(Some(&entry(None, Some("NodeLost")))), None);
        assert_eq!(carried(None), None);
    }

    #[test]
    fn an_avoided_lost_node_is_avoided_no_more_once_it_is_back_and_a_rescheduled_one_still_is() {
        let mut seen = fixtures::converged(&fixtures::service(1, false));
        let lost = |seen: &Assessment| {
            let mut note = SlotNote {
                avoid: avoid("n1", AvoidReason::NodeLost),
                ..Default::default()
            };
            lift(seen, &mut note);
            note.avoid
        };
        assert_eq!(
            lost(&seen),
            avoid("n1", AvoidReason::NodeLost),
            "n1 is not back"
        );
        seen.nodes_back.insert("n1".into());
        assert_eq!(lost(&seen), None);

        let mut rescheduled = SlotNote {
            avoid: avoid("n1", AvoidReason::Reschedule),
            ..Default::default()
        };
        lift(&seen, &mut rescheduled);
        assert_eq!(rescheduled.avoid, avoid("n1", AvoidReason::Reschedule));
    }
}
