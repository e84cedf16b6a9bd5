//! Planner tests: examples, and property tests of its invariants over arbitrary states.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::api::{ClaimRetention, PodManagementPolicy, ResilientService};
use crate::build::{pod_name, revision_name};
use crate::health::{Assessment, ClaimView, PodState, PodView, RevisionView, ServiceState};

mod rollback;

const OLD_REVISION: &str = "web-0000000000";

fn service(replicas: i32, storage: bool) -> ResilientService {
    let mut spec = serde_json::json!({
        "replicas": replicas,
        "template": {"spec": {"containers": [{"name": "app", "image": "example/app:1"}]}},
    });
    if storage {
        spec["volumeClaimTemplates"] = serde_json::json!([{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }]);
    }
    let mut svc: ResilientService = serde_json::from_value(serde_json::json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": spec,
    }))
    .expect("a valid service");
    svc.spec.update.min_ready_seconds = 0;
    svc
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn ready_pod(svc: &ResilientService, slot: i32, revision: &str) -> PodView {
    PodView {
        name: pod_name(svc, slot, revision),
        slot,
        revision: revision.to_string(),
        node: Some(format!("node-{}", slot % 3)),
        state: PodState::Ready {
            since: Timestamp::from_second(1_700_000_000).unwrap(),
        },
    }
}

/// A service whose every object exists and is healthy.
fn converged(svc: &ResilientService) -> Assessment {
    let rev = revision_name(svc);
    let replicas = svc.spec.replicas;
    Assessment {
        now: now(),
        pods: (0..replicas).map(|s| ready_pod(svc, s, &rev)).collect(),
        strays: vec![],
        claims: svc
            .spec
            .volume_claim_templates
            .iter()
            .flat_map(|t| (0..replicas).map(move |s| claim("data", s, &t.metadata.name)))
            .collect(),
        revisions: vec![RevisionView {
            name: rev,
            number: 1,
            bad: false,
            intact: true,
        }],
        refused: BTreeMap::new(),
        service: ServiceState::Ours { up_to_date: true },
        budget_up_to_date: Some(true),
        node_domains: (0..3)
            .map(|n| (format!("node-{n}"), format!("zone-{n}")))
            .collect(),
        nodes_total: 3,
        nodes_lost: 0,
        node_recheck_seconds: None,
        nodes_back: Default::default(),
        fences: vec![],
    }
}

/// One pass whose status is written back, as the next pass reads it.
fn pass(svc: &mut ResilientService, seen: &Assessment) -> Plan {
    let p = plan(svc, seen);
    svc.status = Some(p.status.clone());
    p
}

fn at(seconds_later: i64, seen: &Assessment) -> Assessment {
    Assessment {
        now: Timestamp::from_second(now().as_second() + seconds_later).unwrap(),
        ..seen.clone()
    }
}

fn claim(svc_name: &str, slot: i32, template: &str) -> ClaimView {
    let _ = svc_name;
    ClaimView {
        name: format!("{template}-web-{slot}"),
        slot,
        template: template.to_string(),
        deleting: false,
        lost_with: None,
    }
}

/// What the cluster looks like once `actions` are carried out (deletions still terminating).
fn apply(svc: &ResilientService, seen: &Assessment, actions: &[Action]) -> Assessment {
    let mut next = seen.clone();
    for action in actions {
        match action {
            Action::CreateRevision { number } => {
                let name = revision_name(svc);
                if !next.revisions.iter().any(|r| r.name == name) {
                    next.revisions.push(RevisionView {
                        name,
                        number: *number,
                        bad: false,
                        intact: true,
                    });
                }
            }
            Action::ApplyService => next.service = ServiceState::Ours { up_to_date: true },
            Action::ApplyDisruptionBudget => next.budget_up_to_date = Some(true),
            Action::CreateClaim { template, ordinal } => {
                let c = claim("web", *ordinal, template);
                if !next.claims.iter().any(|x| x.name == c.name) {
                    next.claims.push(c);
                }
            }
            Action::CreatePod {
                ordinal,
                revision,
                name,
            } => {
                if !next.pods.iter().any(|p| &p.name == name) {
                    next.pods.push(PodView {
                        name: name.clone(),
                        slot: *ordinal,
                        revision: revision.clone(),
                        node: None,
                        state: PodState::Pending,
                    });
                }
            }
            Action::DeletePod { name, .. } => {
                next.strays.retain(|s| s != name);
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    p.state = PodState::Terminating;
                }
            }
            Action::DeleteClaim { name } => {
                for c in next.claims.iter_mut().filter(|c| &c.name == name) {
                    c.deleting = true;
                }
            }
            Action::DeleteRevision { name } => next.revisions.retain(|r| &r.name != name),
            Action::ForceDeletePod { name, .. } => {
                next.pods.retain(|p| &p.name != name);
            }
            Action::RebuildClaim { name, .. } => {
                for c in next.claims.iter_mut().filter(|c| &c.name == name) {
                    c.deleting = true;
                }
            }
            Action::TaintNode { .. }
            | Action::UntaintNode { .. }
            | Action::ForgetFence { .. }
            | Action::ClearAbort { .. } => {}
            Action::MarkRevisionBad { name, .. } => {
                for r in next.revisions.iter_mut().filter(|r| &r.name == name) {
                    r.bad = true;
                }
            }
        }
    }
    next
}

fn pods_per_slot(seen: &Assessment) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for p in &seen.pods {
        *m.entry(p.slot).or_default() += 1;
    }
    m
}

/// Pods per slot that are not on their way out (terminating or ended).
fn live_pods_per_slot(seen: &Assessment) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for p in &seen.pods {
        if !matches!(p.state, PodState::Terminating | PodState::Failed { .. }) {
            *m.entry(p.slot).or_default() += 1;
        }
    }
    m
}

#[test]
fn converged_service_needs_no_action_and_reports_available() {
    for storage in [false, true] {
        let svc = service(3, storage);
        let p = plan(&svc, &converged(&svc));
        assert_eq!(p.actions, vec![], "storage={storage}");
        assert_eq!(p.status.available_replicas, 3);
        assert_eq!(p.status.domains.len(), 3);
        let available = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(available.status, "True");
    }
}

#[test]
fn new_service_creates_revision_service_budget_claims_and_pods() {
    let svc = service(3, true);
    let seen = Assessment {
        pods: vec![],
        claims: vec![],
        revisions: vec![],
        service: ServiceState::Missing,
        budget_up_to_date: None,
        ..converged(&svc)
    };
    let actions: BTreeSet<Action> = plan(&svc, &seen).actions.into_iter().collect();
    let rev = revision_name(&svc);
    let mut want: BTreeSet<Action> = [
        Action::CreateRevision { number: 1 },
        Action::ApplyService,
        Action::ApplyDisruptionBudget,
    ]
    .into();
    for ordinal in 0..3 {
        want.insert(Action::CreateClaim {
            template: "data".into(),
            ordinal,
        });
        want.insert(Action::CreatePod {
            ordinal,
            revision: rev.clone(),
            name: pod_name(&svc, ordinal, &rev),
        });
    }
    assert_eq!(actions, want);
}

