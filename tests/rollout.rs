//! Upgrades on the local control plane: the availability floor and surge ceiling of a
//! rolling update, automatic and manual rollback of a crash-looping revision, partitions,
//! canary steps, Recreate, pausing, and in-place replacement of stateful slots.
//!
//! Pods are observed with a watch that runs from before the template changes until the
//! rollout completes, so that every intermediate state is checked, not only samples.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::{
    ResilientService, ANNOTATION_BAD_REVISION, ANNOTATION_PROMOTE, LABEL_REVISION, LABEL_SLOT,
};
use serde_json::{json, Value};
use support::scenario::Volumes;
use support::*;

/// Time for a whole rollout of a dozen pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";

// ------------------------------------------------------------------------------------------
// The service under test

/// A stateless service `name` with `replicas`, its spec extended by `spec` (top-level keys).
fn service(name: &str, replicas: i32, spec: Value) -> ResilientService {
    let mut body = json!({
        "replicas": replicas,
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
        }
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), spec) {
        body.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": body,
    }))
    .expect("a valid ResilientService")
}

/// The CRD first, as Helm installs it, then an operator for the test's namespace.
async fn operator(ns: &TestNamespace) -> Operator {
    install_crd(&ns.client).await;
    Operator::start(&ns.name)
}

async fn create(ns: &TestNamespace, svc: &ResilientService) -> Api<ResilientService> {
    let api: Api<ResilientService> = ns.api();
    api.create(&PostParams::default(), svc)
        .await
        .expect("create the ResilientService");
    api
}

/// Merge-patches `spec`; returns the generation the change made.
async fn patch_spec(api: &Api<ResilientService>, name: &str, spec: Value) -> i64 {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .expect("patch the ResilientService")
    .metadata
    .generation
    .expect("the server sets a generation")
}

/// A new image: a template change, so a new revision.
fn new_image(image: &str) -> Value {
    json!({"template": {"spec": {"containers": [{"name": "app", "image": image}]}}})
}

/// A template whose pods crash-loop (restartCount rising, never Ready).
fn crash_looping(name: &str) -> Value {
    json!({"template": {"metadata": {"labels": {"app": name, CHAOS_LABEL: "crash-loop"}}}})
}

fn status(svc: &ResilientService) -> perennial::api::ResilientServiceStatus {
    svc.status.clone().unwrap_or_default()
}

