//! The CRD YAML shipped in crds/ and in the chart is exactly what the Rust types generate.

use std::path::Path;

fn assert_matches_types(relative: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}; run `make crds`"));
    assert!(
        on_disk == perennial::api::crd_yaml(),
        "{relative} has drifted from the Rust types in src/api; run `make crds` and commit the result"
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