#[test]
fn deleted_pod_with_claims_is_recreated_in_the_same_slot_once_it_is_gone() {
    let svc = service(3, true);
    let mut seen = converged(&svc);
    seen.pods[1].state = PodState::Terminating;
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![],
        "must wait for the old pod to go"
    );
    seen.pods.remove(1);
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![Action::CreatePod {
            ordinal: 1,
            revision: revision_name(&svc),
            name: pod_name(&svc, 1, &revision_name(&svc)),
        }]
    );
}

#[test]
fn deleted_pod_without_claims_is_replaced_at_once_under_the_free_one_of_two_names() {
    let svc = service(3, false);
    let rev = revision_name(&svc);
    let mut seen = converged(&svc);
    seen.pods[1].state = PodState::Terminating;
    let create = |name: String| Action::CreatePod {
        ordinal: 1,
        revision: rev.clone(),
        name,
    };
    let second = crate::build::second_pod_name(&svc, 1, &rev);
    assert_eq!(plan(&svc, &seen).actions, vec![create(second.clone())]);
    // Planned again from a cache that has not seen the create: the same name, which the
    // API server refuses the second time.
    assert_eq!(plan(&svc, &seen).actions, vec![create(second.clone())]);
    // Both names held by pods on their way out: wait.
    with_pod_named(&mut seen, &svc, 1, &second, PodState::Terminating);
    assert_eq!(plan(&svc, &seen).actions, vec![]);
    // The first is free again: the next replacement takes it.
    seen.pods.retain(|p| p.name != pod_name(&svc, 1, &rev));
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![create(pod_name(&svc, 1, &rev))]
    );
}

fn with_pod_named(
    seen: &mut Assessment,
    svc: &ResilientService,
    slot: i32,
    name: &str,
    state: PodState,
) {
    seen.pods.push(PodView {
        name: name.to_string(),
        state,
        ..ready_pod(svc, slot, &revision_name(svc))
    });
}

#[test]
fn claim_deleted_under_its_pod_is_reported_and_the_slot_restarts_only_once_the_claim_is_gone() {
    let svc = service(3, true);
    let mut seen = converged(&svc);
    seen.claims[1].deleting = true;
    // The pod keeps the claim (and its data) until a person lets it go: nothing is done,
    // and the service says why.
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![]);
    let degraded = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("a Degraded condition");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ClaimDeleted")
    );
    assert!(
        degraded.message.contains("data-web-1") && degraded.message.contains("slot 1"),
        "{}",
        degraded.message
    );
    // The pod was deleted; the claim is still going: no pod that would wait on it.
    seen.pods.remove(1);
    let p = plan(&svc, &seen);
    assert_eq!(p.actions, vec![]);
    assert_ne!(p.status.reason.as_deref(), Some("ClaimDeleted"));
    // The claim is gone: a new claim, then the pod (in that order when carried out).
    seen.claims.remove(1);
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![
            Action::CreateClaim {
                template: "data".into(),
                ordinal: 1
            },
            Action::CreatePod {
                ordinal: 1,
                revision: revision_name(&svc),
                name: pod_name(&svc, 1, &revision_name(&svc)),
            }
        ]
    );
}

#[test]
fn a_forged_record_of_the_update_revision_is_replaced_and_pods_are_left_alone() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.revisions[0].intact = false;
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![Action::DeleteRevision {
            name: revision_name(&svc)
        }]
    );
    seen.revisions.clear();
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![Action::CreateRevision { number: 1 }]
    );
}

#[test]
fn scale_down_removes_highest_ordinals_and_keeps_claims_by_default() {
    let mut svc = service(5, true);
    let seen = converged(&svc);
    svc.spec.replicas = 2;
    let actions = plan(&svc, &seen).actions;
    let deleted: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let rev = revision_name(&svc);
    assert_eq!(
        deleted,
        vec![
            pod_name(&svc, 4, &rev),
            pod_name(&svc, 3, &rev),
            pod_name(&svc, 2, &rev)
        ]
    );
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::DeleteClaim { .. })));
}

#[test]
fn scale_down_with_delete_policy_deletes_claims_only_after_their_pods_are_gone() {
    let mut svc = service(3, true);
    let mut seen = converged(&svc);
    svc.spec.replicas = 2;
    svc.spec
        .persistent_volume_claim_retention_policy
        .when_scaled = ClaimRetention::Delete;
    let first = plan(&svc, &seen).actions;
    assert!(!first
        .iter()
        .any(|a| matches!(a, Action::DeleteClaim { .. })));
    seen.pods.retain(|p| p.slot < 2);
    assert_eq!(
        plan(&svc, &seen).actions,
        vec![Action::DeleteClaim {
            name: "data-web-2".into()
        }]
    );
}

#[test]
fn ordered_ready_starts_slots_one_after_another() {
    let mut svc = service(3, false);
    svc.spec.pod_management_policy = PodManagementPolicy::OrderedReady;
    let mut seen = converged(&svc);
    seen.pods.clear();
    let creates = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::CreatePod { .. }))
            .count()
    };
    assert_eq!(creates(&plan(&svc, &seen).actions), 1);
    let rev = revision_name(&svc);
    let mut starting = ready_pod(&svc, 0, &rev);
    starting.state = PodState::Starting;
    seen.pods.push(starting);
    assert_eq!(
        creates(&plan(&svc, &seen).actions),
        0,
        "slot 0 is not Ready yet"
    );
    seen.pods[0] = ready_pod(&svc, 0, &rev);
    assert_eq!(creates(&plan(&svc, &seen).actions), 1);
}

#[test]
fn failed_pod_is_deleted_and_the_slot_reported_failing() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.pods[2].state = PodState::Failed {
        reason: "Evicted".into(),
        message: "the node was low on memory".into(),
    };
    let p = plan(&svc, &seen);
    assert!(
        matches!(&p.actions[..], [Action::DeletePod { name, .. }] if name == &seen.pods[2].name)
    );
    assert_eq!(p.status.available_replicas, 2);
}

#[test]
fn crash_looping_replica_marks_the_service_degraded_with_its_reason() {
    let svc = service(3, false);
    let mut seen = converged(&svc);
    seen.pods[0].state = PodState::CrashLooping {
        reason: "OOMKilled".into(),
        message: "container app restarted 4 times".into(),
        restarts: 4,
    };
    let status = plan(&svc, &seen).status;
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "OOMKilled");
    assert_eq!(status.reason.as_deref(), Some("OOMKilled"));
    let entry = &status.replica_statuses[0];
    assert_eq!(entry.last_failure.as_ref().unwrap().reason, "OOMKilled");
}

#[test]
fn condition_transition_time_moves_only_when_status_moves() {
    let svc = service(3, false);
    let seen = converged(&svc);
    let first = plan(&svc, &seen).status;
    let mut svc2 = svc.clone();
    svc2.status = Some(first.clone());
    let mut later = seen.clone();
    later.now = Timestamp::from_second(1_800_000_100).unwrap();
    let second = plan(&svc2, &later).status;
    assert_eq!(
        first, second,
        "an unchanged service must not change its status"
    );

    later.pods[0].state = PodState::Starting;
    later.pods[1].state = PodState::Starting;
    let third = plan(&svc2, &later).status;
    let available = third
        .conditions
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(available.status, "False");
    assert_eq!(available.last_transition_time.0, later.now);
}

