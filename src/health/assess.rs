//! Turns what was observed into the plain views the planner reads.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::ResourceExt;

use k8s_openapi::api::core::v1::PersistentVolume;

use super::node::seconds_until_lost;
use super::{judge_node, judge_pod, Heartbeat, NodeHealth, PodState};
use crate::api::{
    ResilientService, ANNOTATION_BAD_REVISION, ANNOTATION_INVALID_TEMPLATE, LABEL_REVISION,
    LABEL_SLOT,
};
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
    /// Its volume can only be used on a node that is lost: (node, fenced).
    pub lost_with: Option<(String, bool)>,
}

/// One recorded revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionView {
    pub name: String,
    pub number: i64,
    /// Marked failed by an earlier rollback; not rolled out again.
    pub bad: bool,
    /// Its record is the template its name says (the name carries the template's hash).
    /// Data cannot be edited, but a revision can be deleted and made again by someone else.
    pub intact: bool,
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
    /// Revisions whose pods the API server refused as invalid, with its message.
    pub refused: BTreeMap<String, String>,
    pub service: ServiceState,
    /// None when missing; else whether it matches what we would build.
    pub budget_up_to_date: Option<bool>,
    /// Failure domain of each node (value of the topology key), for status.domains.
    pub node_domains: BTreeMap<String, String>,
    /// Nodes in the cluster, and how many of them are lost: many at once point at the
    /// infrastructure rather than at the nodes.
    pub nodes_total: usize,
    pub nodes_lost: usize,
    /// Seconds until a node hosting one of our pods, silent or unready but not lost yet,
    /// would be judged lost: the planner looks again then, since a dead node sends no event.
    pub node_recheck_seconds: Option<i64>,
}

/// Judges everything observed for `svc` at `now`.
pub fn assess(svc: &ResilientService, observed: &Observed, now: Timestamp) -> Assessment {
    let lost_after = i64::from(svc.spec.repair.node_lost_after_seconds);
    let heartbeat = |name: &str| Heartbeat {
        lease: observed.leases.get(name).map(|l| l.as_ref()),
        heard: observed.heard.get(name).copied(),
    };
    let node_health = |name: &str| {
        judge_node(
            name,
            observed.nodes.get(name).map(|n| n.as_ref()),
            heartbeat(name),
            now,
            lost_after,
        )
    };
    let mut pods = Vec::new();
    let mut strays = Vec::new();
    for pod in &observed.pods {
        let labels = pod.labels();
        let slot = labels.get(LABEL_SLOT).and_then(|s| s.parse::<i32>().ok());
        let revision = labels.get(LABEL_REVISION).cloned();
        match (slot, revision) {
            (Some(slot), Some(revision)) if slot >= 0 => {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let state = match node.as_deref().map(node_health) {
                    Some(NodeHealth::Lost { message, fenced }) => {
                        PodState::OnLostNode { message, fenced }
                    }
                    _ => judge_pod(pod),
                };
                pods.push(PodView {
                    name: pod.name_any(),
                    slot,
                    revision,
                    node,
                    state,
                })
            }
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
            let lost_with = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .and_then(|v| observed.volumes.get(v))
                .and_then(|pv| volume_node(pv))
                .and_then(|n| match node_health(&n) {
                    NodeHealth::Lost { fenced, .. } => Some((n, fenced)),
                    NodeHealth::Healthy => None,
                });
            Some(ClaimView {
                name,
                slot,
                template,
                deleting: c.metadata.deletion_timestamp.is_some(),
                lost_with,
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
            intact: build::recorded_template(r).is_some_and(|t| {
                r.name_any() == format!("{}-{}", svc.name_any(), build::template_hash(&t))
            }),
        })
        .collect();

    let refused = observed
        .revisions
        .iter()
        .filter_map(|r| {
            let message = r.annotations().get(ANNOTATION_INVALID_TEMPLATE)?;
            Some((r.name_any(), message.clone()))
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

    let nodes_total = observed.nodes.len();
    let nodes_lost = observed
        .nodes
        .keys()
        .filter(|n| node_health(n) != NodeHealth::Healthy)
        .count();
    let node_recheck_seconds = pods
        .iter()
        .filter_map(|p| p.node.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|name| {
            seconds_until_lost(
                observed.nodes.get(name).map(|n| n.as_ref()),
                heartbeat(name),
                now,
                lost_after,
            )
        })
        .min();
    Assessment {
        now,
        node_recheck_seconds,
        nodes_total,
        nodes_lost,
        pods,
        strays,
        claims,
        revisions,
        refused,
        service,
        budget_up_to_date,
        node_domains,
    }
}

/// The one node a volume can be used on, when its node affinity pins it to a hostname (a
/// local volume).
fn volume_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    term.match_expressions
        .as_deref()?
        .iter()
        .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
        .and_then(|e| match e.values.as_deref() {
            Some([one]) => Some(one.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn svc() -> ResilientService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
        }))
        .unwrap()
    }

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
        let observed = Observed {
            revisions: vec![Arc::new(ours), Arc::new(forged), Arc::new(swapped)],
            ..Default::default()
        };
        let seen = assess(&svc, &observed, Timestamp::UNIX_EPOCH);
        let intact: Vec<bool> = seen.revisions.iter().map(|r| r.intact).collect();
        assert_eq!(intact, vec![true, false, false]);
    }
}
