//! Carrying out a plan: creates, deletes, server-side applies with one field manager,
//! Events, and the status, written only when it changed.

mod events;
mod fence;
mod gate;
mod kill_point;
pub mod recorder;

pub use events::{event_for, event_for_error};
pub use kill_point::arm as arm_kill_point;
use kill_point::wrote;
pub use recorder::{Event, Part, Recorder, Writes};

use std::sync::{Mutex, PoisonError};

use futures::{stream, TryStreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Resource};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ResilientService, ResilientServiceStatus, ANNOTATION_ABORT, ANNOTATION_BAD_REVISION,
    ANNOTATION_INVALID_TEMPLATE, FIELD_MANAGER,
};
use crate::build;
use crate::plan::{Action, Plan};

/// Pod templates of recorded revisions, by revision name.
pub type Templates =
    std::collections::BTreeMap<String, k8s_openapi::api::core::v1::PodTemplateSpec>;

/// Requests in flight at once for one service: parallel, but a bounded burst.
const CONCURRENCY: usize = 16;

/// Why carrying out a plan stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failed API call, naming what the operator was doing.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The API server refused a pod as invalid: its revision is marked, so that no pod of
    /// it is asked for again, and the next pass reports the service Degraded.
    #[error("the API server refuses the pods of revision {revision}: {message}")]
    InvalidTemplate { revision: String, message: String },
}

impl Error {
    /// True when the fault is the connection's or the server's (a reset, a timeout, a
    /// throttled or unavailable server) or a view one step behind the server's (a conflict,
    /// a create whose first answer was lost), not the service's: the same pass can succeed
    /// as soon as the server answers again or the caches catch up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => transient(source),
            Self::InvalidTemplate { .. } => false,
        }
    }
}

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => matches!(status.code, 409 | 429) || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// What became of a pass's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// The plan's status is the one the service has (or the server found it so).
    Unchanged,
    /// Written: the service's copy the pass planned from is superseded.
    Written,
    /// Refused, as the service changed meanwhile: the copy is superseded too.
    Refused,
}

/// Executes every action of `plan` for `svc`; its status is written apart ([`write_status`]).
pub async fn execute(
    client: &Client,
    recorder: &Recorder,
    svc: &ResilientService,
    templates: &Templates,
    plan: &Plan,
) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let ns = ns.as_str();
    // The pass's events, by the index of their action in the plan: published together,
    // so that the recorder makes one Event of those of a kind (one for the pods created).
    let events: Mutex<Vec<(usize, Event)>> = Mutex::default();
    let mut done = Ok(());
    // In phases: a pod created before its claim would be judged unschedulable.
    for phase in 0..3 {
        let actions = (plan.actions.iter().enumerate())
            .filter(|(_, a)| phase_of(a) == phase)
            .map(Ok);
        let events = &events;
        done = stream::iter(actions)
            .try_for_each_concurrent(CONCURRENCY, |(i, action)| async move {
                let done = perform(client, ns, svc, templates, plan, action).await;
                let event = match &done {
                    Ok(()) => event_for(action),
                    Err(e) => event_for_error(action, e),
                };
                if let Some(event) = event {
                    let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
                    events.push((i, event));
                }
                done
            })
            .await;
        if done.is_err() {
            break;
        }
    }
    // Also when an action failed: what was done is told. An Event that cannot be written
    // does not fail the reconcile (the recorder logs it).
    let mut events = events.into_inner().unwrap_or_else(PoisonError::into_inner);
    events.sort_by_key(|(i, _)| *i);
    let events = events.into_iter().map(|(_, e)| e).collect();
    recorder.publish_pass(&svc.object_ref(&()), events).await;
    done
}

/// What a pod needs exists first; deletions come last.
fn phase_of(action: &Action) -> u8 {
    match action {
        Action::CreateRevision { .. }
        | Action::TaintNode { .. }
        | Action::UntaintNode { .. }
        | Action::ForgetFence { .. }
        // Clients are sent to a node nothing answers on until this is done.
        | Action::MarkPodNotReady { .. }
        | Action::ApplyService
        | Action::ApplyDisruptionBudget
        | Action::CreateClaim { .. } => 0,
        Action::CreatePod { .. } | Action::OpenGate { .. } | Action::UpgradeInPlace { .. } => 1,
        Action::DeletePod { .. }
        | Action::CloseGate { .. }
        | Action::DeleteClaim { .. }
        | Action::DeleteRevision { .. }
        | Action::MarkRevisionBad { .. }
        | Action::ClearAbort { .. }
        | Action::ForceDeletePod { .. }
        | Action::RebuildClaim { .. } => 2,
    }
}