#[test]
fn revision_history_is_trimmed_to_the_limit_but_never_below_what_pods_use() {
    let mut svc = service(1, false);
    svc.spec.revision_history_limit = 1;
    let mut seen = converged(&svc);
    for n in 2..6 {
        seen.revisions.push(RevisionView {
            name: format!("web-old{n}"),
            number: n,
            bad: false,
            intact: true,
        });
    }
    seen.pods.push(PodView {
        slot: 5,
        ..ready_pod(&svc, 5, "web-old2")
    });
    let deleted: BTreeSet<String> = plan(&svc, &seen)
        .actions
        .into_iter()
        .filter_map(|a| match a {
            Action::DeleteRevision { name } => Some(name),
            _ => None,
        })
        .collect();
    // web-old5 is the newest kept; web-old2 is in use.
    assert_eq!(
        deleted,
        ["web-old3".to_string(), "web-old4".to_string()].into()
    );
}

#[test]
fn percentages_round_as_documented() {
    assert_eq!(resolve(&IntOrString::String("25%".into()), 10, true), 3);
    assert_eq!(resolve(&IntOrString::String("25%".into()), 10, false), 2);
    assert_eq!(resolve(&IntOrString::Int(2), 10, false), 2);
}

fn arb_state() -> impl Strategy<Value = PodState> {
    let t = Timestamp::from_second(1_700_000_000).unwrap();
    prop_oneof![
        Just(PodState::Pending),
        Just(PodState::Starting),
        Just(PodState::Ready { since: t }),
        Just(PodState::NotReady { since: t }),
        Just(PodState::Terminating),
        Just(PodState::Failed {
            reason: "Error".into(),
            message: "exit 1".into()
        }),
        Just(PodState::CrashLooping {
            reason: "CrashLoopBackOff".into(),
            message: "restarting".into(),
            restarts: 3
        }),
        any::<bool>().prop_map(|fenced| PodState::OnLostNode {
            message: "lost".into(),
            fenced
        }),
    ]
}

prop_compose! {
    fn arb_case()(
        replicas in 0..7i32,
        storage in any::<bool>(),
        delete_on_scale in any::<bool>(),
        ordered in any::<bool>(),
        pods in proptest::collection::vec((0..9i32, any::<bool>(), arb_state()), 0..14),
        claims in proptest::collection::vec(0..9i32, 0..10),
        strays in proptest::collection::vec("[a-z]{4}", 0..2),
    ) -> (ResilientService, Assessment) {
        let mut svc = service(replicas, storage);
        if delete_on_scale {
            svc.spec.persistent_volume_claim_retention_policy.when_scaled = ClaimRetention::Delete;
        }
        if ordered {
            svc.spec.pod_management_policy = PodManagementPolicy::OrderedReady;
        }
        let rev = revision_name(&svc);
        let mut seen = converged(&svc);
        seen.pods.clear();
        for (slot, updated, state) in pods {
            let revision = if updated { rev.clone() } else { OLD_REVISION.to_string() };
            let name = pod_name(&svc, slot, &revision);
            if seen.pods.iter().all(|p| p.name != name) {
                seen.pods.push(PodView { name, slot, revision, node: None, state });
            }
        }
        seen.claims = if storage {
            claims.into_iter().collect::<BTreeSet<_>>().into_iter().map(|s| claim("web", s, "data")).collect()
        } else {
            vec![]
        };
        seen.strays = strays;
        (svc, seen)
    }
}

proptest! {
    #[test]
    fn never_a_second_pod_in_a_stateful_slot_nor_a_pod_beyond_replicas((svc, seen) in arb_case()) {
        let before = pods_per_slot(&seen);
        let stateful = !svc.spec.volume_claim_templates.is_empty();
        for action in plan(&svc, &seen).actions {
            if let Action::CreatePod { ordinal, .. } = action {
                prop_assert!(ordinal < svc.spec.replicas);
                if stateful {
                    prop_assert!(!before.contains_key(&ordinal), "stateful slot {} already has a pod", ordinal);
                }
            }
        }
    }

    #[test]
    fn never_more_pods_than_replicas_plus_surge_unless_they_were_there((svc, seen) in arb_case()) {
        let alive = |s: &Assessment| {
            s.pods
                .iter()
                .filter(|p| !matches!(p.state, PodState::Terminating | PodState::Failed { .. }))
                .count()
        };
        let after = apply(&svc, &seen, &plan(&svc, &seen).actions);
        let surge = resolve(&svc.spec.update.max_surge, svc.spec.replicas, true) as usize;
        prop_assert!(alive(&after) <= (svc.spec.replicas as usize + surge).max(alive(&seen)));
        // A slot holds at most an old and a new live pod during a surge; no more than it
        // had. Pods on their way out do not count: a slot without claims starts its
        // replacement beside them.
        let (b, a) = (live_pods_per_slot(&seen), live_pods_per_slot(&after));
        for (slot, n) in a {
            prop_assert!(n <= b.get(&slot).copied().unwrap_or(0).max(2));
        }
    }

    #[test]
    fn deletions_never_take_availability_below_the_floor((svc, seen) in arb_case()) {
        let replicas = svc.spec.replicas;
        let unavailable = resolve(&svc.spec.update.max_unavailable, replicas, false).max(1);
        let floor = (replicas - unavailable) as usize;
        let available_slots = |s: &Assessment| {
            (0..replicas)
                .filter(|slot| s.pods.iter().any(|p| p.slot == *slot && p.state.is_ready()))
                .count()
        };
        let before = available_slots(&seen);
        let after = available_slots(&apply(&svc, &seen, &plan(&svc, &seen).actions));
        prop_assert!(after >= floor.min(before), "available slots {} -> {} (floor {})", before, after, floor);
    }

    #[test]
    fn no_claim_is_deleted_unless_the_policy_says_so((svc, seen) in arb_case()) {
        let policy = svc.spec.persistent_volume_claim_retention_policy.when_scaled;
        for action in plan(&svc, &seen).actions {
            if let Action::DeleteClaim { name } = action {
                prop_assert_eq!(policy, ClaimRetention::Delete);
                let c = seen.claims.iter().find(|c| c.name == name).unwrap();
                prop_assert!(c.slot >= svc.spec.replicas);
                prop_assert!(!seen.pods.iter().any(|p| p.slot == c.slot), "claim of a slot with a pod");
            }
        }
    }

    #[test]
    fn a_plan_applied_twice_equals_it_applied_once((svc, seen) in arb_case()) {
        let actions = plan(&svc, &seen).actions;
        let once = apply(&svc, &seen, &actions);
        let twice = apply(&svc, &once, &actions);
        prop_assert_eq!(&once, &twice);
        // And planning again does not repeat what is already done.
        let again = plan(&svc, &once).actions;
        for a in &again {
            let repeat = matches!(a, Action::CreatePod { .. } | Action::CreateClaim { .. } | Action::DeletePod { .. } | Action::DeleteClaim { .. } | Action::CreateRevision { .. })
                && actions.contains(a);
            prop_assert!(!repeat, "repeated {:?}", a);
        }
    }

    #[test]
    fn status_counts_are_consistent((svc, seen) in arb_case()) {
        let s = plan(&svc, &seen).status;
        prop_assert!(s.available_replicas <= s.ready_replicas);
        prop_assert!(s.ready_replicas <= s.replicas);
        prop_assert!(s.updated_replicas <= s.replicas);
        prop_assert_eq!(s.replica_statuses.len(), svc.spec.replicas as usize);
    }
}

