//! The queue of services to reconcile: a service waits in it at most once, is never
//! reconciled twice at once, and one asked for while its pass runs gets another pass after.
//! A service asked for now is handed to an idle worker at once. The runtime's scheduler
//! kept every such request on a timer, which rounds up to whole milliseconds: about 2 ms
//! between a pod's deletion and the pass that replaces it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// When a service wants its next pass, as a pass ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// After this long, unless something asks for it sooner.
    After(Duration),
    /// Only when something changes.
    OnChange,
}

/// What a pass was asked for by, for the logs.
pub type Why = &'static str;

/// The rules of the queue, apart from any waiting: given the time, so they are tested
/// without a clock.
#[derive(Debug)]
pub struct Queue<K> {
    /// Keys to hand out, oldest first, each with what asked for it first.
    ready: VecDeque<K>,
    why: HashMap<K, Why>,
    running: HashSet<K>,
    /// Keys asked for while their pass ran: ready again once it ends.
    again: HashMap<K, Why>,
    /// Keys due later, by key and by time; the number keeps equal times apart.
    due: HashMap<K, (Instant, u64)>,
    timeline: BTreeMap<(Instant, u64), K>,
    added: u64,
    closed: bool,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            why: HashMap::new(),
            running: HashSet::new(),
            again: HashMap::new(),
            due: HashMap::new(),
            timeline: BTreeMap::new(),
            added: 0,
            closed: false,
        }
    }
}

impl<K: Clone + Eq + Hash> Queue<K> {
    /// Asks for a pass of `key` now. True when a key became ready to hand out.
    pub fn add(&mut self, key: K, why: Why) -> bool {
        if self.closed {
            return false;
        }
        if self.running.contains(&key) {
            self.again.entry(key).or_insert(why);
            return false;
        }
        if self.why.contains_key(&key) {
            return false;
        }
        if let Some(at) = self.due.remove(&key) {
            self.timeline.remove(&at);
        }
        self.why.insert(key.clone(), why);
        self.ready.push_back(key);
        true
    }

    /// Asks for a pass of `key` at `at`, unless one is asked for sooner. True when `at` is
    /// now the earliest time any key is due.
    pub fn add_at(&mut self, key: K, at: Instant) -> bool {
        if self.closed || self.why.contains_key(&key) {
            return false;
        }
        match self.due.get(&key) {
            Some((sooner, _)) if *sooner <= at => return false,
            Some(later) => {
                self.timeline.remove(later);
            }
            None => {}
        }
        self.added += 1;
        self.due.insert(key.clone(), (at, self.added));
        self.timeline.insert((at, self.added), key);
        self.timeline.keys().next() == Some(&(at, self.added))
    }

