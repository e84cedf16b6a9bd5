//! The fences this service put on nodes: whether each is still as recorded, whether its
//! node is back, and what of ours is still on the node from before the fence.

use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::ResilientService;
use crate::build::service_key;
use crate::health::node_back;
use crate::observe::Observed;

/// A fence (an out-of-service taint) the service put on a node, as recorded there.
#[derive(Clone, Debug, PartialEq)]
pub struct FenceView {
    pub node: String,
    /// The recorded taint is still on the node exactly as recorded; else the record is
    /// stale (a person removed or replaced the taint).
    pub in_place: bool,
    /// Ok once the node renews its lease after the fence and is Ready; else what it lacks.
    pub back: Result<(), String>,
    /// Pods of ours (namespace/name) still on the node that the fence exists to clear:
    /// those bound there before the fence, and those being deleted.
    pub pods_left: Vec<String>,
}

/// The service's fences, by node name.
pub fn fences(svc: &ResilientService, observed: &Observed, now: Timestamp) -> Vec<FenceView> {
    let key = service_key(svc);
    (observed.nodes.fenced_by(&key).iter())
        .filter_map(|(name, record)| {
            let node = observed.nodes.node(name)?;
            let fenced_at = record.fenced_at();
            let lease = observed.nodes.lease(name);
            let pods_left = observed
                .pods_on_fenced_nodes
                .get(name)
                .into_iter()
                .flatten()
                .filter(|p| {
                    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    // A pod of unknown age counts as one from before the fence.
                    let before = match (created, fenced_at) {
                        (Some(c), Some(f)) => c <= f,
                        _ => true,
                    };
                    before || p.metadata.deletion_timestamp.is_some()
                })
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            Some(FenceView {
                node: name.clone(),
                in_place: record.position(node).is_some(),
                back: node_back(name, Some(node), lease, fenced_at, now),
                pods_left,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;

    use super::super::fixtures::*;
    use super::*;
    use crate::build::FenceRecord;

    /// Node `name`, Ready, fenced by `svc` at `fenced_at`.
    fn fenced(name: &str, svc: &ResilientService, fenced_at: i64) -> Arc<Node> {
        let record = FenceRecord::new(svc, at(fenced_at));
        let mut n = node(name, "a").as_ref().clone();
        n.spec.get_or_insert_with(Default::default).taints = Some(vec![record.taint.clone()]);
        n.metadata.annotations = Some(
            [(
                crate::api::ANNOTATION_FENCE.to_string(),
                serde_json::to_string(&record).unwrap(),
            )]
            .into(),
        );
        Arc::new(n)
    }

    fn pod_on(name: &str, node: &str, created: i64, deleting: bool) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "other",
                "creationTimestamp": at(created).to_string()},
            "spec": {"nodeName": node, "containers": []}
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!(at(NOW).to_string());
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn observed(nodes: Vec<Arc<Node>>, renewed: i64) -> Observed {
        let leases: Vec<_> = (nodes.iter())
            .map(|n| lease(&n.name_any(), renewed))
            .collect();
        Observed {
            nodes: facts(nodes, leases),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_services_own_fences_are_seen() {
        let ours = svc();
        let mut other = svc();
        other.metadata.name = Some("api".into());
        let observed = observed(
            vec![
                fenced("n1", &ours, NOW - 60),
                fenced("n2", &other, NOW - 60),
                node("n3", "a"),
            ],
            NOW - 1,
        );
        let seen = fences(&ours, &observed, at(NOW));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].node, "n1");
        assert!(seen[0].in_place);
        assert_eq!(seen[0].back, Ok(()));
        assert_eq!(seen[0].pods_left, Vec::<String>::new());
    }

    #[test]
    fn a_node_is_back_from_its_fence_only_with_a_renewal_after_it() {
        let svc = svc();
        let seen = |renewed: i64| {
            fences(
                &svc,
                &observed(vec![fenced("n1", &svc, NOW - 10)], renewed),
                at(NOW),
            )
        };
        assert!(seen(NOW - 11)[0].back.is_err(), "renewed before the fence");
        assert_eq!(seen(NOW - 9)[0].back, Ok(()));
    }

    #[test]
    fn a_fence_whose_taint_a_person_replaced_is_no_longer_in_place() {
        let svc = svc();
        let mut n = fenced("n1", &svc, NOW - 10).as_ref().clone();
        n.spec.as_mut().unwrap().taints.as_mut().unwrap()[0].time_added = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(NOW - 5)),
        );
        let seen = fences(&svc, &observed(vec![Arc::new(n)], NOW - 1), at(NOW));
        assert!(!seen[0].in_place);
    }

    #[test]
    fn what_the_fence_clears_is_what_was_there_before_it_or_is_leaving() {
        let svc = svc();
        let mut observed = observed(vec![fenced("n1", &svc, NOW - 60)], NOW - 1);
        observed.pods_on_fenced_nodes.insert(
            "n1".into(),
            vec![
                pod_on("old", "n1", NOW - 600, false),
                pod_on("leaving", "n1", NOW - 30, true),
                pod_on("new", "n1", NOW - 30, false),
            ],
        );
        let seen = fences(&svc, &observed, at(NOW));
        assert_eq!(seen[0].pods_left, vec!["other/old", "other/leaving"]);
    }
}
