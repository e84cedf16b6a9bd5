//! Verdicts on the revision being rolled out: aborted by a person, failed, or neither; and
//! the rollback a verdict leads to.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::{Decision, Targets, WAITING_FOR_A_PERSON, WAITING_FOR_UNPAUSE};
use crate::api::{condition, ResilientService, RollbackPolicy, RolloutStatus, ANNOTATION_ABORT};
use crate::health::{Assessment, PodState, PodView};
use crate::plan::conditions::Decided;
use crate::plan::Action;

/// What is known against the update revision in this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// A person asked for the rollout to be aborted.
    pub aborted: bool,
    /// Why the update revision failed, if it did.
    pub failure: Option<String>,
}

impl Verdict {
    /// Aborting rolls back whatever the rollback policy: a person asked for it. A revision
    /// known bad is not retried until the template changes again.
    pub fn rolls_back(&self, svc: &ResilientService, update_is_bad: bool) -> bool {
        update_is_bad
            || self.aborted
            || (self.failure.is_some() && svc.spec.update.rollback == RollbackPolicy::Automatic)
    }
}

/// The abort annotation names this rollout: "true", or the update revision's name.
pub(super) fn abort_requested(svc: &ResilientService, update: &str) -> bool {
    abort_value(svc).is_some_and(|v| v == "true" || v == update)
}

pub(super) fn abort_value(svc: &ResilientService) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ABORT))
        .map(String::as_str)
}

/// Judges the update revision. A rollout stopped by a failure stays stopped: the evidence
/// (a crash-looping pod) may come and go, the verdict does not.
pub(super) fn judge(
    svc: &ResilientService,
    seen: &Assessment,
    update: &str,
    rolling: bool,
    new_pods: &[&PodView],
    now: Timestamp,
    prev: Option<&RolloutStatus>,
) -> Verdict {
    if !rolling {
        return Verdict::default();
    }
    let stopped_before = prev
        .and_then(|r| r.waiting_for.as_deref())
        .and_then(|w| w.strip_prefix(WAITING_FOR_A_PERSON))
        .map(str::to_string);
    Verdict {
        aborted: abort_requested(svc, update) || aborted_before(svc, update),
        failure: stopped_before
            .or_else(|| crate::plan::refused::rollout_failure(seen, update))
            .or_else(|| new_revision_failure(svc, new_pods, now, prev)),
    }
}

/// The rollout of `update` was rolled back because a person aborted it. The annotation that
/// asked for it is cleared once carried out; the verdict, and so the reason a person reads
/// in `RolledBack`, stays.
fn aborted_before(svc: &ResilientService, update: &str) -> bool {
    let from = format!("rolled back from {update} ");
    svc.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == condition::ROLLED_BACK
                && c.status == "True"
                && c.reason == "RolloutAborted"
                && c.message.starts_with(&from)
        })
    })
}

/// Why the new revision has failed, if it has: a pod that kept crashing past the
/// supervision intensity, or could not pull its image, or no progress within the deadline.
pub(super) fn new_revision_failure(
    svc: &ResilientService,
    new_pods: &[&PodView],
    now: Timestamp,
    prev: Option<&RolloutStatus>,
) -> Option<String> {
    let max_restarts = svc.spec.supervision.max_restarts.max(1);
    for p in new_pods {
        match &p.state {
            PodState::CrashLooping {
                reason, restarts, ..
            } if *restarts >= max_restarts => {
                return Some(format!(
                    "pod {} of the new revision: {reason}, {restarts} restarts",
                    p.name
                ))
            }
            PodState::ImagePullFailing { reason, message } => {
                return Some(format!("pod {}: {reason}: {message}", p.name))
            }
            _ => {}
        }
    }
    let prev = prev?;
    let deadline = i64::from(svc.spec.update.progress_deadline_seconds.max(1));
    let paused = svc.spec.paused
        || prev.paused_since.is_some()
        || prev.waiting_for.as_deref() == Some(WAITING_FOR_UNPAUSE);
    let stalled = now.as_second() - prev.last_progress_at.0.as_second();
    (!paused && stalled >= deadline && !prev.progress.is_empty())
        .then(|| format!("no progress for {stalled} s (progressDeadlineSeconds {deadline})"))
}

/// Every slot goes back to the stable revision, and the update revision is marked failed
/// so that it is not rolled out again.
pub(super) fn rolled_back(
    update: &str,
    stable: &str,
    update_is_bad: bool,
    verdict: &Verdict,
) -> Decision {
    let why = if verdict.aborted {
        "the rollout was aborted".to_string()
    } else {
        verdict.failure.clone().unwrap_or_else(|| {
            format!("revision {update} failed before and is not retried until the template changes")
        })
    };
    let mut actions = Vec::new();
    if !update_is_bad {
        actions.push(Action::MarkRevisionBad {
            name: update.to_string(),
            reason: why.clone(),
        });
    }
    Decision {
        targets: Targets {
            target: stable.to_string(),
            hold: stable.to_string(),
            partition: 0,
            kept: BTreeSet::new(),
        },
        actions,
        status: None,
        conditions: vec![Decided {
            type_: condition::ROLLED_BACK,
            status: true,
            reason: if verdict.aborted {
                "RolloutAborted"
            } else {
                "RevisionFailed"
            }
            .into(),
            message: format!("rolled back from {update} to {stable}: {why}"),
        }],
        requeue: None,
        reason: Some("RolledBack".to_string()),
        record_stable_first: false,
    }
}

