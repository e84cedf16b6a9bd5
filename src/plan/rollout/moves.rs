//! Which pods to replace now without breaking the availability floor
//! (replicas - maxUnavailable available) or the ceiling (replicas + maxSurge pods).

use std::collections::BTreeMap;

use super::in_place::InPlace;
use super::{is_available, live, Targets};
use crate::api::{PodReplacementPolicy, ResilientService, UpdateStrategy};
use crate::health::{Assessment, PodState, PodView};
use crate::plan::{resolve, Action};

/// Pods to replace now, honouring the floor and the ceiling. Not-ready and failing old pods
/// go first; then the highest ordinals.
pub(in crate::plan) fn moves(
    svc: &ResilientService,
    seen: &Assessment,
    targets: &Targets,
) -> Vec<Action> {
    let replicas = svc.spec.replicas.max(0);
    let now = seen.now;
    let min_ready = i64::from(svc.spec.update.min_ready_seconds.max(0));
    let recreate = svc.spec.update.strategy == UpdateStrategy::Recreate;
    let in_place = !svc.spec.volume_claim_templates.is_empty();
    let max_surge = if in_place || recreate {
        0
    } else {
        resolve(&svc.spec.update.max_surge, replicas, true)
    };
    // Slots with storage are replaced in place: one down at a time at least.
    let mut max_unavailable = resolve(&svc.spec.update.max_unavailable, replicas, false);
    if in_place || max_surge == 0 {
        max_unavailable = max_unavailable.max(1);
    }

    let mut by_slot: BTreeMap<i32, Vec<&PodView>> = BTreeMap::new();
    for p in seen.pods.iter().filter(|p| p.slot < replicas) {
        by_slot.entry(p.slot).or_default().push(p);
    }
    let slot_available = |pods: &[&PodView]| {
        pods.iter()
            .any(|p| live(p) && is_available(p, now, min_ready))
    };
    let mut available = by_slot.values().filter(|pods| slot_available(pods)).count() as i32;
    // A slot without a live pod gets one from the slot planner, maybe in this very pass
    // and before this pass's deletions are carried out: it counts against the ceiling now.
    let vacant = (0..replicas)
        .filter(|s| {
            !by_slot
                .get(s)
                .is_some_and(|pods| pods.iter().any(|p| live(p)))
        })
        .count() as i32;
    // The ceiling counts every pod that has not started to terminate (drained ones
    // included), and under TerminationComplete the terminating ones too.
    let until_gone =
        svc.spec.update.pod_replacement_policy == PodReplacementPolicy::TerminationComplete;
    let mut alive = seen
        .pods
        .iter()
        .filter(|p| until_gone || p.state != PodState::Terminating)
        .count() as i32
        + vacant;
    let floor = replicas - max_unavailable;
    // A pod upgraded in place is down while its kubelet restarts it, and no surge pod covers
    // for it: one at a time at least, as with slots that have storage.
    let in_place_floor = replicas - max_unavailable.max(1);
    let mut actions = Vec::new();

    // Old pods to move, worst first: unavailable before available, then highest ordinal.
    let mut candidates: Vec<(bool, i32, &PodView)> = Vec::new();
    for (&slot, pods) in &by_slot {
        let target = targets.revision_for(slot);
        let (on_target, old): (Vec<&PodView>, Vec<&PodView>) = pods
            .iter()
            .filter(|p| live(p))
            .partition(|p| p.revision == target);
        if old.is_empty() {
            // Extra pods of the same revision (a race) leave only one behind.
            for extra in on_target.iter().skip(1) {
                actions.push(Action::DeletePod {
                    name: extra.name.clone(),
                    reason: format!("slot {slot} has more than one pod"),
                });
            }
            continue;
        }
        if slot < targets.partition && pods.iter().all(|p| p.revision != target) {
            continue;
        }
        match on_target.first() {
            // The surge pod is available: the old one can go, the slot stays available.
            // It still counts as alive in this pass: deletions are carried out after the
            // pass's creates, so the room it leaves is used on the next pass, once it is
            // terminating.
            Some(new) if is_available(new, now, min_ready) => {
                for o in &old {
                    actions.push(Action::DeletePod {
                        name: o.name.clone(),
                        reason: format!("replaced by {} at revision {target}", new.name),
                    });
                }
            }
            Some(_) => {} // the surge pod is on its way
            // A pod of the target revision is still terminating: its name is not free yet.
            None if pods.iter().any(|p| p.revision == target) => {}
            None => {
                for o in old {
                    candidates.push((is_available(o, now, min_ready), slot, o));
                }
            }
        }
    }
    if recreate {
        // Recreate: every old pod goes at once; new ones come when they are all gone.
        return actions
            .into_iter()
            .chain(candidates.into_iter().map(|(_, _, o)| Action::DeletePod {
                name: o.name.clone(),
                reason: "Recreate: stopping the old revision".into(),
            }))
            .collect();
    }
    // A pod of the revision being rolled out is being deleted: by a rollback the caches
    // have not caught up with yet (the revision not yet seen marked failed), or by a
    // person. No slot moves to that revision until it is gone.
    let retreating = targets.target != targets.hold
        && seen
            .pods
            .iter()
            .any(|p| p.state == PodState::Terminating && p.revision == targets.target);
    candidates.sort_by_key(|(avail, slot, _)| (*avail, std::cmp::Reverse(*slot)));
    let taken = |slot: i32| -> Vec<&str> {
        by_slot
            .get(&slot)
            .map(|pods| pods.iter().map(|p| p.name.as_str()).collect())
            .unwrap_or_default()
    };
    let upgrade = InPlace::new(svc, seen);
    for (was_available, slot, old) in candidates {
        let target = targets.revision_for(slot);
        if retreating && target == targets.target {
            continue;
        }
        if upgrade.possible(old, target) {
            // The pod itself moves: no surge, one unavailable replica while it restarts.
            if !was_available || available > in_place_floor {
                actions.push(Action::UpgradeInPlace {
                    name: old.name.clone(),
                    from: old.revision.clone(),
                    revision: target.to_string(),
                });
                available -= i32::from(was_available);
            }
            continue;
        }
        let Some(name) = crate::build::free_pod_name(svc, slot, target, &taken(slot)) else {
            continue;
        };
        if !was_available {
            // Already down: replacing it costs no availability.
            actions.push(Action::DeletePod {
                name: old.name.clone(),
                reason: format!("replacing an unavailable pod with revision {target}"),
            });
            if !in_place && alive < replicas + max_surge {
                actions.push(Action::CreatePod {
                    ordinal: slot,
                    revision: target.to_string(),
                    name,
                });
                alive += 1;
            }
        } else if !in_place && alive < replicas + max_surge {
            // Surge: the new pod first, the old one once it is available.
            actions.push(Action::CreatePod {
                ordinal: slot,
                revision: target.to_string(),
                name,
            });
            alive += 1;
        } else if available > floor {
            actions.push(Action::DeletePod {
                name: old.name.clone(),
                reason: format!("rolling to revision {target}"),
            });
            available -= 1;
        }
    }
    actions
}
