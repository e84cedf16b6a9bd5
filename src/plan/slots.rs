//! Replica slots: create what is missing, remove what is beyond `replicas`, replace what
//! has failed for good.

use std::collections::BTreeMap;

use super::rollout::Targets;
use super::{Action, MAX_CREATES_PER_PASS};
use crate::api::{
    ClaimRetention, PodManagementPolicy, PodReplacementPolicy, ResilientService, UpdateStrategy,
};
use crate::build;
use crate::health::{Assessment, PodState, PodView};

/// Slot actions; `moves` are the rollout's actions of this pass, which count against the
/// room for new pods.
pub(super) fn plan(
    svc: &ResilientService,
    seen: &Assessment,
    targets: &Targets,
    moves: &[Action],
) -> Vec<Action> {
    let replicas = svc.spec.replicas.max(0);
    let ordered = svc.spec.pod_management_policy == PodManagementPolicy::OrderedReady;
    let mut by_slot: BTreeMap<i32, Vec<&PodView>> = BTreeMap::new();
    for pod in &seen.pods {
        by_slot.entry(pod.slot).or_default().push(pod);
    }

    let mut actions: Vec<Action> = seen
        .strays
        .iter()
        .map(|name| Action::DeletePod {
            name: name.clone(),
            reason: "pod has no valid slot or revision label".to_string(),
        })
        .collect();
    let mut wanted_creates: Vec<(i32, String)> = Vec::new();
    let stateless = svc.spec.volume_claim_templates.is_empty();

    for ordinal in 0..replicas {
        let pods = by_slot.get(&ordinal).map(Vec::as_slice).unwrap_or_default();
        for template in &svc.spec.volume_claim_templates {
            let exists = seen
                .claims
                .iter()
                .any(|c| c.slot == ordinal && c.template == template.metadata.name);
            if !exists {
                actions.push(Action::CreateClaim {
                    template: template.metadata.name.clone(),
                    ordinal,
                });
            }
        }
        // A slot with claims gets a new pod only once no pod of it exists at all,
        // terminating ones included: two pods must never share a slot's storage. Nor while
        // a claim of it is being deleted: the pod would wait on a claim that is going away,
        // and the new claim comes only once the old one is gone. A slot without claims
        // shares nothing, and its replacement starts while the old pod terminates, under
        // whichever of its two names is free.
        let claim_leaving = seen.claims.iter().any(|c| c.slot == ordinal && c.deleting);
        let vacant = pods.is_empty() || (stateless && pods.iter().all(|p| p.state.is_leaving()));
        if vacant && !claim_leaving {
            let revision = targets.revision_for(ordinal);
            let taken: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
            let Some(name) = build::free_pod_name(svc, ordinal, revision, &taken) else {
                continue;
            };
            if ordered && !predecessors_ready(&by_slot, ordinal) {
                break;
            }
            wanted_creates.push((ordinal, name));
        }
    }

    // Scale down: highest ordinals first; with OrderedReady, one at a time.
    let mut excess: Vec<&PodView> = seen
        .pods
        .iter()
        .filter(|p| p.slot >= replicas && !p.state.is_leaving())
        .collect();
    excess.sort_by_key(|p| std::cmp::Reverse(p.slot));
    let terminating_excess = seen
        .pods
        .iter()
        .any(|p| p.slot >= replicas && p.state.is_leaving());
    let take = if ordered {
        usize::from(!terminating_excess)
    } else {
        excess.len()
    };
    for pod in excess.into_iter().take(take) {
        actions.push(Action::DeletePod {
            name: pod.name.clone(),
            reason: format!("scaled down to {replicas} replicas"),
        });
    }

    // Never more live pods than replicas. A pod being drained still holds its place; one
    // whose deletion has started holds it only under TerminationComplete.
    // A pod that may serve is drained before it is deleted (plan::drain): it stays a while.
    let deleting: Vec<&str> = actions
        .iter()
        .chain(moves)
        .filter_map(|a| match a {
            Action::ForceDeletePod { name, .. } => Some(name.as_str()),
            Action::DeletePod { name, .. } => {
                let drained = seen
                    .pods
                    .iter()
                    .any(|p| &p.name == name && super::drain::may_serve(p));
                (!drained).then_some(name.as_str())
            }
            _ => None,
        })
        .collect();
    let until_gone =
        svc.spec.update.pod_replacement_policy == PodReplacementPolicy::TerminationComplete;
    let staying = seen
        .pods
        .iter()
        .filter(|p| match p.state {
            PodState::Terminating => until_gone,
            PodState::Failed { .. } => false,
            _ => true,
        })
        .filter(|p| !deleting.contains(&p.name.as_str()))
        .count();
    let surging = moves
        .iter()
        .filter(|a| matches!(a, Action::CreatePod { .. }))
        .count();
    // Recreate: no pod of the new revision while an old one still exists.
    let recreating = svc.spec.update.strategy == UpdateStrategy::Recreate
        && seen
            .pods
            .iter()
            .any(|p| p.revision != targets.revision_for(p.slot));
    let room = if recreating {
        0
    } else {
        usize::try_from(replicas)
            .unwrap_or(0)
            .saturating_sub(staying + surging)
    };
    let creates: Vec<Action> = wanted_creates
        .into_iter()
        .take(room.min(MAX_CREATES_PER_PASS))
        .map(|(ordinal, name)| Action::CreatePod {
            ordinal,
            revision: targets.revision_for(ordinal).to_string(),
            name,
        })
        .collect();
    actions.extend(creates);

    // Claims of removed slots go only when the policy says so, and only once their pod is gone.
    if svc
        .spec
        .persistent_volume_claim_retention_policy
        .when_scaled
        == ClaimRetention::Delete
    {
        for claim in &seen.claims {
            if claim.slot >= replicas && !claim.deleting && !by_slot.contains_key(&claim.slot) {
                actions.push(Action::DeleteClaim {
                    name: claim.name.clone(),
                });
            }
        }
    }
    actions
}

/// With OrderedReady, slot n starts only once slots 0..n are Ready.
fn predecessors_ready(by_slot: &BTreeMap<i32, Vec<&PodView>>, ordinal: i32) -> bool {
    (0..ordinal).all(|o| {
        by_slot
            .get(&o)
            .is_some_and(|pods| pods.iter().any(|p| p.state.is_ready()))
    })
}
