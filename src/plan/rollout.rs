//! Rollouts: which revision each slot should run, and which pods to replace now without
//! breaking the availability floor (replicas - maxUnavailable available) or the ceiling
//! (replicas + maxSurge pods).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::Decided;
use super::{resolve, Action};
use crate::api::{
    condition, ResilientService, RollbackPolicy, RolloutStatus, UpdateStrategy, ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
};
use crate::health::{Assessment, PodState, PodView};

/// The revisions slots should run, decided once per pass.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Targets {
    /// What slots at or above the partition run.
    pub target: String,
    /// What slots below the partition run when they need a new pod.
    pub hold: String,
    /// Slots with an ordinal at or above it move to `target`.
    pub partition: i32,
    /// Slots below the partition that stay on `target` all the same: a rollout stopped by a
    /// failure leaves the slots it moved where they are, for a person to look at.
    pub kept: BTreeSet<i32>,
}

impl Targets {
    pub fn revision_for(&self, ordinal: i32) -> &str {
        if ordinal >= self.partition || self.kept.contains(&ordinal) {
            &self.target
        } else {
            &self.hold
        }
    }
}

/// The rollout's decisions for this pass.
pub(super) struct Decision {
    pub targets: Targets,
    pub actions: Vec<Action>,
    pub status: Option<RolloutStatus>,
    pub conditions: Vec<Decided>,
    pub requeue: Option<Duration>,
    /// Why the rollout is failed or stopped, for status.reason.
    pub reason: Option<String>,
}

/// `status.rollout.waitingFor` of a rollout held by `spec.paused`.
const WAITING_FOR_UNPAUSE: &str = "spec.paused to be false";
/// How `status.rollout.waitingFor` of a rollout stopped by a failure (rollback: Manual)
/// begins; the failure follows. The stop holds until the template changes or the rollout
/// is aborted: a failing pod that is deleted or recovers does not restart it.
const WAITING_FOR_A_PERSON: &str = "a person: ";
/// `status.reason` of a rollout stopped by a failure.
const ROLLOUT_FAILED: &str = "RolloutFailed";

fn is_available(pod: &PodView, now: Timestamp, min_ready: i64) -> bool {
    match pod.state {
        PodState::Ready { since } => now.as_second() - since.as_second() >= min_ready,
        _ => false,
    }
}

fn live(pod: &PodView) -> bool {
    !matches!(pod.state, PodState::Terminating | PodState::Failed { .. })
}

