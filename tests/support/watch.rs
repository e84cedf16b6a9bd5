//! A test's view of a rollout as it happens: the namespace's pods and the service, kept
//! current by two watches, each event one observation on which the test checks its
//! invariants, so that every intermediate state is checked, not only samples.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::ResilientService;

use super::pods::{alive, available, flags_of, ready, revision, slot};
use super::service::{create_service, patch_spec, wait_first_rollout, wait_update_revision};
use super::TestNamespace;

/// Listing, or a pod made again, on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);

enum Seen {
    Pod(Box<watcher::Event<Pod>>),
    Service(Box<watcher::Event<ResilientService>>),
    /// A watch error; the watcher retries with a backoff.
    Lost(String),
}

/// The namespace's pods and the service, kept current by two watches.
pub struct Watch {
    stream: BoxStream<'static, Seen>,
    pods: BTreeMap<String, Pod>,
    /// Pods listed since the watch restarted, swapped in when the list is done.
    relisting: Option<BTreeMap<String, Pod>>,
    svc: Option<ResilientService>,
    pods_listed: bool,
    svc_listed: bool,
    /// States observed since the start.
    pub observations: usize,
}

impl Watch {
    /// Starts watching and returns once both watches have their first full list.
    pub async fn start(ns: &TestNamespace, name: &str) -> Watch {
        let pods = watcher(ns.api::<Pod>(), watcher::Config::default())
            .default_backoff()
            .map(|e| match e {
                Ok(e) => Seen::Pod(Box::new(e)),
                Err(e) => Seen::Lost(e.to_string()),
            });
        let svc = watcher(
            ns.api::<ResilientService>(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .map(|e| match e {
            Ok(e) => Seen::Service(Box::new(e)),
            Err(e) => Seen::Lost(e.to_string()),
        });
        let mut watch = Watch {
            stream: futures::stream::select(pods, svc).boxed(),
            pods: BTreeMap::new(),
            relisting: None,
            svc: None,
            pods_listed: false,
            svc_listed: false,
            observations: 0,
        };
        let listed = tokio::time::timeout(TIMEOUT, async {
            while !(watch.pods_listed && watch.svc_listed) {
                watch.next().await;
            }
        })
        .await;
        assert!(
            listed.is_ok(),
            "the watches did not list within {TIMEOUT:?}"
        );
        watch
    }

    /// Applies the next event; true when it changed what is known.
    async fn next(&mut self) -> bool {
        match self.stream.next().await.expect("a watch stream never ends") {
            Seen::Pod(e) => self.apply_pod(*e),
            Seen::Service(e) => self.apply_service(*e),
            Seen::Lost(e) => {
                println!("watch error (retried): {e}");
                false
            }
        }
    }

    fn apply_pod(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(p) => {
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(p.name_any(), p);
                false
            }
            watcher::Event::InitDone => {
                self.pods = self.relisting.take().unwrap_or_default();
                self.pods_listed = true;
                true
            }
            watcher::Event::Apply(p) => {
                self.pods.insert(p.name_any(), p);
                true
            }
            watcher::Event::Delete(p) => {
                self.pods.remove(&p.name_any());
                true
            }
        }
    }

    fn apply_service(&mut self, event: watcher::Event<ResilientService>) -> bool {
        match event {
            watcher::Event::InitApply(s) | watcher::Event::Apply(s) => {
                self.svc = Some(s);
                true
            }
            watcher::Event::InitDone => {
                self.svc_listed = true;
                true
            }
            watcher::Event::Delete(_) => {
                self.svc = None;
                true
            }
            watcher::Event::Init => false,
        }
    }

    pub fn svc(&self) -> &ResilientService {
        self.svc.as_ref().expect("the service exists")
    }

    /// Pods that exist (terminating ones included).
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Every pod with its flags, for a failure message.
    pub fn describe(&self) -> String {
        flags_of(self.pods.values())
    }

    /// Processes events until `done` accepts the state, checking `invariant` on every
    /// state observed on the way (the current one first).
    pub async fn until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut invariant: impl FnMut(&Watch),
        mut done: impl FnMut(&Watch) -> Result<T, String>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        invariant(self);
        loop {
            let last = match done(self) {
                Ok(value) => return value,
                Err(last) => last,
            };
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(true) => {
                    self.observations += 1;
                    invariant(self);
                }
                Ok(false) => {}
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {last}; pods: {}",
                    self.describe()
                ),
            }
        }
    }

    /// Processes events until the rollout to `revision` of `replicas` is complete.
    pub async fn until_complete(&mut self, what: &str, replicas: i32, revision: &str) {
        self.until(
            what,
            TIMEOUT,
            |_| {},
            |w| super::service::complete(w.svc(), replicas, revision),
        )
        .await
    }

    /// Processes events for `window`, checking `invariant` on every state observed.
    pub async fn hold(&mut self, window: Duration, mut invariant: impl FnMut(&Watch)) {
        let deadline = tokio::time::Instant::now() + window;
        invariant(self);
        while let Ok(changed) = tokio::time::timeout_at(deadline, self.next()).await {
            if changed {
                self.observations += 1;
                invariant(self);
            }
        }
    }

    /// Deletes the pod of `ordinal` and waits for a Ready replacement (a new uid: the name
    /// is the same, made from the slot and revision), checking `invariant` on the way.
    pub async fn replace_pod(
        &mut self,
        ns: &TestNamespace,
        ordinal: i32,
        invariant: impl FnMut(&Watch),
    ) -> Pod {
        let victim = self
            .pods()
            .find(|p| alive(p) && slot(p) == ordinal)
            .unwrap_or_else(|| panic!("slot {ordinal} has a pod"))
            .clone();
        let pods: Api<Pod> = ns.api();
        pods.delete(&victim.name_any(), &Default::default())
            .await
            .expect("delete a pod");
        let gone = victim.uid();
        self.until(
            &format!("slot {ordinal} to be replaced"),
            TIMEOUT,
            invariant,
            |w| {
                let replacement = w
                    .pods()
                    .find(|p| alive(p) && slot(p) == ordinal && p.uid() != gone);
                match replacement {
                    Some(p) if ready(p) => Ok(p.clone()),
                    other => Err(format!("{:?}", other.map(|p| p.name_any()))),
                }
            },
        )
        .await
    }
}

