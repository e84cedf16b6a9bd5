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
        any::<bool>().prop_map(|fenced| PodState::OnLostNode {
            message: "lost".into(),
            fenced
        }),
    ]
}

prop_compose! {
    pub(super) fn arb_case()(
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
