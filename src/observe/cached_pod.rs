//! The pod as the cache keeps it: the fields the operator reads, decoded straight from the
//! watch. A `Pod` struct is 2.4 kB and each of its containers 2.1 kB before any field is
//! set, so a cache of whole pods, however trimmed, costs about 7 kB a pod; this one about
//! a third of that. A pass turns the few pods of its service into whole `Pod`s
//! (`to_pod`), so everything downstream judges a `Pod` as the API server returns it.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, Pod, PodReadinessGate, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::Deserialize;

use super::cached_condition::{self, CachedCondition, ConditionKind, ConditionStatus};
use super::cached_resources::CachedResources;
use crate::api::{ResilientService, ANNOTATION_AVOIDS_NODE, RESERVED_LABELS};

/// A pod with its metadata (without managed fields, of the annotations only the node it
/// keeps off, of the labels only ours) and what the health judgement, the drain and
/// in-place upgrades read of its spec and status.
#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = Pod)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    pub spec: Option<CachedSpec>,
    pub status: Option<CachedStatus>,
    /// Once trimmed, the labels of ours (service, slot, revision, in that order), the only
    /// ones read of a pod, out of the label map: a map costs a B-tree leaf of 544 bytes
    /// however few labels it holds.
    #[serde(skip)]
    pub ours: [Option<Box<str>>; 3],
    /// Once trimmed, the uid and name of the ResilientService that controls the pod: of
    /// its owner references, all that is read (a list of them is a list and four strings a
    /// reference, some 250 bytes a pod).
    #[serde(skip)]
    pub controller: Option<Box<[Box<str>; 2]>>,
}

/// Whether an owner reference names a ResilientService, of any version of the API.
fn is_service(owner: &OwnerReference) -> bool {
    owner.kind == ResilientService::kind(&())
        && owner.api_version.split('/').next() == Some(&ResilientService::group(&()))
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedSpec {
    pub node_name: Option<String>,
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
}

/// A container's name, image and resources: whether it runs what the spec asks.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedContainer {
    pub name: String,
    pub image: Option<String>,
    pub resources: Option<CachedResources>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Of the kinds a judgement reads alone (cached_condition).
    #[serde(default, deserialize_with = "cached_condition::decode")]
    pub conditions: Option<Vec<CachedCondition>>,
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// What a container's status says of its health and of the spec it runs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    pub started: Option<bool>,
    pub state: Option<Box<ContainerState>>,
    pub last_state: Option<Box<ContainerState>>,
    pub resources: Option<CachedResources>,
}