/// Adds the uids of the pods seen at revision `at` to `seen`, so that a pod made again is
/// told from one kept.
pub fn uids_at(watch: &Watch, at: &str, seen: &mut BTreeSet<String>) {
    for p in watch.pods().filter(|p| revision(p) == at) {
        seen.insert(p.uid().unwrap_or_default());
    }
}

/// The availability floor and surge ceiling of a rolling update, checked on every
/// observation; the extremes seen and every observation that broke them are kept.
pub struct FloorAndCeiling {
    pub floor: i32,
    pub ceiling: i32,
    pub min_available: i32,
    pub max_alive: i32,
    pub violations: Vec<String>,
}

impl FloorAndCeiling {
    pub fn new(floor: i32, ceiling: i32) -> Self {
        Self {
            floor,
            ceiling,
            min_available: i32::MAX,
            max_alive: 0,
            violations: Vec::new(),
        }
    }

    pub fn observe(&mut self, w: &Watch) {
        let avail = w.pods().filter(|p| available(p)).count() as i32;
        let live = w.pods().filter(|p| alive(p)).count() as i32;
        self.min_available = self.min_available.min(avail);
        self.max_alive = self.max_alive.max(live);
        if avail < self.floor || live > self.ceiling {
            self.violations
                .push(format!("available {avail}, alive {live}: {}", w.describe()));
        }
    }
}

/// Creates `svc`, waits until its first rollout completed, and starts watching it; returns
/// its API, its first revision and the watch.
pub async fn watched_service(
    ns: &TestNamespace,
    svc: &ResilientService,
) -> (Api<ResilientService>, String, Watch) {
    let name = svc.name_any();
    let api = create_service(ns, svc).await;
    let first = wait_first_rollout(&api, &name, svc.spec.replicas, TIMEOUT).await;
    let watch = Watch::start(ns, &name).await;
    (api, first, watch)
}

/// Merge-patches the spec of `name` and waits until the operator has seen the change;
/// returns the update revision it made.
pub async fn change_spec(
    api: &Api<ResilientService>,
    name: &str,
    spec: serde_json::Value,
) -> String {
    let generation = patch_spec(api, name, spec).await;
    wait_update_revision(api, name, generation, TIMEOUT).await
}
