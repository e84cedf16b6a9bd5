//! Property tests of the planner's invariants over arbitrary states.

use super::*;

pub(super) fn arb_state() -> impl Strategy<Value = PodState> {
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
        (any::<bool>(), any::<bool>()).prop_map(|(fenced, deleting)| PodState::OnLostNode {
            message: "lost".into(),
            fenced,
            deleting
        }),
    ]
}

/// A pod's readiness gate, how the slices list it, and whether it was seen drained.
pub(super) fn arb_serving() -> impl Strategy<Value = crate::health::Serving> {
    use crate::health::{Closed, Gate, Listing, Serving};
    let t = |s: i64| Timestamp::from_second(s).unwrap();
    let gate = prop_oneof![
        Just(Gate::Absent),
        Just(Gate::Unset),
        Just(Gate::Open),
        (0..60i64, any::<bool>()).prop_map(move |(ago, upgrade)| Gate::Closed {
            since: t(now().as_second() - ago),
            why: if upgrade {
                Closed::Upgrade
            } else {
                Closed::Retire
            },
        }),
    ];
    let listing = prop_oneof![
        Just(Listing::Unlisted),
        Just(Listing::Ready),
        Just(Listing::NotReady)
    ];
    (
        gate,
        listing,
        proptest::option::of(0..10i64),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(gate, listing, drained_ago, containers_ready, current)| Serving {
                gate,
                listing,
                drained_since: drained_ago.map(|a| t(now().as_second() - a)),
                containers_ready,
                current,
            },
        )
}

prop_compose! {
    pub(super) fn arb_case()(
        replicas in 0..7i32,
        storage in any::<bool>(),
        delete_on_scale in any::<bool>(),
        ordered in any::<bool>(),
        pods in proptest::collection::vec((0..9i32, any::<bool>(), arb_state(), arb_serving()), 0..14),
        in_place in any::<bool>(),
        until_gone in any::<bool>(),
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
        if in_place {
            // The old revision differs from the new one only in what moves in place.
            svc.spec.update.in_place = crate::api::InPlacePolicy::IfPossible;
            seen.revisions.push(RevisionView {
                name: OLD_REVISION.to_string(),
                number: 0,
                bad: false,
                intact: true,
                in_place_key: Some(crate::build::in_place_key(&svc.spec.template)),
            });
        }
        if until_gone {
            svc.spec.update.pod_replacement_policy = crate::api::PodReplacementPolicy::TerminationComplete;
        }
        for (slot, updated, state, serving) in pods {
            let revision = if updated { rev.clone() } else { OLD_REVISION.to_string() };
            let name = pod_name(&svc, slot, &revision);
            // A pod drained to be deleted is Retiring, whatever else it was.
            let state = match (&state, serving.gate) {
                (PodState::Terminating | PodState::OnLostNode { .. }, _) => state,
                (_, crate::health::Gate::Closed { since, why: crate::health::Closed::Retire }) => {
                    PodState::Retiring { since }
                }
                _ => state,
            };
            if seen.pods.iter().all(|p| p.name != name) {
                seen.pods.push(PodView { name, slot, revision, node: None, state, serving, avoids: None });
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

/// Whether `p`'s drain is over at `now`, as spec.drain says.
fn drain_over(svc: &ResilientService, p: &PodView, closed: Timestamp, now: Timestamp) -> bool {
    use crate::health::Listing;
    let settle = i64::from(svc.spec.drain.settle_seconds);
    let timeout = i64::from(svc.spec.drain.timeout_seconds);
    match p.serving.listing {
        Listing::Unlisted => true,
        Listing::Ready => now.as_second() - closed.as_second() >= timeout,
        Listing::NotReady => p
            .serving
            .drained_since
            .is_some_and(|d| now.as_second() - d.as_second() >= settle),
    }
}

proptest! {
    #[test]
    fn no_pod_that_may_serve_is_deleted_or_patched_before_its_drain_is_over((svc, seen) in arb_case()) {
        use crate::health::{Closed, Gate};
        for action in plan(&svc, &seen).actions {
            let (name, upgrade) = match &action {
                Action::DeletePod { name, .. } => (name, false),
                Action::UpgradeInPlace { name, .. } => (name, true),
                _ => continue,
            };
            let Some(p) = seen.pods.iter().find(|p| &p.name == name) else { continue };
            let running = matches!(p.state, PodState::Starting | PodState::NotReady { .. } | PodState::Ready { .. });
            match (p.serving.gate, &p.state) {
                // Drained to be deleted: only once the drain is over.
                (_, PodState::Retiring { since }) => {
                    prop_assert!(!upgrade);
                    prop_assert!(drain_over(&svc, p, *since, seen.now), "{:?} deleted mid-drain", p);
                }
                (Gate::Closed { since, why: Closed::Upgrade }, _) if running => {
                    prop_assert!(upgrade, "{:?} deleted while drained for an upgrade", p);
                    prop_assert!(drain_over(&svc, p, since, seen.now), "{:?} patched mid-drain", p);
                }
                // An open gate on a running pod: never acted on in the same pass.
                (Gate::Open, _) => prop_assert!(!running, "{:?} acted on with its gate open", p),
                // No gate to close (an older pod), a gate that never opened, a pod that
                // failed or whose node is lost: nothing serves from it.
                _ => {}
            }
        }
    }

    #[test]
    fn a_gate_opens_only_on_a_pod_ready_to_serve_that_nothing_drains((svc, seen) in arb_case()) {
        let actions = plan(&svc, &seen).actions;
        for action in &actions {
            let Action::OpenGate { name } = action else { continue };
            let p = seen.pods.iter().find(|p| &p.name == name).unwrap();
            prop_assert!(p.serving.containers_ready && p.serving.current, "{:?}", p);
            prop_assert!(!p.state.is_leaving());
            let drained = actions.iter().any(|a| matches!(a,
                Action::CloseGate { name: n, .. } | Action::UpgradeInPlace { name: n, .. } | Action::DeletePod { name: n, .. } if n == name));
            prop_assert!(!drained, "{} opened and drained at once", name);
        }
    }

    #[test]
    fn only_a_routed_pod_on_a_lost_node_is_marked_not_ready_and_never_under_a_storm((svc, seen) in arb_case()) {
        let p = plan(&svc, &seen);
        for action in &p.actions {
            let Action::MarkPodNotReady { name, .. } = action else { continue };
            let pod = seen.pods.iter().find(|p| &p.name == name).unwrap();
            prop_assert!(matches!(pod.state, PodState::OnLostNode { .. }), "{:?}", pod);
            prop_assert_eq!(pod.serving.listing, crate::health::Listing::Ready);
            prop_assert_ne!(p.status.reason.as_deref(), Some("MassFailureSuspected"));
        }
        // Every routed pod on a lost node of a slot the service keeps is unrouted, unless a
        // storm is suspected.
        if p.status.reason.as_deref() != Some("MassFailureSuspected") {
            for pod in &seen.pods {
                let kept = pod.slot < svc.spec.replicas;
                if kept && matches!(pod.state, PodState::OnLostNode { .. }) && pod.serving.listing == crate::health::Listing::Ready {
                    prop_assert!(p.actions.iter().any(|a| matches!(a, Action::MarkPodNotReady { name, .. } if *name == pod.name)), "{:?} left routed", pod);
                }
            }
        }
    }

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
