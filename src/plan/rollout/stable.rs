//! The revision a rollout returns to: the newest one that served every replica.
//!
//! It is read from the pods first and from `status.currentRevision` second. A status write
//! can be lost (a conflict, a crash, a template that changes in the very second the last
//! pod of a rollout turns available), and a rollback that trusted the status alone would
//! then return to a revision the user had already replaced.

use super::{is_available, live};
use crate::api::ResilientService;
use crate::health::Assessment;

/// Where a rollback goes, and what slots below a partition run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::plan) struct Stable {
    pub name: String,
    /// It serves every replica now, but `status.currentRevision` does not say so yet.
    /// Nothing may replace its pods until the status does: if they went first and the
    /// status write were lost, the evidence would be gone with it.
    pub unrecorded: bool,
}

/// Revisions (recorded, not failed) on which every desired slot has a live, available pod
/// now; pods on their way out do not count, pods past the replica count neither.
pub(super) fn serving<'a>(
    svc: &ResilientService,
    seen: &'a Assessment,
    bad: &[&str],
) -> Vec<&'a str> {
    let replicas = svc.spec.replicas.max(0);
    if replicas == 0 {
        // Nothing to serve: no revision proves anything.
        return Vec::new();
    }
    let min_ready = i64::from(svc.spec.update.min_ready_seconds.max(0));
    seen.revisions
        .iter()
        .map(|r| r.name.as_str())
        .filter(|r| !bad.contains(r))
        .filter(|r| {
            (0..replicas).all(|slot| {
                seen.pods.iter().any(|p| {
                    p.slot == slot
                        && p.revision == *r
                        && live(p)
                        && is_available(p, seen.now, min_ready)
                })
            })
        })
        .collect()
}

