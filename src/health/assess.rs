//! Turns what was observed into the plain views the planner reads.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::ResourceExt;

use super::{judge_pod, PodState};
use crate::api::{ResilientService, ANNOTATION_BAD_REVISION, LABEL_REVISION, LABEL_SLOT};
use crate::build;
use crate::observe::Observed;

/// One pod of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    pub slot: i32,
    pub revision: String,
    pub node: Option<String>,
    pub state: PodState,
}

/// One claim of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimView {
    pub name: String,
    pub slot: i32,
    /// The claim template it was made from.
    pub template: String,
    pub deleting: bool,
}

/// One recorded revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionView {
    pub name: String,
    pub number: i64,
    /// Marked failed by an earlier rollback; not rolled out again.
    pub bad: bool,
}

/// Whether the named headless Service exists, and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Missing,
    /// Ours, and whether it matches what we would build.
    Ours {
        up_to_date: bool,
    },
    /// Made by someone else: used as it is, never changed.
    Foreign,
}

/// Everything the planner needs, judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub now: Timestamp,
    pub pods: Vec<PodView>,
    /// Pods we control whose slot or revision label is missing or garbled: deleted.
    pub strays: Vec<String>,
    pub claims: Vec<ClaimView>,
    pub revisions: Vec<RevisionView>,
    pub service: ServiceState,
    /// None when missing; else whether it matches what we would build.
    pub budget_up_to_date: Option<bool>,
    /// Failure domain of each node (value of the topology key), for status.domains.
    pub node_domains: BTreeMap<String, String>,
}

/// Judges everything observed for `svc` at `now`.
pub fn assess(svc: &ResilientService, observed: &Observed, now: Timestamp) -> Assessment {
    let mut pods = Vec::new();
    let mut strays = Vec::new();
    for pod in &observed.pods {
        let labels = pod.labels();
        let slot = labels.get(LABEL_SLOT).and_then(|s| s.parse::<i32>().ok());
        let revision = labels.get(LABEL_REVISION).cloned();
        match (slot, revision) {
            (Some(slot), Some(revision)) if slot >= 0 => pods.push(PodView {
                name: pod.name_any(),
                slot,
                revision,
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                state: judge_pod(pod),
            }),
            _ => strays.push(pod.name_any()),
        }
    }
    pods.sort_by(|a, b| (a.slot, &a.name).cmp(&(b.slot, &b.name)));

    let claims = observed
        .claims
        .iter()
        .filter_map(|c| {
            let slot = c.labels().get(LABEL_SLOT)?.parse::<i32>().ok()?;
            let name = c.name_any();
            // The template is the name's prefix before "-<service>-<ordinal>".
            let suffix = format!("-{}-{slot}", svc.name_any());
            let template = name.strip_suffix(&suffix)?.to_string();
            Some(ClaimView {
                name,
                slot,
                template,
                deleting: c.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();

    let revisions = observed
        .revisions
        .iter()
        .map(|r| RevisionView {
            name: r.name_any(),
            number: r.revision,
            bad: r.annotations().contains_key(ANNOTATION_BAD_REVISION),
        })
        .collect();

    let service = match &observed.service {
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
    };

    let budget_up_to_date = observed.budget.as_ref().map(|b| {
        let want = build::desired_disruption_budget(svc);
        let have = b.spec.as_ref();
        let want = want.spec.as_ref();
        have.map(|h| (&h.min_available, &h.max_unavailable, &h.selector))
            == want.map(|w| (&w.min_available, &w.max_unavailable, &w.selector))
    });

    let key = &svc.spec.redundancy.topology_key;
    let node_domains = observed
        .nodes
        .iter()
        .filter_map(|(name, node)| Some((name.clone(), node.labels().get(key)?.clone())))
        .collect();

    Assessment {
        now,
        pods,
        strays,
        claims,
        revisions,
        service,
        budget_up_to_date,
        node_domains,
    }
}
