//! The service's pods: each one's slot, revision, node and state; pods whose labels do not
//! say which slot and revision they are are strays.

use kube::ResourceExt;

use super::{NodeJudge, PodView};
use crate::api::{ANNOTATION_AVOIDS_NODE, LABEL_REVISION, LABEL_SLOT};
use crate::health::{judge_pod, Closed, Gate, NodeHealth, PodState, Serving};
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
                let name = pod.name_any();
                let mut serving = Serving::of(pod);
                // Opened by our own patch, which the cache has yet to show.
                if serving.gate == Gate::Unset && observed.gates_opened.contains(&name) {
                    serving.gate = Gate::Open;
                }
                serving.listing = observed.listings.get(&name).copied().unwrap_or_default();
                serving.drained_since = observed.drained.get(&name).copied();
                let state = match node.as_deref().map(|n| judge.health(n)) {
                    Some(NodeHealth::Lost { message, fenced }) => PodState::OnLostNode {
                        message,
                        fenced,
                        deleting: pod.metadata.deletion_timestamp.is_some(),
                    },
                    _ => match (judge_pod(pod), serving.gate) {
                        // Once drained to be deleted, whatever it does next changes nothing.
                        (
                            state,
                            Gate::Closed {
                                since,
                                why: Closed::Retire,
                            },
                        ) if state != PodState::Terminating => PodState::Retiring { since },
                        // Ready needs the gate open, whatever a stale status says, and
                        // after an in-place patch the containers on the new spec.
                        (PodState::Ready { since }, Gate::Closed { since: closed, .. }) => {
                            PodState::NotReady {
                                since: since.max(closed),
                            }
                        }
                        (PodState::Ready { .. }, Gate::Unset) => PodState::Starting,
                        (PodState::Ready { .. }, _) if !serving.current => PodState::Starting,
                        (state, _) => state,
                    },
                };
                pods.push(PodView {
                    name,
                    slot,
                    revision,
                    node,
                    state,
                    serving,
                    avoids: pod.annotations().get(ANNOTATION_AVOIDS_NODE).cloned(),
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
            nodes: facts(
                [node("n1", "a"), node("n2", "a")],
                [lease("n1", NOW - 1), lease("n2", NOW - 300)],
            ),
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

    /// `pod` alone, on node n1, whose lease was renewed a second ago.
    fn on_live_node(pod: k8s_openapi::api::core::v1::Pod) -> Observed {
        Observed {
            pods: vec![std::sync::Arc::new(pod)],
            nodes: facts([node("n1", "a")], [lease("n1", NOW - 1)]),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_whose_gate_is_not_open_or_that_runs_an_old_spec_is_not_ready_whatever_its_status_says()
    {
        let gated = |conditions: serde_json::Value, status_image: &str| {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns",
                    "labels": {"perennial.dev/slot": "0", "perennial.dev/revision": "r"}},
                "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": crate::api::GATE_SERVING}],
                    "containers": [{"name": "app", "image": "app:2"}]},
                "status": {"phase": "Running", "conditions": conditions,
                    "containerStatuses": [{"name": "app", "image": status_image, "imageID": "",
                        "ready": true, "restartCount": 0, "started": true}]}
            }))
            .unwrap();
            let observed = on_live_node(pod);
            pods(&observed, &NodeJudge::new(&svc(), &observed, at(NOW))).0[0]
                .state
                .clone()
        };
        let ready = serde_json::json!({"type": "Ready", "status": "True",
            "lastTransitionTime": at(NOW - 100).to_string()});
        let gate = |status: &str, reason: &str| {
            serde_json::json!({"type": crate::api::GATE_SERVING,
            "status": status, "reason": reason, "lastTransitionTime": at(NOW - 10).to_string()})
        };
        assert!(gated(serde_json::json!([ready, gate("True", "Serving")]), "app:2").is_ready());
        assert_eq!(
            gated(
                serde_json::json!([ready, gate("False", "Upgrading")]),
                "app:2"
            ),
            PodState::NotReady {
                since: at(NOW - 10)
            }
        );
        assert_eq!(
            gated(
                serde_json::json!([ready, gate("False", "Retiring")]),
                "app:2"
            ),
            PodState::Retiring {
                since: at(NOW - 10)
            }
        );
        assert_eq!(
            gated(serde_json::json!([ready]), "app:2"),
            PodState::Starting
        );
        assert_eq!(
            gated(serde_json::json!([ready, gate("True", "Serving")]), "app:1"),
            PodState::Starting,
            "patched in place, not yet restarted"
        );
    }

    #[test]
    fn a_gate_the_operator_opened_counts_as_open_until_the_cache_shows_the_patch() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns",
                "labels": {"perennial.dev/slot": "0", "perennial.dev/revision": "r"}},
            "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": crate::api::GATE_SERVING}],
                "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "conditions": [{"type": "ContainersReady", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "app:1", "imageID": "",
                    "ready": true, "restartCount": 0, "started": true}]}
        }))
        .unwrap();
        let mut observed = on_live_node(pod);
        let gate = |observed: &Observed| {
            pods(observed, &NodeJudge::new(&svc(), observed, at(NOW))).0[0]
                .serving
                .gate
        };
        assert_eq!(gate(&observed), Gate::Unset);
        observed.gates_opened.insert("p".into());
        assert_eq!(gate(&observed), Gate::Open);
        // A gate the cache shows closed stays closed: only an unset one is taken as opened.
        let mut closed = (*observed.pods[0]).clone();
        let conditions = closed.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions.push(
            serde_json::from_value(serde_json::json!({
            "type": crate::api::GATE_SERVING, "status": "False", "reason": "Retiring",
            "lastTransitionTime": at(NOW - 5).to_string()}))
            .unwrap(),
        );
        observed.pods = vec![std::sync::Arc::new(closed)];
        assert!(matches!(gate(&observed), Gate::Closed { .. }));
    }
}
