//! Whether a pod serves: its readiness gate, how the EndpointSlices list it, and whether its
//! containers run what its spec says (after an in-place patch).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodReadinessGate};

use crate::api::GATE_SERVING;

/// The reason on a closed gate of a pod that is drained to be upgraded in place; any other
/// reason means the pod is drained to be deleted.
pub const GATE_UPGRADING: &str = "Upgrading";
/// The reason on a closed gate of a pod that is drained to be deleted.
pub const GATE_RETIRING: &str = "Retiring";
/// The reason on an open gate.
pub const GATE_OPEN: &str = "Serving";

/// The operator's readiness gate on a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gate {
    /// The pod has no such gate (made before the operator added one): it cannot be drained.
    #[default]
    Absent,
    /// The gate is in the spec but the operator has not set its condition yet.
    Unset,
    Open,
    /// Closed since `since`, to delete the pod or to upgrade it in place.
    Closed {
        since: Timestamp,
        why: Closed,
    },
}

/// Why a gate is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    Retire,
    Upgrade,
}

/// How the EndpointSlices of Services that route by readiness list a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listing {
    /// In no such slice: no proxy has a rule for it.
    #[default]
    Unlisted,
    /// Ready in at least one slice: some proxy may still send it traffic.
    Ready,
    /// Listed, and not ready in any slice.
    NotReady,
}

/// What decides whether a pod may be deleted yet, and whether its gate may open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub gate: Gate,
    pub listing: Listing,
    /// When the operator first saw the pod, gate closed, ready in no slice: the settle
    /// time counts from here.
    pub drained_since: Option<Timestamp>,
    /// ContainersReady is True.
    pub containers_ready: bool,
    /// Every container runs the image and resources its spec asks for (false between an
    /// in-place patch and the kubelet's restart).
    pub current: bool,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            gate: Gate::Absent,
            listing: Listing::Unlisted,
            drained_since: None,
            containers_ready: true,
            current: true,
        }
    }
}

impl Serving {
    /// Judges what the pod itself says; the listing and drain time come from the slices.
    pub fn of(pod: &Pod) -> Self {
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let is_true = |type_: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        Self {
            gate: gate_of(pod),
            listing: Listing::Unlisted,
            drained_since: None,
            containers_ready: is_true("ContainersReady"),
            current: runs_spec(pod),
        }
    }
}

/// The gate as the pod's spec and status say.
pub fn gate_of(pod: &Pod) -> Gate {
    let condition = (pod.status.as_ref())
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == GATE_SERVING)
        .map(|c| GateCondition {
            open: c.status == "True",
            since: c.last_transition_time.as_ref().map(|t| t.0),
            reason: c.reason.as_deref(),
        });
    gate_from(
        pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref()),
        condition,
    )
}

/// What the gate's own condition says, however the pod is kept.
pub struct GateCondition<'a> {
    pub open: bool,
    pub since: Option<Timestamp>,
    pub reason: Option<&'a str>,
}

/// The gate from a pod's readiness gates and the gate's condition.
pub fn gate_from(gates: Option<&[PodReadinessGate]>, condition: Option<GateCondition>) -> Gate {
    let gated = (gates.unwrap_or_default().iter()).any(|g| g.condition_type == GATE_SERVING);
    if !gated {
        return Gate::Absent;
    }
    match condition {
        None => Gate::Unset,
        Some(c) if c.open => Gate::Open,
        Some(c) => Gate::Closed {
            since: c.since.unwrap_or(Timestamp::UNIX_EPOCH),
            why: if c.reason == Some(GATE_UPGRADING) {
                Closed::Upgrade
            } else {
                Closed::Retire
            },
        },
    }
}

/// Every container of the spec runs its image, with its resources, and no resize is
/// pending. A pod whose status does not say yet counts as not current.
fn runs_spec(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let status = pod.status.as_ref();
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let resizing = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "PodResizePending" || c.type_ == "PodResizeInProgress");
    !resizing
        && spec.containers.iter().all(|c| {
            statuses
                .iter()
                .find(|s| s.name == c.name)
                .is_some_and(|s| container_current(c, s))
        })
}

