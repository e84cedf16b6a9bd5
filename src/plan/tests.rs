//! Planner tests: the fixtures every family shares and the examples of a whole pass; the
//! families (properties, repairs, rollouts, rollbacks, refusals) each in a file of its own.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::api::{ClaimRetention, PodManagementPolicy, ResilientService};
use crate::build::{pod_name, revision_name};
use crate::health::{Assessment, ClaimView, PodState, PodView, RevisionView, ServiceState};

mod drain;
mod properties;
mod refusals;
mod repairs;
mod rollback;
mod rollouts;

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
        serving: Default::default(),
        avoids: None,
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
            in_place_key: None,
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

/// A service converged on its first template, then given a new image: the service (its
/// status still on the old revision), what is seen, and the old and new revisions.
fn upgraded(replicas: i32) -> (ResilientService, Assessment, String, String) {
    let mut svc = service(replicas, false);
    let mut seen = converged(&svc);
    let old = revision_name(&svc);
    let new = new_template(&mut svc, &mut seen, "example/app:2", 2);
    svc.status = Some(crate::api::ResilientServiceStatus {
        current_revision: Some(old.clone()),
        update_revision: Some(old.clone()),
        ..Default::default()
    });
    (svc, seen, old, new)
}

/// Gives `svc` a template with `image`, recorded as revision `number`; returns its name.
fn new_template(
    svc: &mut ResilientService,
    seen: &mut Assessment,
    image: &str,
    number: i64,
) -> String {
    svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    let name = revision_name(svc);
    seen.revisions.push(RevisionView {
        name: name.clone(),
        number,
        bad: false,
        intact: true,
        in_place_key: None,
    });
    name
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
                        in_place_key: None,
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
                        serving: Default::default(),
                        avoids: None,
                    });
                }
            }
            Action::DeletePod { name, .. } => {
                next.strays.retain(|s| s != name);
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    p.state = PodState::Terminating;
                }
            }
            Action::CloseGate { name, upgrade, .. } => {
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    let why = if *upgrade {
                        crate::health::Closed::Upgrade
                    } else {
                        crate::health::Closed::Retire
                    };
                    p.serving.gate = crate::health::Gate::Closed {
                        since: seen.now,
                        why,
                    };
                    // A closed gate makes the pod unready at once, as far as plans go.
                    p.state = if *upgrade {
                        PodState::NotReady { since: seen.now }
                    } else {
                        PodState::Retiring { since: seen.now }
                    };
                }
            }
            Action::OpenGate { name } => {
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    p.serving.gate = crate::health::Gate::Open;
                }
            }
            Action::MarkPodNotReady { name, .. } => {
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    p.serving.listing = crate::health::Listing::NotReady;
                }
            }
            Action::UpgradeInPlace { name, revision, .. } => {
                for p in next.pods.iter_mut().filter(|p| &p.name == name) {
                    p.revision = revision.clone();
                    p.state = PodState::Starting;
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
            in_place_key: None,
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
