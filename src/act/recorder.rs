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

// ------------------------------------------------------------------------------------------
// What act reports

/// One thing that happened to the regarding object, as act reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// Why, in PascalCase (at most 128 characters): `SuccessfulCreate`.
    pub reason: String,
    /// What was done, in PascalCase (at most 128 characters): `Create`.
    pub action: String,
    /// The note when the event is the only one of its type, reason and action in its pass.
    pub note: String,
    /// How it reads among others of its type, reason and action; without it, its note is
    /// listed whole.
    pub part: Option<Part>,
}

/// An event as one item of an aggregated note: `{verb} {n} {plural}{context}: {item}, …`.
/// Events whose verb, plural and context are equal are listed together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    /// "created"
    pub verb: String,
    /// "pods"
    pub plural: String,
    /// What the items share, read after the plural: " at revision web-abc" (may be empty).
    pub context: String,
    /// This event's object: "web-0-abc (slot 0)".
    pub item: String,
}

impl Event {
    pub fn normal(reason: &str, action: &str, note: String) -> Self {
        Self::new(EventType::Normal, reason, action, note)
    }

    pub fn warning(reason: &str, action: &str, note: String) -> Self {
        Self::new(EventType::Warning, reason, action, note)
    }

    fn new(type_: EventType, reason: &str, action: &str, note: String) -> Self {
        Self {
            type_,
            reason: reason.to_string(),
            action: action.to_string(),
            note,
            part: None,
        }
    }

    /// The event as an item among others: see [`Part`].
    pub fn listed(mut self, verb: &str, plural: &str, context: String, item: String) -> Self {
        self.part = Some(Part {
            verb: verb.to_string(),
            plural: plural.to_string(),
            context,
            item,
        });
        self
    }
}

// ------------------------------------------------------------------------------------------
// One pass's events, aggregated

/// One pass's events as the Events to record: one per type, reason and action, in the
/// order they first appear, each with its note within [`NOTE_LIMIT`].
pub fn aggregate(events: Vec<Event>) -> Vec<Event> {
    let mut groups: Vec<Vec<Event>> = Vec::new();
    let mut index: HashMap<(EventType, String, String), usize> = HashMap::new();
    for event in events {
        let key = (event.type_, event.reason.clone(), event.action.clone());
        match index.get(&key) {
            Some(&i) => groups[i].push(event),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![event]);
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|group| {
            let first = group.first()?;
            let (type_, reason, action) = (first.type_, first.reason.clone(), first.action.clone());
            Some(Event {
                type_,
                reason,
                action,
                note: note_of(group),
                part: None,
            })
        })
        .collect()
}

/// What a note lists: an event's whole note, or items sharing a verb, plural and context.
enum Unit {
    Whole(String),
    Items {
        head: (String, String, String),
        items: Vec<String>,
        /// The note of the first, told whole when it stays alone.
        note: String,
    },
}

/// The note of a group of events of one type, reason and action.
fn note_of(group: Vec<Event>) -> String {
    if group.len() == 1 {
        return fit(&group[0].note, NOTE_LIMIT);
    }
    let mut units: Vec<Unit> = Vec::new();
    let mut index: HashMap<(String, String, String), usize> = HashMap::new();
    for event in group {
        let Some(part) = event.part else {
            units.push(Unit::Whole(event.note));
            continue;
        };
        let head = (part.verb, part.plural, part.context);
        match index.get(&head) {
            Some(&i) => {
                if let Unit::Items { items, .. } = &mut units[i] {
                    items.push(part.item);
                }
            }
            None => {
                index.insert(head.clone(), units.len());
                units.push(Unit::Items {
                    head,
                    items: vec![part.item],
                    note: event.note,
                });
            }
        }
    }
    render(units)
}

/// Room kept for the " … and N more" that ends a cut note.
const MORE_ROOM: usize = " … and 4294967295 more".len();

