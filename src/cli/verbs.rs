//! The verbs that change a service: one each for what would otherwise take an annotation
//! or a patch. Each reads the service first, refuses what would do nothing or harm, and
//! says what it did.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::snapshot::{self, Want};
use super::{CliError, Snapshot, Target};
use crate::api::{
    ResilientService, ANNOTATION_ABORT, ANNOTATION_BAD_REVISION, ANNOTATION_INVALID_TEMPLATE,
    ANNOTATION_PROMOTE, ANNOTATION_RESTARTED_AT,
};
use crate::build;

/// The field manager of the plugin's patches, so `managedFields` tells who changed what.
pub const FIELD_MANAGER: &str = "kubectl-perennial";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

async fn read(target: &Target, name: &str) -> Result<Snapshot, CliError> {
    snapshot::fetch(&target.client, &target.namespace, name, Want::default()).await
}

/// Patches the service. `read_generation` is the generation a tested JSON patch (see
/// [`json_patch`]) was made from, None for a merge patch.
async fn patch(
    target: &Target,
    name: &str,
    patch: Patch<Value>,
    read_generation: Option<i64>,
) -> Result<ResilientService, CliError> {
    let api: Api<ResilientService> = Api::namespaced(target.client.clone(), &target.namespace);
    match api.patch(name, &params(), &patch).await {
        Ok(svc) => Ok(svc),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(CliError::Conflict(name.to_string())),
        // A failed test is refused as invalid, as a spec the schema refuses would be: only a
        // spec that moved on tells the two apart.
        Err(e @ kube::Error::Api(_)) if read_generation.is_some() => {
            let now = api.get(name).await.ok().and_then(|s| s.metadata.generation);
            if now.is_some() && now != read_generation {
                Err(CliError::Conflict(name.to_string()))
            } else {
                Err(CliError::api("patch", "resilientservice", name, e))
            }
        }
        Err(e) => Err(CliError::api("patch", "resilientservice", name, e)),
    }
}

/// A JSON patch that applies only to the spec that was read: the generation moves with
/// every change of the spec and never with the operator's status writes.
fn json_patch(svc: &ResilientService, mut ops: Vec<Value>) -> Result<Patch<Value>, CliError> {
    ops.insert(
        0,
        json!({"op": "test", "path": "/metadata/generation", "value": svc.metadata.generation}),
    );
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| CliError::Refused(format!("internal: a malformed patch: {e}")))?;
    Ok(Patch::Json(patch))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Passes the canary pause the rollout waits at (`pause: {}`), or the next one it reaches.
pub async fn promote(target: &Target, name: &str) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    let svc = &snap.service;
    let Some(canary) = &svc.spec.update.canary else {
        return Err(CliError::Refused(format!(
            "{name} has no canary steps (spec.update.canary): there is no pause to promote"
        )));
    };
    let rollout = svc.status.as_ref().and_then(|s| s.rollout.clone());
    let Some(rollout) = rollout else {
        return Err(CliError::Refused(format!(
            "{name} is not rolling out: there is nothing to promote"
        )));
    };
    patch(
        target,
        name,
        Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_PROMOTE: now()}}})),
        None,
    )
    .await?;
    let step = rollout.canary_step.unwrap_or(0).max(0) as usize;
    let at_pause = canary.steps.get(step).is_some_and(|s| s.pause.is_some());
    Ok(if at_pause {
        format!("{name}: promoted past canary step {} (a pause)", step + 1)
    } else {
        format!(
            "{name}: promotion recorded; canary step {} is not a pause, so the next `pause: {{}}` step is passed",
            step + 1
        )
    })
}

/// Gives up the rollout in progress: back to the stable revision, the new one marked failed.
pub async fn abort(target: &Target, name: &str) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    let status = snap.service.status.clone().unwrap_or_default();
    let update = status.update_revision.clone().unwrap_or_default();
    if status.rollout.is_none() || status.current_revision.as_deref() == Some(update.as_str()) {
        return Err(CliError::Refused(format!(
            "{name} is not rolling out: there is nothing to abort"
        )));
    }
    // Naming the revision aborts this rollout only, never a later one.
    patch(
        target,
        name,
        Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_ABORT: update}}})),
        None,
    )
    .await?;
    Ok(format!(
        "{name}: rollout of {update} aborted; it returns to {}",
        status
            .current_revision
            .as_deref()
            .unwrap_or("the stable revision")
    ))
}

/// Sets `spec.paused`: while paused no pod moves to a new revision; repairs go on.
pub async fn set_paused(target: &Target, name: &str, paused: bool) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    if snap.service.spec.paused == paused {
        return Ok(format!(
            "{name}: already {}",
            if paused { "paused" } else { "not paused" }
        ));
    }
    patch(
        target,
        name,
        Patch::Merge(json!({"spec": {"paused": paused}})),
        None,
    )
    .await?;
    Ok(if paused {
        format!("{name}: paused; no pod moves to a new revision until `resume` (repairs go on)")
    } else {
        format!("{name}: resumed")
    })
}

/// Replaces every replica, as a rolling update of a new template that differs only in
/// its restart annotation.
pub async fn restart(target: &Target, name: &str) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    if snap.service.spec.paused {
        return Err(CliError::Refused(format!(
            "{name} is paused: a restart would wait for `resume`; resume it first"
        )));
    }
    let at = now();
    patch(
        target,
        name,
        Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: at}}}}})),
    None,
)
    .await?;
    Ok(format!(
        "{name}: restart at {at} rolls out as a new revision"
    ))
}

