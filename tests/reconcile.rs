//! The reconciler on the local control plane: identity, storage, scaling, spread, the
//! generated children, and silence in steady state.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use perennial::api::ResilientService;
use serde_json::json;
use support::nodes::claim;
use support::pods::{ready, uid};
use support::service::*;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A stateful service: a claim per replica, a quorum budget, and claims of removed slots
/// kept or deleted as `when_scaled` says.
fn store(name: &str, replicas: i32, when_scaled: &str) -> ResilientService {
    let spec = json!({
        "disruptionBudget": {"quorum": true},
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": when_scaled}
    });
    service(
        name,
        replicas,
        "example/db:1",
        merged(local_storage(), spec),
    )
}

/// Creates the store `name` of `replicas` (claims retained) and waits until all are
/// available.
async fn available_store(ns: &TestNamespace, name: &str, replicas: i32) -> Api<ResilientService> {
    let api = create_service(ns, &store(name, replicas, "Retain")).await;
    wait_available(&api, name, replicas, TIMEOUT).await;
    api
}

async fn pods_by_slot(ns: &TestNamespace) -> Vec<(String, Pod)> {
    let pods: Api<Pod> = ns.api();
    let mut out: Vec<(String, Pod)> = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let slot = p.metadata.labels.as_ref().unwrap()["perennial.dev/slot"].clone();
            (slot, p)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn claim_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .expect("the pod mounts a claim")
}

async fn claim_names(ns: &TestNamespace) -> BTreeSet<String> {
    let claims: Api<PersistentVolumeClaim> = ns.api();
    claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| c.metadata.name.unwrap())
        .collect()
}

