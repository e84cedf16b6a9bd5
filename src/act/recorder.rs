//! The operator's own Event recorder: few writes, bounded memory, nothing a person needs lost.
//!
//! kube-runtime's recorder writes once per event (a create, then a merge patch for each
//! repeat, since its key ignores the note: a repeat's note is lost), scans its whole cache on
//! every publish, and keeps whole Event objects for six minutes. At 10,000 pods its Events
//! were about a third of the operator's writes. This one learns from client-go instead:
//!
//! - From the legacy `EventCorrelator`: similar events are aggregated. Here, the events of one
//!   pass with the same type, reason and action become one Event whose note says how many and
//!   which ("created 10 pods at revision web-abc: web-0-abc (slot 0), …"), within the 1 kB
//!   note limit of events.k8s.io/v1 ("… and N more" past it).
//! - From `k8s.io/client-go/tools/events`: an isomorphic event (same regarding object,
//!   type, reason, action, note; one reporter per recorder) seen again within six minutes
//!   is not written at once. Its [`EventSeries`] count and last observation are kept here,
//!   and [`Recorder::flush`], on a timer, patches the series of those that changed; a series
//!   not observed for six minutes is finished: its last count is written and it is forgotten.
//!   client-go patches an active series every 30 minutes; here the flush interval is the
//!   caller's (30 s in the operator), so that `kubectl describe` lags by no more than that,
//!   and a Warning repeated on every pass (a crash loop's repair) costs one write per
//!   interval rather than one per pass.
//!
//! The grouping, the notes and the cache's bookkeeping are pure (given a `now`) and tested
//! as such; only [`Recorder`] talks to the API server, and an Event it cannot write never
//! fails a reconcile: it is logged at debug.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::Client;

/// The longest note events.k8s.io/v1 accepts, in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// A series not observed for this long is finished (client-go's `finishTime`).
pub const FINISH_AFTER: SignedDuration = SignedDuration::from_mins(6);

/// How many series the recorder keeps at most. An entry is a key (the note, up to 1 kB, and
/// the regarding object's identity) and a few numbers: about 1.3 kB at worst, so 5 MB at
/// most, whatever the cluster does. 4096 is several times the distinct Events that 10,000
/// pods give in six minutes once a pass's events are aggregated (a few per service and
/// pass). When it is full, finished entries go first, then those already written, then the
/// oldest: forgetting one only means its next repeat is a new Event.
pub const CAPACITY: usize = 4096;

/// Writes in flight at once during a flush.
const FLUSH_CONCURRENCY: usize = 16;

mod aggregate;

use aggregate::fit;
pub use aggregate::{aggregate, Event, Part};

// ------------------------------------------------------------------------------------------
// The series cache: what to create, what to patch, what to forget

/// The object an Event is about, as much of its reference as says which object it is (its
/// resourceVersion changes on every write, and is left out).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Regarding {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

impl From<&ObjectReference> for Regarding {
    fn from(r: &ObjectReference) -> Self {
        Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

impl Regarding {
    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }

    /// Where its Events go: its namespace; a cluster-scoped object's go to "default".
    fn event_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// What makes two Events isomorphic. The reporting controller and instance are the
/// recorder's own, the same for every key, and so not repeated in each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub regarding: Regarding,
    pub type_: EventType,
    pub reason: String,
    pub action: String,
    pub note: String,
}

impl Key {
    pub fn new(regarding: &ObjectReference, event: &Event) -> Self {
        Self {
            regarding: regarding.into(),
            type_: event.type_,
            reason: event.reason.clone(),
            action: event.action.clone(),
            note: event.note.clone(),
        }
    }
}

/// A series as the cache keeps it: the Event's name, not the Event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    count: i32,
    first: Timestamp,
    last: Timestamp,
    /// Observed since its count was last written.
    dirty: bool,
}

impl Entry {
    fn finished(&self, now: Timestamp) -> bool {
        now.duration_since(self.last) >= FINISH_AFTER
    }

    /// The order in which a full cache lets entries go, lowest first.
    fn rank(&self, now: Timestamp) -> (u8, Timestamp) {
        let class = match (self.finished(now), self.dirty) {
            (true, false) => 0,
            (false, false) => 1,
            (_, true) => 2,
        };
        (class, self.last)
    }
}

/// What an observation asks of the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A new Event, to create now under this name.
    New { name: String },
    /// A repeat, counted here: the next flush writes it.
    Repeat { count: i32 },
}

