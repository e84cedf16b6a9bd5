//! The service's pods: each one's slot, revision, node and state; pods whose labels do not
//! say which slot and revision they are are strays.

use kube::ResourceExt;

use super::{NodeJudge, PodView};
use crate::api::{LABEL_REVISION, LABEL_SLOT};
use crate::health::{judge_pod, NodeHealth, PodState};
use crate::observe::Observed;

/// The pods, sorted by slot and name, and the names of the strays.
pub fn pods(observed: &Observed, judge: &NodeJudge) -> (Vec<PodView>, Vec<String>) {
    let mut pods = Vec::new();
    let mut strays = Vec::new();
    for pod in &observed.pods {
        let labels = pod.labels();
        let slot = labels.get(LABEL_SLOT).and_then(|s| s.parse::<i32>().ok());
        let revision = labels.get(LABEL_REVISION).cloned();
        match (slot, revision) {
            (Some(slot), Some(revision)) if slot >= 0 => {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                // Whatever a pod's last status says, nothing runs it once its node is lost.
                let state = match node.as_deref().map(|n| judge.health(n)) {
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
    (pods, strays)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn pods_without_a_valid_slot_and_revision_are_strays_and_the_rest_are_sorted() {
        let observed = Observed {
            pods: vec![
                pod("b", Some("1"), Some("r1"), None),
                pod("a", Some("1"), Some("r1"), None),
                pod("z", Some("0"), Some("r1"), None),
                pod("no-slot", None, Some("r1"), None),
                pod("garbled", Some("one"), Some("r1"), None),
                pod("negative", Some("-1"), Some("r1"), None),
                pod("no-revision", Some("2"), None, None),
            ],
            ..Default::default()
        };
        let (pods, strays) = pods(&observed, &NodeJudge::new(&svc(), &observed, at(NOW)));
        let names: Vec<(i32, &str)> = pods.iter().map(|p| (p.slot, p.name.as_str())).collect();
        assert_eq!(names, vec![(0, "z"), (1, "a"), (1, "b")]);
        assert_eq!(
            strays,
            vec!["no-slot", "garbled", "negative", "no-revision"]
        );
    }

    #[test]
    fn a_pod_on_a_lost_node_is_on_a_lost_node_whatever_its_status_says() {
        let observed = Observed {
            pods: vec![
                pod("live", Some("0"), Some("r"), Some("n1")),
                pod("lost", Some("1"), Some("r"), Some("n2")),
                pod("gone", Some("2"), Some("r"), Some("deleted")),
            ],
            nodes: [("n1", node("n1", "a")), ("n2", node("n2", "a"))]
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            leases: [("n1", lease("n1", NOW - 1)), ("n2", lease("n2", NOW - 300))]
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            ..Default::default()
        };
        let (pods, _) = pods(&observed, &NodeJudge::new(&svc(), &observed, at(NOW)));
        assert!(pods[0].state.is_ready(), "{:?}", pods[0].state);
        assert!(matches!(
            pods[1].state,
            PodState::OnLostNode { fenced: false, .. }
        ));
        assert!(matches!(
            pods[2].state,
            PodState::OnLostNode { fenced: true, .. }
        ));
        assert_eq!(pods[1].node.as_deref(), Some("n2"));
    }
}
