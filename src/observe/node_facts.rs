//! The cluster's nodes as every pass reads them: the Node objects, their Leases, when the
//! operator heard each renewal, and which service fenced which node. Built once per change
//! of a node, a Lease or the heartbeat book, and shared by every pass in between: a pass
//! that built them itself paid for every node of the cluster, so that the cost of a pod grew
//! with the number of nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::ResourceExt;

use super::Heartbeats;
use crate::build::FenceRecord;

/// A node's name and the fence record it carries.
pub type Fenced = (String, FenceRecord);

/// The nodes, their heartbeats and their fences at one moment.
#[derive(Debug, Default)]
pub struct NodeFacts {
    nodes: BTreeMap<String, Arc<Node>>,
    leases: BTreeMap<String, Arc<Lease>>,
    /// Per node, the moment from which its silence counts (see Heartbeats::heard).
    heard: BTreeMap<String, Timestamp>,
    /// The nodes whose fence record names a service, with that record, by the service
    /// (namespace/name).
    fenced: BTreeMap<String, Vec<Fenced>>,
    /// How many nodes are lost, per threshold, in the whole second `.0`: the judgement
    /// reads whole seconds, so every pass of that second counts the same.
    lost: Mutex<(i64, HashMap<i64, usize>)>,
}

impl NodeFacts {
    pub fn new(
        nodes: BTreeMap<String, Arc<Node>>,
        leases: BTreeMap<String, Arc<Lease>>,
        heard: BTreeMap<String, Timestamp>,
    ) -> Self {
        let mut fenced: BTreeMap<String, Vec<Fenced>> = BTreeMap::new();
        for (name, node) in &nodes {
            if let Some(record) = FenceRecord::of(node) {
                let entry = fenced.entry(record.service.clone()).or_default();
                entry.push((name.clone(), record));
            }
        }
        Self {
            nodes,
            leases,
            heard,
            fenced,
            lost: Mutex::default(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(Arc::as_ref)
    }

    pub fn lease(&self, name: &str) -> Option<&Lease> {
        self.leases.get(name).map(Arc::as_ref)
    }

    pub fn heard(&self, name: &str) -> Option<Timestamp> {
        self.heard.get(name).copied()
    }

    /// The names of the nodes that exist.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// How many nodes exist.
    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes whose fence record names `service` (namespace/name), with that record.
    pub fn fenced_by(&self, service: &str) -> &[Fenced] {
        self.fenced.get(service).map_or(&[], Vec::as_slice)
    }

    /// How many nodes are lost at `second` for `lost_after`: `count` judges them, once per
    /// second and threshold.
    pub fn lost_count(&self, second: i64, lost_after: i64, count: impl FnOnce() -> usize) -> usize {
        let mut memo = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if memo.0 != second {
            *memo = (second, HashMap::new());
        }
        *memo.1.entry(lost_after).or_insert_with(count)
    }
}

/// Keeps the latest NodeFacts and builds them again only when something they are made of
/// changed: a node (counted by `node_changed`, which the node watch calls once the cache
/// has the change), a Lease or the heartbeat book (Heartbeats::generation).
#[derive(Clone, Debug, Default)]
pub struct NodeFactsCache {
    node_changes: Arc<AtomicU64>,
    latest: Arc<Mutex<Option<Built>>>,
}

/// The counts of node changes and of the heartbeat book's, when facts were built.
type Generation = (u64, u64);
/// The facts last built, and the generation they were built at.
type Built = (Generation, Arc<NodeFacts>);

impl NodeFactsCache {
    /// Called for each node event, after the node cache applied it.
    pub fn node_changed(&self) {
        self.node_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The facts at `now`, built from the caches if anything changed since the last build.
    pub fn get(
        &self,
        nodes: &Store<Node>,
        leases: &Store<Lease>,
        heartbeats: &Heartbeats,
        now: Timestamp,
    ) -> Arc<NodeFacts> {
        // Read before the caches: a change counted after this read builds them again.
        let generation = (
            self.node_changes.load(Ordering::Acquire),
            heartbeats.generation(),
        );
        // While the Lease watch is failing every node counts as heard now: that is a fact
        // of this moment alone, not to be kept.
        if heartbeats.blind() {
            return Arc::new(build(nodes, leases, heartbeats, now));
        }
        let mut latest = self.lock();
        if let Some((built_at, facts)) = latest.as_ref() {
            if *built_at == generation {
                return facts.clone();
            }
        }
        let facts = Arc::new(build(nodes, leases, heartbeats, now));
        *latest = Some((generation, facts.clone()));
        facts
    }

    fn lock(&self) -> MutexGuard<'_, Option<Built>> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn build(
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    heartbeats: &Heartbeats,
    now: Timestamp,
) -> NodeFacts {
    let leases: BTreeMap<String, Arc<Lease>> = (leases.state().into_iter())
        .map(|l| (l.name_any(), l))
        .collect();
    let heard = (leases.keys())
        .filter_map(|n| Some((n.clone(), heartbeats.heard(n, now)?)))
        .collect();
    let nodes = (nodes.state().into_iter())
        .map(|n| (n.name_any(), n))
        .collect();
    NodeFacts::new(nodes, leases, heard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn node(name: &str, fence: Option<&str>) -> Node {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .unwrap();
        if let Some(service) = fence {
            let record = serde_json::json!({
                "service": service,
                "taint": {"key": crate::health::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}
            });
            n.metadata.annotations =
                Some([(crate::api::ANNOTATION_FENCE.to_string(), record.to_string())].into());
        }
        n
    }

    fn lease(name: &str, renewed: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"renewTime": renewed}
        }))
        .unwrap()
    }

