//! Storage steps of a slot: a claim deleted by hand under its running pod, and claims whose
//! volume went with a lost node.

use super::{Settings, SlotPlan};
use crate::api::{ReplicaStatus, VolumeLostPolicy};
use crate::health::{Assessment, PodState, PodView};
use crate::plan::Action;

/// How a slot's note says that its claim was deleted under its running pod.
pub(super) const CLAIM_DELETED_UNDER_POD: &str = "is being deleted while it is in use by pod";

/// What the slot waits for when one of its claims is being deleted. A claim deleted by hand
/// while its pod runs stays until the pod goes (the API server protects claims in use). The
/// pod is not replaced for it: its data may be all that is left, and the deletion may have
/// been a mistake. A person decides.
pub(super) fn claim_deleted_under_pod(
    seen: &Assessment,
    slot: i32,
    pods: &[&PodView],
) -> Option<String> {
    let claim = seen.claims.iter().find(|c| c.slot == slot && c.deleting)?;
    Some(match pods.iter().find(|p| p.state != PodState::Terminating) {
        Some(pod) => format!(
            "a person: claim {} {CLAIM_DELETED_UNDER_POD} {}; delete the pod for the slot to start again with a new, empty claim",
            claim.name, pod.name
        ),
        None => format!("claim {} to be deleted before the slot gets a new one", claim.name),
    })
}

/// The node a stateless slot without a pod lost its pod with, from the ledger. The pod was
/// lost with its node and is gone since (force-deleted, by a person or by the pod garbage
/// collector): its replacement avoids that node, also when this pass reads a status from
/// before the repair that set avoidNode. Stateless slots only, as for any node loss.
pub(super) fn node_lost_with_pod(s: &Settings, entry: Option<&ReplicaStatus>) -> Option<String> {
    let e = entry?;
    let lost = e
        .last_failure
        .as_ref()
        .is_some_and(|f| f.reason == "NodeLost");
    (!s.stateful && e.state == "Waiting" && lost)
        .then(|| e.node.clone())
        .flatten()
}

/// Claims whose volume was lost with its node: rebuilt when the policy says Recreate and
/// the node is known down; otherwise the slot waits for a person.
pub(super) fn rebuild_lost_claims(s: &Settings, slot: i32, out: &mut SlotPlan) {
    for claim in s
        .seen
        .claims
        .iter()
        .filter(|c| c.slot == slot && !c.deleting)
    {
        let Some((node, fenced)) = &claim.lost_with else {
            continue;
        };
        match s.svc.spec.repair.storage.on_volume_lost {
            VolumeLostPolicy::Recreate if *fenced => out.actions.push(Action::RebuildClaim {
                name: claim.name.clone(),
                ordinal: slot,
                reason: format!("VolumeLost: its volume was bound to node {node}, which is lost"),
            }),
            VolumeLostPolicy::Recreate => {
                out.note.waiting_for = Some(format!(
                    "evidence that node {node} is down before claim {} is rebuilt",
                    claim.name
                ))
            }
            VolumeLostPolicy::Retain => {
                out.note.waiting_for = Some(format!(
                    "a person: claim {}'s volume is on lost node {node} and onVolumeLost is Retain",
                    claim.name
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::fixtures;
    use super::*;
    use crate::api::Failure;

    #[test]
    fn a_claim_deleted_under_a_running_pod_waits_for_a_person_and_under_a_leaving_one_for_its_end()
    {
        let svc = fixtures::service(2, true);
        let mut seen = fixtures::converged(&svc);
        assert_eq!(claim_deleted_under_pod(&seen, 0, &[&seen.pods[0]]), None);
        seen.claims[0].deleting = true;
        let pod = seen.pods[0].clone();
        let waiting = claim_deleted_under_pod(&seen, 0, &[&pod]).unwrap();
        assert!(
            waiting.starts_with("a person: claim data-web-0"),
            "{waiting}"
        );
        assert!(waiting.contains(CLAIM_DELETED_UNDER_POD));
        let mut leaving = pod;
        leaving.state = PodState::Terminating;
        assert_eq!(
            claim_deleted_under_pod(&seen, 0, &[&leaving]).as_deref(),
            Some("claim data-web-0 to be deleted before the slot gets a new one")
        );
    }

    fn waiting_after_node_loss(node: Option<&str>, reason: &str) -> ReplicaStatus {
        ReplicaStatus {
            ordinal: 0,
            node: node.map(Into::into),
            state: "Waiting".into(),
            last_failure: Some(Box::new(Failure {
                reason: reason.into(),
                message: "m".into(),
                at: Time(fixtures::now()),
                recovered_at: None,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_stateless_slot_whose_pod_went_with_its_node_remembers_the_node() {
        let svc = fixtures::service(1, false);
        let seen = fixtures::converged(&svc);
        let s = Settings::new(&svc, &seen);
        let lost = waiting_after_node_loss(Some("n1"), "NodeLost");
        assert_eq!(node_lost_with_pod(&s, Some(&lost)).as_deref(), Some("n1"));
        let crashed = waiting_after_node_loss(Some("n1"), "CrashLoopBackOff");
        assert_eq!(node_lost_with_pod(&s, Some(&crashed)), None);
        assert_eq!(
            node_lost_with_pod(&s, Some(&waiting_after_node_loss(None, "NodeLost"))),
            None
        );
        assert_eq!(node_lost_with_pod(&s, None), None);
        let stateful = fixtures::service(1, true);
        let s = Settings::new(&stateful, &seen);
        assert_eq!(node_lost_with_pod(&s, Some(&lost)), None);
    }

    #[test]
    fn a_lost_claim_is_rebuilt_only_with_recreate_and_evidence() {
        let mut svc = fixtures::service(1, true);
        let mut seen = fixtures::converged(&svc);
        seen.claims[0].lost_with = Some(("n1".into(), false));
        let run = |svc: &crate::api::ResilientService, seen: &Assessment| {
            let mut out = SlotPlan::default();
            rebuild_lost_claims(&Settings::new(svc, seen), 0, &mut out);
            out
        };
        let retained = run(&svc, &seen);
        assert_eq!(retained.actions, vec![]);
        assert!(retained
            .note
            .waiting_for
            .unwrap()
            .contains("onVolumeLost is Retain"));

        svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Recreate;
        let no_evidence = run(&svc, &seen);
        assert_eq!(no_evidence.actions, vec![]);
        assert!(no_evidence
            .note
            .waiting_for
            .unwrap()
            .starts_with("evidence"));

        seen.claims[0].lost_with = Some(("n1".into(), true));
        let rebuilt = run(&svc, &seen);
        assert!(
            matches!(&rebuilt.actions[..], [Action::RebuildClaim { name, .. }] if name == "data-web-0")
        );
        assert_eq!(rebuilt.note.waiting_for, None);

        seen.claims[0].deleting = true;
        assert_eq!(
            run(&svc, &seen).actions,
            vec![],
            "a claim on its way out is left"
        );
    }
}
