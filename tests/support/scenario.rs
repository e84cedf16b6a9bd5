//! Services played through a scenario and compared afterwards: a snapshot of everything a
//! service owns, waits on convergence and settled pods, and a watch that checks the slot
//! and surge invariants on every event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::{ResilientService, LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT};

// Kept importable from here, where the scenario tests have always found them.
#[allow(unused_imports)]
pub use super::nodes::Volumes;
#[allow(unused_imports)]
pub use super::operator_with_env;
#[allow(unused_imports)]
pub use super::pods::{alive, flags, ready, slot, terminating};
#[allow(unused_imports)]
pub use super::service::{
    condition_status, converged, create_service, image_patch, local_storage, merge, merge_patch,
    service, status, wait_converged,
};
use super::{wait_for, TestNamespace};

/// Everything a service owns, in names that do not depend on the namespace, so that two
/// runs in two namespaces compare equal when they ended the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// slot → (pod name, revision, Ready and not terminating), every pod the service owns.
    pub pods: BTreeMap<i32, Vec<(String, String, bool)>>,
    /// claim name → slot.
    pub claims: BTreeMap<String, String>,
    /// revision name → number.
    pub revisions: BTreeMap<String, i64>,
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
    pub available: Option<String>,
    pub budget: bool,
    pub headless_service: bool,
}

pub async fn snapshot(ns: &TestNamespace, name: &str) -> Snapshot {
    let selector = ListParams::default().labels(&format!("{LABEL_SERVICE}={name}"));
    let mut pods: BTreeMap<i32, Vec<(String, String, bool)>> = BTreeMap::new();
    let pods_of_service = ns.api::<Pod>().list(&selector).await.expect("list pods");
    // Pods that only wear the labels are not the service's (tests/hostile_input.rs).
    let owned = |p: &Pod| {
        p.owner_references()
            .iter()
            .any(|o| o.kind == "ResilientService" && o.name == name && o.controller == Some(true))
    };
    for p in pods_of_service.into_iter().filter(owned) {
        let revision = p.labels().get(LABEL_REVISION).cloned().unwrap_or_default();
        let up = ready(&p) && !terminating(&p);
        pods.entry(slot(&p))
            .or_default()
            .push((p.name_any(), revision, up));
    }
    let claims = ns
        .api::<PersistentVolumeClaim>()
        .list(&selector)
        .await
        .expect("list claims")
        .into_iter()
        .map(|c| {
            let slot = c.labels().get(LABEL_SLOT).cloned().unwrap_or_default();
            (c.name_any(), slot)
        })
        .collect();
    let revisions = ns
        .api::<ControllerRevision>()
        .list(&selector)
        .await
        .expect("list revisions")
        .into_iter()
        .map(|r| (r.name_any(), r.revision))
        .collect();
    let svc = ns
        .api::<ResilientService>()
        .get(name)
        .await
        .expect("get the service");
    let s = status(&svc);
    Snapshot {
        pods,
        claims,
        revisions,
        current_revision: s.current_revision.clone(),
        update_revision: s.update_revision.clone(),
        available: condition_status(&svc, "Available"),
        budget: ns
            .api::<PodDisruptionBudget>()
            .get_opt(name)
            .await
            .expect("get the budget")
            .is_some(),
        headless_service: ns
            .api::<Service>()
            .get_opt(&perennial::build::service_name(&svc))
            .await
            .expect("get the Service")
            .is_some(),
    }
}

impl Snapshot {
    /// Settled: one pod in each slot of 0..replicas and nowhere else, Ready and not leaving.
    pub fn settled(&self, replicas: i32) -> Result<(), String> {
        let slots_ok = self.pods.keys().copied().eq(0..replicas);
        let pods_ok = self
            .pods
            .values()
            .all(|pods| matches!(pods.as_slice(), [(_, _, true)]));
        (slots_ok && pods_ok)
            .then_some(())
            .ok_or_else(|| format!("{:?}", self.pods))
    }
}

/// Waits until the service has converged and its pods have settled; returns the snapshot.
pub async fn wait_settled(ns: &TestNamespace, name: &str, timeout: Duration) -> Snapshot {
    let api: Api<ResilientService> = ns.api();
    wait_converged(&api, name, timeout).await;
    let api = &api;
    wait_for(
        &format!("{name}: the pods to settle"),
        timeout,
        || async move {
            let snap = snapshot(ns, name).await;
            let replicas = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .spec
                .replicas;
            snap.settled(replicas).map(|_| snap)
        },
    )
    .await
}

/// Claims of the service by name: (uid, bound volume).
pub async fn claim_identities(
    ns: &TestNamespace,
    name: &str,
) -> BTreeMap<String, (String, Option<String>)> {
    let selector = ListParams::default().labels(&format!("{LABEL_SERVICE}={name}"));
    ns.api::<PersistentVolumeClaim>()
        .list(&selector)
        .await
        .expect("list claims")
        .into_iter()
        .map(|c| {
            let volume = c.spec.as_ref().and_then(|s| s.volume_name.clone());
            (c.name_any(), (c.uid().unwrap_or_default(), volume))
        })
        .collect()
}

/// Bounds every state of a service's pods must keep.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// At most this many pods neither terminating nor ended.
    pub max_alive: usize,
    /// Never two pods in a slot, terminating ones included (stateful slots).
    pub one_per_slot: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// The first full list is in: states from then on are checked.
    pub listed: bool,
    pub events: usize,
    pub most_alive: usize,
    pub violations: Vec<String>,
}

/// A watch on a service's pods that checks `Bounds` on every state it reports, for as
/// long as it lives.
pub struct PodWatch {
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Seen>>,
}

impl PodWatch {
    /// Starts watching and returns once the first list is in.
    pub async fn start(ns: &TestNamespace, name: &str, bounds: Bounds) -> Self {
        let api: Api<Pod> = ns.api();
        let (reader, writer) = reflector::store();
        let config = watcher::Config::default().labels(&format!("{LABEL_SERVICE}={name}"));
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let mut seen = record.lock().unwrap();
                match event {
                    Ok(watcher::Event::InitDone) => seen.listed = true,
                    Ok(_) if seen.listed => {}
                    // A relist half done, or an error the watcher retries: no new state.
                    _ => continue,
                }
                let pods = reader.state();
                let alive = pods.iter().filter(|p| alive(p)).count();
                let mut per_slot: BTreeMap<i32, usize> = BTreeMap::new();
                for p in &pods {
                    *per_slot.entry(slot(p)).or_default() += 1;
                }
                seen.events += 1;
                seen.most_alive = seen.most_alive.max(alive);
                let doubled = bounds.one_per_slot && per_slot.values().any(|n| *n > 1);
                if alive > bounds.max_alive || doubled {
                    let mut names: Vec<String> = pods.iter().map(|p| flags(p)).collect();
                    names.sort();
                    seen.violations.push(names.join(" "));
                }
            }
        });
        wait_for("the pod watch to list", Duration::from_secs(60), || {
            let listed = seen.lock().unwrap().listed;
            async move { listed.then_some(()).ok_or("not yet".to_string()) }
        })
        .await;
        Self { task, seen }
    }

    /// What was seen so far.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes to objects (Events left out) the operator's identity made in `namespace` and the
/// API server accepted, from the audit log: what the kill point counts, counted by the
/// server.
pub fn accepted_object_writes(namespace: &str) -> Vec<String> {
    super::operator_write_entries(namespace)
        .iter()
        .filter(|e| e["objectRef"]["resource"] != "events")
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_i64()
                .is_some_and(|c| c < 300)
        })
        .map(super::describe_write)
        .collect()
}
