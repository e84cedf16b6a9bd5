//! The operator's Events on the local control plane: a pass's pod creations told in one
//! Event, and a repeated Event counted in memory and written once per flush.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config, Resource, ResourceExt};
use perennial::act::{Event, Recorder, Writes};
use serde_json::json;
use support::service::*;
use support::*;

/// Scheduling and starting a handful of pods on KWOK nodes, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The Events of `namespace` with reason `reason`.
async fn events_with_reason(api: &Api<KubeEvent>, reason: &str) -> Vec<KubeEvent> {
    api.list(&ListParams::default())
        .await
        .expect("list events.k8s.io/v1 Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The Event writes (create, patch) the operator's identity made in `namespace`.
fn event_writes(namespace: &str) -> (usize, usize) {
    let writes: Vec<String> = operator_writes(namespace)
        .into_iter()
        .filter(|w| w.split(' ').nth(1) == Some("events"))
        .collect();
    let count = |verb: &str| writes.iter().filter(|w| w.starts_with(verb)).count();
    (count("create "), count("patch "))
}

/// A client with the operator's own identity, so that its RBAC is what the test proves
/// enough, and the audit log tells its writes apart.
async fn operator_client() -> Client {
    let path = operator_kubeconfig();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}; start it with `make cluster`", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the operator's kubeconfig is valid");
    Client::try_from(config).expect("a client can be built")
}

#[tokio::test]
async fn the_pods_a_new_service_gets_are_told_in_one_event_that_names_each() {
    let ns = TestNamespace::new("events-pass").await;
    let _operator = Operator::with_crd(&ns).await;
    let api = create_service(&ns, &service("web", 5, "example/app:1", json!({}))).await;
    wait_available(&api, "web", 5, TIMEOUT).await;

    let pods: Api<Pod> = ns.api();
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    let events: Api<KubeEvent> = ns.api();
    let created: Vec<KubeEvent> = events_with_reason(&events, "SuccessfulCreate")
        .await
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ResilientService")
        })
        .collect();
    let notes: Vec<&str> = created.iter().filter_map(|e| e.note.as_deref()).collect();
    println!("SuccessfulCreate: {notes:?}");
    let [note] = notes.as_slice() else {
        panic!("one SuccessfulCreate Event for the 5 pods: {notes:?}")
    };
    assert!(
        note.starts_with("created 5 pods at revision web-"),
        "{note}"
    );
    for name in &names {
        assert!(note.contains(name.as_str()), "{name} in {note}");
    }
    let event = &created[0];
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(event.reporting_controller.as_deref(), Some("perennial"));
    // POD_NAME, else the controller's name.
    assert!(event.reporting_instance.is_some());
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert!(
        event.name_any().starts_with("web."),
        "named <regarding>.<hex nanos>: {}",
        event.name_any()
    );

    // Every Event the operator listed is one create; a repeat would be counted, not written
    // again, until a flush.
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let ours = listed
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("perennial"))
        .count();
    let (creates, patches) = wait_for("the Event creates in the audit log", TIMEOUT, || async {
        let (creates, patches) = event_writes(&ns.name);
        (creates >= ours)
            .then_some((creates, patches))
            .ok_or(format!("{creates} creates of {ours} Events"))
    })
    .await;
    let reasons: Vec<&str> = listed.iter().filter_map(|e| e.reason.as_deref()).collect();
    println!("Events {reasons:?}: {creates} creates, {patches} patches for 5 replicas");
    assert!(
        creates + patches <= 3,
        "a revision, the pods, perhaps a repeat: {creates} creates, {patches} patches"
    );
}

#[tokio::test]
async fn a_repeated_warning_is_one_event_whose_series_is_written_once_per_flush() {
    let ns = TestNamespace::new("events-series").await;
    let configs: Api<ConfigMap> = ns.api();
    let target = configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "target"}})).unwrap(),
        )
        .await
        .expect("create the object the Events are about");
    let regarding = target.object_ref(&());
    let recorder = Recorder::new(
        operator_client().await,
        Reporter {
            controller: "perennial".into(),
            instance: Some("events-test".into()),
        },
    );
    let warning = Event::warning(
        "BackOff",
        "Repair",
        "pod target-0 crashed: restarted".into(),
    );
    let events: Api<KubeEvent> = ns.api();
    let only = || async {
        let mut found = events_with_reason(&events, "BackOff").await;
        assert_eq!(found.len(), 1, "one Event: {found:?}");
        found.remove(0)
    };

    for _ in 0..5 {
        recorder.publish(&regarding, warning.clone()).await;
    }
    let event = only().await;
    assert_eq!(event.series, None, "repeats are not written at once");
    assert_eq!(
        event.note.as_deref(),
        Some("pod target-0 crashed: restarted")
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reporting_controller.as_deref(), Some("perennial"));
    assert_eq!(event.reporting_instance.as_deref(), Some("events-test"));
    let r = event.regarding.as_ref().expect("regarding");
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
        (Some("ConfigMap"), Some("target"), target.uid().as_deref())
    );
    let created_at = event.resource_version();
    assert_eq!(
        recorder.writes(),
        Writes {
            creates: 1,
            patches: 0,
            failures: 0
        }
    );

    recorder.flush().await;
    let event = only().await;
    assert_eq!(event.series.as_ref().map(|s| s.count), Some(5));
    let flushed_at = event.resource_version();
    assert_ne!(flushed_at, created_at, "the flush wrote the series");
    recorder.flush().await;
    assert_eq!(
        only().await.resource_version(),
        flushed_at,
        "nothing new, nothing written"
    );

    // On the timer: three more repeats, one write.
    let flusher = recorder.spawn_flusher(Duration::from_secs(1));
    for _ in 0..3 {
        recorder.publish(&regarding, warning.clone()).await;
    }
    let event = wait_for("series.count 8", TIMEOUT, || async {
        let event = only().await;
        let count = event.series.as_ref().map(|s| s.count);
        (count == Some(8))
            .then_some(event)
            .ok_or(format!("count {count:?}"))
    })
    .await;
    assert_ne!(event.resource_version(), flushed_at);
    // The list can show the patch before the flusher task has read the
    // response and counted it.
    let counted = wait_for("the recorder counts its patch", TIMEOUT, || async {
        let writes = recorder.writes();
        (writes.patches >= 2)
            .then_some(writes)
            .ok_or(format!("{writes:?}"))
    })
    .await;
    flusher.abort();
    assert_eq!(
        counted,
        Writes {
            creates: 1,
            patches: 2,
            failures: 0
        },
        "8 publishes, 3 writes"
    );
    // As the API server counted them.
    let writes = wait_for("the Event writes in the audit log", TIMEOUT, || async {
        let writes = event_writes(&ns.name);
        (writes.0 + writes.1 >= 3)
            .then_some(writes)
            .ok_or(format!("{writes:?}"))
    })
    .await;
    println!(
        "8 publishes of one warning: {} creates, {} patches",
        writes.0, writes.1
    );
    assert_eq!(writes, (1, 2));
}
