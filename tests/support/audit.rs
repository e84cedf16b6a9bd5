//! What the API server's audit log recorded: writes counted by the server, not by whoever
//! made them.

use std::path::PathBuf;

use serde_json::Value;

use super::harness::cluster_dir;

/// The API server's audit log.
pub fn audit_log() -> PathBuf {
    cluster_dir().join("logs/audit.log")
}

/// The completed requests of the audit log whose line mentions every one of `needles`
/// (a cheap filter before the JSON is parsed).
pub fn audit_entries(needles: &[&str]) -> Vec<Value> {
    let text = std::fs::read_to_string(audit_log()).unwrap_or_default();
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect()
}

/// Writes (create, update, patch, delete) the operator's identity made in `namespace`.
pub fn operator_writes(namespace: &str) -> Vec<String> {
    operator_write_entries(namespace)
        .iter()
        .map(describe_write)
        .collect()
}

/// The audit entries (completed) of writes the operator's identity made in `namespace`.
pub fn operator_write_entries(namespace: &str) -> Vec<Value> {
    audit_entries(&["perennial-operator", namespace])
        .into_iter()
        .filter(|e| e["user"]["username"] == "perennial-operator")
        .filter(|e| {
            let verb = e["verb"].as_str().unwrap_or_default();
            ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
        })
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .collect()
}

/// `<verb> <resource> <name>` of an audit entry.
pub fn describe_write(e: &Value) -> String {
    format!(
        "{} {} {}",
        e["verb"].as_str().unwrap_or_default(),
        e["objectRef"]["resource"].as_str().unwrap_or_default(),
        e["objectRef"]["name"].as_str().unwrap_or_default()
    )
}

/// Requests made as `user` through impersonation, in `namespaces` or cluster-scoped:
/// (verb, resource[/subresource], HTTP code).
pub fn impersonated_requests(user: &str, namespaces: &[&str]) -> Vec<(String, String, u64)> {
    audit_entries(&[user])
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == user)
        .filter(|e| match e["objectRef"]["namespace"].as_str() {
            Some(ns) => namespaces.contains(&ns),
            None => true,
        })
        .map(|e| {
            let r = &e["objectRef"];
            let resource = r["resource"].as_str().unwrap_or_default();
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            };
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                resource,
                e["responseStatus"]["code"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Pod deletions the operator's identity made in `namespace`.
pub fn operator_pod_deletes(namespace: &str) -> Vec<String> {
    operator_writes(namespace)
        .into_iter()
        .filter(|w| w.starts_with("delete pods"))
        .collect()
}