mod repairs {
    use super::*;
    use crate::api::{Fencing, ReplicaStatus, VolumeLostPolicy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A pod on a node lost long enough ago (30 s threshold, 11 s to settle) to act on.
    fn lost(fenced: bool) -> PodState {
        lost_for(41, fenced)
    }

    fn lost_for(seconds: i64, fenced: bool) -> PodState {
        PodState::OnLostNode {
            message: format!("node node-1 has not renewed its lease for {seconds} s"),
            fenced,
        }
    }

    fn crash() -> PodState {
        PodState::CrashLooping {
            reason: "CrashLoopBackOff".into(),
            message: "container app restarted 3 times".into(),
            restarts: 3,
        }
    }

    fn with_repairs(svc: &mut ResilientService, slot: i32, ages: &[i64]) {
        let mut status = svc.status.clone().unwrap_or_default();
        status.replica_statuses.push(ReplicaStatus {
            ordinal: slot,
            repairs: ages
                .iter()
                .map(|a| Time(Timestamp::from_second(now().as_second() - a).unwrap()))
                .collect(),
            ..Default::default()
        });
        svc.status = Some(status);
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| {
                format!("{a:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn stateless_replica_on_a_lost_node_is_force_deleted_and_its_replacement_avoids_the_node() {
        let svc = service(3, false);
        let mut seen = converged(&svc);
        seen.pods[1].state = lost(false);
        let p = plan(&svc, &seen);
        assert_eq!(kinds(&p.actions), vec!["ForceDeletePod"]);
        assert_eq!(p.status.replica_statuses[1].state, "Repairing");
        assert_eq!(
            p.status.replica_statuses[1].avoid_node.as_deref(),
            Some("node-1"),
            "a lost node looks schedulable until it is tainted"
        );
        assert_eq!(
            p.status.replica_statuses[1]
                .last_failure
                .as_ref()
                .unwrap()
                .reason,
            "NodeLost"
        );
    }

    #[test]
    fn stateful_replica_waits_for_evidence_before_it_moves() {
        let svc = service(3, true);
        let mut seen = converged(&svc);
        seen.pods[1].state = lost(false);
        let p = plan(&svc, &seen);
        assert_eq!(p.actions, vec![], "without evidence nothing moves");
        let degraded = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "NodeLost")
        );
        assert!(degraded.message.contains("slot 1"), "{}", degraded.message);
    }

    #[test]
    fn taint_out_of_service_fences_then_moves_the_replica_and_rebuilds_its_lost_claim() {
        let mut svc = service(3, true);
        svc.spec.repair.fencing = Fencing::TaintOutOfService;
        svc.spec.repair.storage.on_volume_lost = VolumeLostPolicy::Recreate;
        let mut seen = converged(&svc);
        seen.pods[1].state = lost(false);
        seen.pods[1].node = Some("node-1".into());
        seen.claims[1].lost_with = Some(("node-1".into(), false));
        assert_eq!(
            plan(&svc, &seen).actions,
            vec![Action::TaintNode {
                node: "node-1".into()
            }]
        );
        seen.pods[1].state = lost(true);
        seen.claims[1].lost_with = Some(("node-1".into(), true));
        assert_eq!(
            kinds(&plan(&svc, &seen).actions),
            vec!["ForceDeletePod", "RebuildClaim"]
        );
    }

    #[test]
    fn a_fenced_stateful_slot_moves_without_being_barred_from_its_node_for_good() {
        // Fencing keeps pods off the node while it is lost; once the node is repaired, a
        // slot whose retained volume lives there must be able to go back.
        let mut svc = service(3, true);
        let mut seen = converged(&svc);
        seen.pods[1].state = lost(true);
        let p = pass(&mut svc, &seen);
        assert_eq!(kinds(&p.actions), vec!["ForceDeletePod"]);
        assert_eq!(p.status.replica_statuses[1].avoid_node, None);
        // The pod is gone; the replacement is not steered away either.
        seen.pods.remove(1);
        let p = pass(&mut svc, &at(1, &seen));
        assert_eq!(p.status.replica_statuses[1].avoid_node, None);
        assert!(
            kinds(&p.actions).contains(&"CreatePod".to_string()),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn retained_volume_on_a_lost_node_waits_for_a_person() {
        let svc = service(3, true);
        let mut seen = converged(&svc);
        seen.pods.remove(2);
        seen.claims[2].lost_with = Some(("node-2".into(), true));
        let p = plan(&svc, &seen);
        assert!(!kinds(&p.actions).contains(&"RebuildClaim".to_string()));
        assert_eq!(p.status.reason.as_deref(), Some("VolumeLost"));
    }

    #[test]
    fn crash_looping_slot_climbs_the_ladder_and_ends_in_quarantine() {
        let mut svc = service(3, false);
        svc.spec.supervision.max_restarts = 2;
        let step = |svc: &ResilientService| {
            let mut seen = converged(svc);
            seen.pods[0].state = crash();
            plan(svc, &seen)
        };
        // No repair yet: Restart.
        let p = step(&svc);
        assert!(
            matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart"))
        );
        // Two repairs in the window: Reschedule, away from the node.
        let mut s2 = svc.clone();
        with_repairs(&mut s2, 0, &[200, 100]);
        let p = step(&s2);
        assert!(
            matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Reschedule")),
            "{:?}",
            p.actions
        );
        assert_eq!(
            p.status.replica_statuses[0].avoid_node.as_deref(),
            Some("node-0")
        );
        // Stateless: RebuildStorage does not apply; six repairs reach Quarantine.
        let mut s3 = svc.clone();
        with_repairs(&mut s3, 0, &[290, 250, 200, 150, 100, 60]);
        let p = step(&s3);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.status.replica_statuses[0].state, "Quarantined");
        assert_eq!(p.status.reason.as_deref(), Some("Quarantined"));
    }

    #[test]
    fn a_persistent_crash_loop_reaches_quarantine_with_the_default_supervision() {
        // Replays the passes the controller would make, at the times the plan asks for,
        // while slot 0's pod keeps crash-looping: the backoff must leave room for the
        // window to count enough repairs for every rung.
        let mut svc = service(3, false);
        let period = i64::from(svc.spec.supervision.period_seconds);
        let mut t = now();
        let mut steps = Vec::new();
        for _ in 0..500 {
            let mut seen = converged(&svc);
            seen.now = t;
            seen.pods[0].state = crash();
            let p = plan(&svc, &seen);
            for a in &p.actions {
                if let Action::DeletePod { reason, .. } = a {
                    let step = reason.split(' ').next().unwrap_or_default().to_string();
                    if steps.last() != Some(&step) {
                        steps.push(step);
                    }
                }
            }
            let quarantined = p.status.replica_statuses[0].state == "Quarantined";
            svc.status = Some(p.status.clone());
            if quarantined {
                break;
            }
            // After a repair the pod's own events bring the next pass; say a second later.
            let wait = p.requeue_after.unwrap_or(Duration::from_secs(1));
            assert!(wait >= Duration::from_secs(1), "never a hot loop");
            t = Timestamp::from_second(t.as_second() + wait.as_secs() as i64).unwrap();
        }
        let took = t.as_second() - now().as_second();
        assert_eq!(
            svc.status.as_ref().unwrap().replica_statuses[0].state,
            "Quarantined",
            "steps taken: {steps:?}"
        );
        assert_eq!(steps, vec!["Restart", "Reschedule"]);
        assert!(took <= period, "quarantined after {took} s");
    }

    #[test]
    fn repairs_back_off_exponentially_and_the_window_slides() {
        let mut svc = service(3, false);
        with_repairs(&mut svc, 0, &[3]);
        let mut seen = converged(&svc);
        seen.pods[0].state = crash();
        let p = plan(&svc, &seen);
        assert_eq!(p.actions, vec![], "5 s back-off after one repair");
        assert!(p.requeue_after.is_some_and(|d| d.as_secs() <= 2));
        // Repairs older than the period no longer count.
        let mut old = service(3, false);
        with_repairs(&mut old, 0, &[400, 350, 320, 310, 305, 301]);
        let p = plan(&old, &seen);
        assert!(
            matches!(&p.actions[..], [Action::DeletePod { reason, .. }] if reason.starts_with("Restart"))
        );
    }

    #[test]
    fn storm_guard_pauses_node_loss_repair_when_most_replicas_fail_together() {
        let svc = service(3, false);
        let mut seen = converged(&svc);
        seen.pods[0].state = lost(false);
        seen.pods[1].state = lost(false);
        let p = plan(&svc, &seen);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
    }

    #[test]
    fn at_most_max_concurrent_repairs_at_once() {
        let mut svc = service(5, false);
        svc.spec.repair.max_concurrent_repairs = 1;
        let mut seen = converged(&svc);
        seen.pods[0].state = crash();
        seen.pods[1].state = crash();
        let p = plan(&svc, &seen);
        assert_eq!(kinds(&p.actions), vec!["DeletePod"]);
        assert_eq!(
            p.status.replica_statuses[1].waiting_for.as_deref(),
            Some("a free repair slot (maxConcurrentRepairs)")
        );
    }

    #[test]
    fn replacement_of_a_pod_lost_with_its_node_avoids_the_node_even_from_a_stale_status() {
        // The status as it was before the pass that force-deleted the pod: waiting for the
        // loss to settle, no avoidNode yet.
        let mut svc = service(3, false);
        svc.status = Some(crate::api::ResilientServiceStatus {
            replica_statuses: vec![ReplicaStatus {
                ordinal: 1,
                node: Some("node-1".into()),
                state: "Waiting".into(),
                last_failure: Some(crate::api::Failure {
                    reason: "NodeLost".into(),
                    message: "node node-1 has not renewed its lease for 20 s".into(),
                    at: Time(now()),
                    recovered_at: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut seen = converged(&svc);
        seen.pods.remove(1);
        let p = plan(&svc, &seen);
        assert_eq!(kinds(&p.actions), vec!["CreatePod"]);
        assert_eq!(
            p.status.replica_statuses[1].avoid_node.as_deref(),
            Some("node-1")
        );
    }

    #[test]
    fn a_silent_node_not_yet_lost_brings_the_service_back_when_it_would_be() {
        let svc = service(3, false);
        let mut seen = converged(&svc);
        seen.node_recheck_seconds = Some(3);
        let p = plan(&svc, &seen);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_long_failure_stays_in_the_ledger_for_a_whole_quiet_period_after_recovery() {
        let mut svc = service(3, false);
        let period = i64::from(svc.spec.supervision.period_seconds);
        let failed_long_ago = Timestamp::from_second(now().as_second() - 10 * period).unwrap();
        let entry = |recovered_at: Option<Time>| ReplicaStatus {
            ordinal: 0,
            state: "Failing".into(),
            last_failure: Some(crate::api::Failure {
                reason: "CrashLoopBackOff".into(),
                message: "back-off restarting".into(),
                at: Time(failed_long_ago),
                recovered_at,
            }),
            ..Default::default()
        };
        svc.status = Some(crate::api::ResilientServiceStatus {
            replica_statuses: vec![entry(None)],
            ..Default::default()
        });
        let seen = converged(&svc);
        let p = plan(&svc, &seen);
        let kept = p.status.replica_statuses[0].last_failure.as_ref();
        assert_eq!(
            kept.and_then(|f| f.recovered_at.as_ref()),
            Some(&Time(now())),
            "the recovery is recorded and the entry kept"
        );
        assert!(p
            .requeue_after
            .is_some_and(|d| d.as_secs() as i64 <= period));

        let long_recovered = Timestamp::from_second(now().as_second() - period - 1).unwrap();
        svc.status = Some(crate::api::ResilientServiceStatus {
            replica_statuses: vec![entry(Some(Time(long_recovered)))],
            ..Default::default()
        });
        let p = plan(&svc, &seen);
        assert_eq!(
            p.status.replica_statuses[0].last_failure, None,
            "cleared a quiet period after the recovery"
        );
    }

    #[test]
    fn slot_under_repair_takes_its_next_step_within_its_own_share_of_the_budget() {
        let mut svc = service(3, false);
        svc.spec.supervision.max_restarts = 1;
        svc.spec.repair.max_concurrent_repairs = 1;
        with_repairs(&mut svc, 0, &[60]);
        let status = svc.status.as_mut().unwrap();
        status.replica_statuses[0].state = "Repairing".into();
        let mut seen = converged(&svc);
        seen.pods[0].state = crash();
        seen.pods[1].state = crash();
        let p = plan(&svc, &seen);
        assert!(
            matches!(&p.actions[..], [Action::DeletePod { name, reason }]
                if name == &seen.pods[0].name && reason.starts_with("Reschedule")),
            "slot 0 goes on with its repair; slot 1 waits: {:?}",
            p.actions
        );
        assert_eq!(
            p.status.replica_statuses[1].waiting_for.as_deref(),
            Some("a free repair slot (maxConcurrentRepairs)")
        );
    }

    #[test]
    fn fresh_node_loss_settles_before_anything_moves_so_the_storm_guard_sees_nodes_failing_together(
    ) {
        let mut svc = service(4, false);
        svc.spec.repair.node_lost_after_seconds = 10;
        let mut seen = converged(&svc);
        // Judged lost at 12 s (a renewal missed), acted on at 23 s.
        seen.pods[0].state = lost_for(12, false);
        let p = plan(&svc, &seen);
        assert_eq!(
            p.actions,
            vec![],
            "the first node of a storm may be alone yet"
        );
        assert!(
            p.status.replica_statuses[0]
                .waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("settle")),
            "{:?}",
            p.status.replica_statuses[0]
        );
        assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(11)));
        // Settled, with two more replicas' nodes lost meanwhile: the storm guard holds.
        seen.pods[0].state = lost_for(23, false);
        seen.pods[1].state = lost_for(14, false);
        seen.pods[2].state = lost_for(13, false);
        let p = plan(&svc, &seen);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
        // Settled and alone: repaired.
        seen.pods[1] = ready_pod(&svc, 1, &revision_name(&svc));
        seen.pods[2] = ready_pod(&svc, 2, &revision_name(&svc));
        assert_eq!(kinds(&plan(&svc, &seen).actions), vec!["ForceDeletePod"]);
        // Evidence needs no settling.
        seen.pods[0].state = lost_for(12, true);
        assert_eq!(kinds(&plan(&svc, &seen).actions), vec!["ForceDeletePod"]);
    }
}

mod rollouts {
    use super::*;
    use crate::api::{
        Canary, CanaryStep, Pause, ResilientServiceStatus, RollbackPolicy, ANNOTATION_ABORT,
        ANNOTATION_PROMOTE,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    /// A service converged on its first template, then given a new image: the service (its
    /// status still on the old revision), what is seen, and the old and new revisions.
    fn upgraded(replicas: i32) -> (ResilientService, Assessment, String, String) {
        let mut svc = service(replicas, false);
        let seen = converged(&svc);
        let old = revision_name(&svc);
        svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:2".into());
        let new = revision_name(&svc);
        let mut seen = seen;
        seen.revisions.push(RevisionView {
            name: new.clone(),
            number: 2,
            bad: false,
            intact: true,
        });
        svc.status = Some(ResilientServiceStatus {
            current_revision: Some(old.clone()),
            update_revision: Some(old.clone()),
            ..Default::default()
        });
        (svc, seen, old, new)
    }

    fn with_pod(
        seen: &mut Assessment,
        svc: &ResilientService,
        slot: i32,
        rev: &str,
        state: PodState,
    ) {
        seen.pods.push(PodView {
            state,
            ..ready_pod(svc, slot, rev)
        });
    }

    fn annotate(svc: &mut ResilientService, key: &str, value: &str) {
        svc.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value.to_string());
    }

    fn creates_at(p: &Plan, rev: &str) -> Vec<i32> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod {
                    ordinal, revision, ..
                } if revision == rev => Some(*ordinal),
                _ => None,
            })
            .collect()
    }

    fn condition<'a>(p: &'a Plan, type_: &str) -> Option<(&'a str, &'a str)> {
        p.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    }

    fn marked_bad(p: &Plan) -> bool {
        p.actions
            .iter()
            .any(|a| matches!(a, Action::MarkRevisionBad { .. }))
    }

    fn crash(restarts: i32) -> PodState {
        PodState::CrashLooping {
            reason: "CrashLoopBackOff".into(),
            message: "container app restarted".into(),
            restarts,
        }
    }

    #[test]
    fn a_recreated_revision_that_never_serves_does_not_become_current_and_is_rolled_back() {
        let (mut svc, mut seen, old, new) = upgraded(3);
        svc.spec.update.strategy = crate::api::UpdateStrategy::Recreate;
        // Every old pod is gone; each slot runs the new revision and crash-loops.
        seen.pods.clear();
        for slot in 0..3 {
            with_pod(&mut seen, &svc, slot, &new, PodState::Starting);
        }
        let p = pass(&mut svc, &seen);
        assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));
        let max_restarts = svc.spec.supervision.max_restarts;
        for pod in &mut seen.pods {
            pod.state = crash(max_restarts);
        }
        let p = pass(&mut svc, &at(120, &seen));
        assert_eq!(
            p.status.current_revision.as_deref(),
            Some(old.as_str()),
            "pods that run a revision without serving do not make it current"
        );
        assert_eq!(
            condition(&p, crate::api::condition::ROLLED_BACK).map(|c| c.0),
            Some("True"),
            "{:?}",
            p.status.conditions
        );
        assert_eq!(creates_at(&pass(&mut svc, &seen), &new), Vec::<i32>::new());
        // Once it serves, it is current.
        let (mut svc, mut seen, _old, new) = upgraded(3);
        seen.pods.clear();
        for slot in 0..3 {
            seen.pods.push(ready_pod(&svc, slot, &new));
        }
        let p = pass(&mut svc, &seen);
        assert_eq!(p.status.current_revision.as_deref(), Some(new.as_str()));
    }

