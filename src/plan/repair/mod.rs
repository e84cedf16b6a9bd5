//! Repair and supervision, as Erlang/OTP supervisors do it: replace what failed, count
//! repairs per slot in a sliding window, and past `maxRestarts` climb the escalation ladder
//! (Restart → Reschedule → RebuildStorage → Quarantine) instead of churning. Node loss is
//! repaired with the fencing the spec asks for, and a storm of failures pauses it.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::conditions::Decided;
use super::Action;
use crate::api::{
    condition, EscalationStep, Fencing, ReplicaStatus, ResilientService, VolumeLostPolicy,
};
use crate::health::{Assessment, NodeHealth, PodState, PodView};

/// First delay between two repairs of a slot; it doubles with each repair in the window.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How a slot's note says that its claim was deleted under its running pod.
const CLAIM_DELETED_UNDER_POD: &str = "is being deleted while it is in use by pod";

/// What repair decided for one slot, for the ledger.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct SlotNote {
    /// A repair was made this pass.
    pub repaired: bool,
    pub escalation: Option<EscalationStep>,
    pub avoid_node: Option<String>,
    pub waiting_for: Option<String>,
    pub quarantined: bool,
}

pub(super) struct RepairPlan {
    pub actions: Vec<Action>,
    pub notes: BTreeMap<i32, SlotNote>,
    pub degraded: Option<Decided>,
    pub requeue: Option<Duration>,
}

/// Repairs within the window, oldest first.
pub(super) fn window(entry: Option<&ReplicaStatus>, now: Timestamp, period: i64) -> Vec<Timestamp> {
    entry
        .map(|e| {
            e.repairs
                .iter()
                .map(|t| t.0)
                .filter(|t| now.as_second() - t.as_second() < period)
                .collect()
        })
        .unwrap_or_default()
}

/// The supervised failure of a pod, if it has one: (reason, message).
fn supervised_failure(
    svc: &ResilientService,
    pod: &PodView,
    now: Timestamp,
) -> Option<(String, String)> {
    match &pod.state {
        PodState::Failed { reason, message } => Some((reason.clone(), message.clone())),
        PodState::CrashLooping {
            reason, message, ..
        }
        | PodState::ImagePullFailing { reason, message } => Some((reason.clone(), message.clone())),
        PodState::NotReady { since } => {
            let deadline = i64::from(svc.spec.update.progress_deadline_seconds);
            let waited = now.as_second() - since.as_second();
            (waited >= deadline).then(|| {
                (
                    "NeverReady".to_string(),
                    format!("pod {} has not been Ready for {waited} s", pod.name),
                )
            })
        }
        _ => None,
    }
}

