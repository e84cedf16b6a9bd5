//! The state of one pod, from its phase, conditions and container statuses.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};

/// How long a pod may wait for the scheduler before it counts as failing.
pub const UNSCHEDULABLE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a replica's pod is doing, as far as the operator is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not yet placed on a node.
    Pending,
    /// The scheduler cannot place it (since `since`).
    Unschedulable { message: String, since: Timestamp },
    /// Placed, containers starting or not yet Ready for the first time.
    Starting,
    /// Ready since `since`.
    Ready { since: Timestamp },
    /// Running, containers started, but not Ready (since `since`): a readiness probe that
    /// has not passed yet, or no longer passes.
    NotReady { since: Timestamp },
    /// A container keeps crashing (CrashLoopBackOff; `reason` is OOMKilled when the last
    /// termination was the kernel's OOM killer).
    CrashLooping {
        reason: String,
        message: String,
        restarts: i32,
    },
    /// An image cannot be pulled.
    ImagePullFailing { reason: String, message: String },
    /// Terminal: Failed, Succeeded (a replica must never exit) or evicted.
    Failed { reason: String, message: String },
    /// Being deleted.
    Terminating,
    /// Drained to be deleted: its readiness gate was closed at `since`, and it is deleted
    /// once no EndpointSlice shows it ready. It serves nobody any more; it still exists.
    Retiring { since: Timestamp },
    /// Its node is lost: whatever the pod's last status said, nothing runs it any more (or
    /// nobody can tell). `fenced` when the node is known down for good; `deleting` when its
    /// deletion has started, which only a force-delete can finish now.
    OnLostNode {
        message: String,
        fenced: bool,
        deleting: bool,
    },
}

impl PodState {
    /// A short word for status.replicaStatuses[].state and logs.
    pub fn word(&self) -> &'static str {
        match self {
            PodState::Pending | PodState::Unschedulable { .. } => "Pending",
            PodState::Starting => "Starting",
            PodState::Ready { .. } => "Ready",
            PodState::NotReady { .. } => "NotReady",
            PodState::CrashLooping { .. }
            | PodState::ImagePullFailing { .. }
            | PodState::Failed { .. } => "Failing",
            PodState::Terminating => "Terminating",
            PodState::Retiring { .. } => "Draining",
            PodState::OnLostNode { .. } => "OnLostNode",
        }
    }

    /// The identified failure at `now`, if this state is one: (reason, message). A pod
    /// the scheduler could not place yet is a failure only after UNSCHEDULABLE_GRACE: the
    /// scheduler retries, and a claim or node may be on its way.
    pub fn failure(&self, now: Timestamp) -> Option<(&str, &str)> {
        match self {
            PodState::Unschedulable { message, since } => (now.as_second() - since.as_second()
                >= UNSCHEDULABLE_GRACE.as_secs() as i64)
                .then_some(("Unschedulable", message.as_str())),
            PodState::OnLostNode { message, .. } => Some(("NodeLost", message.as_str())),
            PodState::CrashLooping {
                reason, message, ..
            }
            | PodState::ImagePullFailing { reason, message }
            | PodState::Failed { reason, message } => Some((reason, message)),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, PodState::Ready { .. })
    }

    /// Holds its slot somewhere that runs: neither on a lost node nor on its way out.
    pub fn holds_its_slot(&self) -> bool {
        !matches!(self, PodState::OnLostNode { .. }) && !self.is_leaving()
    }

    /// On its way out: deleted, or drained to be deleted. Nothing plans with such a pod.
    pub fn is_leaving(&self) -> bool {
        matches!(
            self,
            PodState::Terminating
                | PodState::Retiring { .. }
                | PodState::OnLostNode { deleting: true, .. }
        )
    }
}

/// Judges a pod. Anything missing (status, conditions) counts as "not yet", never as an
/// error: the operator must not fail on what it reads.
pub fn judge_pod(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Terminating;
    }
    let Some(status) = pod.status.as_ref() else {
        return PodState::Pending;
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if phase == "Failed" || phase == "Succeeded" {
        let reason = status
            .reason
            .clone()
            .or_else(|| terminated_reason(status.container_statuses.as_deref()))
            .unwrap_or_else(|| {
                if phase == "Failed" {
                    "Failed"
                } else {
                    "Exited"
                }
                .to_string()
            });
        let message = status
            .message
            .clone()
            .unwrap_or_else(|| format!("pod phase is {phase}"));
        return PodState::Failed { reason, message };
    }
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    if let Some(state) = container_failure(containers) {
        return state;
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = condition(conditions, "PodScheduled") {
        if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
            return PodState::Unschedulable {
                message: c.message.clone().unwrap_or_default(),
                since: transition(c),
            };
        }
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        return PodState::Pending;
    }
    match condition(conditions, "Ready") {
        Some(c) if c.status == "True" => PodState::Ready {
            since: transition(c),
        },
        Some(c) if phase == "Running" && ever_started(containers) => PodState::NotReady {
            since: transition(c),
        },
        _ => PodState::Starting,
    }
}

fn condition<'a>(conditions: &'a [PodCondition], type_: &str) -> Option<&'a PodCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn transition(c: &PodCondition) -> Timestamp {
    c.last_transition_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn ever_started(containers: &[ContainerStatus]) -> bool {
    containers.iter().any(|c| c.started == Some(true))
}

fn terminated_reason(containers: Option<&[ContainerStatus]>) -> Option<String> {
    containers?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())
        .next()
}

/// A container that crash-loops or cannot pull its image.
fn container_failure(containers: &[ContainerStatus]) -> Option<PodState> {
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let message = waiting.message.clone().unwrap_or_default();
        match reason {
            "CrashLoopBackOff" => {
                let last = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.reason.clone());
                let reason = match last.as_deref() {
                    Some("OOMKilled") => "OOMKilled".to_string(),
                    _ => "CrashLoopBackOff".to_string(),
                };
                let message = format!(
                    "container {} restarted {} times{}",
                    c.name,
                    c.restart_count,
                    last.map(|l| format!(", last exit: {l}"))
                        .unwrap_or_default()
                );
                return Some(PodState::CrashLooping {
                    reason,
                    message,
                    restarts: c.restart_count,
                });
            }
            "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
                return Some(PodState::ImagePullFailing {
                    reason: "ImagePullBackOff".to_string(),
                    message: format!("container {}: {reason}: {message}", c.name),
                });
            }
            _ => {}
        }
    }
    None
}