fn container_current(spec: &Container, status: &ContainerStatus) -> bool {
    // A trimmed pod keeps no image: nothing to compare.
    if !spec.image.as_deref().unwrap_or_default().is_empty()
        && normalize_image(spec.image.as_deref().unwrap_or_default())
            != normalize_image(&status.image)
    {
        return false;
    }
    match (spec.resources.as_ref(), status.resources.as_ref()) {
        (Some(want), Some(have)) => {
            let cpu_memory = |m: Option<
                &std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
            >| {
                m.map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k == "cpu" || *k == "memory")
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
            };
            cpu_memory(want.requests.as_ref()) == cpu_memory(have.requests.as_ref())
                && cpu_memory(want.limits.as_ref()) == cpu_memory(have.limits.as_ref())
        }
        _ => true,
    }
}

/// An image reference in the form container runtimes report: `nginx:1` and
/// `docker.io/library/nginx:1` are the same image, and no tag means `latest`.
pub fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
            (f, r.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let rest = if first == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    let last = rest.rsplit('/').next().unwrap_or_default();
    let tagged = if last.contains(':') || digest.is_some() {
        rest
    } else {
        format!("{rest}:latest")
    };
    match digest {
        Some(d) => format!("{first}/{tagged}@{d}"),
        None => format!("{first}/{tagged}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn image_references_compare_as_runtimes_report_them() {
        for (spec, reported) in [
            ("nginx:1", "docker.io/library/nginx:1"),
            ("nginx", "docker.io/library/nginx:latest"),
            ("example/app:2", "docker.io/example/app:2"),
            (
                "localhost/perennial-testapp:dev",
                "localhost/perennial-testapp:dev",
            ),
            ("registry.local:5000/app:1", "registry.local:5000/app:1"),
        ] {
            assert_eq!(normalize_image(spec), normalize_image(reported), "{spec}");
        }
        assert_ne!(normalize_image("nginx:1"), normalize_image("nginx:2"));
    }

    #[test]
    fn the_gate_reads_from_the_spec_and_the_condition() {
        let gated = |conditions: serde_json::Value| {
            gate_of(&pod(serde_json::json!({
                "spec": {"containers": [], "readinessGates": [{"conditionType": GATE_SERVING}]},
                "status": {"conditions": conditions},
            })))
        };
        assert_eq!(gated(serde_json::json!([])), Gate::Unset);
        assert_eq!(
            gated(serde_json::json!([{"type": GATE_SERVING, "status": "True"}])),
            Gate::Open
        );
        let at = "2026-01-01T00:00:00Z";
        assert_eq!(
            gated(
                serde_json::json!([{"type": GATE_SERVING, "status": "False", "reason": GATE_UPGRADING, "lastTransitionTime": at}])
            ),
            Gate::Closed {
                since: at.parse().unwrap(),
                why: Closed::Upgrade
            }
        );
        assert!(matches!(
            gated(
                serde_json::json!([{"type": GATE_SERVING, "status": "False", "reason": GATE_RETIRING}])
            ),
            Gate::Closed {
                why: Closed::Retire,
                ..
            }
        ));
        let ungated = pod(serde_json::json!({"spec": {"containers": []}}));
        assert_eq!(gate_of(&ungated), Gate::Absent);
    }

    #[test]
    fn a_pod_patched_in_place_is_current_once_its_containers_run_the_new_image() {
        let with = |spec_image: &str, status_image: &str, extra: serde_json::Value| {
            Serving::of(&pod(serde_json::json!({
                "spec": {"containers": [{"name": "app", "image": spec_image}]},
                "status": {"conditions": extra,
                    "containerStatuses": [{"name": "app", "image": status_image, "imageID": "",
                        "ready": true, "restartCount": 1}]},
            })))
            .current
        };
        assert!(with(
            "app:2",
            "docker.io/library/app:2",
            serde_json::json!([])
        ));
        assert!(!with(
            "app:2",
            "docker.io/library/app:1",
            serde_json::json!([])
        ));
        assert!(!with(
            "app:2",
            "app:2",
            serde_json::json!([{"type": "PodResizeInProgress", "status": "True"}])
        ));
    }
}
