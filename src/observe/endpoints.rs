//! Which EndpointSlices list which pods, and as ready or not: what a drain waits on. Kept
//! as an index by pod, written by the EndpointSlice watch, so that a reconcile reads only
//! its own pods' entries instead of scanning every slice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::health::Listing;

/// The label naming the Service a slice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name)
type Key = (String, String);

/// One slice's listing of a pod.
#[derive(Debug)]
struct Listed {
    slice: String,
    service: String,
    ready: bool,
}

/// The slices that list each pod, written by the slice watch and read by reconciles.
#[derive(Clone, Debug, Default)]
pub struct SliceIndex {
    inner: Arc<Mutex<Index>>,
}

#[derive(Debug, Default)]
struct Index {
    /// Per pod: each slice that lists it, its Service and whether it lists the pod ready.
    /// A pod is in a slice or two: a short list, where a map per pod cost most of the index.
    by_pod: HashMap<Key, Vec<Listed>>,
    /// Per slice: the pods it lists, to forget them when it changes or goes.
    by_slice: HashMap<Key, Vec<String>>,
    /// Per pod uid: when the operator first saw it drained (gate closed, ready nowhere).
    drained: HashMap<String, Timestamp>,
}

impl SliceIndex {
    fn index(&self) -> MutexGuard<'_, Index> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what a slice lists now; `current` is the slice as the store holds it after
    /// the event (None once deleted).
    pub fn refresh(&self, ns: &str, name: &str, current: Option<&EndpointSlice>) {
        let mut index = self.index();
        let slice_key = (ns.to_string(), name.to_string());
        for pod in index.by_slice.remove(&slice_key).unwrap_or_default() {
            let pod_key = (ns.to_string(), pod);
            if let Some(entries) = index.by_pod.get_mut(&pod_key) {
                entries.retain(|e| e.slice != name);
                if entries.is_empty() {
                    index.by_pod.remove(&pod_key);
                }
            }
        }
        let Some(slice) = current else {
            return;
        };
        let service = slice
            .labels()
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let mut pods = Vec::new();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(target) = endpoint.target_ref.as_ref() else {
                continue;
            };
            if target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let Some(pod) = target.name.clone() else {
                continue;
            };
            // A condition left out means ready, as the API documents.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let entries = index
                .by_pod
                .entry((ns.to_string(), pod.clone()))
                .or_default();
            // A pod twice in one slice counts as the slice's last word on it.
            entries.retain(|e| e.slice != name);
            entries.push(Listed {
                slice: name.to_string(),
                service: service.clone(),
                ready,
            });
            pods.push(pod);
        }
        index.by_slice.insert(slice_key, pods);
    }

    /// How the slices of Services that route by readiness list pod `ns/pod`. A Service that
    /// publishes not-ready addresses lists every pod as ready whatever its gate says: a
    /// drain cannot take a pod out of it, so it is not waited on.
    pub fn listing(&self, ns: &str, pod: &str, services: &Store<Service>) -> Listing {
        let index = self.index();
        let Some(entries) = index.by_pod.get(&(ns.to_string(), pod.to_string())) else {
            return Listing::Unlisted;
        };
        let mut listing = Listing::Unlisted;
        for Listed { service, ready, .. } in entries {
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

/// Keeps of a slice what the index reads: its labels, and per endpoint its conditions and
/// target. Addresses, ports, hints and topology are most of its size.
pub fn trim_slice(slice: &mut EndpointSlice) {
    slice.metadata.annotations = None;
    slice.ports = None;
    for e in slice.endpoints.iter_mut().flatten() {
        e.addresses = Vec::new();
        e.hints = None;
        e.hostname = None;
        e.node_name = None;
        e.zone = None;
        e.deprecated_topology = None;
        if let Some(t) = e.target_ref.as_mut() {
            t.uid = None;
            t.resource_version = None;
            t.field_path = None;
            t.api_version = None;
        }
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
        index.refresh("ns", "web-abc", Some(&web));
        assert_eq!(index.listing("ns", "p", &store), Listing::Ready);
        assert_eq!(
            index.listing("ns", "q", &store),
            Listing::Ready,
            "unset is ready"
        );
        let web = slice("web", &[("p", Some(false))]);
        index.refresh("ns", "web-abc", Some(&web));
        assert_eq!(index.listing("ns", "p", &store), Listing::NotReady);
        assert_eq!(index.listing("ns", "q", &store), Listing::Unlisted);
        index.refresh("ns", "web-abc", None);
        assert_eq!(index.listing("ns", "p", &store), Listing::Unlisted);
    }

    #[test]
    fn a_service_that_publishes_not_ready_addresses_is_not_waited_on() {
        let index = SliceIndex::default();
        let store = services(&["headless"]);
        let headless = slice("headless", &[("p", Some(true))]);
        index.refresh("ns", "headless-abc", Some(&headless));
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
    fn a_trimmed_slice_keeps_what_the_index_reads() {
        let mut s = slice("web", &[("p", Some(false))]);
        trim_slice(&mut s);
        let index = SliceIndex::default();
        index.refresh("ns", "web-abc", Some(&s));
        assert_eq!(index.listing("ns", "p", &services(&[])), Listing::NotReady);
        assert!(s.endpoints.unwrap()[0].addresses.is_empty());
    }
}