    #[test]
    fn the_facts_are_built_again_only_after_a_node_a_lease_or_the_book_changed() {
        let (nodes, mut node_writer) = kube::runtime::reflector::store::<Node>();
        let (leases, mut lease_writer) = kube::runtime::reflector::store::<Lease>();
        let book = Heartbeats::default();
        let cache = NodeFactsCache::default();
        let now: Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        node_writer.apply_watcher_event(&watcher::Event::Apply(node("n1", None)));
        let l1 = lease("n1", "2026-12-06T11:59:58Z");
        lease_writer.apply_watcher_event(&watcher::Event::Apply(l1.clone()));
        book.saw(&l1, now);

        let first = cache.get(&nodes, &leases, &book, now);
        assert_eq!(first.names().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(first.heard("n1"), Some(now));
        let again = cache.get(&nodes, &leases, &book, now);
        assert!(
            Arc::ptr_eq(&first, &again),
            "nothing changed: the same facts"
        );

        // A node added reaches the passes once its event is counted.
        node_writer.apply_watcher_event(&watcher::Event::Apply(node("n2", Some("shop/web"))));
        cache.node_changed();
        let second = cache.get(&nodes, &leases, &book, now);
        assert_eq!(second.names().collect::<Vec<_>>(), ["n1", "n2"]);
        let fenced: Vec<&str> = (second.fenced_by("shop/web").iter())
            .map(|(node, record)| {
                assert_eq!(record.service, "shop/web");
                node.as_str()
            })
            .collect();
        assert_eq!(fenced, ["n2"]);
        assert!(second.fenced_by("shop/api").is_empty());

        // A renewal changes the book, and so the facts.
        let later: Timestamp = "2026-12-06T12:00:10Z".parse().unwrap();
        let l1 = lease("n1", "2026-12-06T12:00:08Z");
        lease_writer.apply_watcher_event(&watcher::Event::Apply(l1.clone()));
        book.saw(&l1, later);
        let third = cache.get(&nodes, &leases, &book, later);
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(third.heard("n1"), Some(later));

        // Blind, every node counts as heard at this moment, and that is not kept.
        book.lost_sight();
        let blind = cache.get(&nodes, &leases, &book, later);
        let after: Timestamp = "2026-12-06T12:00:30Z".parse().unwrap();
        let blind_later = cache.get(&nodes, &leases, &book, after);
        assert_eq!(blind.heard("n1"), Some(later));
        assert_eq!(blind_later.heard("n1"), Some(after));
    }

    #[test]
    fn the_lost_are_counted_once_per_second_and_threshold() {
        let facts = NodeFacts::default();
        let runs = std::cell::Cell::new(0);
        let count = |n: usize| {
            let runs = &runs;
            move || {
                runs.set(runs.get() + 1);
                n
            }
        };
        assert_eq!(facts.lost_count(100, 30, count(2)), 2);
        assert_eq!(facts.lost_count(100, 30, count(5)), 2, "the same second");
        assert_eq!(facts.lost_count(100, 60, count(1)), 1, "another threshold");
        assert_eq!(facts.lost_count(101, 30, count(3)), 3, "the next second");
        assert_eq!(
            runs.get(),
            3,
            "the second count of second 100 at 30 s did not run"
        );
    }
}
