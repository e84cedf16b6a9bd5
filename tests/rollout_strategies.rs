//! How a rollout replaces pods, on the local control plane: a rolling update within its
//! availability floor and surge ceiling, Recreate, and stateful slots replaced in place.
//!
//! Pods are observed with a watch that runs from before the template changes until the
//! rollout completes, so that every intermediate state is checked, not only samples.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use support::nodes::Volumes;
use support::pods::*;
use support::scenario::claim_identities;
use support::service::*;
use support::watch::*;
use support::*;

/// Time for a whole rollout of a dozen pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);
const IMAGE: &str = "example/app:1";

#[tokio::test]
async fn rolling_update_of_twelve_keeps_the_availability_floor_and_surge_ceiling_at_every_observation(
) {
    let ns = TestNamespace::new("roll-bounds").await;
    let _operator = Operator::with_crd(&ns).await;
    let (replicas, max_surge, max_unavailable) = (12, 3, 2);
    let update = json!({"update": {"strategy": "RollingUpdate", "maxSurge": max_surge,
        "maxUnavailable": max_unavailable, "minReadySeconds": 1}});
    let (api, old, mut watch) =
        watched_service(&ns, &service("web", replicas, IMAGE, update)).await;
    let mut bounds = FloorAndCeiling::new(replicas - max_unavailable, replicas + max_surge);
    // The steady state before the change obeys the bounds too.
    watch.hold(Duration::ZERO, |w| bounds.observe(w)).await;

    let started = Instant::now();
    let new = change_spec(&api, "web", new_image("example/app:2")).await;
    assert_ne!(new, old, "a new template is a new revision");
    watch
        .until(
            "the rollout to complete",
            TIMEOUT,
            |w| bounds.observe(w),
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    let wall = started.elapsed();
    let observations = watch.observations;
    let FloorAndCeiling {
        floor,
        ceiling,
        min_available,
        max_alive,
        violations,
    } = bounds;

    println!(
        "rolling update of {replicas} (maxSurge {max_surge}, maxUnavailable {max_unavailable}, minReadySeconds 1): \
         minimum available {min_available} (floor {floor}), maximum alive {max_alive} (ceiling {ceiling}), \
         wall time {:.1} s, {observations} observations",
        wall.as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "{} observations broke the bounds, first: {:?}",
        violations.len(),
        violations.first()
    );
    let live: Vec<&Pod> = watch.pods().filter(|p| alive(p)).collect();
    assert_eq!(live.len(), replicas as usize, "{}", watch.describe());
    assert!(live.iter().all(|p| revision(p) == new));
    let slots: BTreeSet<i32> = live.iter().map(|p| slot(p)).collect();
    assert_eq!(slots, (0..replicas).collect(), "one pod per slot");
}

#[tokio::test]
async fn recreate_removes_every_old_pod_before_the_first_new_one_exists() {
    let ns = TestNamespace::new("roll-recreate").await;
    let _operator = Operator::with_crd(&ns).await;
    let replicas = 4;
    let recreate = json!({"update": {"strategy": "Recreate"}});
    let (api, old, mut watch) =
        watched_service(&ns, &service("batch", replicas, IMAGE, recreate)).await;

    let new = change_spec(&api, "batch", new_image("example/batch:2")).await;
    let mut mixed = Vec::new();
    watch
        .until(
            "the Recreate rollout to complete",
            TIMEOUT,
            |w| {
                // Terminating pods count too: "gone" means gone.
                let olds = w.pods().filter(|p| revision(p) == old).count();
                let news = w.pods().filter(|p| revision(p) == new).count();
                if olds > 0 && news > 0 {
                    mixed.push(w.describe());
                }
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    assert!(
        mixed.is_empty(),
        "both revisions existed at once: {:?}",
        mixed.first()
    );
}

#[tokio::test]
async fn stateful_slots_roll_in_place_never_two_pods_per_slot_and_keep_their_claims() {
    let ns = TestNamespace::new("roll-stateful").await;
    let replicas = 3;
    let volumes = Volumes::reserve(&ns, "data", "db", replicas).await;
    let _operator = Operator::with_crd(&ns).await;
    let (api, old, mut watch) =
        watched_service(&ns, &service("db", replicas, IMAGE, local_storage())).await;
    let before = claim_identities(&ns, "db").await;
    let want: BTreeSet<String> = (0..replicas).map(|i| format!("data-db-{i}")).collect();
    assert_eq!(before.keys().cloned().collect::<BTreeSet<_>>(), want);

    let new = change_spec(&api, "db", new_image("example/db:2")).await;
    assert_ne!(new, old);
    let mut doubled = Vec::new();
    let mut most_down = 0;
    watch
        .until(
            "the in-place rollout to complete",
            TIMEOUT,
            |w| {
                let mut per_slot: BTreeMap<i32, usize> = BTreeMap::new();
                for p in w.pods() {
                    *per_slot.entry(slot(p)).or_default() += 1;
                }
                if per_slot.values().any(|n| *n > 1) {
                    doubled.push(w.describe());
                }
                let up = w.pods().filter(|p| available(p)).count() as i32;
                most_down = most_down.max(replicas - up);
            },
            |w| complete(w.svc(), replicas, &new),
        )
        .await;
    assert!(
        doubled.is_empty(),
        "two pods shared a slot: {:?}",
        doubled.first()
    );
    println!("stateful rollout: at most {most_down} replica(s) down at once");
    assert!(most_down <= 1, "maxUnavailable defaults to one at a time");

    let after = claim_identities(&ns, "db").await;
    assert_eq!(
        after, before,
        "every claim is the same object on the same volume"
    );
    let bound: BTreeSet<String> = after.values().filter_map(|(_, v)| v.clone()).collect();
    assert_eq!(bound, volumes.names.iter().cloned().collect());
    for p in watch.pods().filter(|p| alive(p)) {
        let mounted: Vec<String> = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .collect();
        assert_eq!(mounted, vec![format!("data-db-{}", slot(p))]);
    }
}
