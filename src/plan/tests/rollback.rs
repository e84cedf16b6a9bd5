//! The rollback target over arbitrary histories: templates that change at any moment, pods
//! that move on at any pace, status writes that are lost. Whatever happens, the revision the
//! planner holds as stable (and so rolls back to) is one that the planner last saw serving
//! every replica, never an older one.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

#[derive(Clone, Debug)]
enum Step {
    /// A new template; a bad one crash-loops.
    Template { good: bool },
    /// The template goes back to the `n`-th one seen (modulo how many there were).
    Revert { n: usize },
    /// A pass: plan, carry out the actions; with `status_lost` its status write is lost.
    Pass { status_lost: bool },
    /// The pods picked by the mask move on: started ones turn ready (or crash, on a bad
    /// revision), terminating ones go.
    Progress { mask: u16 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => any::<bool>().prop_map(|good| Step::Template { good }),
        1 => (0..8usize).prop_map(|n| Step::Revert { n }),
        6 => prop_oneof![4 => Just(false), 1 => Just(true)].prop_map(|status_lost| Step::Pass { status_lost }),
        5 => any::<u16>().prop_map(|mask| Step::Progress { mask }),
    ]
}

/// Revisions on which every slot below `replicas` has a live, ready pod: what the planner
/// saw serving in this pass.
fn serving_now(svc: &ResilientService, seen: &Assessment) -> BTreeSet<String> {
    let replicas = svc.spec.replicas;
    if replicas == 0 {
        return BTreeSet::new();
    }
    seen.revisions
        .iter()
        .filter(|r| !r.bad)
        .filter(|r| {
            (0..replicas).all(|slot| {
                seen.pods.iter().any(|p| {
                    p.slot == slot
                        && p.revision == r.name
                        && matches!(p.state, PodState::Ready { .. })
                })
            })
        })
        .map(|r| r.name.clone())
        .collect()
}

struct History {
    svc: ResilientService,
    seen: Assessment,
    images: Vec<(String, bool)>,
    good: BTreeMap<String, bool>,
    /// What the planner last saw serving every replica.
    last_serving: Option<BTreeSet<String>>,
}

impl History {
    fn new(replicas: i32, storage: bool, surge: i32, unavailable: i32) -> Self {
        let mut svc = service(replicas, storage);
        svc.spec.update.max_surge = IntOrString::Int(surge);
        svc.spec.update.max_unavailable = IntOrString::Int(unavailable);
        let seen = converged(&svc);
        pass(&mut svc, &seen);
        let first = revision_name(&svc);
        History {
            svc,
            seen,
            images: vec![("example/app:1".into(), true)],
            good: BTreeMap::from([(first, true)]),
            last_serving: None,
        }
    }

