//! Which EndpointSlices list which pods, and as ready or not: what a drain waits on. Kept
//! as an index by pod, written by the EndpointSlice watch, so that a reconcile reads only
//! its own pods' entries instead of scanning every slice. The index is all that is kept of
//! the slices: a store of them would hold a second copy (at 10,000 pods, 5 MiB of heap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::ResourceExt;

use crate::health::Listing;

/// The label naming the Service a slice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One slice's listing of a pod. The names are shared by every pod the slice lists.
#[derive(Debug)]
struct Listed {
    slice: Arc<str>,
    service: Arc<str>,
    ready: bool,
}

/// The slices that list one pod: nearly always one, kept then without a list of its own.
#[derive(Debug)]
enum Entries {
    One(Listed),
    Many(Vec<Listed>),
}

impl Entries {
    fn as_slice(&self) -> &[Listed] {
        match self {
            Self::One(listed) => std::slice::from_ref(listed),
            Self::Many(all) => all,
        }
    }

    /// Records a slice's listing; a slice's last word on a pod replaces what it said before.
    fn set(&mut self, listed: Listed) {
        match self {
            Self::One(kept) if kept.slice == listed.slice => *kept = listed,
            Self::One(_) => {
                if let Self::One(first) = std::mem::replace(self, Self::Many(Vec::new())) {
                    *self = Self::Many(vec![first, listed]);
                }
            }
            Self::Many(all) => {
                all.retain(|e| e.slice != listed.slice);
                all.push(listed);
            }
        }
    }

    /// Forgets slice `name`'s listing; true when no slice lists the pod any more.
    fn forget(&mut self, name: &str) -> bool {
        match self {
            Self::One(kept) => &*kept.slice == name,
            Self::Many(all) => {
                all.retain(|e| &*e.slice != name);
                all.is_empty()
            }
        }
    }
}

/// The slices that list each pod, written by the slice watch and read by reconciles.
#[derive(Clone, Debug, Default)]
pub struct SliceIndex {
    inner: Arc<Mutex<Index>>,
    /// Whether a first full list of the slices is in.
    listed: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Index {
    live: Listings,
    /// What a list under way has listed so far; it replaces `live` once complete.
    relisting: Option<Listings>,
    /// Per pod uid: when the operator first saw it drained (gate closed, ready nowhere).
    drained: HashMap<String, Timestamp>,
}

#[derive(Debug, Default)]
struct Listings {
    /// By namespace, then by pod: each slice that lists the pod, its Service and whether it
    /// lists the pod ready. The namespace is kept once, and each pod's name once for this
    /// map and the slices' lists below.
    by_pod: HashMap<Arc<str>, HashMap<Arc<str>, Entries>>,
    /// Per slice (namespace, name): the pods it lists, to forget them when it changes or goes.
    by_slice: HashMap<(String, String), Vec<Arc<str>>>,
}

impl Listings {
    /// Records what a slice lists now (None once deleted).
    fn refresh(&mut self, ns: &str, name: &str, current: Option<&EndpointSlice>) {
        let slice_key = (ns.to_string(), name.to_string());
        let listed_before = self.by_slice.remove(&slice_key).unwrap_or_default();
        if let Some(pods) = self.by_pod.get_mut(ns) {
            for pod in &listed_before {
                if pods.get_mut(&**pod).is_some_and(|e| e.forget(name)) {
                    pods.remove(&**pod);
                }
            }
        }
        let Some(slice) = current else {
            if self.by_pod.get(ns).is_some_and(HashMap::is_empty) {
                self.by_pod.remove(ns);
            }
            return;
        };
        let slice_name: Arc<str> = Arc::from(name);
        let service: Arc<str> = Arc::from(
            slice
                .labels()
                .get(SERVICE_NAME_LABEL)
                .map(String::as_str)
                .unwrap_or_default(),
        );
        let namespace = match self.by_pod.get_key_value(ns) {
            Some((kept, _)) => kept.clone(),
            None => Arc::from(ns),
        };
        let pods_here = self.by_pod.entry(namespace).or_default();
        let mut pods = Vec::new();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(target) = endpoint.target_ref.as_ref() else {
                continue;
            };
            if target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let Some(pod) = target.name.as_deref() else {
                continue;
            };
            // A condition left out means ready, as the API documents.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let listed = Listed {
                slice: slice_name.clone(),
                service: service.clone(),
                ready,
            };
            let key = match pods_here.get_key_value(pod) {
                Some((kept, _)) => kept.clone(),
                None => Arc::from(pod),
            };
            match pods_here.get_mut(pod) {
                Some(entries) => entries.set(listed),
                None => {
                    pods_here.insert(key.clone(), Entries::One(listed));
                }
            }
            pods.push(key);
        }
        if pods_here.is_empty() {
            self.by_pod.remove(ns);
        }
        self.by_slice.insert(slice_key, pods);
    }
}