/// The units in order, joined by "; ", cut to fit in [`NOTE_LIMIT`] with "… and N more",
/// N counting the items (events) left out.
fn render(units: Vec<Unit>) -> String {
    let budget = NOTE_LIMIT - MORE_ROOM;
    let mut out = String::new();
    let mut omitted = 0usize;
    let mut full = false;
    for unit in units {
        let (head, items) = match unit {
            Unit::Whole(note) => (None, vec![note]),
            Unit::Items { items, note, .. } if items.len() == 1 => (None, vec![note]),
            Unit::Items {
                head: (verb, plural, context),
                items,
                ..
            } => (
                Some(format!("{verb} {} {plural}{context}: ", items.len())),
                items,
            ),
        };
        if full {
            omitted += items.len();
            continue;
        }
        let sep = if out.is_empty() { "" } else { "; " };
        let mut items = items.into_iter();
        let first = items.next().unwrap_or_default();
        let opening = format!("{sep}{}{first}", head.unwrap_or_default());
        if out.len() + opening.len() <= budget {
            out.push_str(&opening);
        } else if out.is_empty() {
            // Alone and too long: cut, rather than tell nothing.
            out = fit(&opening, budget);
        } else {
            full = true;
            omitted += 1 + items.len();
            continue;
        }
        for item in items.by_ref() {
            if out.len() + 2 + item.len() <= budget {
                out.push_str(", ");
                out.push_str(&item);
            } else {
                full = true;
                omitted += 1;
                break;
            }
        }
        omitted += items.len();
    }
    if omitted > 0 {
        out.push_str(&format!(" … and {omitted} more"));
    }
    out
}

/// `s` cut to at most `max` bytes, on a character boundary, ending with "…" when cut.
fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

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
mod tests {
    use super::*;

    fn created(name: &str, slot: i32) -> Event {
        Event::normal(
            "SuccessfulCreate",
            "Create",
            format!("created pod {name} for slot {slot} at revision web-abc"),
        )
        .listed(
            "created",
            "pods",
            " at revision web-abc".into(),
            format!("{name} (slot {slot})"),
        )
    }