pub(super) fn plan(
    svc: &ResilientService,
    seen: &Assessment,
    rolling_revision: Option<&str>,
) -> RepairPlan {
    let previous = svc.status.clone().unwrap_or_default();
    let replicas = svc.spec.replicas.max(0);
    let now = seen.now;
    let period = i64::from(svc.spec.supervision.period_seconds.max(1));
    let max_restarts = svc.spec.supervision.max_restarts.max(1) as usize;
    let ladder = &svc.spec.supervision.escalation;
    let stateful = !svc.spec.volume_claim_templates.is_empty();
    let mut plan = RepairPlan {
        actions: Vec::new(),
        notes: BTreeMap::new(),
        degraded: None,
        requeue: None,
    };
    let wait = |d: Duration, requeue: &mut Option<Duration>| {
        *requeue = Some(requeue.map_or(d, |r| r.min(d)));
    };

    // Storm guard: many replicas, or much of the cluster, failing together point at the
    // infrastructure; replacing replicas then only adds load.
    let on_lost: Vec<&PodView> = seen
        .pods
        .iter()
        .filter(|p| p.slot < replicas && matches!(p.state, PodState::OnLostNode { .. }))
        .collect();
    let mass_failure = (seen.nodes_total >= 2 && seen.nodes_lost * 2 > seen.nodes_total)
        || (replicas >= 2 && on_lost.len() * 2 > replicas as usize);
    if mass_failure {
        plan.degraded = Some(Decided {
            type_: condition::DEGRADED,
            status: true,
            reason: "MassFailureSuspected".into(),
            message: format!(
                "{} of {} nodes lost and {} of {replicas} replicas on lost nodes: node-loss repair pauses until fewer fail at once",
                seen.nodes_lost,
                seen.nodes_total,
                on_lost.len()
            ),
        });
    }
    // A slot whose repair is under way holds its share of the budget until it is Ready
    // again, and may use it for the next step of the same repair: counting it against
    // itself would leave it waiting for a free repair slot forever.
    let in_repair: Vec<i32> = previous
        .replica_statuses
        .iter()
        .filter(|r| r.state == "Repairing")
        .map(|r| r.ordinal)
        .collect();
    let mut budget =
        (svc.spec.repair.max_concurrent_repairs.max(1) as usize).saturating_sub(in_repair.len());
    let mut take_budget = |slot: i32| {
        if in_repair.contains(&slot) {
            true
        } else if budget > 0 {
            budget -= 1;
            true
        } else {
            false
        }
    };
    let lost_after = i64::from(svc.spec.repair.node_lost_after_seconds);

    for slot in 0..replicas {
        let entry = previous.replica_statuses.iter().find(|r| r.ordinal == slot);
        let pods: Vec<&PodView> = seen.pods.iter().filter(|p| p.slot == slot).collect();
        let mut note = SlotNote {
            avoid_node: entry.and_then(|e| e.avoid_node.clone()),
            ..Default::default()
        };
        let recent = window(entry, now, period);

        // Node loss first: nothing else can be done for a pod nobody runs.
        if let Some(pod) = pods
            .iter()
            .find(|p| matches!(p.state, PodState::OnLostNode { .. }))
        {
            let PodState::OnLostNode { fenced, message } = &pod.state else {
                unreachable!("matched above")
            };
            let node = pod.node.clone().unwrap_or_default();
            // Whether this pass would act on the loss: force-delete the pod, or fence the node.
            let acts =
                !stateful || *fenced || svc.spec.repair.fencing == Fencing::TaintOutOfService;
            // Seconds until a loss without evidence has lasted long enough to be acted on.
            let settling = if *fenced {
                0
            } else {
                NodeHealth::settling_seconds(message, lost_after)
            };
            if mass_failure {
                note.waiting_for = Some("fewer failures at once (MassFailureSuspected)".into());
            } else if acts && settling > 0 {
                note.waiting_for = Some(format!(
                    "the loss of node {node} to settle: nodes failing together fall silent up to a lease renewal apart, and the storm guard must see them all first"
                ));
                wait(Duration::from_secs(settling as u64), &mut plan.requeue);
            } else if !stateful || *fenced {
                if take_budget(slot) {
                    plan.actions.push(Action::ForceDeletePod {
                        name: pod.name.clone(),
                        reason: format!("NodeLost: {message}"),
                    });
                    note.repaired = true;
                    note.escalation = Some(EscalationStep::Reschedule);
                    // Until the node lifecycle controller taints it, a lost node still looks
                    // schedulable: the replacement must not land where nothing runs it. A
                    // stateful slot is replaced only once its node is fenced (deleted, or
                    // tainted out-of-service), which keeps pods off it already; avoiding the
                    // node for good would strand a slot whose retained volume lives there
                    // once the node is repaired.
                    if !stateful {
                        note.avoid_node = pod.node.clone();
                    }
                    rebuild_lost_claims(svc, seen, slot, &mut plan.actions, &mut note);
                } else {
                    note.waiting_for = Some("a free repair slot (maxConcurrentRepairs)".into());
                }
            } else {
                match svc.spec.repair.fencing {
                    Fencing::TaintOutOfService => {
                        plan.actions.push(Action::TaintNode { node: node.clone() });
                        note.waiting_for =
                            Some(format!("node {node} to be tainted out-of-service"));
                    }
                    Fencing::WaitForEvidence => {
                        note.waiting_for = Some(format!(
                            "evidence that node {node} is down: its deletion or the node.kubernetes.io/out-of-service taint"
                        ));
                    }
                    Fencing::None => {
                        note.waiting_for = Some(format!(
                            "a person: node {node} is lost and repair.fencing is None"
                        ));
                    }
                }
            }
            plan.notes.insert(slot, note);
            continue;
        }

        // A claim deleted by hand while its pod runs stays until the pod goes (the API
        // server protects claims in use). The pod is not replaced for it: its data may be
        // all that is left, and the deletion may have been a mistake. A person decides.
        if let Some(claim) = seen.claims.iter().find(|c| c.slot == slot && c.deleting) {
            note.waiting_for = Some(match pods.iter().find(|p| p.state != PodState::Terminating) {
                Some(pod) => format!(
                    "a person: claim {} {CLAIM_DELETED_UNDER_POD} {}; delete the pod for the slot to start again with a new, empty claim",
                    claim.name, pod.name
                ),
                None => format!("claim {} to be deleted before the slot gets a new one", claim.name),
            });
        }

        // A claim whose volume went with a node, while the slot has no pod to move.
        if pods.is_empty() {
            // The pod was lost with its node and is gone since (force-deleted, by a person
            // or by the pod garbage collector): its replacement avoids that node, also when
            // this pass reads a status from before the repair that set avoidNode. Stateless
            // slots only, as above.
            if let Some(e) = entry.filter(|e| {
                !stateful
                    && e.state == "Waiting"
                    && e.last_failure
                        .as_ref()
                        .is_some_and(|f| f.reason == "NodeLost")
            }) {
                if e.node.is_some() {
                    note.avoid_node = e.node.clone();
                }
            }
            rebuild_lost_claims(svc, seen, slot, &mut plan.actions, &mut note);
        }

        // Supervised failures. A failing pod of a revision being rolled out is the rollout's
        // business: it rolls back rather than repairs.
        let failing = pods.iter().find_map(|p| {
            if Some(p.revision.as_str()) == rolling_revision {
                return None;
            }
            supervised_failure(svc, p, now).map(|f| (*p, f))
        });
        let Some((pod, (reason, message))) = failing else {
            if note != SlotNote::default() || note.avoid_node.is_some() {
                plan.notes.insert(slot, note);
            }
            continue;
        };
        let step_index = (recent.len() / max_restarts).min(ladder.len().saturating_sub(1));
        let mut step = ladder
            .get(step_index)
            .copied()
            .unwrap_or(EscalationStep::Restart);
        // RebuildStorage only where the storage policy allows it; else the next rung.
        if step == EscalationStep::RebuildStorage
            && (!stateful || svc.spec.repair.storage.on_volume_lost != VolumeLostPolicy::Recreate)
        {
            step = ladder
                .get(step_index + 1)
                .copied()
                .unwrap_or(EscalationStep::Quarantine);
        }
        if step == EscalationStep::Quarantine {
            note.quarantined = true;
            note.escalation = Some(step);
            note.waiting_for = Some(format!(
                "a person: {} repairs in {period} s; last failure {reason}: {message}",
                recent.len()
            ));
            plan.notes.insert(slot, note);
            continue;
        }
        // Exponential backoff between repairs of one slot: never a hot loop. It is capped so
        // that a failure that persists climbs the whole ladder within one window; an uncapped
        // backoff would spread the repairs too thin for the window ever to count enough.
        if let Some(last) = recent.last() {
            let n = recent.len().min(16) as u32;
            let rungs = (max_restarts * ladder.len().max(1)) as u64;
            let fits = Duration::from_secs((period as u64 / (rungs + 1)).max(1));
            let delay = BACKOFF_FIRST
                .saturating_mul(2u32.saturating_pow(n - 1))
                .min(BACKOFF_MAX)
                .min(fits);
            let due = last.as_second() + delay.as_secs() as i64;
            if now.as_second() < due {
                let left = Duration::from_secs((due - now.as_second()) as u64);
                note.waiting_for = Some(format!("back-off: next repair in {} s", left.as_secs()));
                wait(left, &mut plan.requeue);
                plan.notes.insert(slot, note);
                continue;
            }
        }
        if !take_budget(slot) {
            note.waiting_for = Some("a free repair slot (maxConcurrentRepairs)".into());
            plan.notes.insert(slot, note);
            continue;
        }
        let what = format!("{reason}: {message}");
        plan.actions.push(Action::DeletePod {
            name: pod.name.clone(),
            reason: format!("{step:?} after {what}"),
        });
        if step == EscalationStep::Reschedule {
            note.avoid_node = pod.node.clone();
        }
        if step == EscalationStep::RebuildStorage {
            for c in seen.claims.iter().filter(|c| c.slot == slot && !c.deleting) {
                plan.actions.push(Action::RebuildClaim {
                    name: c.name.clone(),
                    reason: what.clone(),
                });
            }
        }
        note.repaired = true;
        note.escalation = Some(step);
        plan.notes.insert(slot, note);
    }

    if plan.degraded.is_none() {
        plan.degraded = ledger_verdict(svc, seen, &plan.notes);
    }
    plan
}