/// Decides the targets: the update revision, unless it failed, was aborted, or the rollout
/// waits at a canary step, a partition, or a pause.
pub(super) fn decide(svc: &ResilientService, seen: &Assessment, update: &str) -> Decision {
    let previous = svc.status.clone().unwrap_or_default();
    let replicas = svc.spec.replicas.max(0);
    let now = seen.now;
    let min_ready = i64::from(svc.spec.update.min_ready_seconds.max(0));
    let bad: Vec<&str> = seen
        .revisions
        .iter()
        .filter(|r| r.bad)
        .map(|r| r.name.as_str())
        .collect();
    // The last revision that was fully rolled out; the update revision on a new service.
    let stable = previous
        .current_revision
        .clone()
        .filter(|c| seen.revisions.iter().any(|r| &r.name == c) && !bad.contains(&c.as_str()))
        .unwrap_or_else(|| update.to_string());
    let mut actions = Vec::new();
    let mut conditions = Vec::new();
    let mut reason = None;
    let mut requeue = None;

    let new_pods: Vec<&PodView> = seen
        .pods
        .iter()
        .filter(|p| p.revision == update && live(p))
        .collect();
    let rolling = stable != update;
    let prev_rollout = previous.rollout.clone().filter(|r| r.revision == update);

    // A revision known bad, or aborted, is not retried until the template changes again.
    let aborted = rolling
        && svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ABORT))
            .is_some_and(|v| v == "true" || v == update);
    // A rollout stopped by a failure stays stopped: the evidence (a crash-looping pod) may
    // come and go, the verdict does not.
    let stopped_before = prev_rollout
        .as_ref()
        .and_then(|r| r.waiting_for.as_deref())
        .and_then(|w| w.strip_prefix(WAITING_FOR_A_PERSON))
        .map(str::to_string);
    let failure = rolling
        .then(|| {
            stopped_before
                .clone()
                .or_else(|| super::refused::rollout_failure(seen, update))
                .or_else(|| new_revision_failure(svc, &new_pods, now, prev_rollout.as_ref()))
        })
        .flatten();

    // Aborting rolls back whatever the rollback policy: a person asked for it.
    if bad.contains(&update)
        || aborted
        || (failure.is_some() && svc.spec.update.rollback == RollbackPolicy::Automatic)
    {
        let why = if aborted {
            "the rollout was aborted".to_string()
        } else {
            failure.clone().unwrap_or_else(|| {
                format!(
                    "revision {update} failed before and is not retried until the template changes"
                )
            })
        };
        if !bad.contains(&update) {
            actions.push(Action::MarkRevisionBad {
                name: update.to_string(),
                reason: why.clone(),
            });
        }
        conditions.push(Decided {
            type_: condition::ROLLED_BACK,
            status: true,
            reason: if aborted {
                "RolloutAborted"
            } else {
                "RevisionFailed"
            }
            .into(),
            message: format!("rolled back from {update} to {stable}: {why}"),
        });
        reason = Some("RolledBack".to_string());
        return Decision {
            targets: Targets {
                target: stable.clone(),
                hold: stable,
                partition: 0,
                kept: BTreeSet::new(),
            },
            actions,
            status: None,
            conditions,
            requeue,
            reason,
        };
    }
    if !rolling {
        conditions.push(Decided {
            type_: condition::ROLLED_BACK,
            status: false,
            reason: "NoRollback".into(),
            message: format!("running revision {update}"),
        });
    }

    let mut partition = svc.spec.update.partition.clamp(0, replicas);
    let mut kept = BTreeSet::new();
    let mut status = prev_rollout.unwrap_or_else(|| RolloutStatus {
        revision: update.to_string(),
        started_at: Time(now),
        last_progress_at: Time(now),
        progress: String::new(),
        canary_step: None,
        paused_since: None,
        // A promotion is a new value of the annotation: one left from an earlier rollout
        // promotes nothing in this one.
        promoted: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_PROMOTE))
            .cloned(),
        waiting_for: None,
    });
    if !svc.spec.paused && status.waiting_for.as_deref() == Some(WAITING_FOR_UNPAUSE) {
        // Unpaused: the progress deadline counts from now, and a canary pause step in
        // progress starts its wait again.
        status.paused_since = None;
        status.last_progress_at = Time(now);
    }

    if let Some(why) = failure {
        // Manual rollback: stop where it is, and say why. Slots that have a pod of the new
        // revision keep it; the others stay on the stable revision.
        partition = replicas;
        kept = new_pods.iter().map(|p| p.slot).collect();
        reason = Some(ROLLOUT_FAILED.to_string());
        conditions.push(Decided {
            type_: condition::PROGRESSING,
            status: false,
            reason: ROLLOUT_FAILED.into(),
            message: format!("the rollout of revision {update} stopped: {why}"),
        });
        status.waiting_for = Some(format!("{WAITING_FOR_A_PERSON}{why}"));
    } else if svc.spec.paused {
        partition = replicas;
        status.waiting_for = Some(WAITING_FOR_UNPAUSE.to_string());
    } else if let Some(canary) = svc.spec.update.canary.as_ref().filter(|_| rolling) {
        let (step_partition, wait) =
            canary_step(svc, canary, &new_pods, now, min_ready, &mut status);
        partition = partition.max(step_partition);
        if let Some(w) = wait {
            requeue = Some(w);
        }
    } else {
        status.canary_step = None;
        status.waiting_for = None;
    }

    // Held on purpose: paused, or every slot the partition (or canary step) lets move has
    // moved and is available. The progress deadline does not run while held, and starts
    // afresh when the hold ends (spec.paused cleared, the partition lowered, a promotion).
    let moved_available: BTreeSet<i32> = new_pods
        .iter()
        .filter(|p| p.slot >= partition && p.slot < replicas && is_available(p, now, min_ready))
        .map(|p| p.slot)
        .collect();
    let held_at_partition = partition > 0 && moved_available.len() as i32 >= replicas - partition;
    let held = rolling && reason.is_none() && (svc.spec.paused || held_at_partition);
    if held {
        status.paused_since.get_or_insert(Time(now));
        if status.waiting_for.is_none() {
            status.waiting_for = Some(format!(
                "spec.update.partition ({partition}) to be lowered: slots below it stay on revision {stable}"
            ));
        }
    } else if reason.is_none() && status.paused_since.take().is_some() {
        status.last_progress_at = Time(now);
    }

    // Progress: more new pods, or more of them available.
    let marker = format!(
        "{}/{}",
        new_pods.len(),
        new_pods
            .iter()
            .filter(|p| is_available(p, now, min_ready))
            .count()
    );
    if status.progress != marker {
        status.progress = marker;
        status.last_progress_at = Time(now);
    }
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds.max(1));
    let stalled = now.as_second() - status.last_progress_at.0.as_second();
    let waiting_on_purpose = svc.spec.paused || status.paused_since.is_some();
    if reason.as_deref() == Some(ROLLOUT_FAILED) {
        // Stopped: Progressing says so already, and nothing will move until a person acts.
    } else if rolling && !waiting_on_purpose && stalled >= deadline {
        conditions.push(Decided {
            type_: condition::PROGRESSING,
            status: false,
            reason: "ProgressDeadlineExceeded".into(),
            message: format!("no progress towards revision {update} for {stalled} s"),
        });
        reason.get_or_insert_with(|| "ProgressDeadlineExceeded".to_string());
    } else if rolling && !waiting_on_purpose {
        let left = Duration::from_secs((deadline - stalled).max(1) as u64);
        requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
    }

    Decision {
        targets: Targets {
            target: update.to_string(),
            hold: stable,
            partition,
            kept,
        },
        actions,
        status: rolling.then_some(status),
        conditions,
        requeue,
        reason,
    }
}