    #[test]
    fn a_replaced_pod_leaves_room_for_a_surge_pod_only_once_it_is_terminating() {
        // The operator creates before it deletes: a pod deleted in a pass still runs while
        // the pass's new pods are created.
        let (mut svc, mut seen, old, new) = upgraded(12);
        svc.spec.update.max_surge = IntOrString::Int(3);
        svc.spec.update.max_unavailable = IntOrString::Int(2);
        let ready = seen.pods[0].state.clone();
        with_pod(&mut seen, &svc, 11, &new, ready);
        with_pod(&mut seen, &svc, 10, &new, PodState::Starting);
        with_pod(&mut seen, &svc, 9, &new, PodState::Starting);
        let p = plan(&svc, &seen);
        assert!(p.actions.contains(&Action::DeletePod {
            name: pod_name(&svc, 11, &old),
            reason: format!("replaced by {} at revision {new}", pod_name(&svc, 11, &new)),
        }));
        let creates = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::CreatePod { .. }))
            .count();
        assert_eq!(
            creates, 0,
            "15 pods run: no room until one terminates: {:?}",
            p.actions
        );

        seen.pods
            .iter_mut()
            .find(|p| p.name == pod_name(&svc, 11, &old))
            .unwrap()
            .state = PodState::Terminating;
        let creates = creates_at(&plan(&svc, &seen), &new);
        assert_eq!(creates.len(), 1, "{creates:?}");
    }

    #[test]
    fn a_slot_waiting_for_its_new_pod_counts_against_the_surge_ceiling() {
        // Slots 7 and 8 were replaced in place; the slot planner refills them as soon as
        // there is room, maybe in the same pass as deletions that make the room.
        let (mut svc, mut seen, _old, new) = upgraded(12);
        svc.spec.update.max_surge = IntOrString::Int(3);
        svc.spec.update.max_unavailable = IntOrString::Int(2);
        seen.pods.retain(|p| p.slot != 7 && p.slot != 8);
        for slot in [11, 10, 9] {
            with_pod(&mut seen, &svc, slot, &new, PodState::Starting);
        }
        let p = plan(&svc, &seen);
        assert_eq!(
            creates_at(&p, &new),
            Vec::<i32>::new(),
            "13 pods and 2 slots to refill make 15: no room to surge: {:?}",
            p.actions
        );
    }

    #[test]
    fn manual_rollback_stops_keeps_the_failing_pod_and_does_not_retry() {
        let (mut svc, mut seen, old, new) = upgraded(3);
        svc.spec.update.rollback = RollbackPolicy::Manual;
        svc.spec.supervision.max_restarts = 2;
        pass(&mut svc, &seen);
        with_pod(&mut seen, &svc, 2, &new, crash(2));
        let p = pass(&mut svc, &seen);
        assert_eq!(p.status.reason.as_deref(), Some("RolloutFailed"));
        assert!(!marked_bad(&p), "Manual leaves the verdict to a person");
        assert_eq!(
            p.actions,
            vec![],
            "stopped where it is: the failing pod stays for a person to look at"
        );
        assert_eq!(
            condition(&p, "Progressing"),
            Some(("False", "RolloutFailed"))
        );
        let waiting = p.status.rollout.as_ref().unwrap().waiting_for.clone();
        assert!(waiting.unwrap().starts_with("a person: "));

        // The failing pod is deleted by a person: the rollout stays stopped, nothing new is
        // made at the failed revision, and the slot keeps its old pod.
        seen.pods.retain(|p| p.revision == old);
        let p = pass(&mut svc, &at(5, &seen));
        assert_eq!(p.status.reason.as_deref(), Some("RolloutFailed"));
        assert_eq!(creates_at(&p, &new), Vec::<i32>::new(), "{:?}", p.actions);
        assert_eq!(p.actions, vec![]);

        // A new template starts a new rollout.
        svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:3".into());
        let newer = revision_name(&svc);
        seen.revisions.push(RevisionView {
            name: newer.clone(),
            number: 3,
            bad: false,
            intact: true,
        });
        let p = pass(&mut svc, &at(10, &seen));
        assert_eq!(p.status.reason, None);
        assert_eq!(creates_at(&p, &newer), vec![2]);
    }

    #[test]
    fn no_slot_moves_while_a_pod_of_the_new_revision_is_being_deleted() {
        // The pass after a rollback deleted a failing pod may read caches that do not show
        // the revision marked failed yet: it must not try the revision on another slot.
        let (mut svc, mut seen, _old, new) = upgraded(3);
        pass(&mut svc, &seen);
        with_pod(&mut seen, &svc, 2, &new, PodState::Terminating);
        let p = plan(&svc, &seen);
        assert_eq!(creates_at(&p, &new), Vec::<i32>::new(), "{:?}", p.actions);
        seen.pods.retain(|p| p.revision != new);
        assert_eq!(creates_at(&plan(&svc, &seen), &new), vec![2]);
    }

    #[test]
    fn abort_rolls_back_under_the_manual_policy_too() {
        let (mut svc, mut seen, old, new) = upgraded(3);
        svc.spec.update.rollback = RollbackPolicy::Manual;
        pass(&mut svc, &seen);
        with_pod(&mut seen, &svc, 2, &new, PodState::Starting);
        annotate(&mut svc, ANNOTATION_ABORT, "true");
        let p = pass(&mut svc, &seen);
        assert!(marked_bad(&p), "{:?}", p.actions);
        assert_eq!(
            condition(&p, "RolledBack"),
            Some(("True", "RolloutAborted"))
        );
        assert!(p.actions.contains(&Action::DeletePod {
            name: pod_name(&svc, 2, &new),
            reason: format!("replaced by {} at revision {old}", pod_name(&svc, 2, &old)),
        }));
    }

    #[test]
    fn a_promotion_left_from_an_earlier_rollout_does_not_promote_the_next_one() {
        let (mut svc, mut seen, old, new) = upgraded(3);
        svc.spec.update.canary = Some(Canary {
            steps: vec![
                CanaryStep {
                    replicas: Some(IntOrString::Int(1)),
                    pause: None,
                },
                CanaryStep {
                    replicas: None,
                    pause: Some(Pause::default()),
                },
            ],
        });
        // The value that promoted the previous rollout is still on the object.
        annotate(&mut svc, ANNOTATION_PROMOTE, "1700000000");
        let p = pass(&mut svc, &seen);
        assert_eq!(creates_at(&p, &new), vec![2], "step 0 moves one slot");
        seen.pods.retain(|p| p.slot != 2);
        let ready = seen.pods[0].state.clone();
        with_pod(&mut seen, &svc, 2, &new, ready);
        let p = pass(&mut svc, &at(5, &seen));
        let rollout = p.status.rollout.clone().unwrap();
        assert_eq!(rollout.canary_step, Some(1), "{rollout:?}");
        assert!(rollout.waiting_for.unwrap().contains("promotion"));
        assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
        assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));

        annotate(&mut svc, ANNOTATION_PROMOTE, "1700000100");
        let p = pass(&mut svc, &at(10, &seen));
        assert_eq!(p.status.rollout.as_ref().unwrap().canary_step, Some(2));
        assert_eq!(creates_at(&p, &new), vec![1]);
    }

    #[test]
    fn unpausing_after_a_pause_longer_than_the_deadline_resumes_the_rollout() {
        let (mut svc, seen, _old, new) = upgraded(3);
        svc.spec.update.progress_deadline_seconds = 10;
        svc.spec.paused = true;
        let p = pass(&mut svc, &seen);
        assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
        let p = pass(&mut svc, &at(60, &seen));
        assert_eq!(creates_at(&p, &new), Vec::<i32>::new());
        assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));

        svc.spec.paused = false;
        let p = pass(&mut svc, &at(120, &seen));
        assert!(!marked_bad(&p), "{:?}", p.actions);
        assert_ne!(condition(&p, "RolledBack").map(|c| c.0), Some("True"));
        assert_eq!(creates_at(&p, &new), vec![2]);
        let p = pass(&mut svc, &at(125, &seen));
        assert!(!marked_bad(&p));
        assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));
    }

    #[test]
    fn a_rollout_held_at_its_partition_is_not_stalled_and_resumes_when_it_is_lowered() {
        let (mut svc, mut seen, old, new) = upgraded(4);
        svc.spec.update.progress_deadline_seconds = 10;
        svc.spec.update.partition = 2;
        pass(&mut svc, &seen);
        let ready = seen.pods[0].state.clone();
        seen.pods.retain(|p| p.slot < 2);
        with_pod(&mut seen, &svc, 2, &new, ready.clone());
        with_pod(&mut seen, &svc, 3, &new, ready);
        let p = pass(&mut svc, &at(5, &seen));
        let rollout = p.status.rollout.clone().unwrap();
        assert!(rollout.waiting_for.unwrap().contains("partition"));
        for later in [60, 600] {
            let p = pass(&mut svc, &at(later, &seen));
            assert!(!marked_bad(&p), "{:?}", p.actions);
            assert_eq!(condition(&p, "Progressing").map(|c| c.0), Some("True"));
            assert_eq!(p.actions, vec![]);
            assert_eq!(p.status.current_revision.as_deref(), Some(old.as_str()));
        }

        svc.spec.update.partition = 0;
        let p = pass(&mut svc, &at(700, &seen));
        assert!(!marked_bad(&p), "{:?}", p.actions);
        assert_eq!(creates_at(&p, &new), vec![1]);
    }

    proptest! {
        /// The operator creates before it deletes, so a pass's creates land while its
        /// deletions still run. Pods plus slots waiting for one never pass the surge
        /// ceiling because of a pass (unless they were past it before).
        #[test]
        fn creates_landing_before_deletions_stay_within_the_surge_ceiling((svc, seen) in arb_case()) {
            let mut seen = seen;
            seen.pods.retain(|p| p.slot < svc.spec.replicas);
            let replicas = svc.spec.replicas;
            let live =
                |p: &PodView| !matches!(p.state, PodState::Terminating | PodState::Failed { .. });
            let taken = |s: &Assessment| {
                let pods = s.pods.iter().filter(|p| live(p)).count();
                let vacant = (0..replicas)
                    .filter(|slot| !s.pods.iter().any(|p| p.slot == *slot && live(p)))
                    .count();
                pods + vacant
            };
            let creates: Vec<Action> = plan(&svc, &seen)
                .actions
                .into_iter()
                .filter(|a| !matches!(a, Action::DeletePod { .. } | Action::ForceDeletePod { .. }))
                .collect();
            let landed = apply(&svc, &seen, &creates);
            let surge = resolve(&svc.spec.update.max_surge, replicas, true) as usize;
            prop_assert!(
                taken(&landed) <= (replicas as usize + surge).max(taken(&seen)),
                "{} -> {}: {:?}",
                taken(&seen),
                taken(&landed),
                creates
            );
        }
    }
}

