//! Pods as the watch sees them, and the shape (surge ceiling, availability floor) of a service.

use super::*;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

pub(crate) fn slot_of(pod: &Pod) -> Option<i32> {
    label(pod, LABEL_SLOT)?.parse().ok()
}

pub(crate) fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

pub(crate) fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub(crate) fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

pub(crate) fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts toward the surge ceiling.
pub(crate) fn live(pod: &Pod) -> bool {
    !terminating(pod) && !ended(pod)
}

pub(crate) fn describe_pods(pods: &[&Pod], lost: &BTreeSet<String>) -> String {
    pods.iter()
        .map(|p| {
            let node = node_of(p).unwrap_or("-");
            format!(
                "{}[{}{}{}@{node}{}]",
                p.name_any(),
                if ready(p) { "R" } else { "-" },
                if terminating(p) { "T" } else { "" },
                if ended(p) { "E" } else { "" },
                if lost.contains(node) { " lost" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A count or a percentage of `total`, rounded as Kubernetes rounds maxSurge (up) and
/// maxUnavailable (down).
pub(crate) fn count_of(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = total.max(0) * pct.clamp(0, 100);
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
    }
}

/// What the spec promises, read from the service as the watch last saw it.
pub(crate) struct Shape {
    pub(crate) replicas: i32,
    pub(crate) stateful: bool,
    pub(crate) recreate: bool,
    pub(crate) ceiling: i32,
    pub(crate) floor: i32,
}

impl Shape {
    pub(crate) fn of(svc: &ResilientService) -> Self {
        let spec = &svc.spec;
        let replicas = spec.replicas.max(0);
        let stateful = !spec.volume_claim_templates.is_empty();
        let recreate = spec.update.strategy == UpdateStrategy::Recreate;
        let surge = if stateful || recreate {
            0
        } else {
            count_of(&spec.update.max_surge, replicas, true)
        };
        let mut unavailable = count_of(&spec.update.max_unavailable, replicas, false);
        if stateful || surge == 0 {
            unavailable = unavailable.max(1);
        }
        Shape {
            replicas,
            stateful,
            recreate,
            ceiling: replicas + surge,
            floor: replicas - unavailable,
        }
    }
}

pub(crate) fn status_rolling(svc: &ResilientService) -> bool {
    let s = svc.status.clone().unwrap_or_default();
    s.rollout.is_some() || s.update_revision != s.current_revision
}

pub(crate) fn settled(svc: &ResilientService, generation: i64) -> bool {
    let s = svc.status.clone().unwrap_or_default();
    s.observed_generation.is_some_and(|g| g >= generation) && !status_rolling(svc)
}
