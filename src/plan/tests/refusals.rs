//! Revisions whose pods the API server refused (annotation perennial.dev/invalid-template).

use super::*;
use crate::api::{condition, RollbackPolicy};

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
    let (mut svc, seen, old, new) = super::upgraded(3);
    svc.spec.update.rollback = policy;
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
    let fixed = new_template(&mut svc, &mut seen, "example/app:2", 2);
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
    let newer = new_template(&mut svc, &mut seen, "example/app:3", 3);
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