async fn perform(
    client: &Client,
    ns: &str,
    svc: &ResilientService,
    templates: &Templates,
    plan: &Plan,
    action: &Action,
) -> Result<(), Error> {
    match action {
        Action::CreateRevision { number } => {
            create(
                Api::<ControllerRevision>::namespaced(client.clone(), ns),
                &build::desired_revision(svc, *number),
            )
            .await
        }
        Action::ApplyService => {
            apply(
                Api::<Service>::namespaced(client.clone(), ns),
                &build::desired_service(svc),
            )
            .await
        }
        Action::ApplyDisruptionBudget => {
            apply(
                Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
                &build::desired_disruption_budget(svc),
            )
            .await
        }
        Action::CreateClaim { template, ordinal } => {
            let Some(t) = svc
                .spec
                .volume_claim_templates
                .iter()
                .find(|t| &t.metadata.name == template)
            else {
                return Ok(());
            };
            create(
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
                &build::desired_claim(svc, t, *ordinal),
            )
            .await
        }
        Action::CreatePod {
            ordinal,
            revision,
            name,
        } => {
            let template = if *revision == build::revision_name(svc) {
                Some(&svc.spec.template)
            } else {
                templates.get(revision)
            };
            let Some(template) = template else {
                // The revision was deleted by hand: nothing to build the pod from. The next
                // pass plans again from what exists.
                tracing::warn!(%revision, "no ControllerRevision to build a pod from");
                return Ok(());
            };
            let mut pod = build::desired_pod(svc, *ordinal, revision, template);
            pod.metadata.name = Some(name.clone());
            let avoid = plan
                .status
                .replica_statuses
                .iter()
                .find(|r| r.ordinal == *ordinal)
                .and_then(|r| r.avoid_node.as_deref());
            if let Some(node) = avoid {
                build::avoid_node(&mut pod, node);
            }
            match create(Api::<Pod>::namespaced(client.clone(), ns), &pod).await {
                // Invalid (422), or not a pod at all (400: a value that does not decode,
                // such as a quantity): sent again, it is refused again.
                Err(Error::Api {
                    source: kube::Error::Api(s),
                    ..
                }) if s.code == 422 || s.code == 400 => {
                    mark_invalid(client, ns, revision, &s.message).await?;
                    Err(Error::InvalidTemplate {
                        revision: revision.clone(),
                        message: s.message,
                    })
                }
                done => done,
            }
        }
        Action::DeletePod { name, .. } => {
            delete(Api::<Pod>::namespaced(client.clone(), ns), name).await
        }
        Action::CloseGate {
            name,
            upgrade,
            reason,
        } => gate::set(client, ns, name, false, *upgrade, reason).await,
        Action::OpenGate { name } => {
            gate::set(client, ns, name, true, false, "ready to serve").await
        }
        Action::MarkPodNotReady { name, reason } => {
            gate::mark_not_ready(client, ns, name, reason).await
        }
        Action::UpgradeInPlace {
            name,
            from,
            revision,
        } => gate::upgrade(client, ns, svc, templates, name, from, revision).await,
        Action::DeleteClaim { name } => {
            delete(
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
                name,
            )
            .await
        }
        Action::DeleteRevision { name } => {
            delete(
                Api::<ControllerRevision>::namespaced(client.clone(), ns),
                name,
            )
            .await
        }
        Action::ForceDeletePod { name, .. } => {
            let api = Api::<Pod>::namespaced(client.clone(), ns);
            match api
                .delete(
                    name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => {
                    wrote(|| format!("force-delete pod {name}"));
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(source) => Err(Error::Api {
                    what: format!("force-delete pod {name}"),
                    source,
                }),
            }
        }
        Action::RebuildClaim { name, .. } => {
            delete(
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
                name,
            )
            .await
        }
        Action::TaintNode { node } => fence::taint(client, svc, node).await,
        Action::UntaintNode { node } => fence::untaint(client, svc, node).await,
        Action::ForgetFence { node } => fence::forget(client, svc, node).await,
        Action::ClearAbort { value } => clear_abort(client, ns, svc, value).await,
        Action::MarkRevisionBad { name, reason } => {
            let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
            let reason: String = reason.chars().take(512).collect();
            let patch =
                serde_json::json!({"metadata": {"annotations": {ANNOTATION_BAD_REVISION: reason}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| wrote(|| format!("mark revision {name} failed")))
                .map_err(|source| Error::Api {
                    what: format!("mark revision {name} failed"),
                    source,
                })
        }
    }
}

/// Records on the revision that the API server refuses its pods, with the server's message:
/// the planner asks for no pod of it again, and the service reports why.
async fn mark_invalid(
    client: &Client,
    ns: &str,
    revision: &str,
    message: &str,
) -> Result<(), Error> {
    let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
    let message: String = message.chars().take(1024).collect();
    let patch =
        serde_json::json!({"metadata": {"annotations": {ANNOTATION_INVALID_TEMPLATE: message}}});
    api.patch(revision, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| wrote(|| format!("mark revision {revision} invalid")))
        .map_err(|source| Error::Api {
            what: format!("mark revision {revision} invalid"),
            source,
        })
}

/// Creates an object; one that already exists (a create repeated on a stale cache) is fine.
async fn create<K>(api: Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            object,
        )
        .await
    {
        Ok(_) => {
            wrote(|| format!("create {}", object.name_any()));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::Api {
            what: format!("create {}", object.name_any()),
            source,
        }),
    }
}

/// Server-side applies an object with the operator's field manager.
async fn apply<K>(api: Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut body = serde_json::to_value(object).unwrap_or_default();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(&body))
        .await
        .map(|_| wrote(|| format!("apply {} {}", K::kind(&()), object.name_any())))
        .map_err(|source| Error::Api {
            what: format!("apply {} {}", K::kind(&()), object.name_any()),
            source,
        })
}

/// Deletes an object; one already gone is fine.
async fn delete<K>(api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            wrote(|| format!("delete {name}"));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            what: format!("delete {name}"),
            source,
        }),
    }
}

