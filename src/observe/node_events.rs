//! Which node events are news to the services: a node changed in what the operator judges
//! it by, was deleted, or its heartbeat went silent or came back. Everything else a node
//! or its Lease writes (status heartbeats every few seconds, renewals every ten) would,
//! passed on, reconcile every service with a pod on the node each time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::Heartbeats;
use crate::health;

/// How often node heartbeats are checked. A dead node sends no event; this turns its
/// silence into one once it has lasted the least `spec.repair.nodeLostAfterSeconds` of any
/// service (never under health::SUSPECT_AFTER_SECONDS, one missed renewal), and services
/// then requeue at their own threshold. A node that is merely late is not news: on a
/// cluster whose API server takes the renewals late, nodes would flap silent and back every
/// cycle, each turn reconciling every service with a pod there.
const HEARTBEAT_CHECK: Duration = Duration::from_secs(1);

/// Which nodes have been announced silent: a node is announced once its silence reaches
/// the first threshold at which any service could judge it lost, and announced again when
/// it is heard (silence under SUSPECT_AFTER_SECONDS, as `health::node_back` reads it). A
/// node heard again before it was announced was news to no one.
#[derive(Debug, Default)]
pub struct SilenceWatch {
    announced: HashSet<String>,
}

impl SilenceWatch {
    /// The nodes whose state turned, from each node's silence in milliseconds and the least
    /// loss threshold of any service in seconds (None: no service, nobody to tell), asked
    /// for only when a node is past one missed renewal.
    pub fn turned<'a>(
        &mut self,
        silences: impl IntoIterator<Item = (&'a str, i64)>,
        first_loss_seconds: impl FnOnce() -> Option<i64>,
    ) -> Vec<String> {
        let mut first_loss_seconds = Some(first_loss_seconds);
        let mut announce_ms: Option<Option<i64>> = None;
        let mut turned = Vec::new();
        for (name, silence_ms) in silences {
            let heard = silence_ms < health::SUSPECT_AFTER_SECONDS * 1000;
            let flipped = if heard {
                self.announced.remove(name)
            } else {
                let at = *announce_ms.get_or_insert_with(|| {
                    let first = first_loss_seconds.take().and_then(|f| f());
                    first.map(|s| s.max(health::SUSPECT_AFTER_SECONDS) * 1000)
                });
                at.is_some_and(|at| silence_ms >= at) && self.announced.insert(name.to_string())
            };
            if flipped {
                // Each turn is a pass of every service with a pod there: worth a line.
                tracing::debug!(node = %name, silent = !heard, silence_ms, "node heartbeat");
                turned.push(name.to_string());
            }
        }
        turned
    }
}

/// Emits a node each time its heartbeat is announced silent or heard again (SilenceWatch);
/// `first_loss` gives the least `nodeLostAfterSeconds` of the services.
pub fn heartbeat_changes(
    nodes: Store<Node>,
    leases: Store<Lease>,
    heartbeats: Heartbeats,
    first_loss: impl Fn() -> Option<i64> + Send + 'static,
) -> impl Stream<Item = Result<Node, watcher::Error>> + Send {
    let ticks = every(HEARTBEAT_CHECK);
    let mut watch = SilenceWatch::default();
    ticks.flat_map(move |_| {
        let now = jiff::Timestamp::now();
        let silences: Vec<(String, i64)> = (leases.state().iter())
            .map(|lease| {
                let name = lease.name_any();
                let silence = health::Heartbeat {
                    lease: Some(lease),
                    heard: heartbeats.heard(&name, now),
                }
                .silence_ms(now)
                .unwrap_or(0);
                (name, silence)
            })
            .collect();
        let changed: Vec<_> = watch
            .turned(
                silences.iter().map(|(n, ms)| (n.as_str(), *ms)),
                &first_loss,
            )
            .into_iter()
            .filter_map(|name| nodes.get(&ObjectRef::new(&name)))
            .map(|node| Ok(node.as_ref().clone()))
            .collect();
        futures::stream::iter(changed)
    })
}

