//! The CRD YAML shipped in crds/ and in the chart, and the field reference in docs/, are
//! exactly what the Rust types generate.

use std::path::Path;

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

#[test]
fn chart_crd_matches_the_rust_types() {
    assert_matches_types("charts/perennial/crds/perennial.dev_resilientservices.yaml");
}

#[test]
fn reference_page_matches_the_field_docs_and_rules_of_the_rust_types() {
    assert_matches_generated(
        "docs/reference.md",
        &perennial::api::crd_reference(),
        "the field docs and rules of the Rust types in src/api",
    );
}