/// The service a status write goes to, and the version it is conditional on: all a write
/// keeps of the service while it waits its turn, not a copy of the whole service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusTarget {
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
}

impl StatusTarget {
    pub fn of(svc: &ResilientService) -> Self {
        Self {
            namespace: svc.namespace().unwrap_or_default(),
            name: svc.name_any(),
            resource_version: svc.metadata.resource_version.clone(),
        }
    }
}

/// The body of a status write, borrowing the status rather than copying it into a JSON
/// value.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: std::borrow::Cow<'static, str>,
    kind: std::borrow::Cow<'static, str>,
    metadata: VersionOnly<'a>,
    status: &'a ResilientServiceStatus,
}

impl<'a> StatusApply<'a> {
    fn new(to: &'a StatusTarget, status: &'a ResilientServiceStatus) -> Self {
        Self {
            api_version: ResilientService::api_version(&()),
            kind: ResilientService::kind(&()),
            metadata: VersionOnly {
                resource_version: to.resource_version.as_deref(),
            },
            status,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly<'a> {
    resource_version: Option<&'a str>,
}

/// Writes `status` over the service of `to`, conditional on its version; returns what became
/// of it and, when written, the service as the server holds it now.
pub async fn write_status(
    client: &Client,
    to: &StatusTarget,
    status: &ResilientServiceStatus,
) -> Result<(StatusWrite, Option<ResilientService>), Error> {
    let api: Api<ResilientService> = Api::namespaced(client.clone(), &to.namespace);
    // The resource version makes the write conditional: the status carries the failure
    // ledger, and a pass planned from an older copy must not overwrite a newer ledger.
    let body = StatusApply::new(to, status);
    let written = api
        .patch_status(
            &to.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await;
    match written {
        // A write the server found to change nothing keeps the version: no watch event
        // follows, and the copy the pass planned from is still the newest.
        Ok(written) if written.metadata.resource_version == to.resource_version => {
            Ok((StatusWrite::Unchanged, None))
        }
        Ok(written) => {
            wrote(|| format!("status of {}", to.name));
            Ok((StatusWrite::Written, Some(written)))
        }
        // The newer copy is on its way through the watch and gets a pass of its own.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(service = %to.name, "status not written: the service changed meanwhile");
            Ok((StatusWrite::Refused, None))
        }
        Err(source) => Err(Error::Api {
            what: format!("write the status of {}", to.name),
            source,
        }),
    }
}

/// Removes the abort annotation, only while the service is as the plan saw it (the resource
/// version makes the patch conditional): a person who set it again meanwhile, for the next
/// rollout, keeps theirs.
async fn clear_abort(
    client: &Client,
    ns: &str,
    svc: &ResilientService,
    value: &str,
) -> Result<(), Error> {
    let api: Api<ResilientService> = Api::namespaced(client.clone(), ns);
    let name = svc.name_any();
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": svc.metadata.resource_version,
        "annotations": {ANNOTATION_ABORT: null},
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            wrote(|| format!("clear {ANNOTATION_ABORT}={value} on {name}"));
            Ok(())
        }
        // Changed or gone meanwhile: the next pass judges what is there now.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            what: format!("clear {ANNOTATION_ABORT} on {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_carries_the_status_alone_conditional_on_the_version_planned_from() {
        let status = ResilientServiceStatus {
            ready_replicas: 3,
            ..ResilientServiceStatus::default()
        };
        let to = StatusTarget {
            namespace: "shop".into(),
            name: "web".into(),
            resource_version: Some("7".into()),
        };
        let body = serde_json::to_value(StatusApply::new(&to, &status)).expect("serializable");
        let expected = serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1",
            "kind": "ResilientService",
            "metadata": {"resourceVersion": "7"},
            "status": serde_json::to_value(&status).expect("serializable"),
        });
        assert_eq!(body, expected);
    }
}