/// Why the new revision has failed, if it has: a pod that ended, kept crashing past the
/// supervision intensity, or could not pull its image, or no progress within the deadline.
fn new_revision_failure(
    svc: &ResilientService,
    new_pods: &[&PodView],
    now: Timestamp,
    prev: Option<&RolloutStatus>,
) -> Option<String> {
    let max_restarts = svc.spec.supervision.max_restarts.max(1);
    for p in new_pods {
        match &p.state {
            PodState::CrashLooping {
                reason, restarts, ..
            } if *restarts >= max_restarts => {
                return Some(format!(
                    "pod {} of the new revision: {reason}, {restarts} restarts",
                    p.name
                ))
            }
            PodState::ImagePullFailing { reason, message } => {
                return Some(format!("pod {}: {reason}: {message}", p.name))
            }
            _ => {}
        }
    }
    let prev = prev?;
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds.max(1));
    let paused = svc.spec.paused
        || prev.paused_since.is_some()
        || prev.waiting_for.as_deref() == Some(WAITING_FOR_UNPAUSE);
    let stalled = now.as_second() - prev.last_progress_at.0.as_second();
    (!paused && stalled >= deadline && !prev.progress.is_empty())
        .then(|| format!("no progress for {stalled} s (progressDeadlineSeconds {deadline})"))
}

/// Walks the canary steps; returns the partition the current step allows and how long to
/// wait before looking again.
fn canary_step(
    svc: &ResilientService,
    canary: &crate::api::Canary,
    new_pods: &[&PodView],
    now: Timestamp,
    min_ready: i64,
    status: &mut RolloutStatus,
) -> (i32, Option<Duration>) {
    let replicas = svc.spec.replicas.max(0);
    let promoted = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PROMOTE))
        .cloned();
    let available_new = new_pods
        .iter()
        .filter(|p| is_available(p, now, min_ready))
        .count() as i32;
    let mut step = status.canary_step.unwrap_or(0).max(0) as usize;
    // The replicas the steps walked so far give to the new revision.
    let mut share = 0;
    for s in canary.steps.iter().take(step) {
        if let Some(r) = &s.replicas {
            share = resolve(r, replicas, true).min(replicas);
        }
    }
    let mut wait = None;
    while step < canary.steps.len() {
        let s = &canary.steps[step];
        if let Some(r) = &s.replicas {
            share = resolve(r, replicas, true).min(replicas);
            if available_new < share {
                status.waiting_for = Some(format!(
                    "{share} replicas available on the new revision ({available_new} so far)"
                ));
                break;
            }
        } else if let Some(pause) = &s.pause {
            let since = status.paused_since.get_or_insert(Time(now)).0;
            match pause.seconds {
                Some(secs) => {
                    let left = i64::from(secs) - (now.as_second() - since.as_second());
                    if left > 0 {
                        status.waiting_for = Some(format!("a pause of {secs} s ({left} s left)"));
                        wait = Some(Duration::from_secs(left as u64));
                        break;
                    }
                }
                None => {
                    // Promotion is a new value of the annotation; the last one used is kept.
                    let fresh = promoted.is_some() && promoted != status.promoted;
                    if !fresh {
                        status.waiting_for = Some(format!(
                            "promotion: kubectl annotate rsvc {} {ANNOTATION_PROMOTE}=$(date +%s) --overwrite",
                            svc.metadata.name.as_deref().unwrap_or_default()
                        ));
                        break;
                    }
                    status.promoted = promoted.clone();
                }
            }
            status.paused_since = None;
        }
        step += 1;
        status.last_progress_at = Time(now);
    }
    status.canary_step = Some(step as i32);
    if step >= canary.steps.len() {
        status.waiting_for = None;
        return (0, None);
    }
    (replicas - share, wait)
}

/// Pods to replace now, honouring the floor and the ceiling. Not-ready and failing old pods
/// go first; then the highest ordinals.
pub(super) fn moves(svc: &ResilientService, seen: &Assessment, targets: &Targets) -> Vec<Action> {
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
    let mut alive = seen
        .pods
        .iter()
        .filter(|p| p.state != PodState::Terminating)
        .count() as i32
        + vacant;
    let floor = replicas - max_unavailable;
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
    for (was_available, slot, old) in candidates {
        let target = targets.revision_for(slot);
        if retreating && target == targets.target {
            continue;
        }
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
                    name: crate::build::pod_name(svc, slot, target),
                });
                alive += 1;
            }
        } else if !in_place && alive < replicas + max_surge {
            // Surge: the new pod first, the old one once it is available.
            actions.push(Action::CreatePod {
                ordinal: slot,
                revision: target.to_string(),
                name: crate::build::pod_name(svc, slot, target),
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
