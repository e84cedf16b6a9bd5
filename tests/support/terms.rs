//! The leader Lease's terms: who held it from when, as a watch sees them and as the audit
//! log's record of each accepted write of the Lease shows them. The tests that check "one
//! lease term at a time" hold every write the audit log shows against these. A watch alone
//! misses a term that began and ended while it reconnected after an API server restart.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

/// One state of the leader Lease: who held it from when (a released lease: nobody, from
/// the release).
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub since: jiff::Timestamp,
    pub holder: Option<String>,
}

/// Every state the Lease `lease` in `namespace` passes through, from a watch that outlives
/// API server and etcd restarts (it lists again after each).
pub fn watch_terms(
    client: &Client,
    namespace: &str,
    lease: &str,
) -> (Arc<Mutex<Vec<Term>>>, tokio::task::JoinHandle<()>) {
    let terms: Arc<Mutex<Vec<Term>>> = Arc::default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={lease}"));
    let seen = terms.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(leases, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(lease) = event else { continue };
            let spec = lease.spec.unwrap_or_default();
            let holder = spec.holder_identity.filter(|h| !h.is_empty());
            let since = match &holder {
                Some(_) => spec.acquire_time,
                None => spec.renew_time,
            };
            if let Some(since) = since.map(|t| t.0) {
                let term = Term { since, holder };
                let mut terms = seen.lock().unwrap_or_else(|e| e.into_inner());
                if !terms.contains(&term) {
                    terms.push(term);
                }
            }
        }
    });
    (terms, task)
}

/// The Lease's state that an accepted write of it made, from the body the audit log keeps of
/// writes of leader Leases (e2e/cluster/manifests/audit-policy.yaml).
pub fn term_written(entry: &serde_json::Value) -> Option<Term> {
    let accepted = matches!(entry["responseStatus"]["code"].as_u64(), Some(200 | 201));
    let write = ["create", "update", "patch"].contains(&entry["verb"].as_str()?);
    if !accepted || !write || entry["stage"] != "ResponseComplete" {
        return None;
    }
    let spec = &entry["requestObject"]["spec"];
    let holder = (spec["holderIdentity"].as_str())
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    let since = match holder {
        Some(_) => spec["acquireTime"].as_str()?,
        None => spec["renewTime"].as_str()?,
    };
    Some(Term {
        since: since.parse().ok()?,
        holder,
    })
}

/// Every state the Lease `lease` in `namespace` was written into, from the audit log.
pub fn written_terms(namespace: &str, lease: &str) -> Vec<Term> {
    super::audit::audit_entries(&[lease, namespace, "\"leases\""])
        .iter()
        .filter(|e| e["objectRef"]["namespace"] == namespace && e["objectRef"]["name"] == lease)
        .filter_map(term_written)
        .collect()
}

/// The terms a watch saw and those the audit log shows, each once.
pub fn all_terms(watched: &[Term], namespace: &str, lease: &str) -> Vec<Term> {
    let mut all = watched.to_vec();
    for term in written_terms(namespace, lease) {
        if !all.contains(&term) {
            all.push(term);
        }
    }
    all
}

/// The holder of the lease at `at`: that of the last state that began before it.
pub fn holder_at(terms: &[Term], at: jiff::Timestamp) -> Option<&str> {
    (terms.iter())
        .filter(|t| t.since <= at)
        .max_by_key(|t| t.since)
        .and_then(|t| t.holder.as_deref())
}