/// A series whose count the API server has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub key: Key,
    pub name: String,
    pub count: i32,
    pub first: Timestamp,
    pub last: Timestamp,
    /// Not observed for [`FINISH_AFTER`]: forgotten already, this is its last write.
    pub finished: bool,
}

/// The series seen recently, bounded by `capacity`. Pure: every method is given `now`.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Key, Entry>,
    capacity: usize,
    /// The last nanosecond an Event was named after: names stay unique within a pass.
    last_nanos: i128,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            last_nanos: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that the event `key` happened at `now`.
    pub fn observe(&mut self, key: &Key, now: Timestamp) -> Observed {
        if let Some(e) = self.entries.get_mut(key) {
            e.count = e.count.saturating_add(1);
            e.last = e.last.max(now);
            e.dirty = true;
            return Observed::Repeat { count: e.count };
        }
        self.make_room(now);
        let name = self.fresh_name(&key.regarding, now);
        self.entries.insert(
            key.clone(),
            Entry {
                name: name.clone(),
                count: 1,
                first: now,
                last: now,
                dirty: false,
            },
        );
        Observed::New { name }
    }

    /// The create of `key`'s Event failed: its next observation creates it again.
    pub fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }

    /// The series to patch now, marked as written; finished series are forgotten (those
    /// with a count to write are among the returned, with `finished`).
    pub fn due(&mut self, now: Timestamp) -> Vec<Due> {
        let mut due = Vec::new();
        self.entries.retain(|key, e| {
            let finished = e.finished(now);
            if e.dirty {
                due.push(Due {
                    key: key.clone(),
                    name: e.name.clone(),
                    count: e.count,
                    first: e.first,
                    last: e.last,
                    finished,
                });
                e.dirty = false;
            }
            !finished
        });
        due
    }

    /// A patch of `due` failed: the next flush tries again, unless the series is finished.
    pub fn unwritten(&mut self, due: &Due) {
        if let Some(e) = self.entries.get_mut(&due.key) {
            if e.name == due.name {
                e.dirty = true;
            }
        }
    }

    /// The Event of `key` is gone from the server (expired, deleted) and was created again
    /// as `name`.
    pub fn renamed(&mut self, key: &Key, old: &str, name: String) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.name == old {
                e.name = name;
            }
        }
    }

    /// `<regarding name>.<hex nanoseconds>`, as kube names Events; never twice the same.
    pub fn fresh_name(&mut self, regarding: &Regarding, now: Timestamp) -> String {
        let nanos = now.as_nanosecond().max(self.last_nanos + 1);
        self.last_nanos = nanos;
        let name = regarding.name.as_deref().unwrap_or("perennial");
        format!("{name}.{nanos:x}")
    }

    /// When full, lets an eighth of the entries go at once, so that one scan serves many
    /// inserts: finished ones first, then those already written, then the oldest.
    fn make_room(&mut self, now: Timestamp) {
        if self.entries.len() < self.capacity {
            return;
        }
        let keep = self.capacity - self.capacity.div_ceil(8);
        let drop = self.entries.len() - keep;
        let mut ranks: Vec<(u8, Timestamp)> = self.entries.values().map(|e| e.rank(now)).collect();
        let cutoff = *ranks.select_nth_unstable(drop - 1).1;
        let below = ranks.iter().filter(|r| **r < cutoff).count();
        let mut ties = drop - below;
        self.entries.retain(|_, e| {
            let rank = e.rank(now);
            if rank < cutoff {
                false
            } else if rank == cutoff && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }
}

// ------------------------------------------------------------------------------------------
// The recorder: the thin part that writes

/// Writes the recorder made (or failed to make) since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub creates: u64,
    pub patches: u64,
    pub failures: u64,
}

/// Publishes Events (events.k8s.io/v1) for the operator. Cheap to clone: clones share
/// their cache.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
    creates: AtomicU64,
    patches: AtomicU64,
    failures: AtomicU64,
}

