//! The Event each action leaves on the ResilientService, so `kubectl describe` tells the story.

use kube::runtime::events::{Event, EventType};

use crate::plan::Action;

/// The Event for an action; None for bookkeeping nobody needs to read about.
pub fn event_for(action: &Action) -> Option<Event> {
    let (reason, note, action_word) = match action {
        Action::CreatePod {
            ordinal,
            revision,
            name,
        } => (
            "SuccessfulCreate",
            format!("created pod {name} for slot {ordinal} at revision {revision}"),
            "Create",
        ),
        Action::DeletePod { name, reason } => (
            "SuccessfulDelete",
            format!("deleted pod {name}: {reason}"),
            "Delete",
        ),
        Action::CreateClaim { template, ordinal } => (
            "SuccessfulCreate",
            format!("created claim {template} of slot {ordinal}"),
            "Create",
        ),
        Action::DeleteClaim { name } => (
            "SuccessfulDelete",
            format!("deleted claim {name} of a removed slot, as persistentVolumeClaimRetentionPolicy.whenScaled says"),
            "Delete",
        ),
        Action::CreateRevision { number } => (
            "RevisionCreated",
            format!("recorded the template as revision {number}"),
            "Create",
        ),
        Action::ForceDeletePod { name, reason } => {
            return Some(warning("NodeLost", format!("replacing pod {name}: {reason}"), "Repair"))
        }
        Action::RebuildClaim { name, reason, .. } => {
            return Some(warning(
                "VolumeRebuilt",
                format!("claim {name} is replaced by a new, empty one and its replica starts without its data: {reason}"),
                "Repair",
            ))
        }
        Action::TaintNode { node } => {
            return Some(warning(
                "NodeFenced",
                format!("tainted lost node {node} node.kubernetes.io/out-of-service, as repair.fencing: TaintOutOfService says"),
                "Fence",
            ))
        }
        Action::UntaintNode { node } => (
            "NodeUnfenced",
            format!("removed the node.kubernetes.io/out-of-service taint this service put on node {node}: the node renews its lease again and is Ready, and no pod of ours is left on it from before the fence"),
            "Unfence",
        ),
        Action::MarkRevisionBad { name, reason } => {
            return Some(Event {
                type_: EventType::Warning,
                reason: "RolledBack".to_string(),
                note: Some(format!("revision {name} failed and is rolled back: {reason}")),
                action: "Rollback".to_string(),
                secondary: None,
            })
        }
        Action::ClearAbort { value } => (
            "AbortCleared",
            format!("removed the annotation perennial.dev/abort={value}: the rollout it asked to abort is rolled back, or none is going on"),
            "Update",
        ),
        Action::UpgradeInPlace {
            name,
            from,
            revision,
        } => (
            "UpgradedInPlace",
            format!("patched pod {name} in place from revision {from} to {revision}"),
            "Update",
        ),
        // A drain shows in status (waitingFor); an Event per pod would double the writes.
        Action::CloseGate { .. }
        | Action::OpenGate { .. }
        | Action::ApplyService
        | Action::ApplyDisruptionBudget
        | Action::DeleteRevision { .. }
        | Action::ForgetFence { .. } => {
            return None
        }
    };
    Some(Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(note),
        action: action_word.to_string(),
        secondary: None,
    })
}

/// The Event for an action the API server refused in a way a person must fix; None for
/// errors the next pass retries.
pub fn event_for_error(action: &Action, error: &super::Error) -> Option<Event> {
    match (action, error) {
        (Action::CreatePod { name, .. }, super::Error::InvalidTemplate { revision, message }) => {
            // An Event's note holds 1 kB; the whole message is on the revision and in status.
            let message: String = message.chars().take(640).collect();
            Some(warning(
                "InvalidTemplate",
                format!("the API server refuses pod {name} of revision {revision}, and no pod of it is created until spec.template changes: {message}"),
                "Create",
            ))
        }
        _ => None,
    }
}

fn warning(reason: &str, note: String, action: &str) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    }
}
