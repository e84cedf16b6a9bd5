//! The template's rules land where they are meant to, and the CRD carries them.

use super::*;

#[test]
fn every_constraint_finds_its_field_in_the_pod_template_schema() {
    let mut schema = base_schema();
    let constraints = rules::constraints(&schema);
    let missing = apply(&mut schema, &constraints);
    assert!(
        missing.is_empty(),
        "paths not in PodTemplateSpec: {missing:?}"
    );
}

#[test]
fn a_path_that_does_not_resolve_is_reported_and_changes_nothing() {
    let mut schema = base_schema();
    let before = schema.clone();
    let missing = apply(
        &mut schema,
        &[Constraint {
            path: "spec.containers[].nosuchfield".into(),
            change: Change::Keywords(serde_json::json!({"minimum": 1})),
        }],
    );
    assert_eq!(missing, vec!["spec.containers[].nosuchfield".to_string()]);
    assert_eq!(schema, before);
}

#[test]
fn a_required_property_is_added_once() {
    let mut schema = base_schema();
    let twice = vec![
        Constraint {
            path: "spec.containers[]".into(),
            change: Change::Require("image"),
        };
        2
    ];
    assert!(apply(&mut schema, &twice).is_empty());
    let required = node(&schema, "spec.containers[]").unwrap()["required"].clone();
    assert_eq!(required, serde_json::json!(["name", "image"]));
}

#[test]
fn the_volume_rule_counts_every_volume_source_of_the_schema() {
    let base = base_schema();
    let sources = node(&base, "spec.volumes[]").unwrap()["properties"]
        .as_object()
        .unwrap()
        .len()
        - 1;
    let constraints = rules::constraints(&base);
    let rule = constraints
        .iter()
        .find_map(|c| match &c.change {
            Change::Rule(r) if c.path == "spec.volumes[]" => r["rule"].as_str(),
            _ => None,
        })
        .expect("a rule on each volume");
    assert!(sources >= 29, "{sources} volume sources");
    assert_eq!(rule.matches("has(self.").count(), sources, "{rule}");
}

#[test]
fn the_crd_carries_the_template_rules_and_bounds() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(crate::api::ResilientService::crd()).unwrap();
    let template = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/template")
        .expect("spec.template");
    let containers = node(template, "spec.containers").expect("containers");
    assert_eq!(containers["minItems"], 1.0);
    assert_eq!(containers["maxItems"], f64::from(bounds().containers));
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    assert_eq!(template["required"], serde_json::json!(["spec"]));
    // The description stays the field's doc comment.
    assert!(template["description"]
        .as_str()
        .unwrap()
        .starts_with("The pod every replica runs."));
}

#[test]
fn alike_fields_share_one_row_of_the_reference_and_others_keep_theirs() {
    let page = crate::api::crd_reference();
    let rows: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("| `spec.template."))
        .collect();
    assert!(rows.iter().any(|r| r.starts_with(
        "| `spec.template.spec.{containers,initContainers}[*].{livenessProbe,readinessProbe,startupProbe}` | CEL |"
    )));
    assert!(rows.iter().any(|r| r.starts_with(
        "| `spec.template.spec.{containers,initContainers}[*].{livenessProbe,startupProbe}.successThreshold` | schema | 0 to 1 |"
    )));
    assert!(rows.iter().any(|r| r.starts_with(
        "| `spec.template.spec.initContainers[*]` | CEL | livenessProbe, readinessProbe, startupProbe and lifecycle"
    )));
    assert!(
        !rows.iter().any(|r| r.contains("initContainers[*].name")),
        "merged"
    );
}