    fn set_image(&mut self, image: &str, good: bool) {
        self.svc.spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        self.good.entry(revision_name(&self.svc)).or_insert(good);
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Template { good } => {
                let image = format!("example/app:{}", self.images.len() + 1);
                self.images.push((image.clone(), good));
                self.set_image(&image, good);
            }
            Step::Revert { n } => {
                let (image, good) = self.images[n % self.images.len()].clone();
                self.set_image(&image, good);
            }
            Step::Pass { status_lost } => {
                let serving = serving_now(&self.svc, &self.seen);
                if !serving.is_empty() {
                    self.last_serving = Some(serving);
                }
                let p = plan(&self.svc, &self.seen);
                if let Some(last) = &self.last_serving {
                    let stable = p.status.current_revision.clone().unwrap_or_default();
                    prop_assert!(
                        last.contains(&stable),
                        "stable {stable} but the planner last saw {last:?} serving every replica; \
                         recorded {:?}, update {}, pods {:?}, actions {:?}",
                        self.svc
                            .status
                            .as_ref()
                            .and_then(|s| s.current_revision.clone()),
                        revision_name(&self.svc),
                        self.seen
                            .pods
                            .iter()
                            .map(|p| (p.slot, &p.revision, p.state.word()))
                            .collect::<Vec<_>>(),
                        p.actions
                    );
                }
                if !status_lost {
                    self.svc.status = Some(p.status.clone());
                }
                self.seen = apply(&self.svc, &self.seen, &p.actions);
            }
            Step::Progress { mask } => {
                let max_restarts = self.svc.spec.supervision.max_restarts;
                let good = &self.good;
                let mut i = 0;
                self.seen.pods.retain_mut(|p| {
                    let picked = mask & (1 << (i % 16)) != 0;
                    i += 1;
                    if !picked {
                        return true;
                    }
                    match p.state {
                        PodState::Terminating => return false,
                        PodState::Pending | PodState::Starting => {
                            p.state = if good.get(&p.revision).copied().unwrap_or(true) {
                                PodState::Ready {
                                    since: Timestamp::from_second(1_700_000_000).unwrap(),
                                }
                            } else {
                                PodState::CrashLooping {
                                    reason: "CrashLoopBackOff".into(),
                                    message: "exit 1".into(),
                                    restarts: max_restarts,
                                }
                            };
                        }
                        _ => {}
                    }
                    true
                });
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_rollback_target_is_always_the_revision_last_seen_serving_every_replica(
        replicas in 1..6i32,
        storage in any::<bool>(),
        surge in 0..3i32,
        unavailable in 0..3i32,
        steps in proptest::collection::vec(arb_step(), 1..80),
    ) {
        let mut history = History::new(replicas, storage, surge, unavailable);
        for step in &steps {
            history.step(step)?;
        }
    }
}

/// The sequence that once went two revisions back: v2 serves all 8 replicas while the last
/// v1 pod is still on its way out, and a bad v3 arrives before any status names v2.
#[test]
fn a_bad_template_right_after_a_rollout_goes_back_to_the_revision_that_served_not_the_one_before() {
    let mut h = History::new(8, false, 1, 1);
    let v1 = revision_name(&h.svc);
    h.step(&Step::Template { good: true }).unwrap();
    let v2 = revision_name(&h.svc);
    // Roll v2 out, keeping the status that still names v1 (every write of it lost), until
    // every slot serves v2 and one v1 pod is still terminating.
    for _ in 0..200 {
        let serves = serving_now(&h.svc, &h.seen).contains(&v2);
        if serves && h.seen.pods.iter().any(|p| p.revision == v1) {
            break;
        }
        h.step(&Step::Pass { status_lost: true }).unwrap();
        h.step(&Step::Progress { mask: 0x7fff }).unwrap();
    }
    assert!(serving_now(&h.svc, &h.seen).contains(&v2));
    assert_eq!(
        h.svc
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone()),
        Some(v1.clone()),
        "the status never said v2"
    );
    h.step(&Step::Template { good: false }).unwrap();
    let v3 = revision_name(&h.svc);
    // The first pass of v3 records v2 and replaces nothing.
    let p = plan(&h.svc, &h.seen);
    assert_eq!(p.status.current_revision.as_deref(), Some(v2.as_str()));
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::DeletePod { .. } | Action::CreatePod { .. })),
        "{:?}",
        p.actions
    );
    // From there on v3 rolls out, crashes, and is rolled back to v2.
    for _ in 0..200 {
        h.step(&Step::Pass { status_lost: false }).unwrap();
        h.step(&Step::Progress { mask: 0xffff }).unwrap();
    }
    let status = h.svc.status.clone().unwrap();
    assert!(h.seen.revisions.iter().any(|r| r.name == v3 && r.bad));
    assert_eq!(status.current_revision.as_deref(), Some(v2.as_str()));
    assert!(
        h.seen.pods.iter().all(|p| p.revision == v2),
        "{:?}",
        h.seen.pods
    );
}

impl History {
    /// Passes and progress until `done` holds (at most 300 rounds).
    fn run_until(&mut self, done: impl Fn(&History) -> bool) {
        for _ in 0..300 {
            if done(self) {
                return;
            }
            self.step(&Step::Pass { status_lost: false }).unwrap();
            self.step(&Step::Progress { mask: 0xffff }).unwrap();
        }
        panic!("never got there: {:?}", self.seen.pods);
    }

