//! Node liveness, judged by the operator itself from the Ready condition and the Lease,
//! faster than the built-in 50 s grace period plus 300 s eviction.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

/// The taint that tells Kubernetes (and us) a node is known to be down for good.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// How often a live kubelet renews its Lease: a quarter of the 40 s lease, with a little
/// jitter. A Lease that old is not news; a node is silent only once it missed a renewal.
const LEASE_RENEW_SECONDS: i64 = 10;

/// The least silence that counts as a loss, whatever spec.repair.nodeLostAfterSeconds says:
/// one renewal interval and slack for a late renewal, so that a live node whose next renewal
/// is a moment away is never judged lost.
const MIN_LOST_AFTER_SECONDS: i64 = LEASE_RENEW_SECONDS + 2;

/// The silence after which a node is suspect, worth a look when it would be lost: a
/// renewal missed by more than a moment. The least loss threshold, too.
pub const SUSPECT_AFTER_SECONDS: i64 = MIN_LOST_AFTER_SECONDS;

/// How much longer than the threshold a loss lasts before it is acted on. Nodes that fail at
/// the same moment stop renewing up to one renewal interval apart, so the first one is
/// judged lost up to that much before the others; by the time it has been lost this long,
/// every node that failed with it is judged lost too, and the storm guard sees them all.
const LOSS_SETTLE_SECONDS: i64 = LEASE_RENEW_SECONDS + 1;

/// What the operator thinks of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Healthy,
    /// Not heard from for `lost_after` or more; `fenced` when there is evidence it is down
    /// for good (deleted, or tainted out-of-service), so that its volumes are safe to reuse.
    Lost {
        message: String,
        fenced: bool,
    },
}

/// A node's heartbeat as the operator knows it: the Lease, and the moment from which the
/// operator's own watch has seen it unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heartbeat<'a> {
    pub lease: Option<&'a Lease>,
    /// When the operator first saw the Lease's current renewal, or regained sight of the
    /// API server after losing it, whichever is later; None when it has no record (the
    /// Lease alone then tells).
    pub heard: Option<Timestamp>,
}

impl Heartbeat<'_> {
    /// Whole seconds the node has been silent at `now`. The renewal time alone is not
    /// enough: while the API server is down no kubelet can renew, and right after it is
    /// back every Lease looks as old as the outage. Silence the operator did not witness
    /// through a working watch does not count.
    pub fn silence(&self, now: Timestamp) -> Option<i64> {
        self.silence_in(now, Timestamp::as_second)
    }

    /// Milliseconds the node has been silent at `now`, by the same rule. Whether a silence
    /// has begun is told from this: in whole seconds of both ends, a renewal 11.1 s old can
    /// read as 12, and a busy cluster's renewals, 10 to 11 s apart, would each turn a live
    /// node silent and back, a pass of every service with a pod there each time.
    pub fn silence_ms(&self, now: Timestamp) -> Option<i64> {
        self.silence_in(now, Timestamp::as_millisecond)
    }

    /// The silence at `now` in the unit `count` reads a time in: the younger of the
    /// renewal and the moment the operator heard it.
    fn silence_in(&self, now: Timestamp, count: fn(Timestamp) -> i64) -> Option<i64> {
        let renewed = self.lease?.spec.as_ref()?.renew_time.as_ref()?.0;
        let by_lease = count(now) - count(renewed);
        Some(match self.heard {
            Some(heard) => by_lease.min(count(now) - count(heard)),
            None => by_lease,
        })
    }
}