impl SliceIndex {
    fn index(&self) -> MutexGuard<'_, Index> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the index from one watch event: a (re-)list replaces what it listed once it
    /// is complete, so that a slice deleted while the watch was down is forgotten.
    pub fn apply(&self, event: &Event<EndpointSlice>) {
        let id = |s: &EndpointSlice| (s.namespace().unwrap_or_default(), s.name_any());
        let mut index = self.index();
        match event {
            Event::Apply(slice) => {
                let (ns, name) = id(slice);
                index.live.refresh(&ns, &name, Some(slice));
            }
            Event::Delete(slice) => {
                let (ns, name) = id(slice);
                index.live.refresh(&ns, &name, None);
            }
            Event::Init => index.relisting = Some(Listings::default()),
            Event::InitApply(slice) => {
                let (ns, name) = id(slice);
                if let Some(listing) = index.relisting.as_mut() {
                    listing.refresh(&ns, &name, Some(slice));
                }
            }
            Event::InitDone => {
                if let Some(listed) = index.relisting.take() {
                    index.live = listed;
                }
                drop(index);
                self.listed.send_replace(true);
            }
        }
    }

    /// Resolves once a first full list of the slices is indexed.
    pub async fn wait_until_listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// How the slices of Services that route by readiness list pod `ns/pod`. A Service that
    /// publishes not-ready addresses lists every pod as ready whatever its gate says: a
    /// drain cannot take a pod out of it, so it is not waited on.
    pub fn listing(&self, ns: &str, pod: &str, services: &Store<Service>) -> Listing {
        let index = self.index();
        let Some(entries) = (index.live.by_pod.get(ns)).and_then(|pods| pods.get(pod)) else {
            return Listing::Unlisted;
        };
        let mut listing = Listing::Unlisted;
        for Listed { service, ready, .. } in entries.as_slice() {
            let publishes_all = services
                .get(&ObjectRef::new(service).within(ns))
                .and_then(|s| s.spec.as_ref()?.publish_not_ready_addresses)
                .unwrap_or(false);
            if publishes_all {
                continue;
            }
            if *ready {
                return Listing::Ready;
            }
            listing = Listing::NotReady;
        }
        listing
    }

    /// When pod `uid` was first seen drained, recording `now` if this is the first time;
    /// forgets it when it is not drained. `now` is rounded up to the next whole second, so
    /// that a settle counted in whole seconds is never shorter than asked.
    pub fn drained_since(&self, uid: &str, drained: bool, now: Timestamp) -> Option<Timestamp> {
        let mut index = self.index();
        if !drained {
            index.drained.remove(uid);
            return None;
        }
        let ceil = now.as_second() + i64::from(now.subsec_nanosecond() > 0);
        let at = Timestamp::from_second(ceil).unwrap_or(now);
        Some(*index.drained.entry(uid.to_string()).or_insert(at))
    }

    /// Whether any pod's drain time is kept: the sweep reads the pods only then.
    pub fn any_drained(&self) -> bool {
        !self.index().drained.is_empty()
    }

    /// Forgets the drain times of pods that no longer exist.
    pub fn retain_drained(&self, exists: impl Fn(&str) -> bool) {
        self.index().drained.retain(|uid, _| exists(uid));
    }