impl Recorder {
    /// A recorder reporting as `reporter` (the instance defaults to the controller's name),
    /// keeping up to [`CAPACITY`] series. Repeats are written only by [`Recorder::flush`]:
    /// run it on a timer with [`Recorder::spawn_flusher`].
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self::with_capacity(client, reporter, CAPACITY)
    }

    pub fn with_capacity(client: Client, reporter: Reporter, capacity: usize) -> Self {
        let instance = reporter
            .instance
            .unwrap_or_else(|| reporter.controller.clone());
        Self {
            inner: Arc::new(Inner {
                client,
                controller: reporter.controller,
                instance,
                cache: Mutex::new(Cache::new(capacity)),
                creates: AtomicU64::new(0),
                patches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes the events of one pass's actions on `regarding`, aggregated (see
    /// [`aggregate`]): a new Event is created at once, a repeat only counted. Never fails:
    /// an Event that cannot be written is logged at debug.
    pub async fn publish_pass(&self, regarding: &ObjectReference, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = Timestamp::now();
        for event in aggregate(events) {
            let key = Key::new(regarding, &event);
            let observed = self.cache().observe(&key, now);
            if let Observed::New { name } = observed {
                let event = self.kube_event(&key, &name, now, None);
                if let Err(e) = self.create(&key, &event).await {
                    self.cache().forget(&key);
                    tracing::debug!(error = %e, reason = %key.reason, "could not publish an event");
                }
            }
        }
    }

    /// Publishes one event on `regarding`: [`Recorder::publish_pass`] with it alone.
    pub async fn publish(&self, regarding: &ObjectReference, event: Event) {
        self.publish_pass(regarding, vec![event]).await
    }

    /// Patches the series of every Event observed again since the last flush, and forgets
    /// the series not observed for [`FINISH_AFTER`] once their last count is written.
    pub async fn flush(&self) {
        let due = self.cache().due(Timestamp::now());
        futures::stream::iter(due)
            .for_each_concurrent(FLUSH_CONCURRENCY, |due| async move {
                if let Err(e) = self.write_series(&due).await {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                    self.cache().unwritten(&due);
                    tracing::debug!(error = %e, event = %due.name, "could not count a repeated event");
                }
            })
            .await;
    }

    /// Runs [`Recorder::flush`] every `every` until the recorder (all its clones) is dropped
    /// or the task aborted. What is counted since the last flush is written by calling
    /// `flush` once more before the process ends.
    pub fn spawn_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Recorder { inner }.flush().await;
            }
        })
    }

    /// The writes made so far.
    pub fn writes(&self) -> Writes {
        Writes {
            creates: self.inner.creates.load(Ordering::Relaxed),
            patches: self.inner.patches.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
        }
    }

    /// The series the recorder keeps now.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn events(&self, key: &Key) -> Api<KubeEvent> {
        Api::namespaced(self.inner.client.clone(), key.regarding.event_namespace())
    }

    async fn create(&self, key: &Key, event: &KubeEvent) -> Result<(), kube::Error> {
        let created = self.events(key).create(&PostParams::default(), event).await;
        match created {
            Ok(_) => {
                self.inner.creates.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Patches the series of `due`; an Event gone from the server is created again, with
    /// its series.
    async fn write_series(&self, due: &Due) -> Result<(), kube::Error> {
        let series = serde_json::json!({"series": {
            "count": due.count,
            "lastObservedTime": MicroTime(due.last),
        }});
        let patched = self
            .events(&due.key)
            .patch(&due.name, &PatchParams::default(), &Patch::Merge(&series))
            .await;
        match patched {
            Ok(_) => {
                self.inner.patches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let name = self
                    .cache()
                    .fresh_name(&due.key.regarding, Timestamp::now());
                let event = self.kube_event(&due.key, &name, due.first, Some(due));
                self.events(&due.key)
                    .create(&PostParams::default(), &event)
                    .await?;
                self.inner.creates.fetch_add(1, Ordering::Relaxed);
                self.cache().renamed(&due.key, &due.name, name);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn kube_event(
        &self,
        key: &Key,
        name: &str,
        first: Timestamp,
        series: Option<&Due>,
    ) -> KubeEvent {
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(key.regarding.event_namespace().to_string()),
                ..Default::default()
            },
            action: Some(key.action.clone()),
            reason: Some(key.reason.clone()),
            note: Some(fit(&key.note, NOTE_LIMIT)),
            type_: Some(
                match key.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            event_time: Some(MicroTime(first)),
            regarding: Some(key.regarding.reference()),
            reporting_controller: Some(self.inner.controller.clone()),
            reporting_instance: Some(self.inner.instance.clone()),
            series: series.map(|d| EventSeries {
                count: d.count,
                last_observed_time: MicroTime(d.last),
            }),
            related: None,
            deprecated_count: None,
            deprecated_first_timestamp: None,
            deprecated_last_timestamp: None,
            deprecated_source: None,
        }
    }
}

#[cfg(test)]
mod tests;
