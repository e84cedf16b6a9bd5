//! The reaction to a pod deletion as the API server saw it, from its audit log: from the
//! moment the deletion was answered to the moment the controller's create arrived. The
//! client-side figure adds the bench's own watch on both ends; this one is the controller's
//! alone.

use super::scale::audit_range;
use super::*;

/// The users whose pod creates answer a deletion: the operator, and the built-in
/// controllers under their service accounts.
const CONTROLLERS: [&str; 3] = [
    "perennial-operator",
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:statefulset-controller",
];

/// What deletes a pod once it has stopped: KWOK for its nodes, a kubelet for a real node.
fn node_agent(user: &str) -> bool {
    user == "kwok" || user.starts_with("system:node:")
}

fn at(e: &serde_json::Value, field: &str) -> Option<jiff::Timestamp> {
    e[field].as_str()?.parse().ok()
}

/// For each pod deleted in `ns` by anyone but a controller or a node between two offsets of
/// the audit log, the time from its answer to the arrival of the next pod create in `ns` by a
/// controller. A deletion no create followed is left out.
pub(crate) fn server_reactions(ns: &str, from: u64, to: u64) -> Vec<Duration> {
    let bytes = audit_range(from, to);
    let text = String::from_utf8_lossy(&bytes);
    let mut deletions = Vec::new();
    let mut creates = Vec::new();
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let pods_here = e["objectRef"]["resource"] == "pods"
            && e["objectRef"]["namespace"] == ns
            && e["objectRef"]["subresource"].is_null()
            && e["stage"] == "ResponseComplete";
        if !pods_here {
            continue;
        }
        let user = e["user"]["username"].as_str().unwrap_or_default();
        let by_controller = CONTROLLERS.contains(&user);
        match e["verb"].as_str() {
            // The trial's deletion; the node's own, once the pod has stopped, answers nothing.
            Some("delete") if !by_controller && !node_agent(user) => {
                deletions.extend(at(&e, "stageTimestamp"))
            }
            Some("create") if by_controller => creates.extend(at(&e, "requestReceivedTimestamp")),
            _ => {}
        }
    }
    creates.sort();
    deletions
        .iter()
        .filter_map(|d| {
            let next = creates.iter().find(|c| *c >= d)?;
            Some(next.duration_since(*d).unsigned_abs())
        })
        .collect()
}
