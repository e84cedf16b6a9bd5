//! The Event each action leaves on the ResilientService, so `kubectl describe` tells the story.

use kube::runtime::events::{Event, EventType};

use crate::plan::Action;

/// The Event for an action; None for bookkeeping nobody needs to read about.
pub fn event_for(action: &Action) -> Option<Event> {
    let (reason, note, action_word) = match action {
        Action::CreatePod { ordinal, revision } => (
            "SuccessfulCreate",
            format!("created the pod of slot {ordinal} at revision {revision}"),
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
        Action::MarkRevisionBad { name, reason } => {
            return Some(Event {
                type_: EventType::Warning,
                reason: "RolledBack".to_string(),
                note: Some(format!("revision {name} failed and is rolled back: {reason}")),
                action: "Rollback".to_string(),
                secondary: None,
            })
        }
        Action::ApplyService | Action::ApplyDisruptionBudget | Action::DeleteRevision { .. } => {
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