impl CachedPod {
    /// Drops what the decoding kept that nothing reads: annotations but the node the pod
    /// keeps off, managed fields, and a container state that says nothing read (a running
    /// container's start time, the empty last state of one that never ended: a box of 208
    /// bytes each). The conditions are kept compact as they are decoded (cached_condition).
    pub fn trim(&mut self) {
        if let Some(owners) = self.metadata.owner_references.take() {
            self.controller = (owners.into_iter())
                .find(|o| o.controller == Some(true) && is_service(o))
                .map(|o| Box::new([o.uid.into_boxed_str(), o.name.into_boxed_str()]));
        }
        if let Some(mut labels) = self.metadata.labels.take() {
            for (kept, key) in self.ours.iter_mut().zip(RESERVED_LABELS) {
                *kept = labels.remove(key).map(String::into_boxed_str);
            }
        }
        // Of the annotations, only the node a pod was made to keep off is read.
        if let Some(a) = self.metadata.annotations.as_mut() {
            a.retain(|k, _| k == ANNOTATION_AVOIDS_NODE);
        }
        if self
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            self.metadata.annotations = None;
        }
        self.metadata.managed_fields = None;
        // Nothing reads when a container started: a state that says no more is not kept.
        let unread = |s: &Option<Box<ContainerState>>| {
            s.as_deref()
                .is_some_and(|s| s.terminated.is_none() && s.waiting.is_none())
        };
        let statuses = self
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut());
        for c in statuses.into_iter().flatten() {
            if unread(&c.state) {
                c.state = None;
            }
            if unread(&c.last_state) {
                c.last_state = None;
            }
        }
    }

    /// The value of one of our labels (`RESERVED_LABELS`), trimmed or not.
    pub fn label(&self, key: &str) -> Option<&str> {
        match RESERVED_LABELS.iter().position(|k| *k == key) {
            Some(i) if self.metadata.labels.is_none() => self.ours[i].as_deref(),
            _ => self.metadata.labels.as_ref()?.get(key).map(String::as_str),
        }
    }

    /// The uid and name of the ResilientService that controls the pod, trimmed or not.
    pub fn controller(&self) -> Option<(&str, &str)> {
        match self.metadata.owner_references.as_deref() {
            Some(owners) => (owners.iter())
                .find(|o| o.controller == Some(true) && is_service(o))
                .map(|o| (o.uid.as_str(), o.name.as_str())),
            None => self
                .controller
                .as_deref()
                .map(|[uid, name]| (&**uid, &**name)),
        }
    }

    /// The owner references as a `Pod` carries them: once trimmed, the ResilientService
    /// that controls it alone, all that is read of them.
    fn owner_references(&self) -> Option<Vec<OwnerReference>> {
        if self.metadata.owner_references.is_some() {
            return self.metadata.owner_references.clone();
        }
        let (uid, name) = self.controller()?;
        Some(vec![OwnerReference {
            api_version: ResilientService::api_version(&()).into_owned(),
            kind: ResilientService::kind(&()).into_owned(),
            name: name.to_string(),
            uid: uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }])
    }

    /// The labels as a `Pod` carries them: ours alone once trimmed.
    fn labels(&self) -> Option<std::collections::BTreeMap<String, String>> {
        if self.metadata.labels.is_some() {
            return self.metadata.labels.clone();
        }
        let ours: std::collections::BTreeMap<String, String> = (RESERVED_LABELS.iter())
            .zip(&self.ours)
            .filter_map(|(k, v)| Some((k.to_string(), v.as_deref()?.to_string())))
            .collect();
        (!ours.is_empty()).then_some(ours)
    }

    /// The node the pod is bound to.
    pub fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }

    /// Its readiness gate, read without making a whole `Pod` of it.
    pub fn gate(&self) -> crate::health::Gate {
        let condition = (self.status.as_ref())
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|c| c.kind == ConditionKind::Serving)
            .map(|c| crate::health::GateCondition {
                open: c.status == ConditionStatus::True,
                since: c.since(),
                reason: c.reason.as_deref(),
            });
        crate::health::gate_from(
            self.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_deref()),
            condition,
        )
    }

    /// The pod as a `Pod`, with the fields kept and every other one unset.
    pub fn to_pod(&self) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: self.labels(),
                owner_references: self.owner_references(),
                ..self.metadata.clone()
            },
            spec: self.spec.as_ref().map(|s| PodSpec {
                node_name: s.node_name.clone(),
                readiness_gates: s.readiness_gates.clone(),
                containers: (s.containers.iter())
                    .map(|c| Container {
                        name: c.name.clone(),
                        image: c.image.clone(),
                        resources: c.resources.as_ref().map(CachedResources::to_requirements),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: self.status.as_ref().map(|s| PodStatus {
                phase: s.phase.clone(),
                reason: s.reason.clone(),
                message: s.message.clone(),
                conditions: (s.conditions.as_ref())
                    .map(|all| all.iter().map(CachedCondition::to_condition).collect()),
                container_statuses: s.container_statuses.as_ref().map(|all| {
                    all.iter()
                        .map(|c| ContainerStatus {
                            name: c.name.clone(),
                            image: c.image.clone(),
                            ready: c.ready,
                            restart_count: c.restart_count,
                            started: c.started,
                            state: c.state.as_deref().cloned(),
                            last_state: c.last_state.as_deref().cloned(),
                            resources: c.resources.as_ref().map(CachedResources::to_requirements),
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{gate_of, judge_pod, Serving};

    /// A pod as the API server returns it, with everything admission adds.
    fn full_pod(status: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0-abc", "namespace": "shop", "uid": "u",
                "resourceVersion": "7",
                "labels": {"perennial.dev/service": "web", "perennial.dev/slot": "0"},
                "annotations": {"note": "x".repeat(2000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                    "name": "web", "uid": "s", "controller": true, "blockOwnerDeletion": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"}]},
            "spec": {"nodeName": "n1",
                "readinessGates": [{"conditionType": crate::api::GATE_SERVING}],
                "containers": [{"name": "app", "image": "example/app:1",
                    "resources": {"requests": {"cpu": "100m"}},
                    "env": [{"name": "A", "value": "x".repeat(2000)}]}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
                "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
            "status": status,
        })
    }

    #[test]
    fn a_cached_pod_is_judged_as_the_whole_pod() {
        let at = "2026-01-01T00:00:00Z";
        let gate = serde_json::json!({"type": crate::api::GATE_SERVING, "status": "True",
            "reason": "Serving", "lastTransitionTime": at});
        let statuses = [
            serde_json::json!({"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": at}, gate],
                "containerStatuses": [{"name": "app", "image": "example/app:1", "imageID": "sha256:x",
                    "containerID": "c://1", "ready": true, "restartCount": 0, "started": true,
                    "resources": {"requests": {"cpu": "100m"}},
                    "state": {"running": {"startedAt": at}}}]}),
            serde_json::json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at}],
                "containerStatuses": [{"name": "app", "image": "example/app:1", "imageID": "sha256:x",
                    "ready": false, "restartCount": 7,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
            serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": at}],
                "containerStatuses": [{"name": "app", "image": "example/app:2", "imageID": "",
                    "ready": true, "restartCount": 1, "started": true}]}),
            serde_json::json!({"phase": "Running",
                "conditions": [{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": at},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                    {"type": "PodResizePending", "status": "True", "reason": "Deferred", "lastTransitionTime": at},
                    {"type": "Ready", "status": "True", "reason": "x", "message": "y", "lastTransitionTime": at,
                        "lastProbeTime": at}, gate],
                "containerStatuses": [{"name": "app", "image": "example/app:1", "ready": true,
                    "restartCount": 0, "started": true, "state": {"running": {"startedAt": at}}}]}),
            serde_json::json!({"phase": "Running", "conditions": [gate.clone()],
                "containerStatuses": [{"name": "app", "image": "example/app:1", "ready": true,
                    "restartCount": 0, "state": {}, "lastState": {}}]}),
            serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable", "message": "0/3 nodes", "lastTransitionTime": at}]}),
        ];
        for status in statuses {
            let json = full_pod(status.clone());
            let whole: Pod = serde_json::from_value(json.clone()).unwrap();
            let mut cached: CachedPod = serde_json::from_value(json).unwrap();
            cached.trim();
            let pod = cached.to_pod();
            assert_eq!(judge_pod(&pod), judge_pod(&whole), "{status}");
            assert_eq!(gate_of(&pod), gate_of(&whole), "{status}");
            assert_eq!(cached.gate(), gate_of(&whole), "{status}");
            assert_eq!(Serving::of(&pod), Serving::of(&whole), "{status}");
            assert_eq!(cached.node_name(), Some("n1"));
            assert_eq!(cached.controller(), Some(("s", "web")));
            assert_eq!(cached.metadata.owner_references, None);
            // Of the owners, the controller is kept, whole; nothing reads the others.
            let controllers = |p: &Pod| {
                let owners = p.metadata.owner_references.clone().unwrap_or_default();
                let controllers: Vec<_> = (owners.into_iter())
                    .filter(|o| o.controller == Some(true))
                    .collect();
                controllers
            };
            assert_eq!(controllers(&pod), controllers(&whole));
            assert_eq!(controllers(&pod).len(), 1);
            assert_eq!(pod.metadata.labels, whole.metadata.labels);
            assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
            assert_eq!(pod.metadata.annotations, None);
            assert_eq!(pod.metadata.managed_fields, None);
        }
    }

    #[test]
    fn of_the_labels_the_cache_keeps_ours_apart_and_a_pod_made_of_it_carries_them() {
        use crate::api::{LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT};
        let mut json = full_pod(serde_json::json!({"phase": "Pending"}));
        json["metadata"]["labels"]["app"] = "shop".into();
        json["metadata"]["labels"][LABEL_REVISION] = "web-abc".into();
        let mut cached: CachedPod = serde_json::from_value(json).unwrap();
        let before: Vec<_> = [LABEL_SERVICE, LABEL_SLOT, LABEL_REVISION, "app"]
            .map(|k| cached.label(k).map(str::to_string))
            .into();
        cached.trim();
        assert_eq!(cached.metadata.labels, None, "no map is kept");
        let after = [LABEL_SERVICE, LABEL_SLOT, LABEL_REVISION].map(|k| cached.label(k));
        assert_eq!(after, [Some("web"), Some("0"), Some("web-abc")]);
        assert_eq!(before[..3], after.map(|v| v.map(str::to_string)));
        assert_eq!(before[3].as_deref(), Some("shop"), "read before the trim");
        assert_eq!(
            cached.label("app"),
            None,
            "a label of the user's is not kept"
        );
        let labels = cached.to_pod().metadata.labels.unwrap();
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [
                (LABEL_REVISION.to_string(), "web-abc".to_string()),
                (LABEL_SERVICE.to_string(), "web".to_string()),
                (LABEL_SLOT.to_string(), "0".to_string()),
            ]
        );
    }

    #[test]
    fn a_container_state_that_says_nothing_read_is_not_kept() {
        let mut cached: CachedPod = serde_json::from_value(full_pod(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{"name": "app", "image": "example/app:1", "ready": true,
                "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                "lastState": {}}]})))
        .unwrap();
        cached.trim();
        let status = &cached.status.unwrap().container_statuses.unwrap()[0];
        assert!(status.state.is_none(), "when it started is read by nobody");
        assert!(status.last_state.is_none());
    }

    #[test]
    fn of_the_annotations_the_cache_keeps_the_node_a_pod_keeps_off() {
        let mut json = full_pod(serde_json::json!({"phase": "Pending"}));
        json["metadata"]["annotations"][ANNOTATION_AVOIDS_NODE] = "n2".into();
        let mut cached: CachedPod = serde_json::from_value(json).unwrap();
        cached.trim();
        let kept = cached.to_pod().metadata.annotations.unwrap_or_default();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            kept.get(ANNOTATION_AVOIDS_NODE).map(String::as_str),
            Some("n2")
        );
    }

    #[test]
    fn the_cache_keeps_the_conditions_a_judgement_reads_and_of_them_what_it_reads() {
        let at = "2026-01-01T00:00:00Z";
        let mut cached: CachedPod = serde_json::from_value(full_pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/3 nodes are available", "lastTransitionTime": at, "lastProbeTime": at},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                    "message": "containers with unready status: [app]", "lastTransitionTime": at},
                {"type": crate::api::GATE_SERVING, "status": "False", "reason": crate::health::GATE_UPGRADING,
                    "message": "closed by the operator", "lastTransitionTime": at},
            ]})))
        .unwrap();
        cached.trim();
        let kept: Vec<_> = (cached
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter())
        .map(|c| (c.kind.word(), c.reason.as_deref(), c.message.as_deref()))
        .collect();
        assert_eq!(
            kept,
            [
                (
                    "PodScheduled",
                    Some("Unschedulable"),
                    Some("0/3 nodes are available")
                ),
                ("Ready", None, None),
                (
                    crate::api::GATE_SERVING,
                    Some(crate::health::GATE_UPGRADING),
                    None
                ),
            ]
        );
        let conditions = cached.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert!(conditions.iter().all(|c| c.since().is_some()));
        let whole = cached.to_pod().status.unwrap().conditions.unwrap();
        assert!(whole.iter().all(|c| c.last_probe_time.is_none()));
    }

    #[test]
    fn a_cached_pod_takes_a_third_of_the_memory_of_a_pod_before_any_field_is_set() {
        let container = std::mem::size_of::<CachedContainer>();
        assert!(container * 10 < std::mem::size_of::<Container>());
        assert!(std::mem::size_of::<CachedPod>() * 3 < std::mem::size_of::<Pod>());
        assert!(
            std::mem::size_of::<CachedContainerStatus>() * 3
                < std::mem::size_of::<ContainerStatus>()
        );
    }

    #[test]
    fn a_pod_without_spec_or_status_decodes_and_says_nothing() {
        let cached: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "app"}]}
        }))
        .unwrap();
        assert_eq!(cached.node_name(), None);
        assert_eq!(
            judge_pod(&cached.to_pod()),
            crate::health::PodState::Pending
        );
    }
}
