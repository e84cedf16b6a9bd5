//! The ResilientService under test: built from JSON, created, changed and waited on; its
//! status, conditions, rollout and failure ledger read.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, Patch, PatchParams, PostParams};
use perennial::api::{ReplicaStatus, ResilientService, ResilientServiceStatus};
use serde_json::{json, Value};

use super::{wait_object, TestNamespace};

/// The pod label the harness's KWOK stages read to make a pod misbehave.
pub const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";

// ------------------------------------------------------------------------------------------
// Building and changing a service

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

/// `base` with `extra` merged in.
pub fn merged(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

/// A service `name` of `replicas` running `image`, its spec extended by `spec`.
pub fn service(name: &str, replicas: i32, image: &str, spec: Value) -> ResilientService {
    let body = json!({
        "replicas": replicas,
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }
    });
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": merged(body, spec),
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

/// Spec fields of a template change: a new image, so a new revision.
pub fn new_image(image: &str) -> Value {
    json!({"template": {"spec": {"containers": [{"name": "app", "image": image}]}}})
}

/// A merge patch of the object that changes the image.
pub fn image_patch(image: &str) -> Value {
    json!({ "spec": new_image(image) })
}

/// Spec fields of a template whose pods crash-loop (restartCount rising, never Ready).
pub fn crash_looping(name: &str) -> Value {
    json!({"template": {"metadata": {"labels": {"app": name, CHAOS_LABEL: "crash-loop"}}}})
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

/// Merge-patches `spec`; returns the generation the change made.
pub async fn patch_spec(api: &Api<ResilientService>, name: &str, spec: Value) -> i64 {
    merge_patch(api, name, json!({ "spec": spec }))
        .await
        .metadata
        .generation
        .expect("the server sets a generation")
}

/// Scales through the scale subresource, as `kubectl scale` does; returns the generation.
pub async fn scale(api: &Api<ResilientService>, name: &str, replicas: i32) -> i64 {
    api.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .expect("scale through the scale subresource")
    .metadata
    .generation
    .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Reading its status

pub fn status(svc: &ResilientService) -> ResilientServiceStatus {
    svc.status.clone().unwrap_or_default()
}

/// The condition `type_` as (status, reason).
pub fn condition(svc: &ResilientService, type_: &str) -> Option<(String, String)> {
    status(svc)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The status of the condition `type_`.
pub fn condition_status(svc: &ResilientService, type_: &str) -> Option<String> {
    condition(svc, type_).map(|(status, _)| status)
}

/// The status has seen the current generation.
pub fn current_generation(svc: &ResilientService) -> bool {
    status(svc).observed_generation == svc.metadata.generation
}

/// The failure ledger's entry of slot `ordinal`.
pub fn entry(svc: &ResilientService, ordinal: i32) -> Option<ReplicaStatus> {
    status(svc)
        .replica_statuses
        .into_iter()
        .find(|r| r.ordinal == ordinal)
}

/// The Degraded condition as (status, reason, message).
pub fn degraded(svc: &ResilientService) -> Option<(String, String, String)> {
    status(svc)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status, c.reason, c.message))
}

/// The failure ledger, one line per slot, for a person reading the test's output.
pub fn ledger(svc: &ResilientService) -> String {
    let s = status(svc);
    let mut out = format!(
        "reason={:?} ready={}/{} degraded={:?}",
        s.reason,
        s.ready_replicas,
        svc.spec.replicas,
        degraded(svc)
    );
    for r in &s.replica_statuses {
        out.push_str(&format!(
            "\n  slot {}: {}",
            r.ordinal,
            serde_json::to_string(r).unwrap_or_default()
        ));
    }
    out
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

/// A rollout to `revision` that finished: every replica updated and available, the
/// current revision caught up, and Progressing says RolloutComplete.
pub fn complete(svc: &ResilientService, replicas: i32, revision: &str) -> Result<(), String> {
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
        let degraded = (svc.status.as_ref())
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
            .map(|c| format!("{} {}: {}", c.status, c.reason, c.message));
        Err(format!(
            "replicas={} updated={} available={} current={:?} update={:?} progressing={progressing:?} reason={:?} degraded={degraded:?} rollout={:?}",
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

// ------------------------------------------------------------------------------------------
// Waiting on it

/// Waits until `check` accepts the service `name`, and returns what it returned.
pub async fn wait_svc<T>(
    api: &Api<ResilientService>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ResilientService) -> Result<T, String>,
) -> T {
    wait_object(api, name, what, timeout, check).await
}

/// Waits until `name` has converged; returns its revision.
pub async fn wait_converged(api: &Api<ResilientService>, name: &str, timeout: Duration) -> String {
    wait_svc(api, name, "converged", timeout, converged).await
}

/// Waits until the first rollout of `replicas` finished; returns its revision.
pub async fn wait_first_rollout(
    api: &Api<ResilientService>,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> String {
    wait_svc(api, name, "the first rollout to complete", timeout, |svc| {
        let revision = status(svc).update_revision.ok_or("no update revision")?;
        complete(svc, replicas, &revision)?;
        Ok(revision)
    })
    .await
}

/// Waits until the operator has seen generation `generation`; returns its update revision.
pub async fn wait_update_revision(
    api: &Api<ResilientService>,
    name: &str,
    generation: i64,
    timeout: Duration,
) -> String {
    let what = format!("generation {generation} to be observed");
    wait_svc(api, name, &what, timeout, |svc| {
        let s = status(svc);
        match (s.observed_generation, s.update_revision) {
            (Some(g), Some(r)) if g >= generation => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Waits until `n` replicas of the current generation are available.
pub async fn wait_available(
    api: &Api<ResilientService>,
    name: &str,
    n: i32,
    timeout: Duration,
) -> ResilientService {
    wait_svc(
        api,
        name,
        &format!("{n} available replicas"),
        timeout,
        |svc| {
            let s = status(svc);
            (current_generation(svc) && s.available_replicas == n && s.replicas == n)
                .then(|| svc.clone())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await
}

/// The annotations of the revision `name`.
pub async fn revision_annotations(ns: &TestNamespace, name: &str) -> BTreeMap<String, String> {
    let revisions: Api<ControllerRevision> = ns.api();
    revisions
        .get(name)
        .await
        .expect("the revision exists")
        .metadata
        .annotations
        .unwrap_or_default()
}

/// A service `name` of one replica whose pods run only where the pod spec fields
/// `placement` put them, its spec extended by `spec`.
pub fn placed_service(name: &str, placement: Value, spec: Value) -> ResilientService {
    let placed = json!({"template": {"spec": placement}});
    service(name, 1, "example/app:1", merged(placed, spec))
}
