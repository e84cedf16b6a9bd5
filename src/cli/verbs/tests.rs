use super::*;
use crate::cli::fixtures::{node_loss, revision, service};

#[test]
fn undo_goes_back_to_the_newest_earlier_revision_that_did_not_fail() {
    // #3 is the current template, #2 failed: #1 it is.
    let snap = node_loss();
    assert_eq!(undo_target(&snap, None).unwrap().revision, 1);
    assert_eq!(undo_target(&snap, Some(2)).unwrap().revision, 2);
}

#[test]
fn undo_refuses_the_template_it_has_and_a_revision_never_recorded() {
    let snap = node_loss();
    let same = undo_target(&snap, Some(3)).unwrap_err().to_string();
    assert!(same.contains("is the template web has now"), "{same}");
    let missing = undo_target(&snap, Some(9)).unwrap_err().to_string();
    assert!(missing.contains("no recorded revision 9"), "{missing}");
    assert!(missing.contains("#1 web-"), "lists what is kept: {missing}");
    let mut only_failed = node_loss();
    only_failed.revisions = vec![revision("web:2", 2, Some("x")), revision("web:3", 3, None)];
    let none = undo_target(&only_failed, None).unwrap_err().to_string();
    assert!(
        none.contains("no earlier revision that did not fail"),
        "{none}"
    );
}

#[test]
fn set_image_patches_the_named_containers_only_and_names_the_ones_there_are() {
    let mut svc = service("web:1");
    svc.spec.template.spec.as_mut().unwrap().init_containers = Some(vec![serde_json::from_value(
        json!({"name": "migrate", "image": "m:1"}),
    )
    .unwrap()]);
    let ops = image_ops(
        &svc,
        &[
            ("migrate".into(), "m:2".into()),
            ("app".into(), "web:2".into()),
        ],
    )
    .unwrap();
    assert_eq!(
        ops,
        vec![
            json!({"op": "test", "path": "/spec/template/spec/initContainers/0/name", "value": "migrate"}),
            json!({"op": "add", "path": "/spec/template/spec/initContainers/0/image", "value": "m:2"}),
            json!({"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "app"}),
            json!({"op": "add", "path": "/spec/template/spec/containers/0/image", "value": "web:2"}),
        ]
    );
    let wrong = image_ops(&svc, &[("ap".into(), "x".into())])
        .unwrap_err()
        .to_string();
    assert_eq!(
        wrong,
        "web has no container ap; its containers are migrate, app"
    );
}

#[test]
fn a_patch_applies_only_to_the_spec_that_was_read() {
    let Patch::Json(p) = json_patch(&service("web:1"), vec![]).unwrap() else {
        panic!("a JSON patch")
    };
    assert_eq!(
        serde_json::to_value(p).unwrap(),
        json!([{"op": "test", "path": "/metadata/generation", "value": 3}])
    );
}

#[test]
fn image_arguments_must_name_a_container_and_an_image() {
    assert_eq!(parse_image("app=web:2"), Ok(("app".into(), "web:2".into())));
    assert!(parse_image("app").is_err());
    assert!(parse_image("=web:2").is_err());
    assert!(parse_image("app=").is_err());
}
