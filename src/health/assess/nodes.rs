//! The nodes, as far as one service cares: each one's health, their failure domains, how
//! many are lost, and when a silent one must be looked at again.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use kube::ResourceExt;

use super::PodView;
use crate::api::ResilientService;
use crate::health::node::seconds_until_lost;
use crate::health::{judge_node, node_back, Heartbeat, NodeHealth};
use crate::observe::Observed;

/// Judges the nodes of one observation at one moment, with the service's threshold.
pub struct NodeJudge<'a> {
    observed: &'a Observed,
    now: Timestamp,
    lost_after: i64,
}

impl<'a> NodeJudge<'a> {
    pub fn new(svc: &ResilientService, observed: &'a Observed, now: Timestamp) -> Self {
        Self {
            observed,
            now,
            lost_after: i64::from(svc.spec.repair.node_lost_after_seconds),
        }
    }

    fn heartbeat(&self, name: &str) -> Heartbeat<'a> {
        Heartbeat {
            lease: self.observed.leases.get(name).map(|l| l.as_ref()),
            heard: self.observed.heard.get(name).copied(),
        }
    }

    /// The verdict on node `name` (lost when its Node object is gone).
    pub fn health(&self, name: &str) -> NodeHealth {
        judge_node(
            name,
            self.observed.nodes.get(name).map(|n| n.as_ref()),
            self.heartbeat(name),
            self.now,
            self.lost_after,
        )
    }

    /// Seconds until node `name` would be judged lost if nothing changes (see
    /// seconds_until_lost).
    pub fn seconds_until_lost(&self, name: &str) -> Option<i64> {
        seconds_until_lost(
            self.observed.nodes.get(name).map(|n| n.as_ref()),
            self.heartbeat(name),
            self.now,
            self.lost_after,
        )
    }
}

/// The failure domain of each node: the value of the service's topology key.
pub fn domains(svc: &ResilientService, observed: &Observed) -> BTreeMap<String, String> {
    let key = &svc.spec.redundancy.topology_key;
    observed
        .nodes
        .iter()
        .filter_map(|(name, node)| Some((name.clone(), node.labels().get(key)?.clone())))
        .collect()
}

/// How many of the cluster's nodes are lost.
pub fn lost_count(observed: &Observed, judge: &NodeJudge) -> usize {
    observed
        .nodes
        .keys()
        .filter(|n| judge.health(n) != NodeHealth::Healthy)
        .count()
}

/// The soonest a node hosting one of `pods` would be judged lost, if one is unwell.
pub fn recheck_seconds(pods: &[PodView], judge: &NodeJudge) -> Option<i64> {
    pods.iter()
        .filter_map(|p| p.node.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|name| judge.seconds_until_lost(name))
        .min()
}

/// Of the nodes the service's ledger names (a slot's node, or the node it avoids), those
/// that are back: they renew their lease and are Ready.
pub fn back(svc: &ResilientService, observed: &Observed, now: Timestamp) -> BTreeSet<String> {
    let named: BTreeSet<&str> = svc
        .status
        .iter()
        .flat_map(|s| &s.replica_statuses)
        .flat_map(|r| [r.avoid_node.as_deref(), r.node.as_deref()])
        .flatten()
        .collect();
    named
        .into_iter()
        .filter(|n| {
            let node = observed.nodes.get(*n).map(|n| n.as_ref());
            let lease = observed.leases.get(*n).map(|l| l.as_ref());
            node_back(n, node, lease, None, now).is_ok()
        })
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::health::PodState;

    fn observed() -> Observed {
        Observed {
            nodes: [("n1", "a"), ("n2", "b"), ("n3", "b")]
                .into_iter()
                .map(|(n, z)| (n.to_string(), node(n, z)))
                .collect(),
            leases: [("n1", NOW - 2), ("n2", NOW - 15), ("n3", NOW - 100)]
                .into_iter()
                .map(|(n, r)| (n.to_string(), lease(n, r)))
                .collect(),
            ..Default::default()
        }
    }

    fn on(node: &str) -> PodView {
        PodView {
            name: format!("web-{node}"),
            slot: 0,
            revision: "r".into(),
            node: Some(node.into()),
            state: PodState::Starting,
            serving: Default::default(),
            avoids: None,
        }
    }

    #[test]
    fn each_node_is_in_the_domain_its_topology_label_names() {
        let mut observed = observed();
        observed.nodes.insert("bare".into(), node("bare", "x"));
        let bare = observed.nodes.get_mut("bare").unwrap();
        std::sync::Arc::make_mut(bare).metadata.labels = None;
        let want: BTreeMap<String, String> = [("n1", "a"), ("n2", "b"), ("n3", "b")]
            .into_iter()
            .map(|(n, z)| (n.to_string(), z.to_string()))
            .collect();
        assert_eq!(
            domains(&svc(), &observed),
            want,
            "an unlabelled node has none"
        );
    }

    #[test]
    fn only_nodes_past_the_threshold_count_as_lost() {
        let observed = observed();
        let judge = NodeJudge::new(&svc(), &observed, at(NOW));
        // n2 is silent for 15 s, below the default 30 s; n3 for 100 s.
        assert_eq!(lost_count(&observed, &judge), 1);
        assert!(matches!(judge.health("n3"), NodeHealth::Lost { .. }));
        assert!(
            matches!(judge.health("gone"), NodeHealth::Lost { fenced: true, .. }),
            "a node without its Node object was deleted"
        );
    }

    #[test]
    fn the_recheck_is_when_the_first_silent_node_hosting_a_pod_would_be_lost() {
        let observed = observed();
        let judge = NodeJudge::new(&svc(), &observed, at(NOW));
        assert_eq!(recheck_seconds(&[on("n1")], &judge), None, "n1 renews");
        assert_eq!(
            recheck_seconds(&[on("n1"), on("n2"), on("n2")], &judge),
            Some(15),
            "n2 is lost at 30 s of silence"
        );
        assert_eq!(
            recheck_seconds(&[on("n3")], &judge),
            None,
            "n3 is lost already"
        );
        assert_eq!(recheck_seconds(&[], &judge), None);
    }

    #[test]
    fn the_nodes_the_ledger_names_are_back_when_they_renew_and_are_ready() {
        let mut svc = svc();
        let entry = |node: &str, avoid: &str| crate::api::ReplicaStatus {
            node: Some(node.into()),
            avoid_node: Some(avoid.into()),
            ..Default::default()
        };
        svc.status = Some(crate::api::ResilientServiceStatus {
            replica_statuses: vec![entry("n1", "n2"), entry("n3", "gone")],
            ..Default::default()
        });
        let mut observed = observed();
        assert_eq!(back(&svc, &observed, at(NOW)), ["n1".to_string()].into());
        // n2 renews again.
        observed.leases.insert("n2".into(), lease("n2", NOW - 1));
        assert_eq!(
            back(&svc, &observed, at(NOW)),
            ["n1".to_string(), "n2".to_string()].into(),
            "not n3, silent, nor a node that no longer exists"
        );
        assert_eq!(
            back(&super::super::fixtures::svc(), &observed, at(NOW)),
            BTreeSet::new()
        );
    }
}
