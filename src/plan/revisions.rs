//! Revisions: record the current template, keep the history within its limit.

use super::Action;
use crate::api::ResilientService;
use crate::health::Assessment;

pub(super) fn plan(
    svc: &ResilientService,
    seen: &Assessment,
    update_revision: &str,
) -> Vec<Action> {
    let mut actions = Vec::new();
    match seen.revisions.iter().find(|r| r.name == update_revision) {
        None => {
            let number = seen.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
            actions.push(Action::CreateRevision { number });
        }
        // Someone else's record under the update revision's name: pods of it are built
        // from the spec, but a later rollback to it would read the record. It goes, and
        // the next pass records the template again.
        Some(r) if !r.intact => actions.push(Action::DeleteRevision {
            name: r.name.clone(),
        }),
        Some(_) => {}
    }
    // Revisions in use by a pod, the update revision, and the stable one a rollback
    // returns to (status.currentRevision) are never trimmed: once the stable revision's
    // pods are all replaced, its record is the only way back.
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref());
    let mut old: Vec<_> = seen
        .revisions
        .iter()
        .filter(|r| r.name != update_revision && Some(r.name.as_str()) != current)
        .filter(|r| !seen.pods.iter().any(|p| p.revision == r.name))
        .collect();
    old.sort_by_key(|r| std::cmp::Reverse(r.number));
    let keep = usize::try_from(svc.spec.revision_history_limit).unwrap_or(0);
    actions.extend(old.into_iter().skip(keep).map(|r| Action::DeleteRevision {
        name: r.name.clone(),
    }));
    actions
}
