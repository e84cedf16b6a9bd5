//! Services played through a scenario and compared afterwards: a service builder, waits on
//! convergence, a snapshot of everything a service owns, a watch that checks the slot and
//! surge invariants on every event, and operators started with extra environment.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::{
    ResilientService, ResilientServiceStatus, LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT,
};
use serde_json::{json, Value};

use super::{kubectl, repo_root, unique_suffix, wait_for, Operator, TestNamespace};

/// Merges `extra` into `base`, objects key by key, anything else replaced.
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// A service `name` of `replicas` running `image`, its spec extended by `spec`.
pub fn service(name: &str, replicas: i32, image: &str, spec: Value) -> ResilientService {
    let mut body = json!({
        "replicas": replicas,
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }
    });
    merge(&mut body, spec);
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": body,
    }))
    .expect("a valid ResilientService")
}

/// Spec fields for one local ReadWriteOnce claim `data` per replica.
pub fn local_storage() -> Value {
    json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }]})
}

/// A template change: a new image, so a new revision.
pub fn image_patch(image: &str) -> Value {
    json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
}

pub async fn create_service(ns: &TestNamespace, svc: &ResilientService) -> Api<ResilientService> {
    let api: Api<ResilientService> = ns.api();
    api.create(&PostParams::default(), svc)
        .await
        .expect("create the ResilientService");
    api
}

pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patch {name}: {e}"))
}

pub fn status(svc: &ResilientService) -> ResilientServiceStatus {
    svc.status.clone().unwrap_or_default()
}

pub fn condition_status(svc: &ResilientService, type_: &str) -> Option<String> {
    status(svc)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Converged: the current generation seen, every replica on the update revision and
/// available, the current revision caught up, Available=True; returns the revision.
pub fn converged(svc: &ResilientService) -> Result<String, String> {
    let s = status(svc);
    let n = svc.spec.replicas;
    let done = s.observed_generation == svc.metadata.generation
        && s.replicas == n
        && s.updated_replicas == n
        && s.available_replicas == n
        && s.update_revision.is_some()
        && s.current_revision == s.update_revision
        && condition_status(svc, "Available").as_deref() == Some("True");
    match (done, s.update_revision.clone()) {
        (true, Some(revision)) => Ok(revision),
        _ => Err(format!(
            "generation {:?}/{:?} replicas={} updated={} available={} current={:?} update={:?} reason={:?}",
            s.observed_generation,
            svc.metadata.generation,
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.current_revision,
            s.update_revision,
            s.reason
        )),
    }
}

/// Waits until `name` has converged; returns its revision.
pub async fn wait_converged(api: &Api<ResilientService>, name: &str, timeout: Duration) -> String {
    wait_for(&format!("{name} to converge"), timeout, || async move {
        converged(&api.get(name).await.map_err(|e| e.to_string())?)
    })
    .await
}

/// A pod's slot, or -1 without a valid label.
pub fn slot(pod: &Pod) -> i32 {
    pod.labels()
        .get(LABEL_SLOT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
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
                    seen.violations.push(describe(&pods));
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

fn alive(pod: &Pod) -> bool {
    let ended = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    );
    !terminating(pod) && !ended
}

fn describe(pods: &[Arc<Pod>]) -> String {
    let mut names: Vec<String> = pods
        .iter()
        .map(|p| {
            let flags = format!(
                "{}{}",
                if ready(p) { "R" } else { "-" },
                if terminating(p) { "T" } else { "" }
            );
            format!("{}[{flags}]", p.name_any())
        })
        .collect();
    names.sort();
    names.join(" ")
}

/// An operator for `namespace` alone, with `env` added to its environment.
pub fn operator_with_env(namespace: &str, env: &[(&str, &str)]) -> Operator {
    let dir = repo_root().join("target/operator-logs");
    std::fs::create_dir_all(&dir).expect("create the operator log directory");
    let log = dir.join(format!("{namespace}-{}.log", unique_suffix()));
    let out = std::fs::File::create(&log).expect("create the operator log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_perennial"))
        .args(["run", "--namespaces", namespace])
        .args(["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(super::operator_kubeconfig())
        .env(
            "RUST_LOG",
            std::env::var("PERENNIAL_TEST_LOG").unwrap_or_else(|_| "info,perennial=debug".into()),
        )
        .envs(env.iter().copied())
        .stdout(out.try_clone().expect("clone the log handle"))
        .stderr(out)
        .spawn()
        .expect("start the operator");
    Operator { child, log }
}

impl Operator {
    /// What the operator has logged so far.
    pub fn output(&self) -> String {
        super::strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Panics unless the process still runs and has logged no panic.
    pub fn assert_sound(&mut self, after: &str) {
        let exited = self.child.try_wait().expect("poll the operator");
        let output = self.output();
        assert!(
            exited.is_none(),
            "the operator exited ({exited:?}) after {after}; log {}",
            self.log.display()
        );
        assert!(
            !output.contains("panicked at"),
            "the operator panicked after {after}: {}",
            output
                .lines()
                .find(|l| l.contains("panicked at"))
                .unwrap_or_default()
        );
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

/// Local volumes of a test's own, one per slot of claim template `template` of service
/// `svc`, spread over the harness's first three nodes and reserved for their claim
/// (`claimRef`), so that no other test takes them. Deleted on drop.
pub struct Volumes {
    pub names: Vec<String>,
}

impl Volumes {
    pub async fn reserve(ns: &TestNamespace, template: &str, svc: &str, replicas: i32) -> Self {
        let api: Api<PersistentVolume> = Api::all(ns.client.clone());
        let mut names = Vec::new();
        for slot in 0..replicas {
            let name = format!("{}-{template}-{slot}", ns.name);
            let node = format!("kwok-node-{}", slot % 3);
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"perennial.dev/test": "scenario"}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "local",
                    "volumeMode": "Filesystem",
                    "local": {"path": format!("/var/lib/local-volumes/{name}")},
                    "claimRef": {"namespace": ns.name, "name": format!("{template}-{svc}-{slot}")},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                    ]}]}}
                }
            }))
            .expect("a valid PersistentVolume");
            api.create(&PostParams::default(), &pv)
                .await
                .expect("create a local volume");
            names.push(name);
        }
        Self { names }
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        for pv in &self.names {
            let _ = kubectl(&["delete", "pv", pv, "--wait=false", "--ignore-not-found"]);
        }
    }
}
