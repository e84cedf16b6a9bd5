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
