//! Which cached objects belong to which service, kept as an index by the watch that feeds
//! the cache: a reconcile then reads its own pods and revisions, O(its objects), instead of
//! scanning and copying the whole cache, O(every pod of every service), on each pass.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

/// (namespace, name) of an indexed object.
type Key = (String, String);

/// Objects by the key of their owner (a controller's uid, a label's value), written by a
/// watch and read by reconciles.
#[derive(Clone, Debug, Default)]
pub struct OwnerIndex {
    inner: Arc<Mutex<Owners>>,
}

#[derive(Debug, Default)]
struct Owners {
    by_owner: HashMap<String, BTreeSet<Key>>,
    owner_of: HashMap<Key, String>,
}

impl OwnerIndex {
    fn owners(&self) -> MutexGuard<'_, Owners> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the owner of `ns/name` as the store holds it after an event: None once the
    /// object is gone or belongs to no one.
    pub fn refresh(&self, ns: &str, name: &str, owner: Option<String>) {
        let key = (ns.to_string(), name.to_string());
        let mut owners = self.owners();
        if let Some(old) = owners.owner_of.remove(&key) {
            if let Some(set) = owners.by_owner.get_mut(&old) {
                set.remove(&key);
                if set.is_empty() {
                    owners.by_owner.remove(&old);
                }
            }
        }
        if let Some(owner) = owner {
            owners
                .by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            owners.owner_of.insert(key, owner);
        }
    }

    /// The objects of `owner` that `store` holds. An entry the store no longer has (an
    /// object deleted while the watch was re-listing sends no event) is forgotten here.
    pub fn owned<K>(&self, owner: &str, store: &Store<K>) -> Vec<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let keys: Vec<Key> = match self.owners().by_owner.get(owner) {
            Some(set) => set.iter().cloned().collect(),
            None => return Vec::new(),
        };
        let mut found = Vec::with_capacity(keys.len());
        for (ns, name) in keys {
            match store.get(&ObjectRef::new(&name).within(&ns)) {
                Some(object) => found.push(object),
                None => self.refresh(&ns, &name, None),
            }
        }
        found
    }

    /// Objects indexed, for the tests and the metrics.
    pub fn len(&self) -> usize {
        self.owners().owner_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The uid of the controller of `object`: the key pods and revisions are indexed by.
pub fn controller_uid<K: Resource>(object: &K) -> Option<String> {
    object
        .meta()
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Feeds `index` from one watch event: the object as the store holds it now.
pub fn index_event<K>(index: &OwnerIndex, store: &Store<K>, seen: &K, key: fn(&K) -> Option<String>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = seen.namespace().unwrap_or_default();
    let name = seen.name_any();
    let current = store.get(&ObjectRef::new(&name).within(&ns));
    index.refresh(&ns, &name, current.as_deref().and_then(key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn pod(name: &str, owner: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                owner_references: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        uid: owner.into(),
                        controller: Some(true),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn each_owner_reads_only_its_own_objects_as_the_store_holds_them() {
        let mut writer: Writer<Pod> = Writer::default();
        let store = writer.as_reader();
        let index = OwnerIndex::default();
        for (name, owner) in [("a-0", "a"), ("a-1", "a"), ("b-0", "b")] {
            let p = pod(name, owner);
            writer.apply_watcher_event(&Event::Apply(p.clone()));
            index_event(&index, &store, &p, controller_uid);
        }
        let mut names: Vec<String> = index
            .owned("a", &store)
            .iter()
            .map(|p| p.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["a-0", "a-1"]);
        assert_eq!(index.owned("b", &store).len(), 1);
        assert!(index.owned("c", &store).is_empty());

        // Deleted: the store no longer holds it, and the event drops it from the index.
        let gone = pod("a-0", "a");
        writer.apply_watcher_event(&Event::Delete(gone.clone()));
        index_event(&index, &store, &gone, controller_uid);
        assert_eq!(index.owned("a", &store).len(), 1);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_object_gone_without_an_event_is_forgotten_when_its_owner_reads_and_a_new_owner_moves_it()
    {
        let mut writer: Writer<Pod> = Writer::default();
        let store = writer.as_reader();
        let index = OwnerIndex::default();
        let p = pod("x", "a");
        writer.apply_watcher_event(&Event::Apply(p.clone()));
        index_event(&index, &store, &p, controller_uid);
        // A re-list that no longer holds it sends no event for it.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        assert!(index.owned("a", &store).is_empty());
        assert!(index.is_empty());

        let p = pod("y", "a");
        writer.apply_watcher_event(&Event::Apply(p.clone()));
        index_event(&index, &store, &p, controller_uid);
        let moved = pod("y", "b");
        writer.apply_watcher_event(&Event::Apply(moved.clone()));
        index_event(&index, &store, &moved, controller_uid);
        assert!(index.owned("a", &store).is_empty());
        assert_eq!(index.owned("b", &store).len(), 1);
    }
}