    /// The pods a slice lists, by name: whose drain a change of it may end.
    pub fn pods_of(slice: &EndpointSlice) -> impl Iterator<Item = &str> {
        slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| e.target_ref.as_ref())
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            .filter_map(|t| t.name.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(service: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-abc"), "namespace": "ns",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints.iter().map(|(pod, ready)| serde_json::json!({
                "addresses": ["10.0.0.1"],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns"},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn services(publish_all: &[&str]) -> Store<Service> {
        let (reader, mut writer) = kube::runtime::reflector::store::<Service>();
        for name in ["web", "headless"] {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"publishNotReadyAddresses": publish_all.contains(&name)},
            }))
            .unwrap();
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(svc));
        }
        reader
    }

    #[test]
    fn a_pod_is_ready_while_any_routing_slice_lists_it_ready() {
        let index = SliceIndex::default();
        let store = services(&["headless"]);
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
        let web = slice("web", &[("p", Some(true)), ("q", None)]);
        index.apply(&Event::Apply(web));
        assert_eq!(index.listing("ns", "p", &store), Listing::Ready);
        assert_eq!(
            index.listing("ns", "q", &store),
            Listing::Ready,
            "unset is ready"
        );
        let web = slice("web", &[("p", Some(false))]);
        index.apply(&Event::Apply(web));
        assert_eq!(index.listing("ns", "p", &store), Listing::NotReady);
        assert_eq!(index.listing("ns", "q", &store), Listing::Unlisted);
        index.apply(&Event::Delete(slice("web", &[])));
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
    }

    #[test]
    fn a_pod_in_two_slices_is_listed_by_each_until_both_forget_it_and_then_leaves_no_entry() {
        let index = SliceIndex::default();
        let store = services(&[]);
        index.apply(&Event::Apply(slice("web", &[("p", Some(false))])));
        index.apply(&Event::Apply(slice("api", &[("p", Some(true))])));
        assert_eq!(index.listing("ns", "p", &store), Listing::Ready);
        // A slice's second word on a pod replaces its first, even twice in one slice.
        index.apply(&Event::Apply(slice(
            "api",
            &[("p", Some(true)), ("p", Some(false))],
        )));
        assert_eq!(index.listing("ns", "p", &store), Listing::NotReady);
        index.apply(&Event::Delete(slice("web", &[])));
        assert_eq!(index.listing("ns", "p", &store), Listing::NotReady);
        index.apply(&Event::Apply(slice("api", &[("p", Some(true))])));
        assert_eq!(index.listing("ns", "p", &store), Listing::Ready);
        index.apply(&Event::Delete(slice("api", &[])));
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
        let live = &index.index().live;
        assert!(live.by_pod.is_empty(), "{:?}", live.by_pod);
        assert!(live.by_slice.is_empty(), "{:?}", live.by_slice);
    }

    #[test]
    fn a_service_that_publishes_not_ready_addresses_is_not_waited_on() {
        let index = SliceIndex::default();
        let store = services(&["headless"]);
        let headless = slice("headless", &[("p", Some(true))]);
        index.apply(&Event::Apply(headless));
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
    }

    #[test]
    fn the_drain_time_is_the_first_sight_rounded_up_and_forgotten_when_undrained() {
        let index = SliceIndex::default();
        let t = |s: i64, ns: i32| Timestamp::new(s, ns).unwrap();
        assert_eq!(index.drained_since("u", true, t(100, 5)), Some(t(101, 0)));
        assert_eq!(index.drained_since("u", true, t(105, 0)), Some(t(101, 0)));
        assert_eq!(index.drained_since("u", false, t(106, 0)), None);
        assert_eq!(index.drained_since("u", true, t(107, 0)), Some(t(107, 0)));
    }

    #[test]
    fn a_relist_replaces_the_index_once_complete_and_forgets_a_slice_deleted_unseen() {
        let index = SliceIndex::default();
        let store = services(&[]);
        let old = slice("web", &[("p", Some(true))]);
        index.apply(&Event::Apply(old));
        assert_eq!(index.listing("ns", "p", &store), Listing::Ready);
        // The watch was down while web-abc went and a slice of another Service came.
        let other = slice("api", &[("q", Some(false))]);
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(other));
        assert_eq!(
            index.listing("ns", "p", &store),
            Listing::Ready,
            "a list under way changes nothing yet"
        );
        index.apply(&Event::InitDone);
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
        assert_eq!(index.listing("ns", "q", &store), Listing::NotReady);
    }

    #[tokio::test]
    async fn the_index_is_listed_once_a_first_list_is_complete() {
        let index = SliceIndex::default();
        let waiting = tokio::spawn({
            let index = index.clone();
            async move { index.wait_until_listed().await }
        });
        index.apply(&Event::Init);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "not listed before the list is done");
        index.apply(&Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("listed once the list is done")
            .unwrap();
    }
}