/// The abort annotation is cleared once it has done its work (the revision it named is
/// marked failed) or names nothing that is rolling out: left in place, "true" would abort
/// every later rollout the moment it started.
pub(super) fn clear_abort(
    svc: &ResilientService,
    update: &str,
    update_is_bad: bool,
    rolling: bool,
) -> Option<Action> {
    let value = abort_value(svc)?;
    let names_this_rollout = value == "true" || value == update;
    let done = update_is_bad || !rolling || !names_this_rollout;
    done.then(|| Action::ClearAbort {
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(abort: Option<&str>) -> ResilientService {
        let mut svc = super::super::test_service(2);
        if let Some(v) = abort {
            svc.metadata.annotations = Some([(ANNOTATION_ABORT.to_string(), v.to_string())].into());
        }
        svc
    }

    #[test]
    fn an_abort_names_the_rollout_by_true_or_by_its_revision() {
        assert!(abort_requested(&svc(Some("true")), "web-2"));
        assert!(abort_requested(&svc(Some("web-2")), "web-2"));
        assert!(!abort_requested(&svc(Some("web-1")), "web-2"));
        assert!(!abort_requested(&svc(None), "web-2"));
    }

    #[test]
    fn the_abort_annotation_is_cleared_once_its_revision_is_marked_failed() {
        let aborting = svc(Some("true"));
        assert_eq!(
            clear_abort(&aborting, "web-2", false, true),
            None,
            "still to act on"
        );
        assert_eq!(
            clear_abort(&aborting, "web-2", true, true),
            Some(Action::ClearAbort {
                value: "true".into()
            })
        );
    }

    #[test]
    fn an_abort_with_nothing_to_abort_is_cleared_before_it_can_abort_a_later_rollout() {
        assert!(clear_abort(&svc(Some("true")), "web-2", false, false).is_some());
        assert!(
            clear_abort(&svc(Some("web-1")), "web-2", false, true).is_some(),
            "it names an earlier rollout"
        );
        assert_eq!(clear_abort(&svc(None), "web-2", true, true), None);
    }

    #[test]
    fn an_aborted_rollout_stays_aborted_once_its_annotation_is_cleared() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let mut cleared = svc(None);
        cleared.status = Some(crate::api::ResilientServiceStatus {
            conditions: vec![Condition {
                type_: condition::ROLLED_BACK.into(),
                status: "True".into(),
                reason: "RolloutAborted".into(),
                message: "rolled back from web-2 to web-1: the rollout was aborted".into(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let now = Timestamp::UNIX_EPOCH;
        assert!(judge(&cleared, &empty(), "web-2", true, &[], now, None).aborted);
        assert!(
            !judge(&cleared, &empty(), "web-3", true, &[], now, None).aborted,
            "a later rollout is not aborted by it"
        );
    }

    fn empty() -> Assessment {
        Assessment {
            now: Timestamp::UNIX_EPOCH,
            pods: vec![],
            strays: vec![],
            claims: vec![],
            revisions: vec![],
            refused: Default::default(),
            service: crate::health::ServiceState::Missing,
            budget_up_to_date: None,
            node_domains: Default::default(),
            nodes_total: 0,
            nodes_lost: 0,
            node_recheck_seconds: None,
            nodes_back: Default::default(),
            fences: vec![],
        }
    }

    #[test]
    fn a_rollback_marks_the_update_failed_once_and_sends_every_slot_to_the_stable_revision() {
        let verdict = Verdict {
            aborted: false,
            failure: Some("pod web-0: CrashLoopBackOff, 5 restarts".into()),
        };
        let d = rolled_back("web-3", "web-2", false, &verdict);
        assert_eq!(d.targets.target, "web-2");
        assert_eq!(d.targets.hold, "web-2");
        assert!(
            matches!(&d.actions[..], [Action::MarkRevisionBad { name, .. }] if name == "web-3")
        );
        assert!(d.conditions[0].message.contains("from web-3 to web-2"));
        let again = rolled_back("web-3", "web-2", true, &verdict);
        assert!(again.actions.is_empty(), "marked already");
    }

    #[test]
    fn only_an_abort_rolls_back_under_the_manual_policy() {
        let mut manual = svc(None);
        manual.spec.update.rollback = RollbackPolicy::Manual;
        let failed = Verdict {
            aborted: false,
            failure: Some("x".into()),
        };
        assert!(!failed.rolls_back(&manual, false));
        assert!(Verdict {
            aborted: true,
            failure: None
        }
        .rolls_back(&manual, false));
        assert!(failed.rolls_back(&svc(None), false));
        assert!(Verdict::default().rolls_back(&svc(None), true));
    }
}
