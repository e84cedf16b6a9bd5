//! The service's claims: each one's slot and template, and whether its volume went with a
//! lost node.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;

use super::{ClaimView, NodeJudge};
use crate::api::{ResilientService, LABEL_SLOT};
use crate::health::NodeHealth;
use crate::observe::Observed;

/// The claims labelled with a slot and named after one of the service's templates.
pub fn claims(svc: &ResilientService, observed: &Observed, judge: &NodeJudge) -> Vec<ClaimView> {
    observed
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
                .and_then(|n| match judge.health(&n) {
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
        .collect()
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

    use serde_json::json;

    use super::super::fixtures::*;
    use super::*;

    fn claim(
        name: &str,
        slot: &str,
        volume: Option<&str>,
        deleting: bool,
    ) -> Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
        let mut c = json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"perennial.dev/slot": slot}},
            "spec": {"volumeName": volume}
        });
        if deleting {
            c["metadata"]["deletionTimestamp"] = json!(at(NOW).to_string());
        }
        Arc::new(serde_json::from_value(c).unwrap())
    }

    fn local(name: &str, values: serde_json::Value) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": values}
                ]}]}}}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_claim_names_its_template_and_slot_and_others_are_not_the_services() {
        let observed = Observed {
            claims: vec![
                claim("data-web-0", "0", None, false),
                claim("logs-web-1", "1", None, true),
                claim("data-other-0", "0", None, false),
                claim("data-web-0", "zero", None, false),
            ],
            ..Default::default()
        };
        let claims = claims(
            &svc(),
            &observed,
            &NodeJudge::new(&svc(), &observed, at(NOW)),
        );
        let seen: Vec<(&str, i32, &str, bool)> = claims
            .iter()
            .map(|c| (c.name.as_str(), c.slot, c.template.as_str(), c.deleting))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("data-web-0", 0, "data", false),
                ("logs-web-1", 1, "logs", true)
            ]
        );
    }

    #[test]
    fn a_claim_whose_local_volume_is_on_a_lost_node_is_lost_with_it() {
        let observed = Observed {
            claims: vec![
                claim("data-web-0", "0", Some("pv-live"), false),
                claim("data-web-1", "1", Some("pv-lost"), false),
                claim("data-web-2", "2", Some("pv-gone"), false),
                claim("data-web-3", "3", Some("pv-two-nodes"), false),
            ],
            volumes: [
                ("pv-live", local("pv-live", json!(["n1"]))),
                ("pv-lost", local("pv-lost", json!(["n2"]))),
                ("pv-gone", local("pv-gone", json!(["deleted"]))),
                (
                    "pv-two-nodes",
                    local("pv-two-nodes", json!(["deleted", "n1"])),
                ),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
            nodes: facts(
                [node("n1", "a"), node("n2", "a")],
                [lease("n1", NOW - 1), lease("n2", NOW - 300)],
            ),
            ..Default::default()
        };
        let claims = claims(
            &svc(),
            &observed,
            &NodeJudge::new(&svc(), &observed, at(NOW)),
        );
        let lost: Vec<Option<(String, bool)>> =
            claims.iter().map(|c| c.lost_with.clone()).collect();
        assert_eq!(
            lost,
            vec![
                None,
                Some(("n2".into(), false)),
                Some(("deleted".into(), true)),
                None
            ],
            "a volume usable on two nodes is not pinned to either"
        );
    }
}
