//! Status as data: counts, revisions, domains, conditions and the failure ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{merge_conditions, Decided};
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
    let current_revision = if live.iter().all(|p| p.revision == update_revision)
        && rollout.targets.target == update_revision
    {
        update_revision.to_string()
    } else {
        rollout.targets.hold.clone()
    };
    if let Some(r) = rollout.requeue {
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
    let complete = replicas == desired && updated == desired && available == desired;
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
    decided.push(degraded(svc, &failures, &domains, desired));
    // The rollout's own verdicts (deadline exceeded, rolled back) override the counts.
    for d in &rollout.conditions {
        decided.retain(|x| x.type_ != d.type_);
        decided.push(d.clone());
    }

    let reason = rollout.reason.clone().or_else(|| {
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
        rollout: rollout.status.clone(),
        replica_statuses: ledger(&previous, seen, desired),
    };
    (status, requeue)
}

fn degraded(
    svc: &ResilientService,
    failures: &[(i32, &str, &str, &str)],
    domains: &BTreeMap<String, i32>,
    desired: i32,
) -> Decided {
    if let Some((_, _, first_reason, _)) = failures.first() {
        let message = failures
            .iter()
            .map(|(slot, pod, reason, message)| format!("slot {slot} ({pod}): {reason}: {message}"))
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
                reason: "InsufficientDomains".to_string(),
                message: format!(
                    "ready replicas span {have} {} domains; at least {wanted} required",
                    svc.spec.redundancy.topology_key
                ),
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
/// it was first seen: the ledger is history, and an unchanged entry costs no write.
fn ledger(
    previous: &ResilientServiceStatus,
    seen: &Assessment,
    desired: i32,
) -> Vec<ReplicaStatus> {
    (0..desired)
        .map(|ordinal| {
            let before = previous
                .replica_statuses
                .iter()
                .find(|r| r.ordinal == ordinal);
            let pod = seen
                .pods
                .iter()
                .filter(|p| p.slot == ordinal)
                .max_by_key(|p| (p.state != PodState::Terminating, p.state.is_ready()));
            let last_failure = match pod.and_then(|p| p.state.failure(seen.now)) {
                Some((reason, message)) => {
                    let prior = before.and_then(|b| b.last_failure.as_ref());
                    Some(match prior {
                        Some(f) if f.reason == reason => Failure {
                            message: message.to_string(),
                            ..f.clone()
                        },
                        _ => Failure {
                            reason: reason.to_string(),
                            message: message.to_string(),
                            at: Time(seen.now),
                        },
                    })
                }
                None => before.and_then(|b| b.last_failure.clone()),
            };
            ReplicaStatus {
                ordinal,
                pod: pod.map(|p| p.name.clone()),
                node: pod.and_then(|p| p.node.clone()),
                state: pod.map_or("Missing", |p| p.state.word()).to_string(),
                revision: pod.map(|p| p.revision.clone()),
                restarts_in_window: before.map_or(0, |b| b.restarts_in_window),
                last_failure,
            }
        })
        .collect()
}
