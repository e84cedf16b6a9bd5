//! In-place upgrades: which templates a running pod can move between without being
//! replaced, and the patches that move it. Kubernetes lets a running pod change its
//! containers' images, its labels and annotations, and (through the `resize` subresource)
//! its containers' CPU and memory, as long as its QoS class stays the same.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Map, Value};

use crate::api::LABEL_REVISION;

/// What a template is once everything a running pod may change is taken out, hashed: two
/// templates with the same key differ only in what an in-place upgrade can apply.
pub fn in_place_key(template: &PodTemplateSpec) -> String {
    let mut fixed = template.clone();
    let qos = qos_class(template);
    fixed.metadata = None;
    if let Some(spec) = fixed.spec.as_mut() {
        for c in &mut spec.containers {
            c.image = None;
            if let Some(r) = c.resources.as_mut() {
                strip_cpu_memory(r);
            }
        }
    }
    let hashed = PodTemplateSpec {
        metadata: Some(kube::api::ObjectMeta {
            name: Some(qos.to_string()),
            ..Default::default()
        }),
        spec: fixed.spec,
    };
    super::template_hash(&hashed)
}

fn strip_cpu_memory(r: &mut ResourceRequirements) {
    for map in [r.requests.as_mut(), r.limits.as_mut()]
        .into_iter()
        .flatten()
    {
        map.retain(|k, _| k != "cpu" && k != "memory");
    }
    if r.requests.as_ref().is_some_and(BTreeMap::is_empty) {
        r.requests = None;
    }
    if r.limits.as_ref().is_some_and(BTreeMap::is_empty) {
        r.limits = None;
    }
    if r.requests.is_none() && r.limits.is_none() && r.claims.is_none() {
        *r = ResourceRequirements::default();
    }
}

/// The pod's QoS class as Kubernetes derives it from CPU and memory requests and limits.
pub fn qos_class(template: &PodTemplateSpec) -> &'static str {
    let Some(spec) = template.spec.as_ref() else {
        return "BestEffort";
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.clone().unwrap_or_default();
        let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
            m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
        };
        for k in ["cpu", "memory"] {
            let (req, lim) = (get(&r.requests, k), get(&r.limits, k));
            any |= req.is_some() || lim.is_some();
            // A request left out defaults to the limit.
            let equal = lim.is_some() && (req.is_none() || req == lim);
            guaranteed &= equal;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The patches that move a running pod from template `from` to `to` (revision
/// `revision`): a strategic merge patch of the pod (labels, annotations, images), and one of
/// its `resize` subresource when CPU or memory changes.
pub fn in_place_patches(
    from: &PodTemplateSpec,
    to: &PodTemplateSpec,
    revision: &str,
) -> (Value, Option<Value>) {
    let meta = |t: &PodTemplateSpec| t.metadata.clone().unwrap_or_default();
    let (old, new) = (meta(from), meta(to));
    let mut labels = diff(
        old.labels.unwrap_or_default(),
        new.labels.unwrap_or_default(),
    );
    labels.insert(LABEL_REVISION.to_string(), Value::from(revision));
    let annotations = diff(
        old.annotations.unwrap_or_default(),
        new.annotations.unwrap_or_default(),
    );
    let containers = |t: &PodTemplateSpec| -> Vec<Container> {
        t.spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
    };
    let (was, will) = (containers(from), containers(to));
    let images: Vec<Value> = will
        .iter()
        .map(|c| json!({"name": c.name, "image": c.image}))
        .collect();
    let mut metadata = Map::new();
    metadata.insert("labels".into(), Value::Object(labels));
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let pod = json!({"metadata": metadata, "spec": {"containers": images}});
    let resized: Vec<Value> = will
        .iter()
        .filter(|c| {
            let before = was
                .iter()
                .find(|w| w.name == c.name)
                .and_then(|w| w.resources.clone());
            before.unwrap_or_default() != c.resources.clone().unwrap_or_default()
        })
        .map(|c| {
            let r = c.resources.clone().unwrap_or_default();
            json!({"name": c.name, "resources": {
                "requests": r.requests.unwrap_or_default(),
                "limits": r.limits.unwrap_or_default(),
            }})
        })
        .collect();
    let resize = (!resized.is_empty()).then(|| json!({"spec": {"containers": resized}}));
    (pod, resize)
}

/// A merge of `old` into `new`: keys that went are set to null.
fn diff(old: BTreeMap<String, String>, new: BTreeMap<String, String>) -> Map<String, Value> {
    let mut out: Map<String, Value> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| (k.clone(), Value::Null))
        .collect();
    for (k, v) in new {
        if old.get(&k) != Some(&v) {
            out.insert(k, Value::from(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(value: Value) -> PodTemplateSpec {
        serde_json::from_value(value).unwrap()
    }

    fn app(image: &str, resources: Value, labels: Value) -> PodTemplateSpec {
        template(json!({"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": image, "resources": resources,
                "env": [{"name": "A", "value": "1"}]}]}}))
    }

    #[test]
    fn images_labels_and_resources_of_the_same_qos_class_move_in_place() {
        let burstable = |cpu: &str| json!({"requests": {"cpu": cpu}});
        let a = app("app:1", burstable("100m"), json!({"tier": "web"}));
        let b = app(
            "app:2",
            burstable("200m"),
            json!({"tier": "api", "new": "x"}),
        );
        assert_eq!(in_place_key(&a), in_place_key(&b));
    }

    #[test]
    fn anything_else_or_a_new_qos_class_needs_a_new_pod() {
        let a = app("app:1", json!({}), json!({}));
        let mut env = a.clone();
        env.spec.as_mut().unwrap().containers[0].env = None;
        assert_ne!(in_place_key(&a), in_place_key(&env));
        let guaranteed = app(
            "app:1",
            json!({"limits": {"cpu": "1", "memory": "64Mi"}}),
            json!({}),
        );
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        assert_eq!(qos_class(&a), "BestEffort");
        assert_ne!(in_place_key(&a), in_place_key(&guaranteed));
        let burstable = app("app:1", json!({"requests": {"memory": "32Mi"}}), json!({}));
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn the_patches_set_the_new_images_labels_and_revision_and_resize_only_what_changed() {
        let a = app(
            "app:1",
            json!({"requests": {"cpu": "100m"}}),
            json!({"tier": "web", "old": "y"}),
        );
        let b = app(
            "app:2",
            json!({"requests": {"cpu": "100m"}}),
            json!({"tier": "api"}),
        );
        let (pod, resize) = in_place_patches(&a, &b, "web-abc");
        assert_eq!(
            pod,
            json!({"metadata": {"labels": {"old": null, "tier": "api", LABEL_REVISION: "web-abc"}},
                "spec": {"containers": [{"name": "app", "image": "app:2"}]}})
        );
        assert_eq!(resize, None);
        let c = app(
            "app:2",
            json!({"requests": {"cpu": "300m"}}),
            json!({"tier": "api"}),
        );
        let (_, resize) = in_place_patches(&b, &c, "web-def");
        assert_eq!(
            resize,
            Some(
                json!({"spec": {"containers": [{"name": "app", "resources": {
                "requests": {"cpu": "300m"}, "limits": {}}}]}})
            )
        );
    }
}