    fn svc_ref() -> ObjectReference {
        ObjectReference {
            api_version: Some("perennial.dev/v1alpha1".into()),
            kind: Some("ResilientService".into()),
            namespace: Some("ns".into()),
            name: Some("web".into()),
            uid: Some("uid-1".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        }
    }

    fn key(note: &str) -> Key {
        Key::new(&svc_ref(), &Event::warning("Crash", "Repair", note.into()))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn events_of_one_type_reason_and_action_become_one_that_lists_them_all() {
        let events = (0..10)
            .map(|i| created(&format!("web-{i}-abc"), i))
            .collect();
        let out = aggregate(events);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, "SuccessfulCreate");
        let expected = (0..10)
            .map(|i| format!("web-{i}-abc (slot {i})"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            out[0].note,
            format!("created 10 pods at revision web-abc: {expected}")
        );
    }

    #[test]
    fn an_event_alone_in_its_pass_keeps_its_own_note() {
        let out = aggregate(vec![
            created("web-0-abc", 0),
            Event::normal("RevisionCreated", "Create", "recorded revision 1".into()),
        ]);
        let notes: Vec<_> = out
            .iter()
            .map(|e| (e.reason.as_str(), e.note.as_str()))
            .collect();
        assert_eq!(
            notes,
            [
                (
                    "SuccessfulCreate",
                    "created pod web-0-abc for slot 0 at revision web-abc"
                ),
                ("RevisionCreated", "recorded revision 1")
            ]
        );
    }

    #[test]
    fn different_types_reasons_or_actions_stay_apart_in_the_order_first_seen() {
        let warn = Event::warning("SuccessfulCreate", "Create", "w".into());
        let other_action = Event::normal("SuccessfulCreate", "Repair", "r".into());
        let out = aggregate(vec![
            created("a", 0),
            warn.clone(),
            other_action,
            created("b", 1),
        ]);
        let seen: Vec<_> = out.iter().map(|e| (e.type_, e.action.as_str())).collect();
        assert_eq!(
            seen,
            [
                (EventType::Normal, "Create"),
                (EventType::Warning, "Create"),
                (EventType::Normal, "Repair")
            ]
        );
        assert_eq!(
            out[0].note,
            "created 2 pods at revision web-abc: a (slot 0), b (slot 1)"
        );
    }

    #[test]
    fn items_of_different_contexts_are_listed_apart_and_a_lone_one_keeps_its_note() {
        let old = Event::normal(
            "SuccessfulCreate",
            "Create",
            "created pod x-old for slot 3 at revision web-old".into(),
        )
        .listed(
            "created",
            "pods",
            " at revision web-old".into(),
            "x-old (slot 3)".into(),
        );
        let plain = Event::normal(
            "SuccessfulCreate",
            "Create",
            "created something else".into(),
        );
        let out = aggregate(vec![created("a", 0), old, created("b", 1), plain]);
        assert_eq!(
            out[0].note,
            "created 2 pods at revision web-abc: a (slot 0), b (slot 1); \
             created pod x-old for slot 3 at revision web-old; created something else"
        );
    }

    #[test]
    fn a_note_too_long_is_cut_under_the_limit_and_says_how_many_more() {
        let events: Vec<Event> = (0..200)
            .map(|i| created(&format!("service-with-a-long-name-{i}-abcdef"), i))
            .collect();
        let note = &aggregate(events)[0].note;
        assert!(note.len() <= NOTE_LIMIT, "{} bytes", note.len());
        assert!(note.starts_with(
            "created 200 pods at revision web-abc: service-with-a-long-name-0-abcdef (slot 0), "
        ));
        let listed = note.matches("(slot ").count();
        assert!(listed > 10, "{listed} listed");
        assert!(
            note.ends_with(&format!(" … and {} more", 200 - listed)),
            "{note}"
        );
    }

    #[test]
    fn whole_notes_that_do_not_fit_are_counted_in_the_more() {
        let long = "x".repeat(600);
        let events = (0..3)
            .map(|i| Event::warning("NodeLost", "Repair", format!("{i} {long}")))
            .collect();
        let note = &aggregate(events)[0].note;
        assert!(note.len() <= NOTE_LIMIT);
        assert!(note.starts_with("0 x"));
        assert!(note.ends_with(" … and 2 more"), "{note}");
    }

    #[test]
    fn a_single_note_over_the_limit_is_cut_on_a_character_boundary() {
        let note = "é".repeat(700); // 1400 bytes
        let out = aggregate(vec![Event::warning("InvalidTemplate", "Create", note)]);
        assert!(out[0].note.len() <= NOTE_LIMIT);
        assert!(out[0].note.ends_with('…'));
        let first = vec![
            Event::warning("A", "B", "ü".repeat(600)),
            Event::warning("A", "B", "c".into()),
        ];
        let cut = &aggregate(first)[0].note;
        assert!(
            cut.len() <= NOTE_LIMIT && cut.ends_with(" … and 1 more"),
            "{cut}"
        );
    }

    #[test]
    fn a_new_event_is_created_at_once_and_its_repeats_are_only_counted() {
        let mut cache = Cache::new(16);
        let k = key("pod web-0 crashed");
        let Observed::New { name } = cache.observe(&k, at(0)) else {
            panic!("new")
        };
        assert!(name.starts_with("web."), "{name}");
        for n in 2..=5 {
            assert_eq!(
                cache.observe(&k, at(n)),
                Observed::Repeat { count: n as i32 }
            );
        }
        let due = cache.due(at(10));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].count, due[0].last, due[0].first), (5, at(5), at(0)));
        assert_eq!(due[0].name, name);
        assert!(!due[0].finished);
        assert!(
            cache.due(at(11)).is_empty(),
            "nothing changed since the flush"
        );
    }

    #[test]
    fn an_event_never_repeated_is_never_patched_and_is_forgotten_once_finished() {
        let mut cache = Cache::new(16);
        cache.observe(&key("once"), at(0));
        assert!(cache.due(at(359)).is_empty());
        assert_eq!(
            cache.len(),
            1,
            "kept until six minutes after its observation"
        );
        assert!(cache.due(at(360)).is_empty(), "nothing to write");
        assert!(cache.is_empty(), "and forgotten");
    }

    #[test]
    fn a_finished_series_gets_its_final_count_written_and_a_later_repeat_is_a_new_event() {
        let mut cache = Cache::new(16);
        let k = key("repeated");
        cache.observe(&k, at(0));
        cache.observe(&k, at(1));
        let due = cache.due(at(400));
        assert_eq!(due.len(), 1);
        assert!(due[0].finished && due[0].count == 2);
        assert!(cache.is_empty());
        assert!(matches!(cache.observe(&k, at(401)), Observed::New { .. }));
    }

    #[test]
    fn isomorphism_is_by_object_type_reason_action_and_note_not_resource_version() {
        let mut cache = Cache::new(16);
        let event = Event::warning("Crash", "Repair", "n".into());
        cache.observe(&Key::new(&svc_ref(), &event), at(0));
        let mut newer = svc_ref();
        newer.resource_version = Some("8".into());
        assert_eq!(
            cache.observe(&Key::new(&newer, &event), at(1)),
            Observed::Repeat { count: 2 }
        );
        let mut other = svc_ref();
        other.uid = Some("uid-2".into());
        assert!(matches!(
            cache.observe(&Key::new(&other, &event), at(2)),
            Observed::New { .. }
        ));
        assert!(matches!(
            cache.observe(&key("other note"), at(2)),
            Observed::New { .. }
        ));
        let normal = Event::normal("Crash", "Repair", "n".into());
        assert!(matches!(
            cache.observe(&Key::new(&svc_ref(), &normal), at(2)),
            Observed::New { .. }
        ));
    }

    #[test]
    fn names_of_events_created_at_the_same_instant_differ() {
        let mut cache = Cache::new(16);
        let Observed::New { name: a } = cache.observe(&key("a"), at(0)) else {
            panic!()
        };
        let Observed::New { name: b } = cache.observe(&key("b"), at(0)) else {
            panic!()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn a_failed_patch_is_tried_again_at_the_next_flush_and_a_failed_create_forgotten() {
        let mut cache = Cache::new(16);
        let k = key("k");
        cache.observe(&k, at(0));
        cache.observe(&k, at(1));
        let due = cache.due(at(2));
        cache.unwritten(&due[0]);
        assert_eq!(cache.due(at(3)).len(), 1, "again");
        cache.forget(&k);
        assert!(matches!(cache.observe(&k, at(4)), Observed::New { .. }));
    }

    #[test]
    fn a_recreated_event_is_patched_under_its_new_name() {
        let mut cache = Cache::new(16);
        let k = key("k");
        let Observed::New { name } = cache.observe(&k, at(0)) else {
            panic!()
        };
        cache.renamed(&k, &name, "web.new".into());
        cache.observe(&k, at(1));
        assert_eq!(cache.due(at(2))[0].name, "web.new");
    }

    #[test]
    fn a_full_cache_lets_finished_then_written_entries_go_before_unwritten_counts() {
        let mut cache = Cache::new(8);
        // Two finished by the time of the insert, three written and clean, three counted
        // and not yet written.
        cache.observe(&key("finished-0"), at(0));
        cache.observe(&key("finished-1"), at(1));
        for i in 0..3 {
            cache.observe(&key(&format!("clean-{i}")), at(500 + i));
        }
        for i in 0..3 {
            let k = key(&format!("dirty-{i}"));
            cache.observe(&k, at(400 + i));
            cache.observe(&k, at(400 + i));
        }
        assert_eq!(cache.len(), 8);
        // Full: an eighth goes (one entry), the oldest finished.
        cache.observe(&key("new-0"), at(600));
        assert_eq!(cache.len(), 8);
        assert!(!cache.entries.contains_key(&key("finished-0")));
        assert!(cache.entries.contains_key(&key("finished-1")));
        cache.observe(&key("new-1"), at(601));
        assert!(!cache.entries.contains_key(&key("finished-1")));
        cache.observe(&key("new-2"), at(602));
        assert!(
            !cache.entries.contains_key(&key("clean-0")),
            "then the oldest written"
        );
        for i in 0..3 {
            assert!(cache.entries.contains_key(&key(&format!("dirty-{i}"))));
        }
    }

    #[test]
    fn the_cache_never_grows_past_its_bound() {
        let mut cache = Cache::new(64);
        for i in 0..1000 {
            cache.observe(&key(&i.to_string()), at(i));
            assert!(cache.len() <= 64);
        }
    }
}
