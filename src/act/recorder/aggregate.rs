//! What act reports, and how the events of one pass become one Event per kind: the note
//! says how many and which, within the note limit of events.k8s.io/v1.

use std::collections::HashMap;

use kube::runtime::events::EventType;

use super::NOTE_LIMIT;

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
pub(super) fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
