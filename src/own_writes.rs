//! The copies of each service that the operator's own status writes have superseded.
//!
//! The status carries the failure ledger (repairs, escalations, the node a slot must
//! avoid). A pass that a pod event triggers may run before the watch has delivered the
//! status the previous pass wrote: planned from that older copy, it would act on a ledger
//! that misses the last repair (a Reschedule's replacement built without its avoided
//! node, a repair counted twice). Such a pass is skipped: the write's own watch event
//! brings the newer copy and a pass of its own.
//!
//! Exact without comparing resource versions: a status write is conditional on the
//! version it was planned from, so once it succeeds, any other version the cache shows
//! is that write or later; and a refused write means the server already holds a newer one.

use std::collections::HashMap;
use std::sync::Mutex;

/// Per service (any key), the resource version a status write of ours superseded.
#[derive(Debug)]
pub struct OwnWrites<K> {
    superseded: Mutex<HashMap<K, String>>,
}

impl<K> Default for OwnWrites<K> {
    fn default() -> Self {
        Self {
            superseded: Mutex::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> OwnWrites<K> {
    /// Records that the server holds a newer copy of `key` than `version`: a status was
    /// written from it, or refused because it was old.
    pub fn superseded(&self, key: &K, version: Option<&str>) {
        let Some(version) = version else { return };
        if let Ok(mut map) = self.superseded.lock() {
            map.insert(key.clone(), version.to_string());
        }
    }

    /// Whether the cached copy at `version` is older than what the server holds. A copy
    /// at any other version shows the cache has moved on, and the record goes.
    pub fn is_stale(&self, key: &K, version: Option<&str>) -> bool {
        let Ok(mut map) = self.superseded.lock() else {
            return false;
        };
        match (map.get(key), version) {
            (Some(old), Some(seen)) if old == seen => true,
            (Some(_), _) => {
                map.remove(key);
                false
            }
            (None, _) => false,
        }
    }

    /// Keeps only the records `keep` accepts (services that still exist).
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        if let Ok(mut map) = self.superseded.lock() {
            map.retain(|k, _| keep(k));
        }
    }

    pub fn len(&self) -> usize {
        self.superseded.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_at_the_version_a_write_superseded_is_stale_until_the_cache_moves_on() {
        let writes = OwnWrites::default();
        assert!(!writes.is_stale(&"web", Some("10")), "nothing written yet");
        writes.superseded(&"web", Some("10"));
        assert!(writes.is_stale(&"web", Some("10")));
        assert!(writes.is_stale(&"web", Some("10")), "still the old copy");
        assert!(!writes.is_stale(&"other", Some("10")), "per service");
        assert!(!writes.is_stale(&"web", Some("11")), "the write arrived");
        assert!(writes.is_empty(), "and the record went with it");
        assert!(!writes.is_stale(&"web", Some("10")));
    }

    #[test]
    fn a_copy_without_a_version_is_never_held_back_and_deleted_services_are_forgotten() {
        let writes = OwnWrites::default();
        writes.superseded(&"web", None);
        assert!(writes.is_empty());
        writes.superseded(&"web", Some("3"));
        assert!(!writes.is_stale(&"web", None));
        writes.superseded(&"a", Some("1"));
        writes.superseded(&"b", Some("1"));
        writes.retain(|k| *k == "a");
        assert_eq!(writes.len(), 1);
        assert!(writes.is_stale(&"a", Some("1")));
    }
}
