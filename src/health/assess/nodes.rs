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
            lease: self.observed.nodes.lease(name),
            heard: self.observed.nodes.heard(name),
        }
    }

    /// The verdict on node `name` (lost when its Node object is gone).
    pub fn health(&self, name: &str) -> NodeHealth {
        judge_node(
            name,
            self.observed.nodes.node(name),
            self.heartbeat(name),
            self.now,
            self.lost_after,
        )
    }

    /// Seconds until node `name` would be judged lost if nothing changes (see
    /// seconds_until_lost).
    pub fn seconds_until_lost(&self, name: &str) -> Option<i64> {
        seconds_until_lost(
            self.observed.nodes.node(name),
            self.heartbeat(name),
            self.now,
            self.lost_after,
        )
    }
}

/// The failure domain of each node hosting one of `pods`: the value of the service's
/// topology key.
pub fn domains(
    svc: &ResilientService,
    observed: &Observed,
    pods: &[PodView],
) -> BTreeMap<String, String> {
    let key = &svc.spec.redundancy.topology_key;
    (pods.iter().filter_map(|p| p.node.as_deref()))
        .filter_map(|name| {
            let domain = observed.nodes.node(name)?.labels().get(key)?;
            Some((name.to_string(), domain.clone()))
        })
        .collect()
}

/// How many of the cluster's nodes are lost. Every pass of a second with the same
/// threshold counts the same, so the nodes are judged once for all of them.
pub fn lost_count(observed: &Observed, judge: &NodeJudge) -> usize {
    let nodes = &observed.nodes;
    nodes.lost_count(judge.now.as_second(), judge.lost_after, || {
        (nodes.names())
            .filter(|n| judge.health(n) != NodeHealth::Healthy)
            .count()
    })
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
            let (node, lease) = (observed.nodes.node(n), observed.nodes.lease(n));
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
    use k8s_openapi::api::coordination::v1::Lease;
    use std::sync::Arc;

    fn observed() -> Observed {
        observed_with(lease("n2", NOW - 15))
    }

    /// Nodes n1 in zone a, n2 and n3 in zone b; n1 renewed 2 s ago, n3 100 s ago, n2 as
    /// `n2` says.
    fn observed_with(n2: Arc<Lease>) -> Observed {
        Observed {
            nodes: facts(
                [node("n1", "a"), node("n2", "b"), node("n3", "b")],
                [lease("n1", NOW - 2), n2, lease("n3", NOW - 100)],
            ),
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
    fn each_node_hosting_a_pod_is_in_the_domain_its_topology_label_names() {
        let mut observed = observed();
        let mut bare = node("bare", "x").as_ref().clone();
        bare.metadata.labels = None;
        observed.nodes = facts(
            [
                node("n1", "a"),
                node("n2", "b"),
                node("n3", "b"),
                Arc::new(bare),
            ],
            [],
        );
        let want: BTreeMap<String, String> = [("n1", "a"), ("n3", "b")]
            .into_iter()
            .map(|(n, z)| (n.to_string(), z.to_string()))
            .collect();
        let pods = [on("n1"), on("n3"), on("bare"), on("gone")];
        assert_eq!(
            domains(&svc(), &observed, &pods),
            want,
            "an unlabelled node has none, nor a node that is gone, nor one with no pod"
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
        let observed = observed();
        assert_eq!(back(&svc, &observed, at(NOW)), ["n1".to_string()].into());
        // n2 renews again.
        let observed = observed_with(lease("n2", NOW - 1));
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