/// Claims whose volume was lost with its node: rebuilt when the policy says Recreate and
/// the node is known down; otherwise the slot waits for a person.
fn rebuild_lost_claims(
    svc: &ResilientService,
    seen: &Assessment,
    slot: i32,
    actions: &mut Vec<Action>,
    note: &mut SlotNote,
) {
    for claim in seen.claims.iter().filter(|c| c.slot == slot && !c.deleting) {
        let Some((node, fenced)) = &claim.lost_with else {
            continue;
        };
        match svc.spec.repair.storage.on_volume_lost {
            VolumeLostPolicy::Recreate if *fenced => actions.push(Action::RebuildClaim {
                name: claim.name.clone(),
                reason: format!("VolumeLost: its volume was bound to node {node}, which is lost"),
            }),
            VolumeLostPolicy::Recreate => {
                note.waiting_for = Some(format!(
                    "evidence that node {node} is down before claim {} is rebuilt",
                    claim.name
                ))
            }
            VolumeLostPolicy::Retain => {
                note.waiting_for = Some(format!(
                    "a person: claim {}'s volume is on lost node {node} and onVolumeLost is Retain",
                    claim.name
                ))
            }
        }
    }
}

/// Degraded when a slot is quarantined or waits for a person or for evidence.
fn ledger_verdict(
    _svc: &ResilientService,
    seen: &Assessment,
    notes: &BTreeMap<i32, SlotNote>,
) -> Option<Decided> {
    let describe = |slot: &i32, n: &SlotNote| {
        let pod = seen.pods.iter().find(|p| p.slot == *slot);
        format!(
            "slot {slot} (pod {}, node {}): waiting for {}",
            pod.map_or("none", |p| p.name.as_str()),
            pod.and_then(|p| p.node.as_deref()).unwrap_or("none"),
            n.waiting_for.as_deref().unwrap_or("nothing")
        )
    };
    if let Some((slot, n)) = notes.iter().find(|(_, n)| n.quarantined) {
        return Some(Decided {
            type_: condition::DEGRADED,
            status: true,
            reason: "Quarantined".into(),
            message: describe(slot, n),
        });
    }
    let waiting: Vec<String> = notes
        .iter()
        .filter(|(_, n)| {
            n.waiting_for
                .as_deref()
                .is_some_and(|w| w.starts_with("a person") || w.starts_with("evidence"))
        })
        .map(|(slot, n)| describe(slot, n))
        .collect();
    let mentions = |what: &str| {
        notes
            .values()
            .any(|n| n.waiting_for.as_deref().is_some_and(|w| w.contains(what)))
    };
    (!waiting.is_empty()).then(|| Decided {
        type_: condition::DEGRADED,
        status: true,
        reason: if mentions(CLAIM_DELETED_UNDER_POD) {
            "ClaimDeleted"
        } else if mentions("claim") {
            "VolumeLost"
        } else {
            "NodeLost"
        }
        .into(),
        message: waiting.join("; "),
    })
}
