//! `helm upgrade` from the previous chart version, whose CRD came from its crds/ directory
//! (Helm created it once and never upgraded it), to this one, whose CRD is a template:
//! the upgrade takes the CRD over and upgrades it, every ResilientService and pod stays as
//! it was, and `helm uninstall` leaves the CRD and the services in place.
//!
//! The CRD is cluster-wide, so this scenario changes what every other test sees. It is one
//! test function in a binary of its own (test binaries run one at a time, the tests of a
//! binary in parallel), and it puts the generated CRD back when it ends, also when it fails.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::ResourceExt;
use perennial::api::{ResilientService, ANNOTATION_SCHEMA_HASH, LABEL_SERVICE};
use serde_json::{json, Value};
use support::chart::*;
use support::pods::*;
use support::service::*;
use support::*;

/// The commit of the previous chart version (0.1.0): its CRD, in crds/, has neither
/// `spec.drain` nor `spec.update.inPlace`.
const PREVIOUS_CHART_COMMIT: &str = "a3dfa4c";
const CRD_NAME: &str = "resilientservices.perennial.dev";
/// Scheduling and starting pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The chart as of PREVIOUS_CHART_COMMIT, extracted with `git archive` into target/; the
/// directory is removed when the guard drops.
struct PreviousChart {
    root: PathBuf,
}

impl PreviousChart {
    fn extract() -> Self {
        let repo = repo_root();
        let commit = format!("{PREVIOUS_CHART_COMMIT}^{{commit}}");
        let found = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["cat-file", "-e", &commit])
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("this test reads the previous chart from git, which cannot run: {e}")
            });
        assert!(
            found.success(),
            "commit {PREVIOUS_CHART_COMMIT} (the previous chart version) is not in this clone; \
             the test needs the repository's full history (git fetch --unshallow)"
        );
        let root = repo
            .join("target/chart-upgrade")
            .join(format!("previous-{}", unique_suffix()));
        std::fs::create_dir_all(&root).expect("create the directory of the previous chart");
        let mut archive = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["archive", PREVIOUS_CHART_COMMIT, "charts/perennial"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run git archive");
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&root)
            .stdin(
                archive
                    .stdout
                    .take()
                    .expect("git archive's stdout is piped"),
            )
            .status()
            .expect("run tar");
        let archived = archive.wait().expect("git archive finishes");
        assert!(
            archived.success() && tar.success(),
            "git archive {PREVIOUS_CHART_COMMIT} charts/perennial | tar -x failed: {archived}, {tar}"
        );
        Self { root }
    }

    fn chart(&self) -> String {
        self.root.join("charts/perennial").display().to_string()
    }

    /// The CRD file the previous chart shipped in crds/.
    fn crd_file(&self) -> PathBuf {
        self.root
            .join("charts/perennial/crds/perennial.dev_resilientservices.yaml")
    }
}

