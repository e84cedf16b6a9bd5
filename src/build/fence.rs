//! The fence the operator puts on a lost node (`repair.fencing: TaintOutOfService`), and
//! the patches that put it there and take it away again.
//!
//! The operator records every fence it applies in an annotation on the Node
//! (ANNOTATION_FENCE): the service that applied it and the taint exactly as applied, down to
//! its timeAdded. It removes only a taint that is still exactly as recorded, so a taint a
//! person put there (with no record, or a different timeAdded) is never touched. The taint's
//! value could not carry this: a value is a short label value, and a person may well write
//! the same one. The record also says which service to wake when the node comes back.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{ResilientService, ANNOTATION_FENCE};
use crate::health::OUT_OF_SERVICE_TAINT;

/// The value of the out-of-service taint, as the Kubernetes documentation writes it.
const TAINT_VALUE: &str = "nodeshutdown";

/// A fence the operator applied, as recorded on the Node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FenceRecord {
    /// The service that fenced the node, as namespace/name.
    pub service: String,
    /// The taint, exactly as applied.
    pub taint: Taint,
}

/// A service as a fence record names it: namespace/name.
pub fn service_key(svc: &ResilientService) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

impl FenceRecord {
    /// The fence `svc` applies at `now`: the out-of-service taint, NoExecute, added now
    /// (to the second, as the API server keeps times).
    pub fn new(svc: &ResilientService, now: Timestamp) -> Self {
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        Self {
            service: service_key(svc),
            taint: Taint {
                key: OUT_OF_SERVICE_TAINT.to_string(),
                value: Some(TAINT_VALUE.to_string()),
                effect: "NoExecute".to_string(),
                time_added: Some(Time(now)),
            },
        }
    }

    /// The record on `node`; None when there is none, or it cannot be read (then the fence,
    /// if any, is left to a person).
    pub fn of(node: &Node) -> Option<Self> {
        serde_json::from_str(node.annotations().get(ANNOTATION_FENCE)?).ok()
    }

    /// The service that applied the fence: (namespace, name).
    pub fn fencer(&self) -> Option<(String, String)> {
        let (ns, name) = self.service.split_once('/')?;
        (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
    }

    /// When the fence was applied.
    pub fn fenced_at(&self) -> Option<Timestamp> {
        self.taint.time_added.as_ref().map(|t| t.0)
    }

    /// Where the recorded taint is among the node's taints, if it is still there exactly as
    /// recorded.
    pub fn position(&self, node: &Node) -> Option<usize> {
        node.spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .position(|t| *t == self.taint)
    }
}

/// The annotation's key as a JSON pointer segment ("/" is written "~1").
fn annotation_path() -> String {
    format!(
        "/metadata/annotations/{}",
        ANNOTATION_FENCE.replace('/', "~1")
    )
}

/// The JSON patch that fences `node` with `record` and records it, in one write; None when
/// the node carries an out-of-service taint already (whoever put it there). It applies only
/// to the node as read (a test of its resourceVersion): the taints are a list, and a write
/// based on an older copy could drop a taint a person has just added.
pub fn fence_patch(node: &Node, record: &FenceRecord) -> Option<Value> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
    if taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == OUT_OF_SERVICE_TAINT)
    {
        return None;
    }
    let recorded = serde_json::to_string(record).ok()?;
    let taint = serde_json::to_value(&record.taint).ok()?;
    let mut ops = Vec::new();
    if let Some(rv) = &node.metadata.resource_version {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    ops.push(match taints {
        Some([_, ..]) => json!({"op": "add", "path": "/spec/taints/-", "value": taint}),
        _ => json!({"op": "add", "path": "/spec/taints", "value": [taint]}),
    });
    ops.push(if node.annotations().is_empty() {
        json!({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION_FENCE: recorded}})
    } else {
        json!({"op": "add", "path": annotation_path(), "value": recorded})
    });
    Some(Value::Array(ops))
}

/// How `service` takes its fence off a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Unfence {
    /// The JSON patch.
    pub patch: Value,
    /// Whether it removes the taint, or only a record whose taint is no longer as recorded
    /// (a person removed or replaced it).
    pub removes_taint: bool,
}

