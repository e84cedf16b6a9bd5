//! What the API server itself enforces for `ResilientService`, with no operator running:
//! the samples apply, invalid specs are rejected with a message naming the field, immutable
//! fields stay immutable, the scale subresource and `kubectl explain` work, and the server's
//! defaults match the Rust types.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::Api;
use perennial::api::{ResilientService, ResilientServiceSpec};
use serde_json::{json, Value};
use support::admission::*;
use support::*;

const SERVED: Duration = Duration::from_secs(30);

fn run_kubectl(args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(args);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

fn invalid_cases() -> Vec<Case> {
    let reserved = |key: &str| json!({"template": {"metadata": {"labels": {"app.kubernetes.io/name": "probe", key: "x"}}}});
    let canary = |steps: Value| json!({"update": {"canary": {"steps": steps}}});
    let both_zero = "spec.update: maxSurge and maxUnavailable cannot both be zero";
    let deadline = "spec.update.progressDeadlineSeconds must be greater than minReadySeconds";
    let surge_pattern = "spec.update.maxSurge in body should match '^(100|[1-9]?[0-9])%$'";
    let unavailable_pattern =
        "spec.update.maxUnavailable in body should match '^(100|[1-9]?[0-9])%$'";
    let reserved_message = "is reserved for the operator";
    vec![
        case("replicas below 0", json!({"replicas": -1}),
            "spec.replicas in body should be greater than or equal to 0")
            .without("spec.update.partition"),
        case("replicas above 10000", json!({"replicas": 10001}),
            "spec.replicas in body should be less than or equal to 10000"),
        case("maxSurge \"150%\"", json!({"update": {"maxSurge": "150%"}}), surge_pattern),
        case("maxSurge \"abc\"", json!({"update": {"maxSurge": "abc"}}), surge_pattern),
        case("maxSurge -1", json!({"update": {"maxSurge": -1}}),
            "spec.update.maxSurge in body should be greater than or equal to 0"),
        case("maxUnavailable \"150%\"", json!({"update": {"maxUnavailable": "150%"}}), unavailable_pattern),
        case("maxUnavailable \"abc\"", json!({"update": {"maxUnavailable": "abc"}}), unavailable_pattern),
        case("maxUnavailable -1", json!({"update": {"maxUnavailable": -1}}),
            "spec.update.maxUnavailable in body should be greater than or equal to 0"),
        case("maxSurge 0 and maxUnavailable 0", json!({"update": {"maxSurge": 0, "maxUnavailable": 0}}), both_zero),
        case("maxSurge \"0%\" and maxUnavailable \"0%\"",
            json!({"update": {"maxSurge": "0%", "maxUnavailable": "0%"}}), both_zero),
        case("maxSurge \"0%\", maxUnavailable defaulted to 0", json!({"update": {"maxSurge": "0%"}}), both_zero),
        case("partition above replicas", json!({"replicas": 2, "update": {"partition": 3}}),
            "spec.update.partition must be between 0 and spec.replicas"),
        case("partition below 0", json!({"update": {"partition": -1}}),
            "spec.update.partition in body should be greater than or equal to 0"),
        case("canary step with replicas and pause",
            canary(json!([{"replicas": 1, "pause": {"seconds": 30}}])),
            "spec.update.canary.steps: each step sets exactly one of replicas or pause"),
        case("canary step with neither replicas nor pause", canary(json!([{"replicas": 1}, {}])),
            "spec.update.canary.steps: each step sets exactly one of replicas or pause"),
        case("canary with an empty steps list", canary(json!([])),
            "spec.update.canary.steps in body should have at least 1 items"),
        case("canary without steps", json!({"update": {"canary": {}}}),
            "spec.update.canary.steps: Required value"),
        case("canary pause of 0 seconds", canary(json!([{"replicas": 1}, {"pause": {"seconds": 0}}])),
            "spec.update.canary.steps[1].pause.seconds in body should be greater than or equal to 1"),
        case("canary step replicas \"101%\"", canary(json!([{"replicas": "101%"}])),
            "spec.update.canary.steps[0].replicas in body should match"),
        case("supervision.maxRestarts 0", json!({"supervision": {"maxRestarts": 0}}),
            "spec.supervision.maxRestarts in body should be greater than or equal to 1"),
        case("supervision.periodSeconds 5", json!({"supervision": {"periodSeconds": 5}}),
            "spec.supervision.periodSeconds in body should be greater than or equal to 10"),
        case("repair.nodeLostAfterSeconds 5", json!({"repair": {"nodeLostAfterSeconds": 5}}),
            "spec.repair.nodeLostAfterSeconds in body should be greater than or equal to 10"),
        case("repair.maxConcurrentRepairs 0", json!({"repair": {"maxConcurrentRepairs": 0}}),
            "spec.repair.maxConcurrentRepairs in body should be greater than or equal to 1"),
        case("duplicate volumeClaimTemplates names",
            json!({"volumeClaimTemplates": [claim("data"), claim("logs"), claim("data")]}),
            "spec.volumeClaimTemplates: metadata.name must be unique"),
        case("claim template name with capitals and _", json!({"volumeClaimTemplates": [claim("Data_1")]}),
            "spec.volumeClaimTemplates[0].metadata.name in body should match"),
        case("claim template name of 41 characters",
            json!({"volumeClaimTemplates": [claim(&"d".repeat(41))]}),
            "spec.volumeClaimTemplates[0].metadata.name: Too long: may not be more than 40 bytes"),
        case("reserved label perennial.dev/service", reserved("perennial.dev/service"),
            "spec.template.metadata.labels: the key perennial.dev/service is reserved for the operator"),
        case("reserved label perennial.dev/slot", reserved("perennial.dev/slot"),
            "spec.template.metadata.labels: the key perennial.dev/slot is reserved for the operator"),
        case("reserved label perennial.dev/revision", reserved("perennial.dev/revision"),
            "spec.template.metadata.labels: the key perennial.dev/revision is reserved for the operator"),
        case("template without containers", json!({"template": {"spec": {"containers": null}}}),
            "spec.template.spec.containers: Required value"),
        case("minDomains with whenUnsatisfiable ScheduleAnyway",
            json!({"redundancy": {"minDomains": 3, "whenUnsatisfiable": "ScheduleAnyway"}}),
            "spec.redundancy.minDomains requires whenUnsatisfiable: DoNotSchedule"),
        case("minDomains with whenUnsatisfiable defaulted", json!({"redundancy": {"minDomains": 3}}),
            "spec.redundancy.minDomains requires whenUnsatisfiable: DoNotSchedule"),
        case("redundancy.maxSkew 0", json!({"redundancy": {"maxSkew": 0}}),
            "spec.redundancy.maxSkew in body should be greater than or equal to 1"),
        case("quorum together with maxUnavailable",
            json!({"disruptionBudget": {"quorum": true, "maxUnavailable": 1}}),
            "spec.disruptionBudget: set either maxUnavailable or quorum: true, not both"),
        case("disruptionBudget.maxUnavailable \"150%\"", json!({"disruptionBudget": {"maxUnavailable": "150%"}}),
            "spec.disruptionBudget.maxUnavailable in body should match"),
        case("progressDeadlineSeconds equal to minReadySeconds",
            json!({"update": {"minReadySeconds": 30, "progressDeadlineSeconds": 30}}), deadline),
        case("progressDeadlineSeconds below minReadySeconds",
            json!({"update": {"minReadySeconds": 120, "progressDeadlineSeconds": 60}}), deadline),
        case("minReadySeconds 600 against the default deadline of 600",
            json!({"update": {"minReadySeconds": 600}}), deadline),
        case("update.strategy BlueGreen", json!({"update": {"strategy": "BlueGreen"}}),
            "spec.update.strategy: Unsupported value: \"BlueGreen\": supported values: \"RollingUpdate\", \"Recreate\""),
        case("update.rollback Never", json!({"update": {"rollback": "Never"}}),
            "spec.update.rollback: Unsupported value: \"Never\": supported values: \"Automatic\", \"Manual\""),
        case("repair.fencing Always", json!({"repair": {"fencing": "Always"}}),
            "spec.repair.fencing: Unsupported value: \"Always\": supported values: \"WaitForEvidence\", \"TaintOutOfService\", \"None\""),
        case("repair.storage.onVolumeLost Delete", json!({"repair": {"storage": {"onVolumeLost": "Delete"}}}),
            "spec.repair.storage.onVolumeLost: Unsupported value: \"Delete\": supported values: \"Retain\", \"Recreate\""),
        case("retention whenScaled Keep",
            json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Keep"}}),
            "spec.persistentVolumeClaimRetentionPolicy.whenScaled: Unsupported value: \"Keep\": supported values: \"Retain\", \"Delete\""),
        case("retention whenDeleted Keep",
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Keep"}}),
            "spec.persistentVolumeClaimRetentionPolicy.whenDeleted: Unsupported value: \"Keep\""),
        case("podManagementPolicy Sequential", json!({"podManagementPolicy": "Sequential"}),
            "spec.podManagementPolicy: Unsupported value: \"Sequential\": supported values: \"Parallel\", \"OrderedReady\""),
        case("redundancy.whenUnsatisfiable Never", json!({"redundancy": {"whenUnsatisfiable": "Never"}}),
            "spec.redundancy.whenUnsatisfiable: Unsupported value: \"Never\""),
        case("escalation step Reboot", json!({"supervision": {"escalation": ["Restart", "Reboot"]}}),
            "spec.supervision.escalation[1]: Unsupported value: \"Reboot\": supported values: \"Restart\", \"Reschedule\", \"RebuildStorage\", \"Quarantine\""),
        case("duplicate escalation steps",
            json!({"supervision": {"escalation": ["Restart", "Reschedule", "Restart"]}}),
            "spec.supervision.escalation[2]: Duplicate value: \"Restart\""),
        case("empty escalation ladder", json!({"supervision": {"escalation": []}}),
            "spec.supervision.escalation in body should have at least 1 items"),
        case("serviceName with capitals", json!({"serviceName": "Store"}),
            "spec.serviceName in body should match '^[a-z]([-a-z0-9]*[a-z0-9])?$'"),
        case("serviceName of 64 characters", json!({"serviceName": "s".repeat(64)}),
            "spec.serviceName: Too long: may not be more than 63 bytes"),
        case("missing template", json!({"template": null}), "spec.template: Required value"),
        case("revisionHistoryLimit -1", json!({"revisionHistoryLimit": -1}),
            "spec.revisionHistoryLimit in body should be greater than or equal to 0"),
        case("reserved label key beside other errors", merged(&reserved("perennial.dev/slot"), &json!({"replicas": -1})),
            reserved_message),
    ]
}

#[tokio::test]
async fn every_sample_applies_server_side_and_round_trips_through_the_rust_types() {
    let ns = TestNamespace::new("adm-samples").await;
    let raw = ready(&ns).await;
    let dir = repo_root().join("samples");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 3, "samples/ holds {samples:?}");

    let mut names = Vec::new();
    for path in &samples {
        let text = std::fs::read_to_string(path).expect("read the sample");
        assert!(
            text.starts_with("# "),
            "{} does not start with a comment saying what it shows",
            path.display()
        );
        let local: ResilientService = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a ResilientService: {e}", path.display()));
        let name = local.metadata.name.clone().expect("a sample has a name");
        let file = path.to_str().expect("a UTF-8 path");
        let out = run_kubectl(&["apply", "--server-side", "-n", &ns.name, "-f", file]);
        assert!(out.contains("serverside-applied"), "{file}: {out}");

        // What the server stored reads into the Rust types and writes back unchanged.
        let stored = raw.get(&name).await.expect("the sample is stored");
        let spec = stored.data["spec"].clone();
        let typed: ResilientServiceSpec = serde_json::from_value(spec.clone())
            .unwrap_or_else(|e| panic!("{file}: the stored spec does not deserialize: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), spec, "{file}");
        names.push(name);
    }

    let table = run_kubectl(&["get", "rsvc", "-n", &ns.name]);
    println!("$ kubectl get rsvc -n {}\n{table}", ns.name);
    for name in &names {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from\n{table}"
        );
    }
}

#[tokio::test]
async fn api_server_rejects_each_invalid_spec_with_a_message_naming_the_field() {
    let ns = TestNamespace::new("adm-invalid").await;
    let api = ready(&ns).await;
    let base = minimal_spec();
    let cases = invalid_cases();
    assert!(cases.len() >= 32, "only {} cases", cases.len());
    // The control first: the spec every case breaks is itself valid.
    assert_rejections(&api, "invalid", &base, &cases).await;
}

#[tokio::test]
async fn names_the_operator_cannot_use_are_rejected_with_the_reason() {
    let ns = TestNamespace::new("adm-names").await;
    let api = ready(&ns).await;
    let long = "a".repeat(53);
    let refused = [
        (
            long.as_str(),
            minimal_spec(),
            "metadata.name: at most 52 characters",
        ),
        ("web.v2", minimal_spec(), "metadata.name: no dots"),
        (
            "2web",
            minimal_spec(),
            "metadata.name must start with a letter unless spec.serviceName is set",
        ),
    ];
    for (name, spec, expect) in refused {
        let message = create(&api, name, spec)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(reason(&message).contains(expect), "{name}: {message}");
    }
    // The limits are exact, and a leading digit is fine once the Service has its own name.
    let longest = "b".repeat(52);
    create(&api, &longest, minimal_spec())
        .await
        .expect("52 characters");
    let named = merged(&minimal_spec(), &json!({"serviceName": "web"}));
    create(&api, "2web", named)
        .await
        .expect("a leading digit with spec.serviceName");
}

#[tokio::test]
async fn claim_templates_and_service_name_cannot_change_after_creation() {
    let ns = TestNamespace::new("adm-immutable").await;
    let api = ready(&ns).await;
    let immutable_claims = "spec.volumeClaimTemplates is immutable";
    let immutable_name = "spec.serviceName is immutable";

    let with_storage = merged(
        &minimal_spec(),
        &json!({"serviceName": "store", "volumeClaimTemplates": [claim("data")]}),
    );
    create(&api, "store", with_storage).await.expect("valid");
    create(&api, "plain", minimal_spec()).await.expect("valid");

    let mut bigger = claim("data");
    bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
    let attempts = [
        (
            "store",
            "grow the claim template",
            json!({"volumeClaimTemplates": [bigger]}),
            immutable_claims,
        ),
        (
            "store",
            "add a claim template",
            json!({"volumeClaimTemplates": [claim("data"), claim("logs")]}),
            immutable_claims,
        ),
        (
            "store",
            "drop the claim templates",
            json!({"volumeClaimTemplates": []}),
            immutable_claims,
        ),
        (
            "plain",
            "add a claim template",
            json!({"volumeClaimTemplates": [claim("data")]}),
            immutable_claims,
        ),
        (
            "store",
            "rename the service",
            json!({"serviceName": "store-v2"}),
            immutable_name,
        ),
        (
            "store",
            "remove serviceName",
            json!({"serviceName": null}),
            immutable_name,
        ),
        (
            "plain",
            "add serviceName",
            json!({"serviceName": "plain"}),
            immutable_name,
        ),
    ];
    let mut failures = Vec::new();
    for (name, what, patch, expect) in attempts {
        match patch_spec(&api, name, patch).await {
            Ok(()) => failures.push(format!("{name}: {what}: accepted")),
            Err(m) if m.contains(expect) => println!("{name}: {what}: {}", reason(&m)),
            Err(m) => failures.push(format!(
                "{name}: {what}: expected \"{expect}\", got \"{m}\""
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The rules are about those fields only: other changes to the same objects go through,
    // and so does re-sending the same claim templates and serviceName.
    patch_spec(
        &api,
        "store",
        json!({"replicas": 3, "serviceName": "store", "volumeClaimTemplates": [claim("data")]}),
    )
    .await
    .expect("changing replicas is allowed");
    patch_spec(&api, "plain", json!({"paused": true}))
        .await
        .expect("pausing is allowed");
}

#[tokio::test]
async fn kubectl_scale_sets_spec_replicas_through_the_scale_subresource() {
    let ns = TestNamespace::new("adm-scale").await;
    let raw = ready(&ns).await;
    create(
        &raw,
        "web",
        merged(&minimal_spec(), &json!({"replicas": 2})),
    )
    .await
    .expect("valid");

    let out = run_kubectl(&["scale", "-n", &ns.name, "rsvc/web", "--replicas=5"]);
    assert!(out.contains("scaled"), "{out}");

    let typed: Api<ResilientService> = ns.api();
    let replicas = typed
        .get("web")
        .await
        .expect("the service exists")
        .spec
        .replicas;
    assert_eq!(replicas, 5);
    let scale = run_kubectl(&[
        "get",
        "--raw",
        &format!(
            "/apis/perennial.dev/v1alpha1/namespaces/{}/resilientservices/web/scale",
            ns.name
        ),
    ]);
    let scale: Value = serde_json::from_str(&scale).expect("a Scale object");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5, "{scale}");

    // The scale subresource goes through the same validation as the spec.
    let (ok, _, stderr) = kubectl(&["scale", "-n", &ns.name, "rsvc/web", "--replicas=10001"]);
    assert!(!ok, "scaling to 10001 was accepted");
    assert!(
        stderr.contains("spec.replicas in body should be less than or equal to 10000"),
        "{stderr}"
    );
    assert_eq!(typed.get("web").await.unwrap().spec.replicas, 5);
}

#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments_of_spec_update() {
    let ns = TestNamespace::new("adm-explain").await;
    ready(&ns).await;
    // The server publishes the CRD's OpenAPI a moment after the CRD is established.
    let text = wait_for("kubectl explain to show spec.update", SERVED, || async {
        let (ok, stdout, stderr) = kubectl(&["explain", "resilientservice.spec.update"]);
        if ok && stdout.contains("maxSurge") {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    })
    .await;
    println!("$ kubectl explain resilientservice.spec.update\n{text}");
    // kubectl wraps lines; compare with runs of whitespace collapsed.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for phrase in [
        "How a new template is rolled out.",
        "Extra pods allowed above `replicas` during a rolling update: a count or a percentage.",
        "Seconds a new pod must stay Ready before it counts as available.",
        "Slots with an ordinal below the partition stay on the old revision",
        "enum: RollingUpdate, Recreate",
    ] {
        assert!(flat.contains(phrase), "explain lacks \"{phrase}\":\n{text}");
    }
}

#[tokio::test]
async fn server_defaults_a_minimal_spec_exactly_as_the_rust_types_do() {
    let ns = TestNamespace::new("adm-defaults").await;
    let api = ready(&ns).await;
    let created = create(&api, "minimal", minimal_spec())
        .await
        .expect("valid");
    let server_spec = created.data["spec"].clone();

    // The server filled in every default...
    for (pointer, expected) in [
        ("/replicas", json!(1)),
        ("/update/maxSurge", json!(1)),
        ("/update/maxUnavailable", json!(0)),
        ("/update/progressDeadlineSeconds", json!(600)),
        ("/supervision/maxRestarts", json!(5)),
        ("/supervision/periodSeconds", json!(300)),
        ("/repair/nodeLostAfterSeconds", json!(30)),
        (
            "/redundancy/topologyKey",
            json!("topology.kubernetes.io/zone"),
        ),
        ("/revisionHistoryLimit", json!(10)),
    ] {
        assert_eq!(
            server_spec.pointer(pointer),
            Some(&expected),
            "spec{pointer}"
        );
    }

    // ...it reads into the Rust types and writes back unchanged...
    let typed: ResilientServiceSpec =
        serde_json::from_value(server_spec.clone()).expect("the server's spec deserializes");
    assert_eq!(serde_json::to_value(&typed).unwrap(), server_spec);

    // ...and it is what serde's defaults make of the same minimal spec.
    let local: ResilientServiceSpec = serde_json::from_value(minimal_spec()).unwrap();
    assert_eq!(
        local, typed,
        "the CRD's defaults differ from the Rust types' defaults"
    );

    // kubectl shows the defaults too.
    let yaml = run_kubectl(&["get", "rsvc", "minimal", "-n", &ns.name, "-o", "yaml"]);
    let shown: Value = serde_yaml::from_str(&yaml).expect("kubectl prints YAML");
    assert_eq!(
        shown.pointer("/spec/update/maxSurge"),
        Some(&json!(1)),
        "{yaml}"
    );
    assert_eq!(
        shown.pointer("/spec/supervision/maxRestarts"),
        Some(&json!(5)),
        "{yaml}"
    );
    assert_eq!(
        shown.pointer("/spec/supervision/escalation"),
        Some(&json!([
            "Restart",
            "Reschedule",
            "RebuildStorage",
            "Quarantine"
        ])),
        "{yaml}"
    );
}

#[tokio::test]
async fn explicit_nulls_in_count_or_percent_fields_are_dropped_and_defaulted() {
    let ns = TestNamespace::new("adm-nulls").await;
    let api = ready(&ns).await;
    // Set by hand: merged() reads null as "remove the field".
    let mut spec = minimal_spec();
    spec["update"] = json!({
        "maxSurge": null,
        "maxUnavailable": null,
        "canary": {"steps": [{"replicas": null, "pause": {}}]}
    });
    spec["disruptionBudget"] = json!({"quorum": true, "maxUnavailable": null});
    let created = create(&api, "nulls", spec).await.expect("valid");
    let stored = created.data["spec"].clone();
    for (pointer, expected) in [
        ("/update/maxSurge", json!(1)),
        ("/update/maxUnavailable", json!(0)),
        ("/update/canary/steps/0", json!({"pause": {}})),
        ("/disruptionBudget", json!({"quorum": true})),
    ] {
        assert_eq!(
            stored.pointer(pointer),
            Some(&expected),
            "spec{pointer} in {stored}"
        );
    }
    let typed: ResilientServiceSpec =
        serde_json::from_value(stored.clone()).expect("the stored spec deserializes");
    assert_eq!(serde_json::to_value(&typed).unwrap(), stored);
}
