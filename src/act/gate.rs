//! The readiness gate and in-place upgrades: patches of one pod, never an update from a
//! cached copy, so a stale cache cannot put a drained pod back into service.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;

use super::kill_point::wrote;
use super::{Error, Templates};
use crate::api::{ResilientService, GATE_SERVING};
use crate::build;
use crate::health::{GATE_OPEN, GATE_RETIRING, GATE_UPGRADING};

/// Sets the gate condition of pod `name`: True to serve, False (with why) to drain.
pub(super) async fn set(
    client: &Client,
    ns: &str,
    name: &str,
    serving: bool,
    upgrade: bool,
    message: &str,
) -> Result<(), Error> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let reason = match (serving, upgrade) {
        (true, _) => GATE_OPEN,
        (false, true) => GATE_UPGRADING,
        (false, false) => GATE_RETIRING,
    };
    let message: String = message.chars().take(512).collect();
    // Conditions merge by type: this patch touches only the gate's.
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": GATE_SERVING,
        "status": if serving { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    let what = || format!("set the {GATE_SERVING} gate of pod {name} to {serving}");
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => {
            wrote(what);
            Ok(())
        }
        // Gone meanwhile: the next pass judges what is there.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            what: what(),
            source,
        }),
    }
}

/// Sets the Ready condition of pod `name`, on a lost node, False: EndpointSlices then list
/// it not ready, and proxies stop sending it traffic.
pub(super) async fn mark_not_ready(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Result<(), Error> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let message: String = reason.chars().take(512).collect();
    // Conditions merge by type: the kubelet's others are left as they are.
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "Ready",
        "status": "False",
        "reason": NOT_READY_NODE_LOST,
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    let what = || format!("mark pod {name} not ready");
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => {
            wrote(what);
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            what: what(),
            source,
        }),
    }
}

/// The reason on the Ready condition of a pod the operator marked not ready.
const NOT_READY_NODE_LOST: &str = "NodeLost";

/// Patches pod `name` from revision `from` to `revision` in place: CPU and memory through
/// the `resize` subresource first, then labels, annotations and images.
pub(super) async fn upgrade(
    client: &Client,
    ns: &str,
    svc: &ResilientService,
    templates: &Templates,
    name: &str,
    from: &str,
    revision: &str,
) -> Result<(), Error> {
    let template = |r: &str| -> Option<PodTemplateSpec> {
        if r == build::revision_name(svc) {
            Some(svc.spec.template.clone())
        } else {
            templates.get(r).cloned()
        }
    };
    let (Some(old), Some(new)) = (template(from), template(revision)) else {
        // A revision was deleted by hand: the next pass plans from what exists.
        tracing::warn!(pod = %name, %from, %revision, "no ControllerRevision to upgrade a pod in place from");
        return Ok(());
    };
    let (pod_patch, resize) = build::in_place_patches(&old, &new, revision);
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let what = || format!("upgrade pod {name} in place to revision {revision}");
    let failed = |source| Error::Api {
        what: what(),
        source,
    };
    if let Some(resize) = resize {
        match api
            .patch_subresource(
                "resize",
                name,
                &PatchParams::default(),
                &Patch::Strategic(&resize),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(failed(e)),
        }
    }
    match api
        .patch(name, &PatchParams::default(), &Patch::Strategic(&pod_patch))
        .await
    {
        Ok(_) => {
            wrote(what);
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(failed(e)),
    }
}
