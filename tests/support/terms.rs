//! The leader Lease's terms as a watch sees them: who held it from when. The tests that
//! check "one lease term at a time" hold every write the audit log shows against these.

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

/// The holder of the lease at `at`: that of the last state that began before it.
pub fn holder_at(terms: &[Term], at: jiff::Timestamp) -> Option<&str> {
    (terms.iter())
        .filter(|t| t.since <= at)
        .max_by_key(|t| t.since)
        .and_then(|t| t.holder.as_deref())
}