/// The JSON patch operations that set each `container=image`.
pub fn image_ops(
    svc: &ResilientService,
    changes: &[(String, String)],
) -> Result<Vec<Value>, CliError> {
    let spec = svc.spec.template.spec.as_ref();
    let mut ops = Vec::new();
    for (container, image) in changes {
        let main = (spec.into_iter().flat_map(|s| s.containers.iter()))
            .position(|c| &c.name == container)
            .map(|i| format!("/spec/template/spec/containers/{i}"));
        let init = (spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten()))
        .position(|c| &c.name == container)
        .map(|i| format!("/spec/template/spec/initContainers/{i}"));
        let Some(path) = main.or(init) else {
            let names: Vec<String> = (spec.into_iter())
                .flat_map(|s| {
                    s.init_containers
                        .iter()
                        .flatten()
                        .chain(s.containers.iter())
                })
                .map(|c| c.name.clone())
                .collect();
            return Err(CliError::Refused(format!(
                "{} has no container {container}; its containers are {}",
                svc.name_any(),
                names.join(", ")
            )));
        };
        ops.push(json!({"op": "test", "path": format!("{path}/name"), "value": container}));
        ops.push(json!({"op": "add", "path": format!("{path}/image"), "value": image}));
    }
    Ok(ops)
}

/// Parses `CONTAINER=IMAGE`.
pub fn parse_image(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((c, i)) if !c.is_empty() && !i.is_empty() => Ok((c.to_string(), i.to_string())),
        _ => Err(format!("`{arg}` is not CONTAINER=IMAGE")),
    }
}

/// Sets the image of one or more containers.
pub async fn set_image(
    target: &Target,
    name: &str,
    changes: &[(String, String)],
) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    let ops = image_ops(&snap.service, changes)?;
    patch(
        target,
        name,
        json_patch(&snap.service, ops)?,
        snap.service.metadata.generation,
    )
    .await?;
    let told: Vec<String> = changes.iter().map(|(c, i)| format!("{c}={i}")).collect();
    Ok(format!("{name}: image set: {}", told.join(", ")))
}

/// The revision `undo` goes back to: number `to`, or else the newest recorded revision
/// other than the current template's that neither failed nor was refused.
pub fn undo_target(snapshot: &Snapshot, to: Option<i64>) -> Result<&ControllerRevision, CliError> {
    let name = snapshot.name();
    let current = build::revision_name(&snapshot.service);
    let numbers = || {
        (snapshot.revisions.iter())
            .map(|r| format!("#{} {}", r.revision, r.name_any()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match to {
        Some(n) => (snapshot.revisions.iter())
            .find(|r| r.revision == n)
            .ok_or_else(|| {
                CliError::Refused(format!(
                    "{name} has no recorded revision {n}; it keeps {}",
                    numbers()
                ))
            })?,
        None => (snapshot.revisions.iter().rev())
            .find(|r| {
                r.name_any() != current
                    && !r.annotations().contains_key(ANNOTATION_BAD_REVISION)
                    && !r.annotations().contains_key(ANNOTATION_INVALID_TEMPLATE)
            })
            .ok_or_else(|| {
                CliError::Refused(format!(
                    "{name} keeps no earlier revision that did not fail (recorded: {})",
                    numbers()
                ))
            })?,
    };
    if chosen.name_any() == current {
        return Err(CliError::Refused(format!(
            "revision {} ({}) is the template {name} has now",
            chosen.revision,
            chosen.name_any()
        )));
    }
    Ok(chosen)
}

/// Re-applies the template a revision recorded. A revision marked failed is rolled back
/// again at once; `force` clears the mark first.
pub async fn undo(
    target: &Target,
    name: &str,
    to: Option<i64>,
    force: bool,
) -> Result<String, CliError> {
    let snap = read(target, name).await?;
    let revision = undo_target(&snap, to)?;
    let rev_name = revision.name_any();
    let template = build::recorded_template(revision).ok_or_else(|| {
        CliError::Refused(format!(
            "revision {rev_name} holds no pod template this operator recorded"
        ))
    })?;
    if let Some(why) = revision.annotations().get(ANNOTATION_BAD_REVISION) {
        if !force {
            return Err(CliError::Refused(format!(
                "revision #{} ({rev_name}) is marked failed ({why}) and would be rolled back again at once; \
                 pass --force to clear the mark and roll it out",
                revision.revision
            )));
        }
        let revisions: Api<ControllerRevision> =
            Api::namespaced(target.client.clone(), &target.namespace);
        (revisions.patch(
            &rev_name,
            &params(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_BAD_REVISION: null}}})),
        ))
        .await
        .map_err(|e| CliError::api("clear the failed mark", "controllerrevision", &rev_name, e))?;
    }
    let ops = vec![json!({"op": "replace", "path": "/spec/template", "value": template})];
    patch(
        target,
        name,
        json_patch(&snap.service, ops)?,
        snap.service.metadata.generation,
    )
    .await?;
    Ok(format!(
        "{name}: template of revision #{} ({rev_name}) re-applied; it rolls out as {rev_name}",
        revision.revision
    ))
}

#[cfg(test)]
mod tests;
