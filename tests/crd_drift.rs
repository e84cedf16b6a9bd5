//! The CRD YAML shipped in crds/ and the CRD the chart renders, and the field reference in
//! docs/, are exactly what the Rust types generate.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::chart::{documents, render_with_chart_defaults};

fn assert_matches_generated(relative: &str, generated: &str, source: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}; run `make crds`"));
    assert!(
        on_disk == generated,
        "{relative} has drifted from {source}; run `make crds` and commit the result"
    );
}

fn assert_matches_types(relative: &str) {
    assert_matches_generated(
        relative,
        &perennial::api::crd_yaml(),
        "the Rust types in src/api",
    );
}

#[test]
fn crds_directory_matches_the_rust_types() {
    assert_matches_types("crds/perennial.dev_resilientservices.yaml");
}

/// The CRDs the chart renders with `values` over its defaults.
fn chart_crd(values: &Value) -> Vec<Value> {
    documents(&render_with_chart_defaults("perennial-system", values))
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect()
}

#[test]
fn the_crd_the_chart_renders_is_the_generated_one_kept_on_uninstall_and_labelled() {
    let rendered = chart_crd(&json!({}));
    assert_eq!(
        rendered.len(),
        1,
        "the chart renders one CRD by default: {rendered:?}"
    );
    let mut crd = rendered.into_iter().next().unwrap();
    let metadata = crd["metadata"].as_object_mut().unwrap();
    let mut annotations = metadata["annotations"].as_object().cloned().unwrap();
    assert_eq!(
        annotations.remove("helm.sh/resource-policy"),
        Some(json!("keep")),
        "helm uninstall must never delete the CRD, and with it every ResilientService"
    );
    metadata.insert("annotations".into(), Value::Object(annotations));
    let labels = metadata
        .remove("labels")
        .expect("the chart's CRD carries the chart's labels");
    assert_eq!(labels["app.kubernetes.io/name"], "perennial", "{labels}");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{labels}");

    let generated: Value = serde_yaml::from_str(&perennial::api::crd_yaml()).unwrap();
    assert!(
        crd == generated,
        "charts/perennial/templates/crd.yaml has drifted from the Rust types in src/api; run `make crds` and commit the result"
    );
}

#[test]
fn with_crds_install_false_the_chart_renders_no_crd() {
    assert!(chart_crd(&json!({"crds": {"install": false}})).is_empty());
}

#[test]
fn reference_page_matches_the_field_docs_and_rules_of_the_rust_types() {
    assert_matches_generated(
        "docs/reference.md",
        &perennial::api::crd_reference(),
        "the field docs and rules of the Rust types in src/api",
    );
}