#[tokio::test]
async fn deleted_pod_comes_back_with_the_same_identity_and_claim() {
    let ns = TestNamespace::new("rec-identity").await;
    let _operator = Operator::with_crd(&ns).await;
    let api = available_store(&ns, "db", 3).await;

    let before = pods_by_slot(&ns).await;
    let (_, old) = before.iter().find(|(slot, _)| slot == "1").unwrap();
    let old_uid = old.metadata.uid.clone().unwrap();
    let old_claim = claim_of(old);
    let (_, old_volume, _) = claim(&ns, &old_claim).await.expect("the claim exists");

    let pods: Api<Pod> = ns.api();
    pods.delete(old.metadata.name.as_ref().unwrap(), &Default::default())
        .await
        .unwrap();

    let replacement = wait_for("a new Ready pod in slot 1", TIMEOUT, || {
        let ns = &ns;
        let old_uid = old_uid.clone();
        async move {
            let pods = pods_by_slot(ns).await;
            let (_, p) = pods
                .iter()
                .find(|(s, _)| s == "1")
                .ok_or("no pod in slot 1")?;
            if uid(p) != old_uid && ready(p) {
                Ok(p.clone())
            } else {
                Err(format!("slot 1: {:?} ready={}", p.metadata.name, ready(p)))
            }
        }
    })
    .await;
    let spec = replacement.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("db-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("db"));
    assert_eq!(claim_of(&replacement), old_claim);
    let (_, volume, _) = claim(&ns, &old_claim).await.expect("the claim exists");
    assert_eq!(volume, old_volume, "the claim keeps its volume");
    wait_available(&api, "db", 3, TIMEOUT).await;
}

/// A service `kv` of three replicas whose claims of removed slots follow `when_scaled`,
/// scaled to five and then down to two through the scale subresource.
async fn scaled_up_then_down(ns: &TestNamespace, when_scaled: &str) {
    let api = create_service(ns, &store("kv", 3, when_scaled)).await;
    wait_available(&api, "kv", 3, TIMEOUT).await;
    scale(&api, "kv", 5).await;
    wait_available(&api, "kv", 5, TIMEOUT).await;
    scale(&api, "kv", 2).await;
    wait_available(&api, "kv", 2, TIMEOUT).await;
}

#[tokio::test]
async fn scaling_keeps_claims_when_the_policy_retains_them() {
    let ns = TestNamespace::new("rec-scale-retain").await;
    let _operator = Operator::with_crd(&ns).await;
    scaled_up_then_down(&ns, "Retain").await;
    let slots: Vec<String> = pods_by_slot(&ns)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(slots, vec!["0", "1"], "the highest ordinals go first");
    let want: BTreeSet<String> = (0..5).map(|i| format!("data-kv-{i}")).collect();
    assert_eq!(claim_names(&ns).await, want, "all five claims are retained");
}

#[tokio::test]
async fn scaling_deletes_claims_of_removed_slots_when_the_policy_says_so() {
    let ns = TestNamespace::new("rec-scale-delete").await;
    let _operator = Operator::with_crd(&ns).await;
    scaled_up_then_down(&ns, "Delete").await;
    let want: BTreeSet<String> = (0..2).map(|i| format!("data-kv-{i}")).collect();
    wait_for("claims of slots 2-4 to be deleted", TIMEOUT, || {
        let ns = &ns;
        let want = want.clone();
        async move {
            let have = claim_names(ns).await;
            (have == want).then_some(()).ok_or(format!("{have:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn replicas_spread_over_the_three_zones() {
    let ns = TestNamespace::new("rec-spread").await;
    let _operator = Operator::with_crd(&ns).await;
    let mut svc = store("web", 3, "Retain");
    svc.spec.volume_claim_templates.clear();
    svc.spec.redundancy.when_unsatisfiable = perennial::api::WhenUnsatisfiable::DoNotSchedule;
    let api = create_service(&ns, &svc).await;
    let svc = wait_available(&api, "web", 3, TIMEOUT).await;
    let domains = svc.status.unwrap().domains;
    assert_eq!(
        domains.keys().cloned().collect::<Vec<_>>(),
        vec!["zone-a", "zone-b", "zone-c"],
        "{domains:?}"
    );
    assert!(domains.values().all(|n| *n == 1), "{domains:?}");
}

#[tokio::test]
async fn disruption_budget_and_headless_service_have_the_right_content() {
    let ns = TestNamespace::new("rec-children").await;
    let _operator = Operator::with_crd(&ns).await;
    available_store(&ns, "quorum", 5).await;

    let budgets: Api<PodDisruptionBudget> = ns.api();
    let pdb = budgets.get("quorum").await.expect("the PDB exists");
    let spec = pdb.spec.unwrap();
    assert_eq!(
        spec.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(3)),
        "quorum of 5 is 3"
    );
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["perennial.dev/service"],
        "quorum"
    );

    let services: Api<Service> = ns.api();
    let service = services
        .get("quorum")
        .await
        .expect("the headless Service exists");
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector.unwrap()["perennial.dev/service"], "quorum");
    let owner = service.metadata.owner_references.unwrap();
    assert_eq!(owner[0].kind, "ResilientService");
}

#[tokio::test]
async fn operator_writes_nothing_during_a_steady_state_minute() {
    let ns = TestNamespace::new("rec-steady").await;
    let _operator = Operator::with_crd(&ns).await;
    available_store(&ns, "calm", 3).await;
    // Converged: from here on, nothing the operator sees changes, so it must write nothing.
    let settled = operator_writes(&ns.name).len();
    let window = Duration::from_secs(60);
    // Fails as soon as a write shows up; passing means the whole window stayed quiet.
    let first_write = tokio::time::timeout(window, async {
        loop {
            let writes = operator_writes(&ns.name);
            if writes.len() > settled {
                return writes[settled..].to_vec();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    println!(
        "operator writes in {}: {settled} to converge, then none for {window:?}: {}",
        ns.name,
        first_write.is_err()
    );
    if let Ok(writes) = first_write {
        panic!("the operator wrote in steady state: {writes:?}");
    }
}
