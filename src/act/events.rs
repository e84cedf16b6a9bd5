//! The Event each action leaves on the ResilientService, so `kubectl describe` tells the story.
//! Each says how it reads alone (its note) and among others of its kind in the same pass (a
//! [`Part`](super::recorder::Part)): the recorder makes one Event of those.

use super::recorder::Event;
use crate::plan::Action;

/// The Event for an action; None for bookkeeping nobody needs to read about.
pub fn event_for(action: &Action) -> Option<Event> {
    let event = match action {
        Action::CreatePod {
            ordinal,
            revision,
            name,
        } => Event::normal(
            "SuccessfulCreate",
            "Create",
            format!("created pod {name} for slot {ordinal} at revision {revision}"),
        )
        .listed(
            "created",
            "pods",
            format!(" at revision {revision}"),
            format!("{name} (slot {ordinal})"),
        ),
        Action::DeletePod { name, reason } => Event::normal(
            "SuccessfulDelete",
            "Delete",
            format!("deleted pod {name}: {reason}"),
        )
        .listed("deleted", "pods", format!(" ({reason})"), name.clone()),
        Action::CreateClaim { template, ordinal } => Event::normal(
            "SuccessfulCreate",
            "Create",
            format!("created claim {template} of slot {ordinal}"),
        )
        .listed(
            "created",
            "claims",
            String::new(),
            format!("{template} of slot {ordinal}"),
        ),
        Action::DeleteClaim { name } => Event::normal(
            "SuccessfulDelete",
            "Delete",
            format!("deleted claim {name} of a removed slot, as persistentVolumeClaimRetentionPolicy.whenScaled says"),
        )
        .listed(
            "deleted",
            "claims",
            " of removed slots, as persistentVolumeClaimRetentionPolicy.whenScaled says".into(),
            name.clone(),
        ),
        Action::CreateRevision { number } => Event::normal(
            "RevisionCreated",
            "Create",
            format!("recorded the template as revision {number}"),
        ),
        Action::ForceDeletePod { name, reason } => Event::warning(
            "NodeLost",
            "Repair",
            format!("replacing pod {name}: {reason}"),
        )
        .listed("replacing", "pods", format!(" ({reason})"), name.clone()),
        Action::MarkPodNotReady { name, reason } => Event::warning(
            "NodeLost",
            "Unroute",
            format!("stopped routing to pod {name}, marked not ready: {reason}"),
        )
        .listed(
            "stopped routing to",
            "pods",
            format!(", marked not ready ({reason})"),
            name.clone(),
        ),
        Action::RebuildClaim { name, reason, .. } => Event::warning(
            "VolumeRebuilt",
            "Repair",
            format!("claim {name} is replaced by a new, empty one and its replica starts without its data: {reason}"),
        )
        .listed(
            "replaced",
            "claims",
            format!(" by new, empty ones, and their replicas start without their data ({reason})"),
            name.clone(),
        ),
        Action::TaintNode { node } => Event::warning(
            "NodeFenced",
            "Fence",
            format!("tainted lost node {node} node.kubernetes.io/out-of-service, as repair.fencing: TaintOutOfService says"),
        )
        .listed(
            "tainted",
            "lost nodes",
            " node.kubernetes.io/out-of-service, as repair.fencing: TaintOutOfService says".into(),
            node.clone(),
        ),
        Action::UntaintNode { node } => Event::normal(
            "NodeUnfenced",
            "Unfence",
            format!("removed the node.kubernetes.io/out-of-service taint this service put on node {node}: the node renews its lease again and is Ready, and no pod of ours is left on it from before the fence"),
        )
        .listed(
            "removed the node.kubernetes.io/out-of-service taint this service put on",
            "nodes",
            " (each renews its lease again and is Ready, and no pod of ours is left on it from before the fence)".into(),
            node.clone(),
        ),
        Action::MarkRevisionBad { name, reason } => Event::warning(
            "RolledBack",
            "Rollback",
            format!("revision {name} failed and is rolled back: {reason}"),
        ),
        Action::ClearAbort { value } => Event::normal(
            "AbortCleared",
            "Update",
            format!("removed the annotation perennial.dev/abort={value}: the rollout it asked to abort is rolled back, or none is going on"),
        ),
        Action::UpgradeInPlace {
            name,
            from,
            revision,
        } => Event::normal(
            "UpgradedInPlace",
            "Update",
            format!("patched pod {name} in place from revision {from} to {revision}"),
        )
        .listed(
            "patched",
            "pods",
            format!(" in place to revision {revision}"),
            format!("{name} (from {from})"),
        ),
        // A drain shows in status (waitingFor); an Event per pod would double the writes.
        Action::CloseGate { .. }
        | Action::OpenGate { .. }
        | Action::ApplyService
        | Action::ApplyDisruptionBudget
        | Action::DeleteRevision { .. }
        | Action::ForgetFence { .. } => return None,
    };
    Some(event)
}

/// The Event for an action the API server refused in a way a person must fix; None for
/// errors the next pass retries.
pub fn event_for_error(action: &Action, error: &super::Error) -> Option<Event> {
    match (action, error) {
        (Action::CreatePod { name, .. }, super::Error::InvalidTemplate { revision, message }) => {
            // An Event's note holds 1 kB; the whole message is on the revision and in status.
            let message: String = message.chars().take(640).collect();
            Some(
                Event::warning(
                    "InvalidTemplate",
                    "Create",
                    format!("the API server refuses pod {name} of revision {revision}, and no pod of it is created until spec.template changes: {message}"),
                )
                .listed(
                    "the API server refuses",
                    "pods",
                    format!(" of revision {revision}, and no pod of it is created until spec.template changes ({message})"),
                    name.clone(),
                ),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::recorder::aggregate;

    #[test]
    fn the_pods_a_pass_creates_are_told_in_one_event_naming_each_with_its_slot() {
        let events = (0..3)
            .filter_map(|i| {
                event_for(&Action::CreatePod {
                    ordinal: i,
                    revision: "web-abc".into(),
                    name: format!("web-{i}-abc"),
                })
            })
            .collect();
        let out = aggregate(events);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].note,
            "created 3 pods at revision web-abc: web-0-abc (slot 0), web-1-abc (slot 1), web-2-abc (slot 2)"
        );
    }

    #[test]
    fn a_lone_action_keeps_the_note_it_always_had() {
        let event = event_for(&Action::DeletePod {
            name: "web-4-abc".into(),
            reason: "scaled down to 4 replicas".into(),
        })
        .unwrap();
        assert_eq!(
            aggregate(vec![event])[0].note,
            "deleted pod web-4-abc: scaled down to 4 replicas"
        );
    }

    #[test]
    fn pods_deleted_for_one_reason_are_listed_under_it() {
        let events = [3, 4]
            .iter()
            .filter_map(|i| {
                event_for(&Action::DeletePod {
                    name: format!("web-{i}-abc"),
                    reason: "scaled down to 3 replicas".into(),
                })
            })
            .collect();
        assert_eq!(
            aggregate(events)[0].note,
            "deleted 2 pods (scaled down to 3 replicas): web-3-abc, web-4-abc"
        );
    }

    #[test]
    fn bookkeeping_leaves_no_event() {
        assert!(event_for(&Action::ApplyService).is_none());
        assert!(event_for(&Action::OpenGate { name: "p".into() }).is_none());
    }
}
