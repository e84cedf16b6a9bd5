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
    // Revisions in use by a pod, and the update revision, are never trimmed.
    let mut old: Vec<_> = seen
        .revisions
        .iter()
        .filter(|r| r.name != update_revision && !seen.pods.iter().any(|p| p.revision == r.name))
        .collect();
    old.sort_by_key(|r| std::cmp::Reverse(r.number));
    let keep = usize::try_from(svc.spec.revision_history_limit).unwrap_or(0);
    actions.extend(old.into_iter().skip(keep).map(|r| Action::DeleteRevision {
        name: r.name.clone(),
    }));
    actions
}
