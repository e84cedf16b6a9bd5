//! What the operator has itself seen of node heartbeats. A Lease's renewal time says when
//! the kubelet last wrote it; it cannot say whether anyone could have seen a later write.
//! While the API server is down, or the operator's watch is broken, no renewal can arrive,
//! and a node must not be judged silent for that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;

/// The book of heartbeats, shared between the Lease watch (which writes it) and the
/// reconcile passes (which read it).
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    book: Arc<Mutex<Book>>,
}

#[derive(Debug, Default)]
struct Book {
    /// Per node: the renewal time last seen, and when it was first seen.
    seen: HashMap<String, (Option<Timestamp>, Timestamp)>,
    /// When the watch last came back after an error (or first delivered anything).
    sight_since: Option<Timestamp>,
    /// The watch failed and has delivered nothing since.
    blind: bool,
    /// Moves with each Lease seen and each change of sight (`generation`).
    generation: u64,
}

impl Heartbeats {
    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a Lease delivered by the watch at `now`.
    pub fn saw(&self, lease: &Lease, now: Timestamp) {
        let renewed = lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0);
        let mut book = self.book();
        if book.blind || book.sight_since.is_none() {
            book.blind = false;
            book.sight_since = Some(now);
        }
        let entry = book.seen.entry(lease.name_any()).or_insert((renewed, now));
        if entry.0 != renewed {
            *entry = (renewed, now);
        }
        // Every Lease event moves it, a deletion too: the Lease cache changed with it.
        book.generation += 1;
    }

    /// Records that the watch failed at `now`: nothing can be heard until it delivers again.
    pub fn lost_sight(&self) {
        let mut book = self.book();
        if !book.blind {
            book.blind = true;
            book.generation += 1;
        }
    }

    /// Records that the Lease cache began or finished taking a new list: the Leases read
    /// before are not the ones now.
    pub fn listed(&self) {
        self.book().generation += 1;
    }

    /// Whether the watch is failing: every node then counts as heard at each moment.
    pub fn blind(&self) -> bool {
        self.book().blind
    }

    /// A count that moves with each Lease event and each change of sight: what was read
    /// of the Leases and of `heard` stays true until it moves.
    pub fn generation(&self) -> u64 {
        self.book().generation
    }

    /// For `node`, the moment from which its silence counts at `now`: when its current
    /// renewal was first seen, or when the watch last regained sight, whichever is later;
    /// `now` while the watch is failing. None before the watch delivered anything.
    pub fn heard(&self, node: &str, now: Timestamp) -> Option<Timestamp> {
        let book = self.book();
        if book.blind {
            return Some(now);
        }
        let sight = book.sight_since?;
        let first_seen = book.seen.get(node).map_or(sight, |(_, at)| *at);
        Some(first_seen.max(sight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, renewed: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"renewTime": at(renewed).to_string()}
        }))
        .unwrap()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn silence_counts_from_the_first_sight_of_a_renewal() {
        let beats = Heartbeats::default();
        assert_eq!(beats.heard("n1", at(0)), None, "nothing seen yet");
        beats.saw(&lease("n1", -100), at(0));
        assert_eq!(beats.heard("n1", at(5)), Some(at(0)));
        // The same renewal delivered again (a relist) is not news.
        beats.saw(&lease("n1", -100), at(3));
        assert_eq!(beats.heard("n1", at(5)), Some(at(0)));
        beats.saw(&lease("n1", 7), at(8));
        assert_eq!(beats.heard("n1", at(9)), Some(at(8)));
    }

    #[test]
    fn an_outage_of_the_watch_does_not_count_as_silence() {
        let beats = Heartbeats::default();
        beats.saw(&lease("n1", 0), at(0));
        beats.saw(&lease("n2", 0), at(0));
        beats.lost_sight();
        assert_eq!(
            beats.heard("n1", at(20)),
            Some(at(20)),
            "blind: nothing is silent"
        );
        // The API server is back at 25: n2 renews at once, n1 not yet.
        beats.saw(&lease("n2", 25), at(25));
        assert_eq!(beats.heard("n1", at(30)), Some(at(25)));
        assert_eq!(beats.heard("n2", at(30)), Some(at(25)));
    }

    #[test]
    fn the_generation_moves_with_each_lease_event_a_list_and_a_loss_of_sight() {
        let beats = Heartbeats::default();
        let mut last = beats.generation();
        let mut moved = |beats: &Heartbeats| {
            let now = beats.generation();
            let moved = now != last;
            last = now;
            moved
        };
        beats.saw(&lease("n1", 0), at(0));
        assert!(moved(&beats));
        // The same renewal again (a deletion carries the last one): the cache changed.
        beats.saw(&lease("n1", 0), at(1));
        assert!(moved(&beats));
        beats.listed();
        assert!(moved(&beats));
        beats.lost_sight();
        assert!(moved(&beats) && beats.blind());
        beats.lost_sight();
        assert!(!moved(&beats), "blind already: nothing heard changes");
        beats.saw(&lease("n1", 5), at(6));
        assert!(moved(&beats) && !beats.blind());
    }
}
