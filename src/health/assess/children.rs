//! The objects the service owns besides pods and claims: its revisions, its headless
//! Service and its PodDisruptionBudget.

use kube::ResourceExt;

use super::{RevisionView, ServiceState};
use std::collections::BTreeMap;

use crate::api::{ResilientService, ANNOTATION_BAD_REVISION, ANNOTATION_INVALID_TEMPLATE};
use crate::build;
use crate::observe::Observed;

/// The recorded revisions, each with whether it was marked bad and is what its name says.
pub fn revisions(svc: &ResilientService, observed: &Observed) -> Vec<RevisionView> {
    observed
        .revisions
        .iter()
        .map(|r| {
            // Decoded once, not once per use: the decoding costs more than the rest.
            let template = build::recorded_template(r);
            RevisionView {
                name: r.name_any(),
                number: r.revision,
                bad: r.annotations().contains_key(ANNOTATION_BAD_REVISION),
                intact: template.as_ref().is_some_and(|t| {
                    r.name_any() == format!("{}-{}", svc.name_any(), build::template_hash(t))
                }),
                in_place_key: template.as_ref().map(build::in_place_key),
            }
        })
        .collect()
}

/// Revisions whose pods the API server refused as invalid, with its message.
pub fn refused(observed: &Observed) -> BTreeMap<String, String> {
    observed
        .revisions
        .iter()
        .filter_map(|r| {
            let message = r.annotations().get(ANNOTATION_INVALID_TEMPLATE)?;
            Some((r.name_any(), message.clone()))
        })
        .collect()
}

/// Whether the Service named by the spec exists, is ours, and is what we would build.
pub fn service_state(svc: &ResilientService, observed: &Observed) -> ServiceState {
    match &observed.service {
        None => ServiceState::Missing,
        Some(s)
            if s.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == svc.metadata.uid.as_ref()) =>
        {
            let want = build::desired_service(svc);
            ServiceState::Ours {
                up_to_date: s.spec.as_ref().map(|s| (&s.selector, &s.cluster_ip))
                    == want.spec.as_ref().map(|s| (&s.selector, &s.cluster_ip)),
            }
        }
        Some(_) => ServiceState::Foreign,
    }
}

/// None when the disruption budget is missing; else whether it is what we would build.
pub fn budget_up_to_date(svc: &ResilientService, observed: &Observed) -> Option<bool> {
    observed.budget.as_ref().map(|b| {
        let want = build::desired_disruption_budget(svc);
        let have = b.spec.as_ref();
        let want = want.spec.as_ref();
        have.map(|h| (&h.min_available, &h.max_unavailable, &h.selector))
            == want.map(|w| (&w.min_available, &w.max_unavailable, &w.selector))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::fixtures::svc;
    use super::*;

    #[test]
    fn a_revision_is_intact_only_when_its_record_hashes_to_its_name() {
        let svc = svc();
        let ours = build::desired_revision(&svc, 1);
        let mut forged = ours.clone();
        forged.data = Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
            serde_json::json!({"spec": {"template": "not a pod template"}}),
        ));
        let mut other = svc.clone();
        other.spec.template.metadata = Some(Default::default());
        let mut swapped = build::desired_revision(&other, 1);
        swapped.metadata.name = ours.metadata.name.clone();
        let mut bad = ours.clone();
        bad.metadata.annotations =
            Some([(ANNOTATION_BAD_REVISION.to_string(), "crash".to_string())].into());
        let observed = Observed {
            revisions: vec![
                Arc::new(ours),
                Arc::new(forged),
                Arc::new(swapped),
                Arc::new(bad),
            ],
            ..Default::default()
        };
        let seen = revisions(&svc, &observed);
        let judged: Vec<(bool, bool)> = seen.iter().map(|r| (r.intact, r.bad)).collect();
        assert_eq!(
            judged,
            vec![(true, false), (false, false), (false, false), (true, true)]
        );
    }

    #[test]
    fn the_service_is_ours_only_when_it_carries_our_owner_reference() {
        let svc = svc();
        assert_eq!(
            service_state(&svc, &Observed::default()),
            ServiceState::Missing
        );
        let ours = build::desired_service(&svc);
        let with = |s: k8s_openapi::api::core::v1::Service| Observed {
            service: Some(Arc::new(s)),
            ..Default::default()
        };
        assert_eq!(
            service_state(&svc, &with(ours.clone())),
            ServiceState::Ours { up_to_date: true }
        );
        let mut changed = ours.clone();
        changed.spec.as_mut().unwrap().selector = Some([("app".into(), "x".into())].into());
        assert_eq!(
            service_state(&svc, &with(changed)),
            ServiceState::Ours { up_to_date: false }
        );
        let mut foreign = ours;
        foreign.metadata.owner_references = None;
        assert_eq!(service_state(&svc, &with(foreign)), ServiceState::Foreign);
    }

    #[test]
    fn the_budget_is_up_to_date_when_its_bounds_and_selector_match() {
        let svc = svc();
        assert_eq!(budget_up_to_date(&svc, &Observed::default()), None);
        let ours = build::desired_disruption_budget(&svc);
        let with = |b: k8s_openapi::api::policy::v1::PodDisruptionBudget| Observed {
            budget: Some(Arc::new(b)),
            ..Default::default()
        };
        assert_eq!(budget_up_to_date(&svc, &with(ours.clone())), Some(true));
        let mut loose = ours;
        loose.spec.as_mut().unwrap().max_unavailable =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(99));
        loose.spec.as_mut().unwrap().min_available = None;
        assert_eq!(budget_up_to_date(&svc, &with(loose)), Some(false));
    }
}