impl Drop for PreviousChart {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Replaces the whole CRD object (spec, labels and annotations) by the one in `yaml`, as a
/// PUT: fields it lacks are removed, whoever set them.
fn replace_crd(yaml: &str) -> Result<(), String> {
    let (ok, out, err) = kubectl_stdin(&["replace", "-f", "-"], yaml);
    if ok {
        return Ok(());
    }
    let (ok, out2, err2) = kubectl_stdin(&["create", "-f", "-"], yaml);
    if ok {
        Ok(())
    } else {
        Err(format!("{out}{err}{out2}{err2}"))
    }
}

/// Puts the generated CRD back when dropped, so that a failure halfway does not leave the
/// previous CRD, or one owned by this test's release, to the tests after this one.
struct RestoreGeneratedCrd;

impl Drop for RestoreGeneratedCrd {
    fn drop(&mut self) {
        let _ = replace_crd(&perennial::api::crd_yaml());
    }
}

/// The properties of `spec` in the served CRD's schema.
fn spec_properties(crd: &CustomResourceDefinition) -> Value {
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
    schema["openAPIV3Schema"]["properties"]["spec"]["properties"].clone()
}

/// Whether the CRD's schema has the fields of this version: spec.drain and
/// spec.update.inPlace.
fn has_new_fields(crd: &CustomResourceDefinition) -> (bool, bool) {
    let spec = spec_properties(crd);
    (
        spec.get("drain").is_some(),
        spec["update"]["properties"].get("inPlace").is_some(),
    )
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// What must not change: each service's UID, resourceVersion and generation.
type Services = BTreeMap<String, (String, String, i64)>;

async fn services(api: &Api<ResilientService>) -> Services {
    api.list(&Default::default())
        .await
        .expect("list the services")
        .items
        .into_iter()
        .map(|s| {
            let generation = s.metadata.generation.unwrap_or_default();
            (
                s.name_any(),
                (
                    s.uid().unwrap_or_default(),
                    s.resource_version().unwrap_or_default(),
                    generation,
                ),
            )
        })
        .collect()
}

/// Every pod of the namespace's services, by name: its UID, and whether it is leaving.
async fn service_pods(ns: &TestNamespace) -> BTreeMap<String, (String, bool)> {
    pods(ns, LABEL_SERVICE)
        .await
        .iter()
        .map(|p: &Pod| (p.name_any(), (uid(p), terminating(p))))
        .collect()
}

/// Creates a service from JSON with kubectl and strict field validation (as `kubectl
/// create` does by default): a field the installed schema does not know is an error.
fn create_strictly(namespace: &str, service: &Value, dry_run: bool) -> (bool, String) {
    let mut args = vec!["create", "--validate=strict", "-n", namespace, "-f", "-"];
    if dry_run {
        args.push("--dry-run=server");
    }
    let (ok, out, err) = kubectl_stdin(&args, &service.to_string());
    (ok, format!("{out}{err}"))
}

/// A service that sets a field only this version's CRD has.
fn drained_service() -> Value {
    let mut svc = serde_json::to_value(service("drained", 1, "example/app:1", json!({}))).unwrap();
    svc["spec"]["drain"] = json!({"settleSeconds": 7, "timeoutSeconds": 40});
    svc
}

async fn crd_now(crds: &Api<CustomResourceDefinition>) -> CustomResourceDefinition {
    crds.get(CRD_NAME).await.expect("read the CRD")
}

fn annotation(crd: &CustomResourceDefinition, key: &str) -> Option<String> {
    crd.annotations().get(key).cloned()
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_chart_upgrades_the_crd_and_leaves_every_service_and_pod_untouched(
) {
    let previous = PreviousChart::extract();
    let ns = TestNamespace::new("chart-upgrade").await;
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let api: Api<ResilientService> = ns.api();

    // This build's operator stands in for the previous release's (the chart's image of that
    // version). Its start-up check accepts only the CRD it was built with, so it starts
    // before the previous CRD is put back; the services below use no field that CRD lacks.
    install_crd(&ns.client).await;
    let _restore = RestoreGeneratedCrd;
    let operator = Operator::start(&ns.name);
    let addr = metrics_addr(&operator).await;
    wait_for("the operator to be ready", TIMEOUT, || async {
        let answer = get(&addr, "/readyz").await;
        answer
            .starts_with("HTTP/1.1 200")
            .then_some(())
            .ok_or(answer)
    })
    .await;

    // The previous release: its CRD as its crds/ directory had Helm create it (nothing of
    // Helm's in its metadata), then the chart itself, which skips a CRD that exists.
    let previous_crd =
        std::fs::read_to_string(previous.crd_file()).expect("the previous chart has crds/");
    replace_crd(&previous_crd).expect("put the previous chart's CRD in place");
    wait_object(
        &crds,
        CRD_NAME,
        "the previous schema, established",
        TIMEOUT,
        |crd| {
            let fields = has_new_fields(crd);
            (fields == (false, false) && established(crd))
                .then_some(())
                .ok_or(format!("drain, inPlace in the schema: {fields:?}"))
        },
    )
    .await;
    let (mut release, _) =
        Release::install_chart(&previous.chart(), &ns.name, &json!({"replicaCount": 0}));
    let (refused, why) = create_strictly(&ns.name, &drained_service(), true);
    assert!(
        !refused && why.contains("drain"),
        "the previous CRD refuses spec.drain: {why}"
    );

    for (name, replicas) in [("web", 3), ("api", 2)] {
        create_service(&ns, &service(name, replicas, "example/app:1", json!({}))).await;
    }
    for name in ["web", "api"] {
        wait_converged(&api, name, TIMEOUT).await;
    }
    // Nothing may change them now but the upgrade.
    drop(operator);
    let services_before = services(&api).await;
    let pods_before = service_pods(&ns).await;
    assert_eq!(services_before.len(), 2);
    assert_eq!(pods_before.len(), 5, "{pods_before:?}");
    assert!(pods_before.values().all(|(_, leaving)| !leaving));

    // The upgrade to this chart, its CRD a template of the release.
    let values = json!({"replicaCount": 0, "crds": {"install": true}});
    let (ok, out, err) = release.upgrade(chart(), &values, &[]);
    assert!(
        !ok && err.contains("invalid ownership metadata"),
        "Helm refuses to adopt a CRD without its ownership metadata: {out}{err}"
    );
    assert_eq!(has_new_fields(&crd_now(&crds).await), (false, false));
    let (ok, out, err) = release.upgrade(chart(), &values, &["--take-ownership"]);
    assert!(ok, "helm upgrade --take-ownership failed: {err}\n{out}");

    let crd = wait_object(
        &crds,
        CRD_NAME,
        "this version's schema, established",
        TIMEOUT,
        |crd| {
            let fields = has_new_fields(crd);
            (fields == (true, true) && established(crd))
                .then(|| crd.clone())
                .ok_or(format!("drain, inPlace in the schema: {fields:?}"))
        },
    )
    .await;
    assert_eq!(
        annotation(&crd, ANNOTATION_SCHEMA_HASH).as_deref(),
        Some(perennial::api::schema_hash()),
        "the upgraded CRD is stamped as this build's"
    );
    assert_eq!(
        annotation(&crd, "helm.sh/resource-policy").as_deref(),
        Some("keep")
    );
    assert_eq!(
        annotation(&crd, "meta.helm.sh/release-namespace").as_deref(),
        Some(ns.name.as_str()),
        "the release owns the CRD now"
    );

    assert_eq!(
        services(&api).await,
        services_before,
        "the upgrade changed a service (UID, resourceVersion or generation)"
    );
    assert_eq!(
        service_pods(&ns).await,
        pods_before,
        "the upgrade replaced or deleted a pod"
    );
    // A stored service is read through the new schema: the new field's default appears.
    let web = api.get("web").await.expect("read web");
    let drain = serde_json::to_value(&web).unwrap()["spec"]["drain"].clone();
    assert_eq!(drain["settleSeconds"], 2, "{drain}");

    // A spec with a field of this version is accepted, and kept.
    let (created, why) = create_strictly(&ns.name, &drained_service(), false);
    assert!(created, "this version's CRD accepts spec.drain: {why}");
    let drained = serde_json::to_value(api.get("drained").await.expect("read drained")).unwrap();
    assert_eq!(drained["spec"]["drain"]["settleSeconds"], 7, "{drained}");
    let services_after_upgrade = services(&api).await;
    assert_eq!(services_after_upgrade.len(), 3);

    // helm uninstall deletes the release's objects and keeps the CRD, with every service.
    release.uninstall();
    let crd = crd_now(&crds).await;
    assert!(
        crd.metadata.deletion_timestamp.is_none() && established(&crd),
        "helm uninstall deleted the CRD"
    );
    assert_eq!(has_new_fields(&crd), (true, true));
    assert_eq!(
        services(&api).await,
        services_after_upgrade,
        "helm uninstall changed a service"
    );
    assert_eq!(
        service_pods(&ns).await,
        pods_before,
        "helm uninstall replaced or deleted a pod"
    );

    // The generated CRD, as the other tests expect it, with nothing of Helm's.
    replace_crd(&perennial::api::crd_yaml()).expect("put the generated CRD back");
    let crd = wait_object(
        &crds,
        CRD_NAME,
        "the generated CRD, established",
        TIMEOUT,
        |crd| {
            established(crd)
                .then(|| crd.clone())
                .ok_or("not established".to_string())
        },
    )
    .await;
    let generated = perennial::api::crd();
    assert_eq!(crd.metadata.annotations, generated.metadata.annotations);
    assert_eq!(
        crd.metadata.labels.clone().unwrap_or_default(),
        Default::default()
    );
    assert_eq!(has_new_fields(&crd), (true, true));
}