/// The stable revision: among those serving every replica now, the update revision, else
/// the one already recorded, else the newest by number; with none serving, the recorded
/// one; on a new service, the update revision.
pub(super) fn stable(
    svc: &ResilientService,
    seen: &Assessment,
    update: &str,
    bad: &[&str],
) -> Stable {
    let recorded = svc
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .filter(|c| seen.revisions.iter().any(|r| r.name == *c) && !bad.contains(c));
    let serving = serving(svc, seen, bad);
    let chosen = if serving.contains(&update) {
        Some(update)
    } else if recorded.is_some_and(|r| serving.contains(&r)) {
        recorded
    } else {
        serving.iter().copied().max_by_key(|name| {
            seen.revisions
                .iter()
                .find(|r| r.name == *name)
                .map(|r| r.number)
        })
    };
    match chosen {
        Some(name) => Stable {
            name: name.to_string(),
            unrecorded: recorded != Some(name) && name != update,
        },
        None => Stable {
            name: recorded.unwrap_or(update).to_string(),
            unrecorded: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::api::ResilientServiceStatus;
    use crate::health::{PodState, PodView, RevisionView, ServiceState};

    fn svc(replicas: i32, recorded: Option<&str>) -> ResilientService {
        let mut svc = super::super::test_service(replicas);
        svc.status = Some(ResilientServiceStatus {
            current_revision: recorded.map(str::to_string),
            ..Default::default()
        });
        svc
    }

    fn seen(pods: &[(i32, &str, PodState)]) -> Assessment {
        Assessment {
            now: Timestamp::from_second(1_800_000_000).unwrap(),
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, (slot, rev, state))| PodView {
                    name: format!("web-{slot}-{i}"),
                    slot: *slot,
                    revision: rev.to_string(),
                    node: None,
                    state: state.clone(),
                    serving: Default::default(),
                    avoids: None,
                })
                .collect(),
            strays: vec![],
            claims: vec![],
            revisions: ["v1", "v2", "v3"]
                .iter()
                .zip(1..)
                .map(|(name, number)| RevisionView {
                    name: name.to_string(),
                    number,
                    bad: false,
                    intact: true,
                    in_place_key: None,
                })
                .collect(),
            refused: Default::default(),
            service: ServiceState::Ours { up_to_date: true },
            budget_up_to_date: Some(true),
            node_domains: Default::default(),
            nodes_total: 1,
            nodes_lost: 0,
            node_recheck_seconds: None,
            nodes_back: Default::default(),
            fences: vec![],
        }
    }

    fn ready() -> PodState {
        PodState::Ready {
            since: Timestamp::from_second(1_700_000_000).unwrap(),
        }
    }

    #[test]
    fn a_revision_serving_every_slot_is_stable_even_while_the_status_names_an_older_one() {
        // v2 serves both slots; the last v1 pod is still on its way out.
        let seen = seen(&[
            (0, "v2", ready()),
            (1, "v2", ready()),
            (1, "v1", PodState::Terminating),
        ]);
        let got = stable(&svc(2, Some("v1")), &seen, "v3", &[]);
        assert_eq!(
            got,
            Stable {
                name: "v2".into(),
                unrecorded: true
            }
        );
        // Once recorded, nothing holds.
        let got = stable(&svc(2, Some("v2")), &seen, "v3", &[]);
        assert!(!got.unrecorded);
    }

    #[test]
    fn a_revision_serving_only_some_slots_leaves_the_recorded_one_stable() {
        let seen = seen(&[
            (0, "v2", ready()),
            (1, "v1", ready()),
            (1, "v2", PodState::Starting),
        ]);
        let got = stable(&svc(2, Some("v1")), &seen, "v3", &[]);
        assert_eq!(got.name, "v1");
        assert!(!got.unrecorded);
    }

    #[test]
    fn pods_that_run_but_are_not_available_serve_nothing() {
        let starting = seen(&[(0, "v2", PodState::Starting), (1, "v2", ready())]);
        assert_eq!(stable(&svc(2, Some("v1")), &starting, "v3", &[]).name, "v1");
        let mut held = svc(2, Some("v1"));
        held.spec.update.min_ready_seconds = 600;
        let fresh = seen(&[(0, "v2", ready()), (1, "v2", ready())]);
        let mut fresh = fresh;
        fresh.now = Timestamp::from_second(1_700_000_100).unwrap();
        assert_eq!(
            stable(&held, &fresh, "v3", &[]).name,
            "v1",
            "not yet past minReadySeconds"
        );
    }

    #[test]
    fn a_failed_revision_is_never_stable_even_when_it_serves() {
        let seen = seen(&[(0, "v2", ready()), (1, "v2", ready())]);
        assert_eq!(stable(&svc(2, Some("v1")), &seen, "v3", &["v2"]).name, "v1");
        assert_eq!(
            stable(&svc(2, Some("v2")), &seen, "v3", &["v2"]).name,
            "v3",
            "a failed record falls back to the update revision"
        );
    }

    #[test]
    fn with_two_revisions_serving_the_update_then_the_recorded_then_the_newest_wins() {
        let both = seen(&[
            (0, "v1", ready()),
            (0, "v2", ready()),
            (1, "v1", ready()),
            (1, "v2", ready()),
        ]);
        assert_eq!(stable(&svc(2, Some("v1")), &both, "v2", &[]).name, "v2");
        assert_eq!(stable(&svc(2, Some("v1")), &both, "v3", &[]).name, "v1");
        assert_eq!(stable(&svc(2, None), &both, "v3", &[]).name, "v2");
    }

    #[test]
    fn the_update_revision_serving_every_slot_needs_no_record_first() {
        let seen = seen(&[(0, "v2", ready()), (1, "v2", ready())]);
        let got = stable(&svc(2, Some("v1")), &seen, "v2", &[]);
        assert_eq!(
            got,
            Stable {
                name: "v2".into(),
                unrecorded: false
            }
        );
    }

    #[test]
    fn a_new_service_and_a_service_scaled_to_zero_fall_back_to_the_record() {
        assert_eq!(stable(&svc(2, None), &seen(&[]), "v1", &[]).name, "v1");
        let seen = seen(&[(0, "v2", ready())]);
        assert_eq!(stable(&svc(0, Some("v1")), &seen, "v3", &[]).name, "v1");
    }
}
