//! Pods as a test reads them: the slot and revision they belong to, whether they count as
//! alive or available, a line that describes them, and the pods of a service by slot.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use perennial::api::{LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT};

use super::TestNamespace;

/// A pod's slot, or -1 without a valid label.
pub fn slot(pod: &Pod) -> i32 {
    pod.labels()
        .get(LABEL_SLOT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

/// A pod's revision label, empty without one.
pub fn revision(pod: &Pod) -> &str {
    pod.labels()
        .get(LABEL_REVISION)
        .map(String::as_str)
        .unwrap_or_default()
}

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// Counts toward the surge ceiling: neither terminating nor ended.
pub fn alive(pod: &Pod) -> bool {
    !terminating(pod) && !ended(pod)
}

/// Counts toward the availability floor: Ready and not terminating.
pub fn available(pod: &Pod) -> bool {
    ready(pod) && !terminating(pod)
}

pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Restarts of the pod's first container.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

/// `name[flags]`: R Ready (- not), T terminating, E ended.
pub fn flags(pod: &Pod) -> String {
    format!(
        "{}[{}{}{}]",
        pod.name_any(),
        if ready(pod) { "R" } else { "-" },
        if terminating(pod) { "T" } else { "" },
        if ended(pod) { "E" } else { "" }
    )
}

/// The flags of every pod, in order, on one line.
pub fn flags_of<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> String {
    pods.into_iter().map(flags).collect::<Vec<_>>().join(" ")
}

/// A pod's name, uid, node, readiness and deletion, for a failure message.
pub fn describe(pod: &Pod) -> String {
    let uid = uid(pod);
    format!(
        "{} (uid {}, node {}, Ready={}, deleting={})",
        pod.name_any(),
        &uid[..8.min(uid.len())],
        node_of(pod),
        ready(pod),
        terminating(pod)
    )
}

/// Descriptions of `pods`, joined.
pub fn describe_all<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> String {
    pods.into_iter()
        .map(describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The namespace's pods that match the label `selector`.
pub async fn pods(ns: &TestNamespace, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = ns.api();
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

/// The pods of service `name`, by slot (every pod, terminating ones included).
pub async fn slots(ns: &TestNamespace, name: &str) -> BTreeMap<i32, Vec<Pod>> {
    let mut out: BTreeMap<i32, Vec<Pod>> = BTreeMap::new();
    for pod in pods(ns, &format!("{LABEL_SERVICE}={name}")).await {
        out.entry(slot(&pod)).or_default().push(pod);
    }
    out
}

/// The one pod of `slot` of service `name` when it is Ready and not leaving.
pub async fn ready_pod(ns: &TestNamespace, name: &str, slot: i32) -> Result<Pod, String> {
    let slots = slots(ns, name).await;
    match slots.get(&slot).map(Vec::as_slice) {
        Some([pod]) if ready(pod) && !terminating(pod) => Ok(pod.clone()),
        Some(pods) => Err(describe_all(pods)),
        None => Err(format!("no pod in slot {slot}")),
    }
}