    fn on(&self, rev: &str) -> Vec<i32> {
        let mut slots: Vec<i32> = self
            .seen
            .pods
            .iter()
            .filter(|p| p.revision == rev && p.state.is_ready())
            .map(|p| p.slot)
            .collect();
        slots.sort();
        slots
    }

    fn rolled_back_to(&self, rev: &str) -> bool {
        self.svc.status.as_ref().is_some_and(|s| {
            s.current_revision.as_deref() == Some(rev)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == crate::api::condition::ROLLED_BACK && c.status == "True")
        }) && self.seen.pods.iter().all(|p| p.revision == rev)
    }
}

#[test]
fn a_canary_superseded_by_a_bad_template_goes_back_to_the_revision_that_served_every_replica() {
    use crate::api::{Canary, CanaryStep, Pause};
    let mut h = History::new(4, false, 1, 0);
    let v1 = revision_name(&h.svc);
    h.svc.spec.update.canary = Some(Canary {
        steps: vec![
            CanaryStep {
                replicas: Some(IntOrString::Int(1)),
                pause: None,
            },
            CanaryStep {
                replicas: None,
                pause: Some(Pause { seconds: None }),
            },
        ],
    });
    h.step(&Step::Template { good: true }).unwrap();
    let v2 = revision_name(&h.svc);
    h.run_until(|h| h.on(&v2).len() == 1 && h.on(&v1).len() == 3);
    // The canary of v2 waits for a promotion that never comes; a bad v3 replaces it.
    h.step(&Step::Template { good: false }).unwrap();
    h.run_until(|h| h.rolled_back_to(&v1));
    assert_eq!(
        h.on(&v1),
        vec![0, 1, 2, 3],
        "the canary slot is back on v1 too"
    );
}

#[test]
fn a_partitioned_rollout_superseded_by_a_bad_template_goes_back_to_the_revision_that_served_every_replica(
) {
    let mut h = History::new(4, false, 1, 0);
    let v1 = revision_name(&h.svc);
    h.svc.spec.update.partition = 2;
    h.step(&Step::Template { good: true }).unwrap();
    let v2 = revision_name(&h.svc);
    h.run_until(|h| h.on(&v2) == vec![2, 3] && h.on(&v1) == vec![0, 1]);
    h.step(&Step::Template { good: false }).unwrap();
    h.run_until(|h| h.rolled_back_to(&v1));
}

#[test]
fn a_canary_promoted_to_every_replica_then_superseded_goes_back_to_it() {
    use crate::api::{Canary, CanaryStep, ANNOTATION_PROMOTE};
    let mut h = History::new(4, false, 1, 0);
    h.svc.spec.update.canary = Some(Canary {
        steps: vec![CanaryStep {
            replicas: Some(IntOrString::Int(2)),
            pause: None,
        }],
    });
    h.svc
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_PROMOTE.into(), "1".into());
    h.step(&Step::Template { good: true }).unwrap();
    let v2 = revision_name(&h.svc);
    h.run_until(|h| h.on(&v2) == vec![0, 1, 2, 3]);
    h.step(&Step::Template { good: false }).unwrap();
    h.run_until(|h| h.rolled_back_to(&v2));
}

#[test]
fn the_stable_revision_is_never_trimmed_even_once_no_pod_runs_it() {
    let mut svc = service(1, true);
    svc.spec.revision_history_limit = 1;
    let mut seen = converged(&svc);
    let stable = revision_name(&svc);
    svc.status = Some(crate::api::ResilientServiceStatus {
        current_revision: Some(stable.clone()),
        ..Default::default()
    });
    // Three newer templates since; the slot's pod of the stable revision is gone.
    for n in 2..5 {
        new_template(&mut svc, &mut seen, &format!("example/app:{n}"), n);
    }
    seen.pods.clear();
    let trimmed: Vec<String> = plan(&svc, &seen)
        .actions
        .into_iter()
        .filter_map(|a| match a {
            Action::DeleteRevision { name } => Some(name),
            _ => None,
        })
        .collect();
    assert!(!trimmed.contains(&stable), "{trimmed:?}");
    assert_eq!(
        trimmed.len(),
        1,
        "the oldest unused one beyond the limit: {trimmed:?}"
    );
}
