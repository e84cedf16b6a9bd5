//! Which cached objects belong to which service, kept as an index by the watch that feeds
//! the cache: a reconcile then reads its own revisions and claims, O(its objects), instead
//! of scanning and copying the whole cache on each pass. (Pods have a cache of their own
//! that indexes them, pod_cache.)

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

/// (namespace, name) of an indexed object, one copy shared by both maps.
type Key = Arc<(String, String)>;

/// Objects by the key of their owner (a controller's uid, a label's value), written by a
/// watch and read by reconciles.
#[derive(Clone, Debug, Default)]
pub struct OwnerIndex {
    inner: Arc<Mutex<Owners>>,
}

/// Each object's key is kept once for both maps, and each owner's once for all its
/// objects.
#[derive(Debug, Default)]
struct Owners {
    by_owner: HashMap<Arc<str>, BTreeSet<Key>>,
    owner_of: HashMap<Key, Arc<str>>,
    /// What a list under way has listed so far, with each object's owner.
    listing: Option<Vec<(String, String, Option<String>)>>,
}

impl Owners {
    fn insert(&mut self, key: Key, owner: &str) {
        let owner = match self.by_owner.get_key_value(owner) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(owner),
        };
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(key.clone());
        self.owner_of.insert(key, owner);
    }

    fn remove(&mut self, key: &(String, String)) {
        let Some((key, old)) = self.owner_of.remove_entry(key) else {
            return;
        };
        if let Some(set) = self.by_owner.get_mut(&old) {
            set.remove(&key);
            if set.is_empty() {
                self.by_owner.remove(&old);
            }
        }
    }
}

impl OwnerIndex {
    fn owners(&self) -> MutexGuard<'_, Owners> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the owner of `ns/name` as a watch event tells it: None once the object is
    /// gone or belongs to no one.
    pub fn refresh(&self, ns: &str, name: &str, owner: Option<String>) {
        let key = (ns.to_string(), name.to_string());
        let mut owners = self.owners();
        // Most events change a status, not the owner: the entry stays as it is.
        if owners.owner_of.get(&key).map(|o| &**o) == owner.as_deref() {
            return;
        }
        owners.remove(&key);
        if let Some(owner) = owner {
            owners.insert(Arc::new(key), &owner);
        }
    }

    /// The objects of `owner` that `store` holds. The index hears of an event just before
    /// the store applies it: an entry the store does not hold yet is left out, not dropped.
    pub fn owned<K>(&self, owner: &str, store: &Store<K>) -> Vec<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let keys: Vec<Key> = match self.owners().by_owner.get(owner) {
            Some(set) => set.iter().cloned().collect(),
            None => return Vec::new(),
        };
        keys.iter()
            .filter_map(|key| store.get(&ObjectRef::new(&key.1).within(&key.0)))
            .collect()
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

/// Feeds `index` from one raw watch event, as the reflector feeds its store: a (re-)list
/// replaces the whole index once it is complete, as it replaces the store; the objects it
/// lists are not in the store before then, so the index cannot be read from the store.
pub fn index_event<K>(index: &OwnerIndex, event: &Event<K>, key: fn(&K) -> Option<String>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let id = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    match event {
        Event::Apply(o) => {
            let (ns, name) = id(o);
            index.refresh(&ns, &name, key(o));
        }
        Event::Delete(o) => {
            let (ns, name) = id(o);
            index.refresh(&ns, &name, None);
        }
        Event::Init => index.owners().listing = Some(Vec::new()),
        Event::InitApply(o) => {
            let (ns, name) = id(o);
            if let Some(listed) = index.owners().listing.as_mut() {
                listed.push((ns, name, key(o)));
            }
        }
        Event::InitDone => {
            let listed = index.owners().listing.take().unwrap_or_default();
            let mut fresh = Owners::default();
            for (ns, name, owner) in listed {
                if let Some(owner) = owner {
                    fresh.insert(Arc::new((ns, name)), &owner);
                }
            }
            *index.owners() = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store::Writer;

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
            let e = Event::Apply(pod(name, owner));
            writer.apply_watcher_event(&e);
            index_event(&index, &e, controller_uid);
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
        let gone = Event::Delete(pod("a-0", "a"));
        writer.apply_watcher_event(&gone);
        index_event(&index, &gone, controller_uid);
        assert_eq!(index.owned("a", &store).len(), 1);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn the_objects_of_an_owner_share_one_copy_of_its_key_and_an_owner_with_none_left_is_dropped() {
        let index = OwnerIndex::default();
        for name in ["a-0", "a-1"] {
            index_event(&index, &Event::Apply(pod(name, "a")), controller_uid);
        }
        // A second event of the same owner (a status change) leaves the entry as it was.
        index_event(&index, &Event::Apply(pod("a-0", "a")), controller_uid);
        {
            let owners = index.owners();
            let of = |name: &str| owners.owner_of[&("ns".to_string(), name.to_string())].clone();
            assert!(Arc::ptr_eq(&of("a-0"), &of("a-1")));
            assert_eq!(owners.by_owner["a"].len(), 2);
        }
        index_event(&index, &Event::Apply(pod("a-0", "b")), controller_uid);
        index_event(&index, &Event::Delete(pod("a-1", "a")), controller_uid);
        let owners = index.owners();
        assert!(!owners.by_owner.contains_key("a"), "no object of a is left");
        assert_eq!(owners.by_owner["b"].len(), 1);
        assert_eq!(owners.owner_of.len(), 1);
    }

    #[test]
    fn a_list_indexes_what_it_lists_once_complete_and_forgets_what_it_no_longer_lists() {
        let mut writer: Writer<Pod> = Writer::default();
        let store = writer.as_reader();
        let index = OwnerIndex::default();
        let feed = |writer: &mut Writer<Pod>, e: Event<Pod>| {
            writer.apply_watcher_event(&e);
            index_event(&index, &e, controller_uid);
        };
        feed(&mut writer, Event::Init);
        feed(&mut writer, Event::InitApply(pod("x", "a")));
        feed(&mut writer, Event::InitApply(pod("y", "a")));
        feed(&mut writer, Event::InitDone);
        assert_eq!(index.owned("a", &store).len(), 2, "listed at start");
        // A re-list that no longer holds x.
        feed(&mut writer, Event::Init);
        feed(&mut writer, Event::InitApply(pod("y", "a")));
        assert_eq!(
            index.owned("a", &store).len(),
            2,
            "the old list until it is done"
        );
        feed(&mut writer, Event::InitDone);
        let names: Vec<String> = index
            .owned("a", &store)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["y"]);
        // A new owner moves it.
        feed(&mut writer, Event::Apply(pod("y", "b")));
        assert!(index.owned("a", &store).is_empty());
        assert_eq!(index.owned("b", &store).len(), 1);
    }
}