    /// Makes ready every key due by `now`.
    pub fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.timeline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.due.remove(&key);
            self.add(key, "requeued");
        }
    }

    /// The earliest time a key is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.timeline.keys().next().map(|(at, _)| *at)
    }

    /// Hands out the oldest ready key; it runs until `finish`.
    pub fn take(&mut self) -> Option<(K, Why)> {
        let key = self.ready.pop_front()?;
        let why = self.why.remove(&key).unwrap_or("requeued");
        self.running.insert(key.clone());
        Some((key, why))
    }

    /// Whether a key is ready to hand out.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Ends the pass of `key`. Asked for meanwhile, it is ready again; else it is due as
    /// `next` says. True when a key became ready or the earliest due.
    pub fn finish(&mut self, key: &K, next: Next, now: Instant) -> bool {
        self.running.remove(key);
        if let Some(why) = self.again.remove(key) {
            // The next pass plans afresh and says itself when it wants another.
            return self.add(key.clone(), why);
        }
        match next {
            Next::After(wait) if wait.is_zero() => self.add(key.clone(), "requeued"),
            Next::After(wait) => self.add_at(key.clone(), now + wait),
            Next::OnChange => false,
        }
    }

    /// Takes no more keys and drops those waiting; passes under way end as they do.
    pub fn close(&mut self) {
        self.closed = true;
        self.ready.clear();
        self.why.clear();
        self.again.clear();
        self.due.clear();
        self.timeline.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The queue shared by the workers and the triggers.
pub struct WorkQueue<K> {
    queue: Mutex<Queue<K>>,
    /// Wakes a worker: a key is ready, or due sooner than it sleeps.
    wake: Notify,
    closing: Notify,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closing: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    fn with<T>(&self, f: impl FnOnce(&mut Queue<K>) -> T) -> T {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut queue)
    }

    /// Asks for a pass of `key` now.
    pub fn add(&self, key: K, why: Why) {
        if self.with(|q| q.add(key, why)) {
            self.wake.notify_one();
        }
    }

    /// Ends the pass of `key`; `next` says when it wants another.
    pub fn finish(&self, key: &K, next: Next) {
        if self.with(|q| q.finish(key, next, Instant::now())) {
            self.wake.notify_one();
        }
    }

    /// Takes no more keys; `next` returns None to every worker from now on.
    pub fn close(&self) {
        self.with(Queue::close);
        self.wake.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        loop {
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.with(|q| q.is_closed()) {
                return;
            }
            closing.await;
        }
    }

    /// The next key to reconcile, once one is ready; None once the queue is closed.
    pub async fn next(&self) -> Option<(K, Why)> {
        loop {
            // Listening before looking: a key added in between wakes this worker.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // None once closed: the one look at the queue says so.
            let (taken, more, due) = self.with(|q| {
                (!q.is_closed()).then(|| {
                    q.promote(Instant::now());
                    (q.take(), q.has_ready(), q.next_due())
                })
            })?;
            match taken {
                Some(taken) => {
                    // Another worker may be idle: it takes the rest.
                    if more {
                        self.wake.notify_one();
                    }
                    return Some(taken);
                }
                None => match due {
                    Some(at) => {
                        tokio::select! {
                            _ = woken => {}
                            _ = tokio::time::sleep_until(at) => {}
                        }
                    }
                    None => woken.await,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_key_asked_for_twice_waits_once() {
        let mut q = Queue::default();
        assert!(q.add("a", "pod"));
        assert!(!q.add("a", "service"));
        assert_eq!(q.take(), Some(("a", "pod")));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn a_key_asked_for_while_it_runs_runs_again_after_and_never_twice_at_once() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("a", "pod");
        assert_eq!(q.take(), Some(("a", "pod")));
        assert!(!q.add("a", "slice"), "not handed out while its pass runs");
        assert_eq!(q.take(), None);
        // Its own wish of a pass in a minute gives way to the pass asked for meanwhile.
        assert!(q.finish(&"a", Next::After(s(60)), now));
        assert_eq!(q.take(), Some(("a", "slice")));
        assert!(!q.finish(&"a", Next::OnChange, now));
        assert_eq!(q.next_due(), None);
        assert_eq!(q.take(), None);
    }

    #[test]
    fn a_requeue_waits_until_due_and_the_sooner_of_two_wins() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("a", "pod");
        q.take();
        assert!(q.finish(&"a", Next::After(s(10)), now));
        assert!(q.add_at("a", now + s(5)), "sooner: now the earliest");
        assert!(!q.add_at("a", now + s(20)), "later: the sooner one stands");
        q.promote(now + s(4));
        assert_eq!(q.take(), None);
        q.promote(now + s(5));
        assert_eq!(q.take(), Some(("a", "requeued")));
        q.finish(&"a", Next::OnChange, now);
        q.promote(now + s(30));
        assert_eq!(q.take(), None, "the later entries went with the first");
    }

    #[test]
    fn a_key_asked_for_now_overtakes_its_requeue() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_at("a", now + s(300));
        assert!(q.add("a", "pod"));
        assert_eq!(q.next_due(), None);
        assert_eq!(q.take(), Some(("a", "pod")));
    }

    #[test]
    fn keys_come_out_oldest_first_and_due_ones_after_those_already_ready() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_at("c", now + s(1));
        q.add_at("b", now + s(1));
        q.add("a", "pod");
        q.promote(now + s(1));
        let order: Vec<_> = std::iter::from_fn(|| q.take().map(|(k, _)| k)).collect();
        assert_eq!(order, ["a", "c", "b"]);
    }

    #[test]
    fn a_closed_queue_drops_what_waits_and_takes_nothing_more() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("a", "pod");
        q.add("b", "pod");
        q.take();
        q.add_at("c", now + s(1));
        q.close();
        assert!(!q.add("d", "pod"));
        assert!(!q.finish(&"a", Next::After(Duration::ZERO), now));
        q.promote(now + s(2));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn a_key_asked_for_now_is_handed_out_on_the_first_poll_without_a_timer() {
        use futures::FutureExt;
        let queue = WorkQueue::default();
        queue.add("a", "pod");
        // Polled once, outside any runtime: a wait on the timer could not even be set.
        assert_eq!(queue.next().now_or_never(), Some(Some(("a", "pod"))));
    }

    #[tokio::test]
    async fn a_waiting_worker_is_woken_by_a_key_asked_for_now() {
        let queue = std::sync::Arc::new(WorkQueue::default());
        let worker = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await })
        };
        tokio::task::yield_now().await;
        queue.add("a", "pod");
        assert_eq!(worker.await.unwrap(), Some(("a", "pod")));
    }

    #[tokio::test]
    async fn a_requeued_key_is_handed_out_once_due_and_not_before() {
        use futures::FutureExt;
        let queue = WorkQueue::default();
        queue.add("a", "pod");
        let (key, _) = queue.next().await.unwrap();
        let finished = Instant::now();
        queue.finish(&key, Next::After(Duration::from_millis(20)));
        let next = tokio::time::timeout(s(10), queue.next()).await;
        assert_eq!(next, Ok(Some(("a", "requeued"))));
        assert!(finished.elapsed() >= Duration::from_millis(20));
        assert_eq!(queue.next().now_or_never(), None, "handed out once");
    }

    #[tokio::test]
    async fn closing_ends_every_waiting_worker() {
        let queue = std::sync::Arc::new(WorkQueue::<&str>::default());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.next().await })
            })
            .collect();
        tokio::task::yield_now().await;
        queue.close();
        for w in workers {
            assert_eq!(w.await.unwrap(), None);
        }
    }
}