/// The node watch's events that are news: a node seen for the first time or changed in
/// what the operator judges it by (health::node_fingerprint), and a node deleted. A node
/// deleted while the watch was broken shows only as missing from the list that follows:
/// it is passed on by name alone.
pub fn node_news(
    events: impl Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<Node, watcher::Error>> + Send {
    let mut news = News::default();
    events.flat_map(move |event| {
        let out: Vec<_> = match event {
            Ok(event) => news.of(event).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(out)
    })
}

/// What node_news remembers: the fingerprint of each node, and which nodes a list under
/// way has named.
#[derive(Default)]
struct News {
    seen: HashMap<String, u64>,
    listed: Option<HashSet<String>>,
}

impl News {
    fn of(&mut self, event: watcher::Event<Node>) -> Vec<Node> {
        match event {
            watcher::Event::Init => {
                self.listed = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(node) => {
                if let Some(listed) = self.listed.as_mut() {
                    listed.insert(node.name_any());
                }
                self.applied(node).into_iter().collect()
            }
            watcher::Event::Apply(node) => self.applied(node).into_iter().collect(),
            watcher::Event::Delete(node) => {
                self.seen.remove(&node.name_any());
                tracing::debug!(node = %node.name_any(), "node deleted");
                vec![node]
            }
            watcher::Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                let gone: Vec<String> = (self.seen.keys())
                    .filter(|name| !listed.contains(*name))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .map(|name| {
                        self.seen.remove(&name);
                        tracing::debug!(node = %name, "node gone from the list");
                        Node {
                            metadata: ObjectMeta {
                                name: Some(name),
                                ..ObjectMeta::default()
                            },
                            ..Node::default()
                        }
                    })
                    .collect()
            }
        }
    }

    fn applied(&mut self, node: Node) -> Option<Node> {
        let name = node.name_any();
        let print = health::node_fingerprint(&node);
        let changed = self.seen.insert(name.clone(), print) != Some(print);
        if changed {
            tracing::debug!(node = %name, "node changed");
        }
        changed.then_some(node)
    }
}

/// A stream that yields every `period`.
fn every(period: Duration) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(tokio::time::interval(period), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn beat(node: &Node, heartbeat: &str) -> Node {
        let mut node = node.clone();
        let status = node.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[0].last_heartbeat_time =
            Some(serde_json::from_value(serde_json::json!(heartbeat)).unwrap());
        node
    }

    fn names(nodes: Vec<Node>) -> Vec<String> {
        nodes.iter().map(|n| n.name_any()).collect()
    }

    #[test]
    fn a_late_renewal_is_no_news_and_a_node_is_announced_at_the_first_loss_threshold_and_when_heard(
    ) {
        let mut watch = SilenceWatch::default();
        let first_loss = || Some(40);
        // Late by 13 s, 25 s, 39 s: under every service's threshold, and heard again.
        for late in [13_000, 25_000, 39_999, 1_000] {
            assert!(
                watch.turned([("n1", late)], first_loss).is_empty(),
                "{late}"
            );
        }
        // Silent 40 s: announced once, however long it lasts; heard: announced again.
        assert_eq!(watch.turned([("n1", 40_000)], first_loss), ["n1"]);
        assert!(watch.turned([("n1", 90_000)], first_loss).is_empty());
        assert!(
            watch.turned([("n1", 12_000)], first_loss).is_empty(),
            "one missed renewal is not back"
        );
        assert_eq!(watch.turned([("n1", 2_000)], first_loss), ["n1"]);
        assert!(watch.turned([("n1", 2_000)], first_loss).is_empty());
    }

    #[test]
    fn the_least_threshold_counts_but_never_under_one_missed_renewal_and_no_service_hears_nothing()
    {
        let mut watch = SilenceWatch::default();
        // A service asking for 10 s is told at 12 s, the first missed renewal.
        assert!(watch.turned([("n1", 11_999)], || Some(10)).is_empty());
        assert_eq!(watch.turned([("n1", 12_000)], || Some(10)), ["n1"]);
        let unasked = || -> Option<i64> { panic!("the services are read only for a late node") };
        assert!(watch.turned([("n2", 11_999)], unasked).is_empty());
        let mut nobody = SilenceWatch::default();
        assert!(nobody.turned([("n1", 600_000)], || None).is_empty());
        // Announced while a service listened: heard again is news even once it is gone.
        assert_eq!(watch.turned([("n1", 0)], || None), ["n1"]);
    }

    #[test]
    fn a_node_listed_at_start_is_news_once_and_its_status_heartbeats_are_not() {
        let mut news = News::default();
        let n1 = node("n1", "True");
        assert!(names(news.of(watcher::Event::Init)).is_empty());
        assert_eq!(
            names(news.of(watcher::Event::InitApply(n1.clone()))),
            ["n1"]
        );
        assert!(names(news.of(watcher::Event::InitDone)).is_empty());
        // Its first status heartbeat after the list is no news.
        let later = beat(&n1, "2026-01-01T00:05:00Z");
        assert!(names(news.of(watcher::Event::Apply(later))).is_empty());
        // Not Ready is.
        assert_eq!(
            names(news.of(watcher::Event::Apply(node("n1", "Unknown")))),
            ["n1"]
        );
    }

    #[test]
    fn a_deleted_node_is_news_and_so_is_one_missing_from_a_list_after_the_watch_broke() {
        let mut news = News::default();
        news.of(watcher::Event::Init);
        news.of(watcher::Event::InitApply(node("n1", "True")));
        news.of(watcher::Event::InitApply(node("n2", "True")));
        news.of(watcher::Event::InitDone);
        assert_eq!(
            names(news.of(watcher::Event::Delete(node("n1", "True")))),
            ["n1"]
        );
        // The watch broke; n2 went meanwhile, n3 came. The list that follows tells both.
        news.of(watcher::Event::Init);
        assert_eq!(
            names(news.of(watcher::Event::InitApply(node("n3", "True")))),
            ["n3"]
        );
        assert_eq!(names(news.of(watcher::Event::InitDone)), ["n2"]);
        // n2 is forgotten: were it to return, that is news again.
        assert_eq!(
            names(news.of(watcher::Event::Apply(node("n2", "True")))),
            ["n2"]
        );
    }

    #[test]
    fn a_node_unchanged_across_a_list_after_the_watch_broke_is_no_news() {
        let mut news = News::default();
        news.of(watcher::Event::Init);
        news.of(watcher::Event::InitApply(node("n1", "True")));
        news.of(watcher::Event::InitDone);
        news.of(watcher::Event::Init);
        assert!(names(news.of(watcher::Event::InitApply(node("n1", "True")))).is_empty());
        assert!(names(news.of(watcher::Event::InitDone)).is_empty());
    }
}
