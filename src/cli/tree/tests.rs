use super::*;
use crate::cli::fixtures::{node_loss, service, NOW};
use serde_json::json;

#[test]
fn a_node_loss_shows_every_slot_with_its_pod_node_zone_state_and_last_failure() {
    let text = render(&node_loss(), NOW.parse().unwrap(), Style::PLAIN);
    let want = r#"web (ResilientService, namespace shop)
  Status:      Degraded NodeLost: slot 1 (pod web-1-b, node kwok-2): NodeLost: node kwok-2 lost
  Replicas:    3 desired · 3 current · 2 ready · 2 available · 3 updated
  Conditions:  Available ✔ True (MinimumReplicasAvailable) · Progressing ✔ True (RolloutComplete) · Degraded ✖ True (NodeLost) · RolledBack ✔ False (NoRollback)
  Rollout:     none: every replica runs web-d77cdb9a08
  Domains:     zone-a 1 · zone-c 1 (topology.kubernetes.io/zone ready per domain)

Revisions
├── #3  web-d77cdb9a08  stable, update  serving                                              app=web:3
├── #2  web-0beed098cc                  failed: CrashLoopBackOff: app exited 1 (4 restarts)  app=web:2
└── #1  web-382d6fd43a                  superseded                                           app=web:1
Slots
├── slot 0  web-0-a  Ready      web-d77cdb9a08  node kwok-1  zone zone-a  restarts 0/5  rung -
├── slot 1  web-1-c  Repairing  web-d77cdb9a08  node kwok-3  zone zone-b  restarts 1/5  rung Reschedule
│   ├── last failure NodeLost 42s ago: node kwok-2 stopped renewing its lease 41 s ago
│   ├── waiting for pod web-1-c to be Ready
│   ├── avoids node kwok-2 (NodeLost)
│   └── also pod web-1-b (web-d77cdb9a08, Terminating)
└── slot 2  web-2-a  Ready      web-d77cdb9a08  node kwok-5  zone zone-c  restarts 0/5  rung -
    └── last failure CrashLoopBackOff 20m0s ago, recovered 10m0s ago: app exited 1
"#;
    assert_eq!(text, want, "got:\n{text}");
}

#[test]
fn a_terminal_sees_states_in_colour_and_a_pipe_sees_none() {
    let coloured = render(&node_loss(), NOW.parse().unwrap(), Style::COLOUR);
    assert!(coloured.contains("\x1b[33mRepairing\x1b[0m"), "{coloured}");
    assert!(coloured.contains("\x1b[32mReady\x1b[0m"));
    let plain = render(&node_loss(), NOW.parse().unwrap(), Style::PLAIN);
    assert!(!plain.contains('\x1b'));
}

#[test]
fn a_canary_rollout_shows_its_step_and_what_it_waits_for() {
    let mut snap = node_loss();
    let svc = &mut snap.service;
    svc.spec.update.canary =
        serde_json::from_value(json!({"steps": [{"replicas": 1}, {"pause": {}}]})).unwrap();
    let status = svc.status.as_mut().unwrap();
    status.update_revision = Some("web-new".into());
    status.rollout = serde_json::from_value(json!({
        "revision": "web-new", "startedAt": "2026-01-01T11:58:00Z", "lastProgressAt": "2026-01-01T11:59:00Z",
        "progress": "1/1", "canaryStep": 1, "pausedSince": "2026-01-01T11:59:00Z",
        "waitingFor": "a promotion: kubectl perennial promote web"
    }))
    .unwrap();
    let text = render(&snap, NOW.parse().unwrap(), Style::PLAIN);
    let line = text.lines().find(|l| l.starts_with("  Rollout:")).unwrap();
    assert_eq!(
        line,
        "  Rollout:     web-d77cdb9a08 → web-new since 2m0s · new/available 1/1 · canary step 2 of 2 (pause until promoted) · waiting for a promotion: kubectl perennial promote web"
    );
}

#[test]
fn a_service_the_operator_has_not_reported_on_says_so_and_shows_no_slot() {
    let snap =
        crate::cli::Snapshot::new(service("web:1"), vec![], vec![], Default::default(), vec![]);
    let text = render(&snap, NOW.parse().unwrap(), Style::PLAIN);
    assert!(
        text.contains("Progressing the operator has not reported on it yet"),
        "{text}"
    );
    assert!(
        text.ends_with("Revisions\n└── none recorded yet\nSlots\n└── none reported yet\n"),
        "{text}"
    );
}
