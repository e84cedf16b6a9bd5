//! Status as data: counts, revisions, domains, conditions and the failure ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{merge_conditions, Decided};
use super::drain::Drained;
use super::repair::{slot_failure, window, RepairPlan};
use super::resolve;
use super::rollout::Decision;
use crate::api::{condition, Failure, ReplicaStatus, ResilientService, ResilientServiceStatus};
use crate::build;
use crate::health::{Assessment, PodState, PodView};

/// Computes the status, and when to look again for a pod about to count as available.
pub(super) fn compute(
    svc: &ResilientService,
    seen: &Assessment,
    update_revision: &str,
    rollout: &Decision,
    repairs: &RepairPlan,
    drained: &Drained,
) -> (ResilientServiceStatus, Option<Duration>) {
    let previous = svc.status.clone().unwrap_or_default();
    let desired = svc.spec.replicas.max(0);
    let min_ready = i64::from(svc.spec.update.min_ready_seconds.max(0));
    let live: Vec<&PodView> = seen
        .pods
        .iter()
        .filter(|p| !matches!(p.state, PodState::Terminating | PodState::Failed { .. }))
        .collect();

    let mut requeue: Option<Duration> = None;
    let mut available = 0;
    let mut ready = 0;
    let mut domains: BTreeMap<String, i32> = BTreeMap::new();
    for pod in &live {
        let PodState::Ready { since } = pod.state else {
            continue;
        };
        ready += 1;
        if let Some(domain) = pod.node.as_ref().and_then(|n| seen.node_domains.get(n)) {
            *domains.entry(domain.clone()).or_default() += 1;
        }
        let ready_for = seen.now.as_second() - since.as_second();
        if ready_for >= min_ready {
            available += 1;
        } else {
            let wait = Duration::from_secs((min_ready - ready_for).max(1) as u64);
            requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
        }
    }
    // A pod unready for a whole progress deadline is NeverReady: look again then, since
    // nothing else may change meanwhile.
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
    for pod in &live {
        if let PodState::NotReady { since } = pod.state {
            let left = since.as_second() + deadline - seen.now.as_second();
            if left > 0 {
                let wait = Duration::from_secs(left as u64);
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    for pod in &live {
        if let PodState::Unschedulable { since, .. } = pod.state {
            let waited = (seen.now.as_second() - since.as_second()).max(0) as u64;
            let grace = crate::health::UNSCHEDULABLE_GRACE.as_secs();
            if waited < grace {
                let wait = Duration::from_secs(grace - waited);
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    let replicas = live.len() as i32;
    let updated = live
        .iter()
        .filter(|p| p.revision == update_revision)
        .count() as i32;
    // Complete once every replica runs the update revision and is available.
    let all_updated_and_available = replicas == desired
        && updated == desired
        && available == desired
        && live.iter().all(|p| p.revision == update_revision);
    // The revision that last served every replica, as the rollout judged it from the pods.
    let current_revision = rollout.targets.hold.clone();
    if let Some(r) = rollout.requeue {
        requeue = Some(requeue.map_or(r, |q| q.min(r)));
    }
    if let Some(s) = seen.node_recheck_seconds {
        let r = Duration::from_secs(s.max(1) as u64);
        requeue = Some(requeue.map_or(r, |q| q.min(r)));
    }

    let max_unavailable = resolve(&svc.spec.update.max_unavailable, desired, false);
    let min_available = (desired - max_unavailable).max(0);
    let failures: Vec<(i32, &str, &str, &str)> = live
        .iter()
        .filter(|p| p.slot < desired)
        .filter_map(|p| {
            p.state
                .failure(seen.now)
                .map(|(r, m)| (p.slot, p.name.as_str(), r, m))
        })
        .collect();

    let mut decided = vec![Decided {
        type_: condition::AVAILABLE,
        status: available >= min_available,
        reason: if available >= min_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        }
        .to_string(),
        message: format!(
            "{available} of {desired} replicas available; at least {min_available} required"
        ),
    }];
    let complete = all_updated_and_available;
    decided.push(Decided {
        type_: condition::PROGRESSING,
        status: true,
        reason: if complete {
            "RolloutComplete"
        } else if replicas != desired {
            "Scaling"
        } else {
            "ReplicasUpdating"
        }
        .to_string(),
        message: if complete {
            format!("{desired} replicas on revision {update_revision}, all available")
        } else {
            format!(
                "{replicas} pods for {desired} replicas; {updated} on revision {update_revision}, {available} available"
            )
        },
    });
    // A refused template comes first: nothing else gets better until it changes.
    let refused = super::refused::degraded(seen, update_revision, &rollout.targets, desired);
    decided.push(
        refused
            .clone()
            .or_else(|| repairs.degraded.clone())
            .unwrap_or_else(|| degraded(svc, seen, &failures, &domains, desired)),
    );
    for r in [repairs.requeue, drained.requeue].into_iter().flatten() {
        requeue = Some(requeue.map_or(r, |q| q.min(r)));
    }
    // The rollout's own verdicts (deadline exceeded, rolled back) override the counts.
    for d in &rollout.conditions {
        decided.retain(|x| x.type_ != d.type_);
        decided.push(d.clone());
    }

    let reason = refused
        .map(|d| d.reason)
        .or_else(|| rollout.reason.clone())
        .or_else(|| {
            decided
                .iter()
                .find(|d| d.type_ == condition::DEGRADED && d.status)
                .map(|d| d.reason.clone())
        });
    let conditions = merge_conditions(
        &previous.conditions,
        decided,
        svc.metadata.generation,
        seen.now,
    );

    let status = ResilientServiceStatus {
        observed_generation: svc.metadata.generation,
        replicas,
        ready_replicas: ready,
        available_replicas: available,
        updated_replicas: updated,
        current_revision: Some(current_revision),
        update_revision: Some(update_revision.to_string()),
        selector: Some(build::selector_string(svc)),
        domains,
        reason,
        conditions,
        rollout: rollout.status.clone().map(|mut r| {
            // A rollout that waits for nothing else waits for its drains.
            if r.waiting_for.is_none() {
                r.waiting_for = drained.waits.values().next().cloned();
            }
            r
        }),
        replica_statuses: ledger(svc, &previous, seen, repairs, drained, &mut requeue),
    };
    (status, requeue)
}

fn degraded(
    svc: &ResilientService,
    seen: &Assessment,
    failures: &[(i32, &str, &str, &str)],
    domains: &BTreeMap<String, i32>,
    desired: i32,
) -> Decided {
    if let Some((_, _, first_reason, _)) = failures.first() {
        let message = failures
            .iter()
            .map(|(slot, pod, reason, message)| {
                let node = seen
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.node.as_deref())
                    .unwrap_or("none");
                format!("slot {slot} (pod {pod}, node {node}): {reason}: {message}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Decided {
            type_: condition::DEGRADED,
            status: true,
            reason: first_reason.to_string(),
            message,
        };
    }
    if let Some(min_domains) = svc.spec.redundancy.min_domains {
        let wanted = min_domains.min(desired);
        let have = domains.len() as i32;
        if have < wanted {
            return Decided {
                type_: condition::DEGRADED,
                status: true,
                reason: "InsufficientRedundancy".to_string(),
                message: format!(
                    "ready replicas span {have} {} domains; at least {wanted} required",
                    svc.spec.redundancy.topology_key
                ),
            };
        }
    }
    if svc.spec.redundancy.one_per_node {
        let mut per_node: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for p in seen
            .pods
            .iter()
            .filter(|p| p.state.is_ready() && p.slot < desired)
        {
            if let Some(n) = p.node.as_deref() {
                per_node.entry(n).or_default().push(p.slot);
            }
        }
        if let Some((node, slots)) = per_node.iter().find(|(_, s)| s.len() > 1) {
            return Decided {
                type_: condition::DEGRADED,
                status: true,
                reason: "InsufficientRedundancy".to_string(),
                message: format!("slots {slots:?} share node {node} although onePerNode is set"),
            };
        }
    }
    Decided {
        type_: condition::DEGRADED,
        status: false,
        reason: "ReplicasHealthy".to_string(),
        message: "no replica has an identified failure".to_string(),
    }
}

/// One entry per slot. A failure stays in the ledger after the slot recovers, with the time
/// it was first seen, until a quiet supervision period has passed: an unchanged entry costs
/// no write, and a person can still see what happened.
fn ledger(
    svc: &ResilientService,
    previous: &ResilientServiceStatus,
    seen: &Assessment,
    repairs: &RepairPlan,
    drained: &Drained,
    requeue: &mut Option<Duration>,
) -> Vec<ReplicaStatus> {
    let desired = svc.spec.replicas.max(0);
    let period = i64::from(svc.spec.supervision.period_seconds.max(1));
    (0..desired)
        .map(|ordinal| {
            let before = previous
                .replica_statuses
                .iter()
                .find(|r| r.ordinal == ordinal);
            let mut note = repairs.notes.get(&ordinal).cloned().unwrap_or_default();
            if note.waiting_for.is_none() {
                note.waiting_for = drained.waits.get(&ordinal).cloned();
            }
            let pod = seen
                .pods
                .iter()
                .filter(|p| p.slot == ordinal)
                .max_by_key(|p| (p.state != PodState::Terminating, p.state.is_ready()));
            let mut recent: Vec<Time> = window(before, seen.now, period)
                .into_iter()
                .map(Time)
                .collect();
            if note.repaired {
                recent.push(Time(seen.now));
            }
            let last_failure = match pod.and_then(|p| slot_failure(svc, p, seen.now)) {
                Some((reason, message)) => {
                    let prior = before.and_then(|b| b.last_failure.as_ref());
                    Some(Box::new(match prior {
                        Some(f) if f.reason == reason && f.recovered_at.is_none() => Failure {
                            message,
                            ..(**f).clone()
                        },
                        _ => Failure {
                            reason,
                            message,
                            at: Time(seen.now),
                            recovered_at: None,
                        },
                    }))
                }
                None => before
                    .and_then(|b| b.last_failure.clone())
                    .map(|mut f| {
                        // A failure that lasted longer than the period still gets a whole quiet
                        // period after the slot recovered.
                        if pod.is_some_and(|p| p.state.is_ready()) {
                            f.recovered_at.get_or_insert(Time(seen.now));
                        }
                        f
                    })
                    .filter(|f| {
                        // Cleared once a whole quiet period has passed since the recovery.
                        let Some(recovered) = f.recovered_at.as_ref().map(|t| t.0) else {
                            return true;
                        };
                        let quiet_until = recovered
                            .as_second()
                            .max(recent.last().map_or(0, |t| t.0.as_second()))
                            + period;
                        let left = quiet_until - seen.now.as_second();
                        if left > 0 {
                            let d = Duration::from_secs(left as u64);
                            *requeue = Some(requeue.map_or(d, |r| r.min(d)));
                        }
                        left > 0
                    }),
            };
            let ready = pod.is_some_and(|p| p.state.is_ready());
            let state = if note.quarantined {
                "Quarantined"
            } else if note.repaired || (before.is_some_and(|b| b.state == "Repairing") && !ready) {
                "Repairing"
            } else if note.waiting_for.is_some() && !ready {
                "Waiting"
            } else {
                pod.map_or("Missing", |p| p.state.word())
            };
            ReplicaStatus {
                ordinal,
                pod: pod.map(|p| p.name.clone()),
                node: pod.and_then(|p| p.node.clone()),
                state: state.to_string(),
                revision: pod.map(|p| p.revision.clone()),
                restarts_in_window: recent.len() as i32,
                repairs: recent,
                escalation: note
                    .escalation
                    .map(|e| format!("{e:?}"))
                    .or_else(|| before.and_then(|b| b.escalation.clone()).filter(|_| !ready)),
                avoid_node: note.avoid.as_ref().map(|a| a.node.clone()),
                avoid_node_reason: note.avoid.as_ref().map(|a| a.reason.word().to_string()),
                waiting_for: note.waiting_for.clone(),
                last_failure,
            }
        })
        .collect()
}