/// Judges a node (None: the Node object is gone) at `now`, given its heartbeat.
pub fn judge_node(
    name: &str,
    node: Option<&Node>,
    heartbeat: Heartbeat,
    now: Timestamp,
    lost_after_seconds: i64,
) -> NodeHealth {
    let Some(node) = node else {
        return NodeHealth::Lost {
            message: format!("node {name} was deleted"),
            fenced: true,
        };
    };
    let fenced = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
    if fenced {
        return NodeHealth::Lost {
            message: format!("node {name} is tainted {OUT_OF_SERVICE_TAINT}"),
            fenced: true,
        };
    }
    let age = |t: Timestamp| now.as_second() - t.as_second();
    // The Lease is the kubelet's heartbeat; it is renewed every 10 s on a live node. Ages
    // are in whole seconds, as the controller's heartbeat check counts them, so that a node
    // it reports silent is judged at the same age.
    if let Some(silence) = heartbeat.silence(now) {
        if silence >= lost_after_seconds.max(MIN_LOST_AFTER_SECONDS) {
            return NodeHealth::Lost {
                message: format!("node {name} has not renewed its lease for {silence} s"),
                fenced: false,
            };
        }
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if let Some(c) = ready {
        let since = c.last_transition_time.as_ref().map(|t| t.0);
        if c.status != "True" && since.is_some_and(|s| age(s) >= lost_after_seconds) {
            return NodeHealth::Lost {
                message: format!(
                    "node {name} has been Ready={} for {} s ({})",
                    c.status,
                    since.map(age).unwrap_or_default(),
                    c.reason.as_deref().unwrap_or("no reason given")
                ),
                fenced: false,
            };
        }
    }
    NodeHealth::Healthy
}

/// Seconds until a node that looks unwell but is not lost yet would be judged lost, if
/// nothing changes: a dead node sends no event, so the planner rechecks it then. None for a
/// node that renews its lease and is Ready (or is already lost).
pub fn seconds_until_lost(
    node: Option<&Node>,
    heartbeat: Heartbeat,
    now: Timestamp,
    lost_after_seconds: i64,
) -> Option<i64> {
    let node = node?;
    let age = |t: Timestamp| now.as_second() - t.as_second();
    let by_lease = heartbeat
        .silence(now)
        // A renewal due any moment is not a missed one: rechecking then would only find
        // the node renewed, and pick the same moment of the next cycle, for ever.
        .filter(|&a| a >= SUSPECT_AFTER_SECONDS)
        .map(|a| lost_after_seconds.max(MIN_LOST_AFTER_SECONDS) - a);
    let by_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status != "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| lost_after_seconds - age(t.0));
    [by_lease, by_ready]
        .into_iter()
        .flatten()
        .filter(|&s| s > 0)
        .min()
}

/// Whether a node is back: its kubelet renews the Lease and the node is Ready. The renewal
/// is read from the Lease's own renewTime, not from when the operator's watch saw it: a
/// watch that has just started (or restarted) has seen every Lease "just now", and only a
/// renewal proves a kubelet alive. With `since`, the renewal must also be later than that
/// (a fence: only a renewal after it shows the node came back). Err says what is missing,
/// for a person.
pub fn node_back(
    name: &str,
    node: Option<&Node>,
    lease: Option<&Lease>,
    since: Option<Timestamp>,
    now: Timestamp,
) -> Result<(), String> {
    let Some(node) = node else {
        return Err(format!("node {name} to exist"));
    };
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0)
        .ok_or_else(|| format!("node {name} to renew its lease"))?;
    if let Some(since) = since.filter(|s| renewed <= *s) {
        return Err(format!("node {name} to renew its lease after {since}"));
    }
    let silence = now.as_second() - renewed.as_second();
    if silence >= SUSPECT_AFTER_SECONDS {
        return Err(format!(
            "node {name} to renew its lease (last renewed {silence} s ago)"
        ));
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    match ready {
        Some("True") => Ok(()),
        other => Err(format!(
            "node {name} to be Ready (Ready={})",
            other.unwrap_or("not reported")
        )),
    }
}

/// What of a Node the operator's judgement depends on: labels (failure domains), taints,
/// whether it is cordoned, its Ready condition and whether it is being deleted. Two states
/// with the same fingerprint are the same to the operator: a kubelet's status heartbeat,
/// which rewrites the Node every few seconds on every node, is not news.
pub fn node_fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.hash(&mut h);
        for t in spec.taints.iter().flatten() {
            (&t.key, &t.value, &t.effect).hash(&mut h);
        }
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if let Some(c) = ready {
        (
            &c.status,
            c.last_transition_time.as_ref().map(|t| t.0),
            &c.reason,
        )
            .hash(&mut h);
    }
    h.finish()
}