/// The condition `type_` as (status, reason).
fn condition(svc: &ResilientService, type_: &str) -> Option<(String, String)> {
    status(svc)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn current_generation(svc: &ResilientService) -> bool {
    status(svc).observed_generation == svc.metadata.generation
}

/// A rollout to `revision` that finished: every replica updated and available, the
/// current revision caught up, and Progressing says RolloutComplete.
fn complete(svc: &ResilientService, replicas: i32, revision: &str) -> Result<(), String> {
    let s = status(svc);
    let progressing = condition(svc, "Progressing");
    let done = current_generation(svc)
        && s.replicas == replicas
        && s.updated_replicas == replicas
        && s.available_replicas == replicas
        && s.update_revision.as_deref() == Some(revision)
        && s.current_revision.as_deref() == Some(revision)
        && progressing == Some(("True".into(), "RolloutComplete".into()));
    if done {
        Ok(())
    } else {
        Err(format!(
            "replicas={} updated={} available={} current={:?} update={:?} progressing={progressing:?} reason={:?} rollout={:?}",
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.current_revision,
            s.update_revision,
            s.reason,
            s.rollout
        ))
    }
}

/// Polls the service until `check` accepts it.
async fn wait_svc<T>(
    api: &Api<ResilientService>,
    name: &str,
    what: &str,
    check: impl Fn(&ResilientService) -> Result<T, String>,
) -> T {
    let check = &check;
    wait_for(&format!("{name}: {what}"), TIMEOUT, || {
        let api = api.clone();
        async move {
            let svc = api.get(name).await.map_err(|e| e.to_string())?;
            check(&svc)
        }
    })
    .await
}

/// Waits until the first rollout finished; returns its revision.
async fn wait_converged(api: &Api<ResilientService>, name: &str, replicas: i32) -> String {
    wait_svc(api, name, "the first rollout to complete", |svc| {
        let revision = status(svc).update_revision.ok_or("no update revision")?;
        complete(svc, replicas, &revision)?;
        Ok(revision)
    })
    .await
}

/// Waits until the operator has seen generation `generation`; returns its update revision.
async fn wait_update_revision(api: &Api<ResilientService>, name: &str, generation: i64) -> String {
    wait_svc(
        api,
        name,
        &format!("generation {generation} to be observed"),
        |svc| {
            let s = status(svc);
            match (s.observed_generation, s.update_revision) {
                (Some(g), Some(r)) if g >= generation => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

// ------------------------------------------------------------------------------------------
// Pods as a watch sees them

fn revision(pod: &Pod) -> &str {
    pod.labels()
        .get(LABEL_REVISION)
        .map(String::as_str)
        .unwrap_or_default()
}

fn slot(pod: &Pod) -> i32 {
    pod.labels()
        .get(LABEL_SLOT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts toward the surge ceiling: neither terminating nor ended.
fn alive(pod: &Pod) -> bool {
    !terminating(pod) && !ended(pod)
}

/// Counts toward the availability floor: Ready and not terminating.
fn available(pod: &Pod) -> bool {
    ready(pod) && !terminating(pod)
}

fn describe(pods: &BTreeMap<String, Pod>) -> String {
    pods.values()
        .map(|p| {
            format!(
                "{}[{}{}{}]",
                p.name_any(),
                if ready(p) { "R" } else { "-" },
                if terminating(p) { "T" } else { "" },
                if ended(p) { "E" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

enum Seen {
    Pod(Box<watcher::Event<Pod>>),
    Service(Box<watcher::Event<ResilientService>>),
    /// A watch error; the watcher retries with a backoff.
    Lost(String),
}

/// The namespace's pods and the service, kept current by two watches. Each event is one
/// observation: invariants are checked on every state the watch reports.
struct Watch {
    stream: BoxStream<'static, Seen>,
    pods: BTreeMap<String, Pod>,
    /// Pods listed since the watch restarted, swapped in when the list is done.
    relisting: Option<BTreeMap<String, Pod>>,
    svc: Option<ResilientService>,
    pods_listed: bool,
    svc_listed: bool,
    observations: usize,
}

impl Watch {
    /// Starts watching and returns once both watches have their first full list.
    async fn start(ns: &TestNamespace, name: &str) -> Watch {
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

    fn svc(&self) -> &ResilientService {
        self.svc.as_ref().expect("the service exists")
    }

    /// Pods that exist (terminating ones included).
    fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Processes events until `done` accepts the state, checking `invariant` on every
    /// state observed on the way (the current one first).
    async fn until<T>(
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
                    describe(&self.pods)
                ),
            }
        }
    }

    /// Processes events for `window`, checking `invariant` on every state observed.
    async fn hold(&mut self, window: Duration, mut invariant: impl FnMut(&Watch)) {
        let deadline = tokio::time::Instant::now() + window;
        invariant(self);
        while let Ok(changed) = tokio::time::timeout_at(deadline, self.next()).await {
            if changed {
                self.observations += 1;
                invariant(self);
            }
        }
    }
}

/// Uids of the pods seen at `revision`, so that a pod made again is told from one kept.
fn uids_at(watch: &Watch, at: &str, seen: &mut BTreeSet<String>) {
    for p in watch.pods().filter(|p| revision(p) == at) {
        seen.insert(p.uid().unwrap_or_default());
    }
}

/// Deletes the pod of `ordinal` and waits for a Ready replacement (a new uid: the name is
/// the same, made from the slot and revision), checking `invariant` on the way.
async fn replace_pod(
    ns: &TestNamespace,
    watch: &mut Watch,
    ordinal: i32,
    invariant: impl FnMut(&Watch),
) -> Pod {
    let victim = watch
        .pods()
        .find(|p| alive(p) && slot(p) == ordinal)
        .unwrap_or_else(|| panic!("slot {ordinal} has a pod"))
        .clone();
    let pods: Api<Pod> = ns.api();
    pods.delete(&victim.name_any(), &Default::default())
        .await
        .expect("delete a pod");
    let gone = victim.uid();
    watch
        .until(
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

async fn revision_annotations(ns: &TestNamespace, name: &str) -> BTreeMap<String, String> {
    let revisions: Api<ControllerRevision> = ns.api();
    revisions
        .get(name)
        .await
        .expect("the revision exists")
        .metadata
        .annotations
        .unwrap_or_default()
}

/// The availability floor and surge ceiling, checked on every observation.
struct Bounds {
    floor: i32,
    ceiling: i32,
    min_available: i32,
    max_alive: i32,
    violations: Vec<String>,
}

impl Bounds {
    fn observe(&mut self, w: &Watch) {
        let avail = w.pods().filter(|p| available(p)).count() as i32;
        let live = w.pods().filter(|p| alive(p)).count() as i32;
        self.min_available = self.min_available.min(avail);
        self.max_alive = self.max_alive.max(live);
        if avail < self.floor || live > self.ceiling {
            self.violations.push(format!(
                "available {avail}, alive {live}: {}",
                describe(&w.pods)
            ));
        }
    }
}

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn rolling_update_of_twelve_keeps_the_availability_floor_and_surge_ceiling_at_every_observation(
) {
    let ns = TestNamespace::new("roll-bounds").await;
    let _operator = operator(&ns).await;
    let (replicas, max_surge, max_unavailable) = (12, 3, 2);
    let api = create(
        &ns,
        &service(
            "web",
            replicas,
            json!({"update": {"strategy": "RollingUpdate", "maxSurge": max_surge,
                "maxUnavailable": max_unavailable, "minReadySeconds": 1}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "web", replicas).await;

    let mut watch = Watch::start(&ns, "web").await;
    let floor = replicas - max_unavailable;
    let ceiling = replicas + max_surge;
    let mut bounds = Bounds {
        floor,
        ceiling,
        min_available: i32::MAX,
        max_alive: 0,
        violations: Vec::new(),
    };
    // The steady state before the change obeys the bounds too.
    watch.hold(Duration::ZERO, |w| bounds.observe(w)).await;

    let started = Instant::now();
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let new = wait_update_revision(&api, "web", generation).await;
    assert_ne!(new, old, "a new template is a new revision");
    watch
        .until(
            "the rollout to complete",
            TIMEOUT,
            |w| bounds.observe(w),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    let wall = started.elapsed();
    let observations = watch.observations;
    let Bounds {
        min_available,
        max_alive,
        violations,
        ..
    } = bounds;

    println!(
        "rolling update of {replicas} (maxSurge {max_surge}, maxUnavailable {max_unavailable}, minReadySeconds 1): \
         minimum available {min_available} (floor {floor}), maximum alive {max_alive} (ceiling {ceiling}), \
         wall time {:.1} s, {observations} observations",
        wall.as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "{} observations broke the bounds, first: {:?}",
        violations.len(),
        violations.first()
    );
    let live: Vec<&Pod> = watch.pods().filter(|p| alive(p)).collect();
    assert_eq!(live.len(), replicas as usize, "{}", describe(&watch.pods));
    assert!(live.iter().all(|p| revision(p) == new));
    let slots: BTreeSet<i32> = live.iter().map(|p| slot(p)).collect();
    assert_eq!(slots, (0..replicas).collect(), "one pod per slot");
}

#[tokio::test]
async fn crash_looping_revision_is_rolled_back_automatically_marked_failed_and_not_retried() {
    let ns = TestNamespace::new("roll-back").await;
    let _operator = operator(&ns).await;
    let replicas = 3;
    let api = create(
        &ns,
        &service(
            "api",
            replicas,
            json!({"supervision": {"maxRestarts": 2}, "update": {"rollback": "Automatic"}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "api", replicas).await;
    let mut watch = Watch::start(&ns, "api").await;

    let generation = patch_spec(&api, "api", crash_looping("api")).await;
    let bad = wait_update_revision(&api, "api", generation).await;
    assert_ne!(bad, old);
    let mut bad_pods = BTreeSet::new();
    watch
        .until(
            "the rollback to the old revision",
            TIMEOUT,
            |w| uids_at(w, &bad, &mut bad_pods),
            |w| {
                let svc = w.svc();
                let s = status(svc);
                let rolled_back = condition(svc, "RolledBack");
                let live: Vec<&Pod> = w.pods().filter(|p| alive(p)).collect();
                let done = current_generation(svc)
                    && rolled_back.as_ref().is_some_and(|(st, _)| st == "True")
                    && condition(svc, "Available").is_some_and(|(st, _)| st == "True")
                    && s.available_replicas == replicas
                    && s.current_revision.as_deref() == Some(old.as_str())
                    && s.updated_replicas == 0
                    && live.len() == replicas as usize
                    && live.iter().all(|p| revision(p) == old && ready(p));
                done.then_some(()).ok_or(format!(
                    "RolledBack={rolled_back:?} reason={:?} current={:?} updated={} available={}",
                    s.reason, s.current_revision, s.updated_replicas, s.available_replicas
                ))
            },
        )
        .await;
    assert!(!bad_pods.is_empty(), "a pod of the bad revision was tried");
    assert_eq!(status(watch.svc()).reason.as_deref(), Some("RolledBack"));

    // The failed revision carries the annotation, and an Event tells the story.
    let annotations = revision_annotations(&ns, &bad).await;
    assert!(
        annotations.contains_key(ANNOTATION_BAD_REVISION),
        "revision {bad} is marked failed: {annotations:?}"
    );
    let events: Api<KubeEvent> = ns.api();
    wait_for("a RolledBack Event", TIMEOUT, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let reasons: Vec<String> = list.iter().filter_map(|e| e.reason.clone()).collect();
            let found = list.iter().any(|e| {
                e.reason.as_deref() == Some("RolledBack")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("api")
            });
            found.then_some(()).ok_or(format!("{reasons:?}"))
        }
    })
    .await;

    // Not retried: with the template unchanged, a deleted pod comes back at the old
    // revision, and no pod of the bad revision is made again.
    let replacement = replace_pod(&ns, &mut watch, 1, |w| uids_at(w, &bad, &mut bad_pods)).await;
    assert_eq!(revision(&replacement), old);
    // Two crash-loop detections' worth of time: a retried revision would show up.
    watch
        .hold(Duration::from_secs(15), |w| {
            uids_at(w, &bad, &mut bad_pods);
            for p in w.pods().filter(|p| alive(p)) {
                assert_eq!(
                    revision(p),
                    old,
                    "{} is not on the old revision",
                    p.name_any()
                );
            }
            assert_eq!(
                condition(w.svc(), "RolledBack").map(|c| c.0).as_deref(),
                Some("True")
            );
        })
        .await;
    assert_eq!(
        bad_pods.len(),
        1,
        "the bad revision was tried once (maxSurge 1), never again: {bad_pods:?}"
    );
}

#[tokio::test]
async fn partition_moves_only_the_slots_at_or_above_it_and_holds_the_rest() {
    let ns = TestNamespace::new("roll-partition").await;
    let _operator = operator(&ns).await;
    let replicas = 4;
    // A short deadline: a rollout held at its partition is waiting on purpose, not stuck.
    let deadline = 5;
    let api = create(
        &ns,
        &service(
            "kv",
            replicas,
            json!({"update": {"partition": 2, "progressDeadlineSeconds": deadline}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "kv", replicas).await;
    let mut watch = Watch::start(&ns, "kv").await;

    let generation = patch_spec(&api, "kv", new_image("example/kv:2")).await;
    let new = wait_update_revision(&api, "kv", generation).await;
    let below_stays_old = |w: &Watch| {
        for p in w.pods().filter(|p| slot(p) < 2) {
            assert_eq!(
                revision(p),
                old,
                "slot {} is below the partition: {}",
                slot(p),
                describe(&w.pods)
            );
        }
    };
    let at_partition = |w: &Watch| {
        let live: BTreeMap<i32, Vec<&Pod>> = w.pods().filter(|p| alive(p)).fold(
            BTreeMap::new(),
            |mut m: BTreeMap<i32, Vec<&Pod>>, p| {
                m.entry(slot(p)).or_default().push(p);
                m
            },
        );
        let want = |s: i32| if s >= 2 { new.as_str() } else { old.as_str() };
        let settled = (0..replicas).all(|s| {
            live.get(&s).is_some_and(|pods| {
                pods.len() == 1 && revision(pods[0]) == want(s) && ready(pods[0])
            })
        });
        let s = status(w.svc());
        (settled && s.updated_replicas == 2 && s.available_replicas == replicas)
            .then_some(())
            .ok_or(format!(
                "updated={} available={} pods: {}",
                s.updated_replicas,
                s.available_replicas,
                describe(&w.pods)
            ))
    };
    watch
        .until(
            "slots 2 and 3 to move",
            TIMEOUT,
            below_stays_old,
            at_partition,
        )
        .await;
    let s = status(watch.svc());
    assert_eq!(s.current_revision.as_deref(), Some(old.as_str()));
    assert_eq!(s.update_revision.as_deref(), Some(new.as_str()));

    // Held well past the progress deadline: nothing moves either way, nothing fails.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), |w| {
            below_stays_old(w);
            for p in w.pods().filter(|p| alive(p) && slot(p) >= 2) {
                assert_eq!(
                    revision(p),
                    new,
                    "slots 2 and 3 stay moved: {}",
                    describe(&w.pods)
                );
            }
            let svc = w.svc();
            assert_ne!(
                condition(svc, "RolledBack").map(|c| c.0).as_deref(),
                Some("True"),
                "a rollout held at its partition was rolled back: {:?}",
                status(svc).conditions
            );
        })
        .await;
    let annotations = revision_annotations(&ns, &new).await;
    assert!(!annotations.contains_key(ANNOTATION_BAD_REVISION));

    // Lowering the partition lets the rest move.
    patch_spec(&api, "kv", json!({"update": {"partition": 0}})).await;
    watch
        .until(
            "the rollout to complete",
            TIMEOUT,
            |_| {},
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
}

#[tokio::test]
async fn canary_stops_with_one_new_pod_at_a_pause_until_promoted_then_completes() {
    let ns = TestNamespace::new("roll-canary").await;
    let _operator = operator(&ns).await;
    let replicas = 4;
    let deadline = 5;
    let api = create(
        &ns,
        &service(
            "shop",
            replicas,
            json!({"update": {"progressDeadlineSeconds": deadline, "canary": {"steps": [
                {"replicas": 1}, {"pause": {}}, {"replicas": "50%"}
            ]}}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "shop", replicas).await;
    let mut watch = Watch::start(&ns, "shop").await;

    let generation = patch_spec(&api, "shop", new_image("example/shop:2")).await;
    let new = wait_update_revision(&api, "shop", generation).await;
    let new_pods = |w: &Watch| w.pods().filter(|p| revision(p) == new).count();
    let at_most_one = |w: &Watch| {
        assert!(
            w.pods().filter(|p| revision(p) == new).count() <= 1,
            "more than one new pod before promotion: {}",
            describe(&w.pods)
        );
    };
    let rollout = watch
        .until("the canary to pause at step 1", TIMEOUT, at_most_one, |w| {
            let s = status(w.svc());
            let rollout = s.rollout.clone().ok_or("no rollout status")?;
            let one_new = w
                .pods()
                .filter(|p| revision(p) == new && available(p))
                .count()
                == 1;
            let paused = rollout.canary_step == Some(1)
                && rollout.paused_since.is_some()
                && rollout
                    .waiting_for
                    .as_deref()
                    .is_some_and(|w| w.contains("promot"));
            (one_new && paused && s.updated_replicas == 1 && s.available_replicas == replicas)
                .then_some(rollout.clone())
                .ok_or(format!("{rollout:?}; pods: {}", describe(&w.pods)))
        })
        .await;
    println!(
        "paused canary: step {:?}, waiting for {:?}",
        rollout.canary_step, rollout.waiting_for
    );
    assert_eq!(rollout.revision, new);

    // It stays there, well past the progress deadline.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), |w| {
            at_most_one(w);
            let s = status(w.svc());
            assert_eq!(s.updated_replicas, 1, "{:?}", s.rollout);
            assert_eq!(
                s.rollout.as_ref().and_then(|r| r.canary_step),
                Some(1),
                "{:?}",
                s.rollout
            );
            assert_ne!(
                condition(w.svc(), "RolledBack").map(|c| c.0).as_deref(),
                Some("True")
            );
        })
        .await;
    assert_eq!(new_pods(&watch), 1);

    let (ok, out, err) = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "rsvc",
        "shop",
        &format!("{ANNOTATION_PROMOTE}=first"),
        "--overwrite",
    ]);
    assert!(ok, "kubectl annotate: {out} {err}");
    let mut most_new = 0;
    watch
        .until(
            "the promoted rollout to complete",
            TIMEOUT,
            |w| most_new = most_new.max(new_pods(w)),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    watch
        .until(
            "the rollout status to be cleared",
            TIMEOUT,
            |_| {},
            |w| {
                let s = status(w.svc());
                s.rollout
                    .is_none()
                    .then_some(())
                    .ok_or(format!("{:?}", s.rollout))
            },
        )
        .await;
    println!("canary: at most {most_new} new pods at once after the promotion");
    let old_left: Vec<&Pod> = watch
        .pods()
        .filter(|p| alive(p) && revision(p) == old)
        .collect();
    assert!(old_left.is_empty(), "{}", describe(&watch.pods));
}

#[tokio::test]
async fn a_promotion_left_from_an_earlier_rollout_does_not_promote_the_next_one() {
    let ns = TestNamespace::new("roll-repromote").await;
    let _operator = operator(&ns).await;
    let replicas = 3;
    let api = create(
        &ns,
        &service(
            "shop",
            replicas,
            json!({"update": {"canary": {"steps": [{"replicas": 1}, {"pause": {}}]}}}),
        ),
    )
    .await;
    wait_converged(&api, "shop", replicas).await;
    let mut watch = Watch::start(&ns, "shop").await;

    for (round, image) in ["example/shop:2", "example/shop:3"].into_iter().enumerate() {
        let generation = patch_spec(&api, "shop", new_image(image)).await;
        let new = wait_update_revision(&api, "shop", generation).await;
        watch
            .until(
                &format!("rollout {round} to pause at the canary"),
                TIMEOUT,
                |w| {
                    let n = w.pods().filter(|p| revision(p) == new).count();
                    assert!(n <= 1, "round {round}: {}", describe(&w.pods));
                },
                |w| {
                    let rollout = status(w.svc()).rollout.ok_or("no rollout")?;
                    let one = w
                        .pods()
                        .filter(|p| revision(p) == new && available(p))
                        .count()
                        == 1;
                    (one && rollout.revision == new && rollout.canary_step == Some(1))
                        .then_some(())
                        .ok_or(format!("{rollout:?}"))
                },
            )
            .await;
        // Each round promotes with a value of its own; the first round's value, still on
        // the object, must not promote the second.
        let value = format!("{ANNOTATION_PROMOTE}=round-{round}");
        let (ok, out, err) = kubectl(&[
            "annotate",
            "-n",
            &ns.name,
            "rsvc",
            "shop",
            &value,
            "--overwrite",
        ]);
        assert!(ok, "kubectl annotate: {out} {err}");
        watch
            .until(
                &format!("rollout {round} to complete"),
                TIMEOUT,
                |_| {},
                |w| complete(w.svc(), replicas, &new),
            )
            .await;
    }
}

#[tokio::test]
async fn recreate_removes_every_old_pod_before_the_first_new_one_exists() {
    let ns = TestNamespace::new("roll-recreate").await;
    let _operator = operator(&ns).await;
    let replicas = 4;
    let api = create(
        &ns,
        &service(
            "batch",
            replicas,
            json!({"update": {"strategy": "Recreate"}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "batch", replicas).await;
    let mut watch = Watch::start(&ns, "batch").await;

    let generation = patch_spec(&api, "batch", new_image("example/batch:2")).await;
    let new = wait_update_revision(&api, "batch", generation).await;
    let mut mixed = Vec::new();
    watch
        .until(
            "the Recreate rollout to complete",
            TIMEOUT,
            |w| {
                // Terminating pods count too: "gone" means gone.
                let olds = w.pods().filter(|p| revision(p) == old).count();
                let news = w.pods().filter(|p| revision(p) == new).count();
                if olds > 0 && news > 0 {
                    mixed.push(describe(&w.pods));
                }
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    assert!(
        mixed.is_empty(),
        "both revisions existed at once: {:?}",
        mixed.first()
    );
}

#[tokio::test]
async fn paused_service_does_not_roll_but_still_replaces_a_deleted_pod_and_resumes_when_unpaused() {
    let ns = TestNamespace::new("roll-paused").await;
    let _operator = operator(&ns).await;
    let replicas = 3;
    // A pause longer than the progress deadline must not count as a stalled rollout.
    let deadline = 5;
    let api = create(
        &ns,
        &service(
            "web",
            replicas,
            json!({"update": {"progressDeadlineSeconds": deadline}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "web", replicas).await;
    let mut watch = Watch::start(&ns, "web").await;

    patch_spec(&api, "web", json!({"paused": true})).await;
    let generation = patch_spec(&api, "web", new_image("example/web:2")).await;
    let new = wait_update_revision(&api, "web", generation).await;
    let frozen = |w: &Watch| {
        assert!(
            w.pods().all(|p| revision(p) == old),
            "a pod moved while paused: {}",
            describe(&w.pods)
        );
    };
    watch
        .until(
            "the rollout to wait for spec.paused",
            TIMEOUT,
            frozen,
            |w| {
                let rollout = status(w.svc()).rollout.ok_or("no rollout status")?;
                (rollout.revision == new
                    && rollout
                        .waiting_for
                        .as_deref()
                        .is_some_and(|w| w.contains("paused")))
                .then_some(())
                .ok_or(format!("{rollout:?}"))
            },
        )
        .await;

    // Repairs go on while paused: a deleted pod comes back, at the old revision.
    let replacement = replace_pod(&ns, &mut watch, 1, frozen).await;
    assert_eq!(revision(&replacement), old);
    // Paused well past the progress deadline.
    watch
        .hold(Duration::from_secs(3 * deadline as u64), frozen)
        .await;

    patch_spec(&api, "web", json!({"paused": false})).await;
    watch
        .until(
            "the rollout to complete once unpaused",
            TIMEOUT,
            |w| {
                let svc = w.svc();
                assert_ne!(
                    condition(svc, "RolledBack").map(|c| c.0).as_deref(),
                    Some("True"),
                    "the resumed rollout was rolled back: {:?}",
                    status(svc).conditions
                );
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    let annotations = revision_annotations(&ns, &new).await;
    assert!(!annotations.contains_key(ANNOTATION_BAD_REVISION));
}

#[tokio::test]
async fn stateful_slots_roll_in_place_never_two_pods_per_slot_and_keep_their_claims() {
    let ns = TestNamespace::new("roll-stateful").await;
    let replicas = 3;
    let volumes = Volumes::reserve(&ns, "data", "db", replicas).await;
    let _operator = operator(&ns).await;
    let api = create(
        &ns,
        &service(
            "db",
            replicas,
            json!({"volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                    "resources": {"requests": {"storage": "1Gi"}}
                }
            }]}),
        ),
    )
    .await;
    let old = wait_converged(&api, "db", replicas).await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim_uids =
        |list: Vec<PersistentVolumeClaim>| -> BTreeMap<String, (String, Option<String>)> {
            list.into_iter()
                .map(|c| {
                    let volume = c.spec.as_ref().and_then(|s| s.volume_name.clone());
                    (c.name_any(), (c.uid().unwrap_or_default(), volume))
                })
                .collect()
        };
    let before = claim_uids(claims.list(&ListParams::default()).await.unwrap().items);
    let want: BTreeSet<String> = (0..replicas).map(|i| format!("data-db-{i}")).collect();
    assert_eq!(before.keys().cloned().collect::<BTreeSet<_>>(), want);
    let mut watch = Watch::start(&ns, "db").await;

    let generation = patch_spec(&api, "db", new_image("example/db:2")).await;
    let new = wait_update_revision(&api, "db", generation).await;
    assert_ne!(new, old);
    let mut doubled = Vec::new();
    let mut most_down = 0;
    watch
        .until(
            "the in-place rollout to complete",
            TIMEOUT,
            |w| {
                let mut per_slot: BTreeMap<i32, usize> = BTreeMap::new();
                for p in w.pods() {
                    *per_slot.entry(slot(p)).or_default() += 1;
                }
                if per_slot.values().any(|n| *n > 1) {
                    doubled.push(describe(&w.pods));
                }
                let up = w.pods().filter(|p| available(p)).count() as i32;
                most_down = most_down.max(replicas - up);
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    assert!(
        doubled.is_empty(),
        "two pods shared a slot: {:?}",
        doubled.first()
    );
    println!("stateful rollout: at most {most_down} replica(s) down at once");
    assert!(most_down <= 1, "maxUnavailable defaults to one at a time");

    let after = claim_uids(claims.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(
        after, before,
        "every claim is the same object on the same volume"
    );
    let bound: BTreeSet<String> = after.values().filter_map(|(_, v)| v.clone()).collect();
    assert_eq!(bound, volumes.names.iter().cloned().collect());
    for p in watch.pods().filter(|p| alive(p)) {
        let mounted: Vec<String> = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .collect();
        assert_eq!(mounted, vec![format!("data-db-{}", slot(p))]);
    }
}

#[tokio::test]
async fn manual_rollback_policy_stops_a_crash_looping_rollout_and_keeps_unmoved_slots_old() {
    let ns = TestNamespace::new("roll-manual").await;
    let _operator = operator(&ns).await;
    let replicas = 3;
    let api = create(
        &ns,
        &service(
            "api",
            replicas,
            json!({"supervision": {"maxRestarts": 2}, "update": {"rollback": "Manual"}}),
        ),
    )
    .await;
    let old = wait_converged(&api, "api", replicas).await;
    let mut watch = Watch::start(&ns, "api").await;

    let generation = patch_spec(&api, "api", crash_looping("api")).await;
    let bad = wait_update_revision(&api, "api", generation).await;
    let mut bad_pods = BTreeSet::new();
    let mut moved_slots = BTreeSet::new();
    watch
        .until(
            "the rollout to be marked failed",
            TIMEOUT,
            |w| {
                uids_at(w, &bad, &mut bad_pods);
                moved_slots.extend(w.pods().filter(|p| revision(p) == bad).map(slot));
            },
            |w| {
                let s = status(w.svc());
                (current_generation(w.svc()) && s.reason.as_deref() == Some("RolloutFailed"))
                    .then_some(())
                    .ok_or(format!("reason={:?} rollout={:?}", s.reason, s.rollout))
            },
        )
        .await;
    let s = status(watch.svc());
    println!(
        "manual stop: reason {:?}, waiting for {:?}",
        s.reason,
        s.rollout.as_ref().and_then(|r| r.waiting_for.clone())
    );
    assert!(
        s.rollout
            .as_ref()
            .and_then(|r| r.waiting_for.as_deref())
            .is_some_and(|w| w.contains("a person")),
        "{:?}",
        s.rollout
    );

    // Stopped: for longer than two crash-loop detections, nothing moves and it stays failed.
    watch
        .hold(Duration::from_secs(15), |w| {
            uids_at(w, &bad, &mut bad_pods);
            moved_slots.extend(w.pods().filter(|p| revision(p) == bad).map(slot));
            let svc = w.svc();
            let s = status(svc);
            assert_eq!(
                s.reason.as_deref(),
                Some("RolloutFailed"),
                "{:?}",
                s.rollout
            );
            assert_eq!(
                condition(svc, "Available").map(|c| c.0).as_deref(),
                Some("True")
            );
            assert_ne!(
                condition(svc, "RolledBack").map(|c| c.0).as_deref(),
                Some("True"),
                "Manual does not roll back"
            );
        })
        .await;
    assert_eq!(
        bad_pods.len(),
        1,
        "one pod of the failing revision (maxSurge 1), kept for a person to look at, not made again: {bad_pods:?}"
    );
    for s in 0..replicas {
        let old_ready = watch
            .pods()
            .any(|p| alive(p) && slot(p) == s && revision(p) == old && ready(p));
        assert!(
            old_ready,
            "slot {s} keeps its old pod: {}",
            describe(&watch.pods)
        );
        if !moved_slots.contains(&s) {
            assert!(watch
                .pods()
                .filter(|p| slot(p) == s)
                .all(|p| revision(p) == old));
        }
    }
    let annotations = revision_annotations(&ns, &bad).await;
    assert!(
        !annotations.contains_key(ANNOTATION_BAD_REVISION),
        "Manual leaves the verdict to a person"
    );
}
