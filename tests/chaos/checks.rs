//! The checks themselves, on states made up here: no cluster needed.

use super::*;

fn made_up_service(name: &str, spec: Value, status: Value) -> ResilientService {
    let mut body = json!({"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}});
    merge(&mut body, spec);
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name, "generation": 1},
        "spec": body,
        "status": status,
    }))
    .expect("a valid ResilientService")
}

fn made_up_pod(name: &str, slot: i32, ready: bool, extra: Value) -> Pod {
    let service = name.split('-').next().unwrap_or_default();
    let mut pod = json!({
        "metadata": {"name": name, "uid": name, "labels": {LABEL_SERVICE: service, LABEL_SLOT: slot.to_string()}},
        "spec": {"containers": [], "nodeName": "node-1"},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}
        ]}
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).expect("a valid pod")
}

#[test]
fn the_monitor_flags_every_kind_of_breach_once_and_spares_involuntary_faults() {
    let mut m = Monitor::default();
    m.pods.listed = true;
    m.services.listed = true;
    m.claims.listed = true;
    let rolling = json!({"currentRevision": "web-a", "updateRevision": "web-b"});
    let web = json!({"replicas": 3, "update": {"maxSurge": 1, "maxUnavailable": 0}});
    m.services.now.insert(
        "web".into(),
        made_up_service("web", web.clone(), rolling.clone()),
    );
    m.services.now.insert(
        "db".into(),
        made_up_service("db", stateful(json!({"replicas": 2})), json!({})),
    );
    let put = |m: &mut Monitor, pod: Pod| {
        m.pods.now.insert(pod.name_any(), pod);
    };
    let kinds = |m: &Monitor| m.violations.iter().map(|v| v.kind).collect::<Vec<_>>();
    for slot in 0..3 {
        put(
            &mut m,
            made_up_pod(&format!("web-{slot}-a"), slot, true, json!({})),
        );
    }
    for slot in 0..2 {
        put(
            &mut m,
            made_up_pod(&format!("db-{slot}-a"), slot, true, json!({})),
        );
    }
    m.check();
    assert!(m.violations.is_empty(), "{:?}", m.violations);

    // A slot down during a rollout with maxUnavailable 0: below the floor, once.
    put(&mut m, made_up_pod("web-2-a", 2, false, json!({})));
    m.check();
    m.check();
    assert_eq!(kinds(&m), ["availability-floor"]);
    put(&mut m, made_up_pod("web-2-a", 2, true, json!({})));
    m.check();
    assert!(m.violations[0].until.is_some(), "the episode ended");

    // The same after a pod kill: excluded until the service is whole again.
    m.involuntary("web", Some("web-1-a"));
    put(&mut m, made_up_pod("web-1-a", 1, false, json!({})));
    m.check();
    put(&mut m, made_up_pod("web-1-a", 1, true, json!({})));
    m.check();
    assert!(m.disturbed.is_empty() && m.violations.len() == 1);

    // A rollout that begins below the floor is held to what it has.
    let api = json!({"replicas": 3, "update": {"maxSurge": 1, "maxUnavailable": 0}});
    m.services
        .now
        .insert("api".into(), made_up_service("api", api, rolling.clone()));
    for (slot, up) in [(0, true), (1, false), (2, true)] {
        put(
            &mut m,
            made_up_pod(&format!("api-{slot}-a"), slot, up, json!({})),
        );
    }
    m.check();
    assert_eq!(m.violations.len(), 1, "{:?}", m.violations);
    put(&mut m, made_up_pod("api-2-a", 2, false, json!({})));
    m.check();
    assert_eq!(kinds(&m), ["availability-floor", "availability-floor"]);
    m.services.now.remove("api");
    m.check();

    // Five live pods for three replicas and maxSurge 1; a terminating one does not count.
    put(&mut m, made_up_pod("web-0-b", 0, false, json!({})));
    put(&mut m, made_up_pod("web-1-b", 1, false, json!({})));
    m.check();
    assert_eq!(
        kinds(&m),
        ["availability-floor", "availability-floor", "surge-ceiling"]
    );
    let leaving = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
    put(&mut m, made_up_pod("web-1-b", 1, false, leaving.clone()));
    m.check();
    assert!(m.violations[2].until.is_some());

    // A stateful slot: an ended pod beside its replacement is fine, a terminating one not.
    let failed = json!({"status": {"phase": "Failed"}});
    put(&mut m, made_up_pod("db-0-a", 0, false, failed));
    put(&mut m, made_up_pod("db-0-b", 0, false, json!({})));
    m.check();
    assert_eq!(m.violations.len(), 3);
    put(&mut m, made_up_pod("db-1-a", 1, false, leaving.clone()));
    put(&mut m, made_up_pod("db-1-b", 1, false, json!({})));
    m.check();
    assert_eq!(kinds(&m)[3], "stateful-slot-shared");

    // A claim deleted while its service exists: a breach under Retain; under Recreate, a
    // rebuild when its volume's node is lost, a breach when the node never was.
    let claim = |name: &str, service: &str, volume: &str| -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "uid": name, "labels": {LABEL_SERVICE: service, LABEL_SLOT: "0"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {"volumeName": volume}
        }))
        .expect("a valid claim")
    };
    let deleted = |m: &mut Monitor, c: PersistentVolumeClaim| {
        m.apply(Seen::Claim(Box::new(watcher::Event::Delete(c))));
    };
    deleted(&mut m, claim("data-db-0", "db", "node-1-pv-0"));
    assert_eq!(kinds(&m)[4], "claim-deleted");
    let recreate =
        stateful(json!({"replicas": 2, "repair": {"storage": {"onVolumeLost": "Recreate"}}}));
    m.services
        .now
        .insert("kv".into(), made_up_service("kv", recreate, json!({})));
    m.node_lost("node-2");
    deleted(&mut m, claim("data-kv-0", "kv", "node-2-pv-0"));
    deleted(&mut m, claim("data-kv-1", "kv", "node-3-pv-0"));
    m.judge_rebuilds();
    assert_eq!(m.rebuilt.len(), 1, "{:?}", m.rebuilt);
    assert_eq!(
        kinds(&m),
        [
            "availability-floor",
            "availability-floor",
            "surge-ceiling",
            "stateful-slot-shared",
            "claim-deleted",
            "claim-deleted"
        ]
    );
}

