//! Fencing a lost node and unfencing it once it is back: JSON patches of the Node, built by
//! build::fence, each applied only to the node as it was read, so that a person's edit made
//! meanwhile is never overwritten or undone.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;

use super::kill_point::wrote;
use super::Error;
use crate::api::ResilientService;
use crate::build::{self, FenceRecord};

fn error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api { what, source }
}

async fn patch(api: &Api<Node>, node: &str, patch: serde_json::Value) -> Result<(), kube::Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(node, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map(|_| ())
}

/// Taints a lost node out-of-service and records the fence, keeping its other taints; a
/// node that carries the taint already (whoever put it there) is left as it is.
pub(super) async fn taint(
    client: &Client,
    svc: &ResilientService,
    node: &str,
) -> Result<(), Error> {
    let api = Api::<Node>::all(client.clone());
    let what = format!("taint node {node} out-of-service");
    let current = api.get(node).await.map_err(error(what.clone()))?;
    let record = FenceRecord::new(svc, jiff::Timestamp::now());
    let Some(ops) = build::fence_patch(&current, &record) else {
        return Ok(());
    };
    // A failed test means the node changed since it was read: the pass is retried.
    patch(&api, node, ops)
        .await
        .map(|()| wrote(|| format!("taint node {node}")))
        .map_err(error(format!(
            "{what} (retried: the node changed while it was fenced)"
        )))
}

/// Removes the out-of-service taint `svc` put on `node`, and its record. A node whose taint
/// is no longer as recorded fails the pass: the next one forgets the record instead, and no
/// Event says that a fence was removed.
pub(super) async fn untaint(
    client: &Client,
    svc: &ResilientService,
    node: &str,
) -> Result<(), Error> {
    let api = Api::<Node>::all(client.clone());
    let what = format!("remove the out-of-service taint this service put on node {node}");
    let current = api.get(node).await.map_err(error(what.clone()))?;
    let unfence = build::unfence_patch(&current, &build::service_key(svc))
        .filter(|u| u.removes_taint)
        .ok_or_else(|| Error::Api {
            what: what.clone(),
            // A conflict, as the API server reports a write based on a stale read.
            source: kube::Error::Api(Box::new(
                kube::core::Status::failure(
                    "the taint or its record changed since the node was read; the next pass decides again",
                    "Conflict",
                )
                .with_code(409),
            )),
        })?;
    patch(&api, node, unfence.patch)
        .await
        .map(|()| wrote(|| format!("untaint node {node}")))
        .map_err(error(format!(
            "{what} (retried: the node changed meanwhile)"
        )))
}

/// Removes the fence record of `svc` from `node` when the taint it records is gone or
/// replaced; the taint that is there now is left alone.
pub(super) async fn forget(
    client: &Client,
    svc: &ResilientService,
    node: &str,
) -> Result<(), Error> {
    let api = Api::<Node>::all(client.clone());
    let what = format!("forget the fence record of node {node}");
    let current = match api.get(node).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(error(what)(e)),
    };
    let Some(unfence) =
        build::unfence_patch(&current, &build::service_key(svc)).filter(|u| !u.removes_taint)
    else {
        return Ok(());
    };
    patch(&api, node, unfence.patch)
        .await
        .map(|()| wrote(|| format!("forget the fence record of node {node}")))
        .map_err(error(what))
}