/// The JSON patch that removes the fence `service` put on `node`, and its record; None when
/// the node carries no record of `service`. It tests the record and the taint first, so that
/// a change a person made meanwhile (taking the fence over by deleting the record, or
/// replacing the taint) makes it fail rather than remove what is now theirs.
pub fn unfence_patch(node: &Node, service: &str) -> Option<Unfence> {
    let raw = node.annotations().get(ANNOTATION_FENCE)?;
    let record = FenceRecord::of(node).filter(|r| r.service == service)?;
    let mut ops = vec![json!({"op": "test", "path": annotation_path(), "value": raw})];
    let position = record.position(node);
    if let Some(i) = position {
        let path = format!("/spec/taints/{i}");
        let taint = serde_json::to_value(&record.taint).ok()?;
        ops.push(json!({"op": "test", "path": path, "value": taint}));
        ops.push(json!({"op": "remove", "path": path}));
    }
    ops.push(json!({"op": "remove", "path": annotation_path()}));
    Some(Unfence {
        patch: Value::Array(ops),
        removes_taint: position.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ResilientService {
        serde_json::from_value(json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
        }))
        .unwrap()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn node(taints: Value, annotations: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "resourceVersion": "42", "annotations": annotations},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    /// Applies a JSON patch the way the API server does, for what these tests need: test,
    /// add (a member or the end of a list) and remove. Err when a test fails.
    fn apply(doc: &Node, patch: &Value) -> Result<Node, String> {
        let mut doc = serde_json::to_value(doc).unwrap();
        for op in patch.as_array().unwrap() {
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/");
            match op["op"].as_str().unwrap() {
                "test" => {
                    if doc.pointer(path) != Some(&op["value"]) {
                        return Err(format!("test of {path} failed"));
                    }
                }
                "add" => {
                    let target = doc.pointer_mut(parent).ok_or("no parent")?;
                    match target {
                        Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                        Value::Object(o) => {
                            o.insert(last, op["value"].clone());
                        }
                        _ => return Err(format!("cannot add at {path}")),
                    }
                }
                "remove" => match doc.pointer_mut(parent).ok_or("no parent")? {
                    Value::Array(a) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    Value::Object(o) => {
                        o.remove(&last).ok_or("nothing to remove")?;
                    }
                    _ => return Err(format!("cannot remove {path}")),
                },
                other => panic!("unexpected op {other}"),
            }
        }
        Ok(serde_json::from_value(doc).unwrap())
    }

    fn taints(node: &Node) -> Vec<String> {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|t| t.key.clone())
            .collect()
    }

    #[test]
    fn a_fence_adds_the_taint_and_its_record_and_keeps_every_other_taint_and_annotation() {
        let record = FenceRecord::new(&svc(), at(0));
        let before = node(
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
            json!({"owner": "ops"}),
        );
        let fenced = apply(&before, &fence_patch(&before, &record).unwrap()).unwrap();
        assert_eq!(taints(&fenced), vec!["dedicated", OUT_OF_SERVICE_TAINT]);
        assert_eq!(FenceRecord::of(&fenced), Some(record.clone()));
        assert_eq!(record.position(&fenced), Some(1));
        assert_eq!(
            fenced.annotations().get("owner").map(String::as_str),
            Some("ops")
        );
        assert_eq!(record.service, "shop/db");
        assert_eq!(record.fencer(), Some(("shop".into(), "db".into())));
        assert_eq!(record.fenced_at(), Some(at(0)));

        let bare = node(Value::Null, Value::Null);
        let fenced = apply(&bare, &fence_patch(&bare, &record).unwrap()).unwrap();
        assert_eq!(taints(&fenced), vec![OUT_OF_SERVICE_TAINT]);
        assert_eq!(FenceRecord::of(&fenced), Some(record));
    }

    #[test]
    fn a_fence_applies_only_to_the_node_as_read_and_never_twice() {
        let record = FenceRecord::new(&svc(), at(0));
        let before = node(Value::Null, json!({"a": "b"}));
        let patch = fence_patch(&before, &record).unwrap();
        let mut changed = before.clone();
        changed.metadata.resource_version = Some("43".into());
        assert!(
            apply(&changed, &patch).is_err(),
            "the node changed meanwhile"
        );
        let fenced = apply(&before, &patch).unwrap();
        assert_eq!(fence_patch(&fenced, &record), None);
        let by_a_person = node(
            json!([{"key": OUT_OF_SERVICE_TAINT, "value": "x", "effect": "NoExecute"}]),
            Value::Null,
        );
        assert_eq!(fence_patch(&by_a_person, &record), None);
    }

    #[test]
    fn unfencing_removes_exactly_the_recorded_taint_and_the_record() {
        let record = FenceRecord::new(&svc(), at(0));
        let before = node(
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
            json!({"owner": "ops"}),
        );
        let fenced = apply(&before, &fence_patch(&before, &record).unwrap()).unwrap();
        let unfence = unfence_patch(&fenced, "shop/db").unwrap();
        assert!(unfence.removes_taint);
        let after = apply(&fenced, &unfence.patch).unwrap();
        assert_eq!(taints(&after), vec!["dedicated"]);
        assert_eq!(after.annotations().get(ANNOTATION_FENCE), None);
        assert_eq!(
            after.annotations().get("owner").map(String::as_str),
            Some("ops")
        );
        assert_eq!(unfence_patch(&fenced, "shop/other"), None, "not ours");
        assert_eq!(unfence_patch(&before, "shop/db"), None, "no record");
    }

    #[test]
    fn a_taint_a_person_replaced_is_left_and_only_the_stale_record_goes() {
        let record = FenceRecord::new(&svc(), at(0));
        let before = node(Value::Null, json!({"owner": "ops"}));
        let mut fenced = apply(&before, &fence_patch(&before, &record).unwrap()).unwrap();
        // A person removes the taint and puts their own: same key, their own time.
        let theirs = Taint {
            time_added: Some(Time(at(60))),
            ..record.taint.clone()
        };
        fenced.spec.as_mut().unwrap().taints = Some(vec![theirs]);
        assert_eq!(record.position(&fenced), None);
        let unfence = unfence_patch(&fenced, "shop/db").unwrap();
        assert!(!unfence.removes_taint);
        let after = apply(&fenced, &unfence.patch).unwrap();
        assert_eq!(
            taints(&after),
            vec![OUT_OF_SERVICE_TAINT],
            "their taint stays"
        );
        assert_eq!(after.annotations().get(ANNOTATION_FENCE), None);
    }

    #[test]
    fn an_unfence_planned_before_a_persons_change_fails_instead_of_removing_their_taint() {
        let record = FenceRecord::new(&svc(), at(0));
        let before = node(Value::Null, json!({"owner": "ops"}));
        let fenced = apply(&before, &fence_patch(&before, &record).unwrap()).unwrap();
        let unfence = unfence_patch(&fenced, "shop/db").unwrap();
        // Meanwhile a person takes the fence over: they delete the record.
        let mut taken = fenced.clone();
        taken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANNOTATION_FENCE);
        assert!(apply(&taken, &unfence.patch).is_err());
        // Or they replace the taint at the same place.
        let mut replaced = fenced.clone();
        replaced.spec.as_mut().unwrap().taints.as_mut().unwrap()[0].value = Some("theirs".into());
        assert!(apply(&replaced, &unfence.patch).is_err());
    }

    #[test]
    fn a_record_naming_no_service_names_no_fencer() {
        for service in ["", "db", "/db", "shop/"] {
            let record = FenceRecord {
                service: service.into(),
                ..FenceRecord::new(&svc(), at(0))
            };
            assert_eq!(record.fencer(), None, "{service:?}");
        }
    }

    #[test]
    fn a_record_that_cannot_be_read_is_no_record() {
        let garbled = node(Value::Null, json!({ANNOTATION_FENCE: "{not json"}));
        assert_eq!(FenceRecord::of(&garbled), None);
        assert_eq!(unfence_patch(&garbled, "shop/db"), None);
    }
}
