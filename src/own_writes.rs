//! The copies of each service that the operator's own status writes have superseded, and
//! the copy the last write returned.
//!
//! The status carries the failure ledger (repairs, escalations, the node a slot must
//! avoid). A pass that a pod event triggers may run before the watch has delivered the
//! status the previous pass wrote: planned from that older copy, it would act on a ledger
//! that misses the last repair (a Reschedule's replacement built without its avoided
//! node, a repair counted twice). Such a pass plans from the copy the write returned
//! instead: the server's object just after the write, as new as anything the cache can show
//! until the watch moves on. Without one (a write refused because the service changed), the
//! pass is skipped: the newer copy's watch event brings a pass of its own.
//!
//! Exact without comparing resource versions: a status write is conditional on the
//! version it was planned from, so once it succeeds, any other version the cache shows
//! is that write or later; and a refused write means the server already holds a newer one.
//! Writes follow one another faster than the watch (a second write planned from the first
//! one's copy), so every version a write superseded is kept until the cache shows another.

use std::collections::HashMap;
use std::sync::Mutex;

/// Versions kept per key: writes in a row before the watch catches up are a few.
const VERSIONS_KEPT: usize = 8;

#[derive(Debug)]
struct Record<C> {
    /// Versions our writes superseded, oldest first.
    versions: Vec<String>,
    /// What the last write returned, when it returned something.
    copy: Option<C>,
}

/// How a cached copy stands against our own writes.
#[derive(Debug, PartialEq)]
pub enum Freshness<C> {
    /// Nothing of ours is newer.
    Fresh,
    /// A write of ours superseded it; plan from the copy it returned, if any.
    Superseded(Option<C>),
}

/// Per key (a service, a pod), the resource versions our writes superseded, and the copy
/// the last write returned (`C`; `()` where only the versions matter).
#[derive(Debug)]
pub struct OwnWrites<K, C = ()> {
    records: Mutex<HashMap<K, Record<C>>>,
}

impl<K, C> Default for OwnWrites<K, C> {
    fn default() -> Self {
        Self {
            records: Mutex::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, C: Clone> OwnWrites<K, C> {
    /// Records that the server holds a newer copy of `key` than `version`: a status was
    /// written from it (the write returned `copy`), or refused because it was old (none).
    pub fn superseded_by(&self, key: &K, version: Option<&str>, copy: Option<C>) {
        let Some(version) = version else { return };
        let Ok(mut map) = self.records.lock() else {
            return;
        };
        let record = map.entry(key.clone()).or_insert_with(|| Record {
            versions: Vec::new(),
            copy: None,
        });
        if !record.versions.iter().any(|v| v == version) {
            record.versions.push(version.to_string());
        }
        if record.versions.len() > VERSIONS_KEPT {
            record.versions.remove(0);
        }
        record.copy = copy;
    }

    /// Records that the server holds a newer copy of `key` than `version`.
    pub fn superseded(&self, key: &K, version: Option<&str>) {
        self.superseded_by(key, version, None);
    }

    /// How the cached copy at `version` stands. A copy at any version no write of ours
    /// superseded shows the cache has moved on, and the record goes.
    pub fn freshness(&self, key: &K, version: Option<&str>) -> Freshness<C> {
        let Ok(mut map) = self.records.lock() else {
            return Freshness::Fresh;
        };
        match (map.get(key), version) {
            (Some(r), Some(seen)) if r.versions.iter().any(|v| v == seen) => {
                Freshness::Superseded(r.copy.clone())
            }
            (Some(_), _) => {
                map.remove(key);
                Freshness::Fresh
            }
            (None, _) => Freshness::Fresh,
        }
    }

    /// Whether the cached copy at `version` is older than what the server holds.
    pub fn is_stale(&self, key: &K, version: Option<&str>) -> bool {
        !matches!(self.freshness(key, version), Freshness::Fresh)
    }

    /// Keeps only the records `keep` accepts (services that still exist).
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        if let Ok(mut map) = self.records.lock() {
            map.retain(|k, _| keep(k));
        }
    }

    pub fn len(&self) -> usize {
        self.records.lock().map(|m| m.len()).unwrap_or(0)
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
        let writes: OwnWrites<_> = OwnWrites::default();
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
        let writes: OwnWrites<_> = OwnWrites::default();
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

    #[test]
    fn writes_in_a_row_keep_every_copy_they_superseded_stale_and_hand_on_the_last_copy() {
        let writes: OwnWrites<&str, &str> = OwnWrites::default();
        writes.superseded_by(&"web", Some("10"), Some("copy-11"));
        assert_eq!(
            writes.freshness(&"web", Some("10")),
            Freshness::Superseded(Some("copy-11"))
        );
        // A second write, planned from the first one's copy, before the watch showed it.
        writes.superseded_by(&"web", Some("11"), Some("copy-12"));
        for cached in ["10", "11"] {
            assert_eq!(
                writes.freshness(&"web", Some(cached)),
                Freshness::Superseded(Some("copy-12")),
                "the cache at {cached} is behind both writes"
            );
        }
        // Refused: the server holds something newer, and no copy of it is known here.
        writes.superseded_by(&"web", Some("12"), None);
        assert_eq!(
            writes.freshness(&"web", Some("10")),
            Freshness::Superseded(None)
        );
        assert_eq!(writes.freshness(&"web", Some("13")), Freshness::Fresh);
        assert!(writes.is_empty(), "the cache moved on past every write");
    }

    #[test]
    fn the_versions_kept_per_key_are_bounded() {
        let writes: OwnWrites<&str> = OwnWrites::default();
        for v in 0..100 {
            writes.superseded(&"web", Some(&v.to_string()));
        }
        assert!(writes.is_stale(&"web", Some("99")));
        assert!(writes.is_stale(&"web", Some("92")));
        assert!(
            !writes.is_stale(&"web", Some("0")),
            "long gone, and so the record"
        );
    }
}
