//! The pods of ours as the cache keeps them (`CachedPod`), by name, by the service that
//! controls them and by node, in one structure fed by the pod watch. Each pod's key is kept
//! once for the three lookups; a store of kube's keeps a key of four strings per pod, and
//! an index beside it a key of its own (at 10,000 pods, some 5 MiB of heap between them).
//! One structure also means a pass never finds a pod in an index and not in the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::runtime::watcher::Event;
use kube::ResourceExt;

use super::CachedPod;

/// (namespace, name) of a pod, one copy shared by the map and both indexes.
type Key = Arc<(String, String)>;

/// Keys by what they are indexed by (a service's uid, a node's name).
type Index = HashMap<Arc<str>, BTreeSet<Key>>;

/// The pod cache, written by the pod watch and read by reconciles.
#[derive(Clone, Debug, Default)]
pub struct PodCache {
    inner: Arc<RwLock<Pods>>,
    /// Whether a first full list of the pods is in.
    listed: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Pods {
    by_key: HashMap<Key, Arc<CachedPod>>,
    by_controller: Index,
    by_node: Index,
    /// What a list under way has listed so far; it replaces the rest once complete.
    relisting: Option<Vec<CachedPod>>,
}

fn key_of(pod: &CachedPod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The uid of the service that controls `pod`.
fn uid(pod: &CachedPod) -> Option<&str> {
    pod.controller().map(|(uid, _)| uid)
}

fn link(index: &mut Index, at: Option<&str>, key: &Key) {
    let Some(at) = at else {
        return;
    };
    match index.get_mut(at) {
        Some(keys) => {
            keys.insert(key.clone());
        }
        None => {
            index.insert(Arc::from(at), BTreeSet::from([key.clone()]));
        }
    }
}

fn unlink(index: &mut Index, at: Option<&str>, key: &Key) {
    let Some(at) = at else {
        return;
    };
    if let Some(keys) = index.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
}

impl Pods {
    fn insert(&mut self, pod: CachedPod) {
        let pod = Arc::new(pod);
        let key = match self.by_key.get_key_value(&key_of(&pod)) {
            Some((key, old)) => {
                let (key, old) = (key.clone(), old.clone());
                // Most events change a status, not the controller or the node.
                if uid(&old) != uid(&pod) {
                    unlink(&mut self.by_controller, uid(&old), &key);
                    link(&mut self.by_controller, uid(&pod), &key);
                }
                if old.node_name() != pod.node_name() {
                    unlink(&mut self.by_node, old.node_name(), &key);
                    link(&mut self.by_node, pod.node_name(), &key);
                }
                key
            }
            None => {
                let key = Arc::new(key_of(&pod));
                link(&mut self.by_controller, uid(&pod), &key);
                link(&mut self.by_node, pod.node_name(), &key);
                key
            }
        };
        self.by_key.insert(key, pod);
    }

    fn remove(&mut self, pod: &CachedPod) {
        let Some((key, old)) = self.by_key.remove_entry(&key_of(pod)) else {
            return;
        };
        unlink(&mut self.by_controller, uid(&old), &key);
        unlink(&mut self.by_node, old.node_name(), &key);
    }

    fn at(&self, index: &Index, at: &str) -> Vec<Arc<CachedPod>> {
        (index.get(at).into_iter().flatten())
            .filter_map(|key| self.by_key.get(key).cloned())
            .collect()
    }
}

impl PodCache {
    fn read(&self) -> RwLockReadGuard<'_, Pods> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Pods> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the cache from one watch event, trimmed: a (re-)list replaces the whole cache
    /// once it is complete, so that a pod deleted while the watch was down is forgotten.
    pub fn apply(&self, event: &Event<CachedPod>) {
        let mut pods = self.write();
        match event {
            Event::Apply(pod) => pods.insert(pod.clone()),
            Event::Delete(pod) => pods.remove(pod),
            Event::Init => pods.relisting = Some(Vec::new()),
            Event::InitApply(pod) => {
                if let Some(listing) = pods.relisting.as_mut() {
                    listing.push(pod.clone());
                }
            }
            Event::InitDone => {
                let listed = pods.relisting.take().unwrap_or_default();
                let mut fresh = Pods::default();
                for pod in listed {
                    fresh.insert(pod);
                }
                *pods = fresh;
                drop(pods);
                self.listed.send_replace(true);
            }
        }
    }

    /// Resolves once a first full list of the pods is in.
    pub async fn wait_until_ready(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// The pod `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<CachedPod>> {
        let key = (ns.to_string(), name.to_string());
        self.read().by_key.get(&key).cloned()
    }

    /// The pods the ResilientService of uid `uid` controls.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<CachedPod>> {
        let pods = self.read();
        pods.at(&pods.by_controller, uid)
    }

    /// The pods bound to node `node`.
    pub fn on_node(&self, node: &str) -> Vec<Arc<CachedPod>> {
        let pods = self.read();
        pods.at(&pods.by_node, node)
    }

    /// The uids of every pod cached.
    pub fn uids(&self) -> HashSet<String> {
        (self.read().by_key.values())
            .filter_map(|p| p.metadata.uid.clone())
            .collect()
    }

    /// Pods cached.
    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, service_uid: &str, node: &str) -> CachedPod {
        let mut pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "labels": {crate::api::LABEL_SERVICE: "web"},
                "ownerReferences": [{"apiVersion": "perennial.dev/v1alpha1",
                    "kind": "ResilientService", "name": "web", "uid": service_uid,
                    "controller": true}]},
            "spec": {"nodeName": node, "containers": []},
        }))
        .unwrap();
        pod.trim();
        pod
    }

    fn names(pods: Vec<Arc<CachedPod>>) -> Vec<String> {
        let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_pod_is_found_by_name_by_its_service_and_by_its_node_and_moves_with_them() {
        let cache = PodCache::default();
        cache.apply(&Event::Apply(pod("a", "s1", "n1")));
        cache.apply(&Event::Apply(pod("b", "s1", "n2")));
        cache.apply(&Event::Apply(pod("c", "s2", "n1")));
        assert_eq!(names(cache.controlled_by("s1")), ["a", "b"]);
        assert_eq!(names(cache.on_node("n1")), ["a", "c"]);
        assert!(cache.get("ns", "b").is_some());
        // b is bound elsewhere and changes hands; c goes.
        cache.apply(&Event::Apply(pod("b", "s2", "n1")));
        cache.apply(&Event::Delete(pod("c", "s2", "n1")));
        assert_eq!(names(cache.controlled_by("s1")), ["a"]);
        assert_eq!(names(cache.controlled_by("s2")), ["b"]);
        assert_eq!(names(cache.on_node("n1")), ["a", "b"]);
        assert!(cache.on_node("n2").is_empty());
        assert_eq!(cache.get("ns", "c").map(|p| p.name_any()), None);
        assert_eq!(cache.len(), 2);
        // An emptied entry of an index is dropped, not kept empty.
        let inner = cache.read();
        assert!(!inner.by_node.contains_key("n2"));
        // One key per pod, shared by the map and both indexes.
        let key = inner.by_key.keys().find(|k| k.1 == "a").unwrap();
        assert_eq!(Arc::strong_count(key), 3);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_cache_once_complete_and_the_cache_is_ready_after_the_first() {
        let cache = PodCache::default();
        let ready = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_until_ready().await }
        });
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(pod("a", "s1", "n1")));
        tokio::task::yield_now().await;
        assert!(!ready.is_finished(), "not ready before the list is done");
        assert!(cache.is_empty(), "a list under way changes nothing yet");
        cache.apply(&Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(10), ready)
            .await
            .expect("ready once the first list is done")
            .unwrap();
        // The watch was down while a went and b came.
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(pod("b", "s1", "n2")));
        assert_eq!(names(cache.controlled_by("s1")), ["a"]);
        cache.apply(&Event::InitDone);
        assert_eq!(names(cache.controlled_by("s1")), ["b"]);
        assert!(cache.on_node("n1").is_empty());
        assert_eq!(cache.uids(), HashSet::from(["uid-b".to_string()]));
    }
}