/// Revisions whose pods the API server refused (annotation perennial.dev/invalid-template).
mod refusals {
    use super::*;
    use crate::api::{condition, ResilientServiceStatus, RollbackPolicy};

    const REFUSAL: &str = "Pod \"web-0-abc\" is invalid: spec.nodeSelector: Invalid value: \"a b\": name part must consist of alphanumeric characters";

    fn creates(p: &Plan) -> Vec<(i32, String)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod {
                    ordinal, revision, ..
                } => Some((*ordinal, revision.clone())),
                _ => None,
            })
            .collect()
    }

    fn degraded(p: &Plan) -> (String, String, String) {
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED)
            .expect("a Degraded condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    /// A service on `old`, whose template was just changed to one with another image.
    fn upgraded(policy: RollbackPolicy) -> (ResilientService, Assessment, String, String) {
        let mut svc = service(3, false);
        svc.spec.update.rollback = policy;
        let mut seen = converged(&svc);
        let old = revision_name(&svc);
        svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:2".into());
        let new = revision_name(&svc);
        seen.revisions.push(RevisionView {
            name: new.clone(),
            number: 2,
            bad: false,
            intact: true,
        });
        svc.status = Some(ResilientServiceStatus {
            current_revision: Some(old.clone()),
            update_revision: Some(old.clone()),
            ..Default::default()
        });
        (svc, seen, old, new)
    }

    #[test]
    fn a_new_service_whose_pods_are_refused_asks_for_none_again_and_is_degraded_invalid_template() {
        let mut svc = service(3, false);
        let rev = revision_name(&svc);
        let mut seen = Assessment {
            pods: vec![],
            ..converged(&svc)
        };
        assert_eq!(creates(&plan(&svc, &seen)).len(), 3, "the control");

        seen.refused.insert(rev.clone(), REFUSAL.to_string());
        for later in [0, 60, 600] {
            let p = pass(&mut svc, &at(later, &seen));
            assert_eq!(creates(&p), vec![], "no create storm: {:?}", p.actions);
            let (status, reason, message) = degraded(&p);
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("True", "InvalidTemplate")
            );
            assert!(
                message.contains(REFUSAL),
                "the server's message is quoted: {message}"
            );
            assert!(message.contains(&rev), "{message}");
            assert_eq!(p.status.reason.as_deref(), Some("InvalidTemplate"));
        }

        // Fixed: the new template's pods are asked for, and nothing is reported about the
        // refused revision the slots no longer need, though the rollout has only begun.
        svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:2".into());
        let fixed = revision_name(&svc);
        seen.revisions.push(RevisionView {
            name: fixed.clone(),
            number: 2,
            bad: false,
            intact: true,
        });
        let p = pass(&mut svc, &at(700, &seen));
        assert_eq!(
            creates(&p),
            (0..3).map(|s| (s, fixed.clone())).collect::<Vec<_>>()
        );
        assert_eq!(degraded(&p).1, "ReplicasHealthy");
        assert_eq!(p.status.reason, None);
    }

    #[test]
    fn a_refused_new_revision_is_rolled_back_and_degraded_stays_until_the_template_changes() {
        let (mut svc, mut seen, old, new) = upgraded(RollbackPolicy::Automatic);
        seen.refused.insert(new.clone(), REFUSAL.to_string());
        let p = pass(&mut svc, &seen);
        assert!(p.actions.iter().any(|a| matches!(
            a,
            Action::MarkRevisionBad { name, reason } if *name == new && reason.contains(REFUSAL)
        )));
        assert!(
            creates(&p).iter().all(|(_, r)| *r == old),
            "{:?}",
            p.actions
        );
        assert_eq!(degraded(&p).1, "InvalidTemplate");

        // Marked bad, and every slot back on the old revision: still Degraded, and
        // available.
        seen.revisions
            .iter_mut()
            .find(|r| r.name == new)
            .unwrap()
            .bad = true;
        let p = pass(&mut svc, &at(30, &seen));
        assert_eq!(creates(&p), vec![]);
        assert_eq!(degraded(&p).1, "InvalidTemplate");
        let available = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::AVAILABLE);
        assert_eq!(available.map(|c| c.status.as_str()), Some("True"));

        // A new template clears it and rolls out.
        svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example/app:3".into());
        let newer = revision_name(&svc);
        seen.revisions.push(RevisionView {
            name: newer.clone(),
            number: 3,
            bad: false,
            intact: true,
        });
        let p = pass(&mut svc, &at(60, &seen));
        let (status, reason, _) = degraded(&p);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "ReplicasHealthy")
        );
        assert_eq!(p.status.reason, None);
        assert_eq!(creates(&p), vec![(2, newer)]);
    }

    #[test]
    fn under_manual_rollback_a_refused_revision_stops_the_rollout_for_a_person() {
        let (mut svc, mut seen, _old, new) = upgraded(RollbackPolicy::Manual);
        seen.refused.insert(new.clone(), REFUSAL.to_string());
        let p = pass(&mut svc, &seen);
        assert!(!p
            .actions
            .iter()
            .any(|a| matches!(a, Action::MarkRevisionBad { .. })));
        assert_eq!(creates(&p), vec![]);
        let progressing = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::PROGRESSING)
            .unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "RolloutFailed")
        );
        assert!(
            progressing.message.contains(REFUSAL),
            "{}",
            progressing.message
        );
        assert_eq!(degraded(&p).1, "InvalidTemplate");
    }
}