#[test]
fn the_runtime_check_flags_two_pods_running_on_one_claim_and_reads_containerds_words() {
    let line = |topic: &str, body: &str| {
        format!("2026-12-06 02:28:42.001732486 +0000 UTC k8s.io {topic} {body}")
    };
    let start = line("/tasks/start", r#"{"container_id":"c1","pid":22356}"#);
    assert!(matches!(task_event(&start), Some(TaskEvent::Start(id)) if id == "c1"));
    let exit = line(
        "/tasks/exit",
        r#"{"container_id":"c1","id":"c1","pid":22356,"exit_status":137}"#,
    );
    assert!(matches!(task_event(&exit), Some(TaskEvent::End(id)) if id == "c1"));
    let exec_exit = line(
        "/tasks/exit",
        r#"{"container_id":"c1","id":"probe-exec","pid":9}"#,
    );
    assert!(
        task_event(&exec_exit).is_none(),
        "an exec's end is not the container's"
    );
    let other = r#"2026-12-06 02:28:42.0 +0000 UTC moby /tasks/start {"container_id":"x"}"#;
    assert!(task_event(other).is_none());
    assert!(task_event(&line("/snapshot/prepare", r#"{"key":"c1"}"#)).is_none());

    let info = |kind: &str, ns: &str, pod: &str, volume: &str| {
        json!({
            "Labels": {
                "io.cri-containerd.kind": kind, "io.kubernetes.pod.namespace": ns,
                "io.kubernetes.pod.name": pod, "io.kubernetes.pod.uid": format!("uid-{pod}")
            },
            "Spec": {"mounts": [
                {"destination": "/data", "source": format!("/k/pods/uid-{pod}/volumes/kubernetes.io~local-volume/{volume}")},
                {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "source": format!("/k/pods/uid-{pod}/volumes/kubernetes.io~projected/token")}
            ]}
        })
    };
    let a = running_of(&info("container", "soak", "db-0-a", "n0-pv-1"), "soak").expect("ours");
    assert_eq!(a.volumes, ["n0-pv-1"]);
    assert!(running_of(&info("sandbox", "soak", "db-0-a", "n0-pv-1"), "soak").is_none());
    assert!(running_of(&info("container", "other", "db-0-a", "n0-pv-1"), "soak").is_none());
    let b = running_of(&info("container", "soak", "db-0-b", "n0-pv-1"), "soak").expect("ours");

    let mut c = Containers::default();
    c.apply("n0", Runtime::Listed(vec![("a1".into(), a.clone())]));
    // The same pod's second container on the claim is the same pod.
    c.apply("n0", Runtime::Started("a2".into(), a.clone()));
    assert!(c.violations.is_empty());
    c.apply("n0", Runtime::Started("b1".into(), b.clone()));
    c.apply("n0", Runtime::Ended("a2".into()));
    assert_eq!(c.violations.len(), 1, "one episode while it lasts");
    assert_eq!(c.violations[0].kind, "claim-run-twice");
    assert!(
        c.violations[0].details.contains("db-0-a") && c.violations[0].details.contains("db-0-b")
    );
    assert!(c.violations[0].until.is_none());
    c.apply("n0", Runtime::Ended("a1".into()));
    assert!(
        c.violations[0].until.is_some(),
        "the episode ended with the old container"
    );
    // A listing replaces what the node had: a container gone while nobody listened is gone.
    c.apply("n0", Runtime::Listed(vec![("b1".into(), b)]));
    assert_eq!((c.starts, c.ends, c.listings), (2, 2, 2));
    assert_eq!(c.most_on_one_claim, 2);
    assert_eq!(c.violations.len(), 1);
}
