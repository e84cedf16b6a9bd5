//! Revisions whose pods the API server refuses: what admission could not check (a field
//! only the pod validation knows, a feature gate, an admission plugin). No pod of such a
//! revision is asked for again, and the service says why until the template changes.

use super::conditions::Decided;
use super::rollout::Targets;
use super::Action;
use crate::api::condition;
use crate::health::Assessment;

/// `status.reason` and the Degraded reason of a service whose template is refused.
pub(super) const INVALID_TEMPLATE: &str = "InvalidTemplate";

/// Why the update revision cannot roll out, for the rollout's verdict; None when its pods
/// are not refused.
pub(in crate::plan) fn rollout_failure(seen: &Assessment, update: &str) -> Option<String> {
    let message = seen.refused.get(update)?;
    Some(format!("the API server refuses its pods: {message}"))
}

/// Drops the creates of pods the API server has refused already: asking again would be
/// refused again, at every pass.
pub(super) fn drop_refused_creates(actions: &mut Vec<Action>, seen: &Assessment) {
    actions.retain(|a| match a {
        Action::CreatePod { revision, .. } => !seen.refused.contains_key(revision),
        _ => true,
    });
}

/// Degraded, reason InvalidTemplate, when the update revision (the user's template) is
/// refused, rolled back from or not, or a revision some slot is to run.
pub(super) fn degraded(
    seen: &Assessment,
    update: &str,
    targets: &Targets,
    replicas: i32,
) -> Option<Decided> {
    if let Some(message) = seen.refused.get(update) {
        return Some(Decided {
            type_: condition::DEGRADED,
            status: true,
            reason: INVALID_TEMPLATE.to_string(),
            message: format!(
                "spec.template cannot become a pod: the API server refuses the pods of revision {update}: {message}"
            ),
        });
    }
    (0..replicas.max(0))
        .map(|slot| targets.revision_for(slot))
        .find_map(|revision| {
            let message = seen.refused.get(revision)?;
            Some(Decided {
                type_: condition::DEGRADED,
                status: true,
                reason: INVALID_TEMPLATE.to_string(),
                message: format!(
                    "the API server refuses the pods of revision {revision}: {message}"
                ),
            })
        })
}
