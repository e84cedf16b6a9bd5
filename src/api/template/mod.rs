//! Admission rules for `spec.template`: what the API server's pod validation would refuse
//! in a pod made from the template, checked when the ResilientService is created or
//! updated, so that a template that could never become a pod is refused with a message
//! naming the field (as a Deployment's is) instead of failing at every pod create.
//!
//! k8s-openapi gives the schema of `PodTemplateSpec` with its types only. This module adds
//! OpenAPI keywords where a field's rule fits one (they cost nothing to evaluate) and CEL
//! rules where a rule spans fields. A CEL rule that walks a list is priced by the API
//! server from the list's bound, and a CRD whose rules are priced too high is refused: the
//! bounds in [`bounds`] are the only place where a pod the API server would accept is
//! refused, and each is far above what a pod holds in practice.
//!
//! What only the API server knows (feature gates, admission plugins, the objects in the
//! cluster) is left to it: a pod it refuses marks its revision, and the service reports
//! `Degraded` with reason `InvalidTemplate` and the server's message (see `plan::template`).

pub(crate) mod reference;
mod rules;
#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

pub use rules::{bounds, volume_mounts_rule, Bounds};

/// One addition to the template's schema, at `path`: property names joined by `.`; `[]`
/// after a name steps into the items of a list, `{}` into the values of a map.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Constraint {
    pub path: String,
    pub change: Change,
}

/// What a constraint adds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// OpenAPI keywords, merged into the schema at the path.
    Keywords(Value),
    /// A property of the object at the path that must be present.
    Require(&'static str),
    /// An `x-kubernetes-validations` entry (rule, message or messageExpression, fieldPath,
    /// reason).
    Rule(Value),
}

/// The schema of `spec.template`: k8s-openapi's `PodTemplateSpec` with the rules of this
/// module.
pub fn pod_template_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    use schemars::JsonSchema;
    let mut schema = k8s_openapi::api::core::v1::PodTemplateSpec::json_schema(generator);
    let mut value = schema.as_value().clone();
    // A path that does not resolve means k8s-openapi moved a field; the unit tests say
    // which. The CRD is then generated without that rule rather than not at all.
    let constraints = rules::constraints(&value);
    let _missing = apply(&mut value, &constraints);
    if let Ok(constrained) = schemars::Schema::try_from(value) {
        schema = constrained;
    }
    schema
}

/// k8s-openapi's schema of `PodTemplateSpec`, inlined as in the CRD, before this module's
/// rules.
pub(crate) fn base_schema() -> Value {
    use schemars::JsonSchema;
    let mut generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    k8s_openapi::api::core::v1::PodTemplateSpec::json_schema(&mut generator).to_value()
}

/// Applies `constraints` to `schema`; returns the paths that did not resolve.
pub(crate) fn apply(schema: &mut Value, constraints: &[Constraint]) -> Vec<String> {
    let mut missing = Vec::new();
    for c in constraints {
        let Some(node) = node_mut(schema, &c.path) else {
            missing.push(c.path.clone());
            continue;
        };
        match &c.change {
            Change::Keywords(keywords) => {
                if let Some(extra) = keywords.as_object() {
                    for (k, v) in extra {
                        node.insert(k.clone(), v.clone());
                    }
                }
            }
            Change::Require(property) => {
                let required = node.entry("required").or_insert_with(|| json!([]));
                if let Some(list) = required.as_array_mut() {
                    if !list.iter().any(|p| p == property) {
                        list.push(json!(property));
                    }
                }
            }
            Change::Rule(rule) => {
                let rules = node
                    .entry("x-kubernetes-validations")
                    .or_insert_with(|| json!([]));
                if let Some(list) = rules.as_array_mut() {
                    list.push(rule.clone());
                }
            }
        }
    }
    missing
}

/// The steps of a path: a property name (empty for none), then `items` or
/// `additionalProperties` to step into.
fn steps(path: &str) -> impl Iterator<Item = (&str, Option<&'static str>)> {
    path.split('.').filter(|s| !s.is_empty()).map(|step| {
        if let Some(name) = step.strip_suffix("[]") {
            (name, Some("items"))
        } else if let Some(name) = step.strip_suffix("{}") {
            (name, Some("additionalProperties"))
        } else {
            (step, None)
        }
    })
}

/// The schema object at `path` (see [`Constraint`]), if every step exists.
pub(crate) fn node_mut<'a>(
    schema: &'a mut Value,
    path: &str,
) -> Option<&'a mut Map<String, Value>> {
    let mut node = schema;
    for (name, into) in steps(path) {
        if !name.is_empty() {
            node = node.get_mut("properties")?.get_mut(name)?;
        }
        if let Some(key) = into {
            node = node.get_mut(key)?;
        }
    }
    node.as_object_mut()
}

/// The schema object at `path`, read-only.
pub(crate) fn node<'a>(schema: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
    let mut node = schema;
    for (name, into) in steps(path) {
        if !name.is_empty() {
            node = node.get("properties")?.get(name)?;
        }
        if let Some(key) = into {
            node = node.get(key)?;
        }
    }
    node.as_object()
}