impl NodeHealth {
    /// Seconds until a loss without evidence, judged with `lost_after_seconds` and told by
    /// the verdict's `message`, has lasted long enough to be acted on; 0 when it has (see
    /// LOSS_SETTLE_SECONDS).
    pub fn settling_seconds(message: &str, lost_after_seconds: i64) -> i64 {
        lost_for_seconds(message).map_or(0, |lost_for| {
            (lost_after_seconds.max(MIN_LOST_AFTER_SECONDS) + LOSS_SETTLE_SECONDS - lost_for).max(0)
        })
    }
}

/// How long a node has been silent (or not Ready), in whole seconds, read back from the
/// message of a `Lost` verdict without evidence; None for a deleted or fenced node.
fn lost_for_seconds(message: &str) -> Option<i64> {
    let (_, rest) = message.split_once(" for ")?;
    rest.strip_suffix(" s")
        .or_else(|| rest.split_once(" s (").map(|(n, _)| n))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, since: i64, taint: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": if taint { serde_json::json!([{"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]) } else { serde_json::json!([]) }},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastTransitionTime": Timestamp::from_second(since).unwrap().to_string()}]}
        }))
        .unwrap()
    }

    fn lease(renewed: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"renewTime": Timestamp::from_second(renewed).unwrap().to_string()}
        }))
        .unwrap()
    }

    fn beat(lease: &Lease) -> Heartbeat<'_> {
        Heartbeat {
            lease: Some(lease),
            heard: None,
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn node_with_a_fresh_lease_and_ready_is_healthy() {
        let h = judge_node(
            "n1",
            Some(&node("True", NOW - 1000, false)),
            beat(&lease(NOW - 5)),
            at(NOW),
            30,
        );
        assert_eq!(h, NodeHealth::Healthy);
    }

    #[test]
    fn node_whose_lease_is_stale_past_the_threshold_is_lost_without_fencing() {
        let h = judge_node(
            "n1",
            Some(&node("True", NOW - 1000, false)),
            beat(&lease(NOW - 31)),
            at(NOW),
            30,
        );
        assert!(
            matches!(h, NodeHealth::Lost { fenced: false, ref message } if message.contains("lease"))
        );
        let h = judge_node(
            "n1",
            Some(&node("True", NOW - 1000, false)),
            beat(&lease(NOW - 29)),
            at(NOW),
            30,
        );
        assert_eq!(
            h,
            NodeHealth::Healthy,
            "a hiccup below the threshold is not a loss"
        );
    }

    #[test]
    fn live_node_about_to_renew_is_not_lost_even_with_the_least_threshold() {
        // Renewed 10.01 s ago (11 s in whole seconds), its next renewal due any moment.
        let renewed = Timestamp::from_millisecond(NOW * 1000 - 10_010).unwrap();
        let late: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"renewTime": renewed.to_string()}
        }))
        .unwrap();
        let node = node("True", NOW - 1000, false);
        for after in [10, 11, 12] {
            let h = judge_node("n1", Some(&node), beat(&late), at(NOW), after);
            assert_eq!(h, NodeHealth::Healthy, "nodeLostAfterSeconds {after}");
        }
        // A renewal missed: lost.
        let h = judge_node("n1", Some(&node), beat(&lease(NOW - 12)), at(NOW), 10);
        assert!(matches!(h, NodeHealth::Lost { fenced: false, .. }));
    }

    #[test]
    fn a_loss_is_acted_on_one_renewal_interval_after_it_is_judged() {
        let lost = |renewed: i64, after: i64| match judge_node(
            "n1",
            Some(&node("True", NOW - 1000, false)),
            beat(&lease(renewed)),
            at(NOW),
            after,
        ) {
            NodeHealth::Lost { message, .. } => NodeHealth::settling_seconds(&message, after),
            NodeHealth::Healthy => panic!("not lost"),
        };
        assert_eq!(lost(NOW - 12, 10), 11);
        assert_eq!(lost(NOW - 22, 10), 1);
        assert_eq!(lost(NOW - 23, 10), 0);
        assert_eq!(lost(NOW - 30, 30), 11);
        assert_eq!(lost(NOW - 100, 30), 0);
        let not_ready = judge_node(
            "n1",
            Some(&node("False", NOW - 40, false)),
            beat(&lease(NOW - 1)),
            at(NOW),
            30,
        );
        let NodeHealth::Lost { message, .. } = not_ready else {
            panic!("not lost")
        };
        assert_eq!(NodeHealth::settling_seconds(&message, 30), 1, "{message}");
        assert_eq!(NodeHealth::settling_seconds("node n1 was deleted", 30), 0);
    }

    #[test]
    fn node_not_ready_past_the_threshold_is_lost() {
        let h = judge_node(
            "n1",
            Some(&node("Unknown", NOW - 40, false)),
            beat(&lease(NOW - 1)),
            at(NOW),
            30,
        );
        assert!(matches!(h, NodeHealth::Lost { fenced: false, .. }));
    }

    #[test]
    fn deleted_or_out_of_service_node_is_lost_with_evidence() {
        assert!(matches!(
            judge_node("n1", None, Heartbeat::default(), at(NOW), 30),
            NodeHealth::Lost { fenced: true, .. }
        ));
        let h = judge_node(
            "n1",
            Some(&node("True", NOW - 1000, true)),
            beat(&lease(NOW)),
            at(NOW),
            30,
        );
        assert!(matches!(h, NodeHealth::Lost { fenced: true, .. }));
    }

    #[test]
    fn silent_node_not_yet_lost_is_rechecked_when_it_would_be() {
        let node = node("True", NOW - 1000, false);
        let fresh = seconds_until_lost(Some(&node), beat(&lease(NOW - 3)), at(NOW), 30);
        assert_eq!(fresh, None, "a node that renews on time needs no recheck");
        let due = seconds_until_lost(Some(&node), beat(&lease(NOW - 11)), at(NOW), 30);
        assert_eq!(due, None, "a renewal due any moment is not a missed one");
        let silent = seconds_until_lost(Some(&node), beat(&lease(NOW - 12)), at(NOW), 30);
        assert_eq!(silent, Some(18));
        let lost = seconds_until_lost(Some(&node), beat(&lease(NOW - 40)), at(NOW), 30);
        assert_eq!(lost, None, "a lost node is judged, not rechecked");
        let unready = node_unready_since(NOW - 4);
        let h = seconds_until_lost(Some(&unready), beat(&lease(NOW - 1)), at(NOW), 30);
        assert_eq!(h, Some(26));
    }

    #[test]
    fn a_renewal_11_s_old_is_no_silence_though_its_whole_seconds_read_12() {
        let ms = |t: i64| Timestamp::from_millisecond(t).unwrap();
        // Renewed at .9 of a second, looked at 11.2 s later, at .1 of a second.
        let renewed = (NOW - 12) * 1000 + 900;
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"renewTime": ms(renewed).to_string()}
        }))
        .unwrap();
        let now = ms(NOW * 1000 + 100);
        assert_eq!(beat(&lease).silence(now), Some(12));
        assert_eq!(beat(&lease).silence_ms(now), Some(11_200));
        // Seen by the operator's watch only 10.5 s ago: that is the silence.
        let heard = Heartbeat {
            lease: Some(&lease),
            heard: Some(ms(NOW * 1000 - 10_400)),
        };
        assert_eq!(heard.silence_ms(now), Some(10_500));
        assert!(heard.silence_ms(now).unwrap() < SUSPECT_AFTER_SECONDS * 1000);
    }

    fn node_unready_since(since: i64) -> Node {
        node("False", since, false)
    }

    #[test]
    fn silence_the_operator_did_not_witness_does_not_make_a_node_lost() {
        let node = node("True", NOW - 1000, false);
        let stale = lease(NOW - 30);
        // The API server was down until 4 s ago: the renewal is 30 s old, but the operator
        // has seen the Lease unchanged for only 4 s.
        let back = Heartbeat {
            lease: Some(&stale),
            heard: Some(at(NOW - 4)),
        };
        assert_eq!(
            judge_node("n1", Some(&node), back, at(NOW), 10),
            NodeHealth::Healthy
        );
        assert_eq!(seconds_until_lost(Some(&node), back, at(NOW), 10), None);
        // Silent 12 s since: rechecked when the threshold of 20 s is reached.
        let later = Heartbeat {
            heard: Some(at(NOW - 12)),
            ..back
        };
        assert_eq!(seconds_until_lost(Some(&node), later, at(NOW), 20), Some(8));
        // Witnessed for the whole threshold: lost, with the witnessed silence in the message.
        let witnessed = Heartbeat {
            heard: Some(at(NOW - 12)),
            ..back
        };
        let h = judge_node("n1", Some(&node), witnessed, at(NOW), 10);
        assert!(
            matches!(h, NodeHealth::Lost { fenced: false, ref message } if message.ends_with("for 12 s")),
            "{h:?}"
        );
        // A record older than the renewal does not stretch the silence.
        let fresh = lease(NOW - 3);
        let old_record = Heartbeat {
            lease: Some(&fresh),
            heard: Some(at(NOW - 100)),
        };
        assert_eq!(
            judge_node("n1", Some(&node), old_record, at(NOW), 10),
            NodeHealth::Healthy
        );
    }

    #[test]
    fn a_status_heartbeat_does_not_change_a_nodes_fingerprint_but_what_is_judged_does() {
        let base = node("True", NOW - 1000, false);
        let mut beat = base.clone();
        for c in beat.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                NOW,
            )));
        }
        beat.metadata.resource_version = Some("42".into());
        assert_eq!(node_fingerprint(&beat), node_fingerprint(&base));
        assert_ne!(
            node_fingerprint(&node("False", NOW, false)),
            node_fingerprint(&base)
        );
        assert_ne!(
            node_fingerprint(&node("True", NOW - 1000, true)),
            node_fingerprint(&base)
        );
        let mut relabelled = base.clone();
        relabelled.metadata.labels =
            Some([("topology.kubernetes.io/zone".to_string(), "b".to_string())].into());
        assert_ne!(node_fingerprint(&relabelled), node_fingerprint(&base));
        let mut cordoned = base.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_ne!(node_fingerprint(&cordoned), node_fingerprint(&base));
    }

    #[test]
    fn a_node_is_back_once_it_renews_its_lease_and_is_ready() {
        let ready = node("True", NOW - 5, false);
        let fresh = lease(NOW - 3);
        assert_eq!(
            node_back("n1", Some(&ready), Some(&fresh), None, at(NOW)),
            Ok(())
        );
        let silent = lease(NOW - 12);
        assert_eq!(
            node_back("n1", Some(&ready), Some(&silent), None, at(NOW)),
            Err("node n1 to renew its lease (last renewed 12 s ago)".into()),
            "a missed renewal is no heartbeat"
        );
        let unknown = node("Unknown", NOW - 5, false);
        assert_eq!(
            node_back("n1", Some(&unknown), Some(&fresh), None, at(NOW)),
            Err("node n1 to be Ready (Ready=Unknown)".into())
        );
        assert!(node_back("n1", None, Some(&fresh), None, at(NOW)).is_err());
        assert!(node_back("n1", Some(&ready), None, None, at(NOW)).is_err());
        // A fence set 2 s ago: the renewal 3 s ago came before it, and proves nothing.
        assert_eq!(
            node_back("n1", Some(&ready), Some(&fresh), Some(at(NOW - 2)), at(NOW)),
            Err(format!("node n1 to renew its lease after {}", at(NOW - 2)))
        );
        assert_eq!(
            node_back("n1", Some(&ready), Some(&fresh), Some(at(NOW - 4)), at(NOW)),
            Ok(())
        );
        // The out-of-service taint does not make a node that heartbeats and is Ready less so.
        let tainted = node("True", NOW - 5, true);
        assert_eq!(
            node_back("n1", Some(&tainted), Some(&fresh), None, at(NOW)),
            Ok(())
        );
    }
}
