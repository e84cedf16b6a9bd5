//! The chaos soak: twenty ResilientServices (stateless and stateful, canaries, partitions,
//! rollouts in flight) under a seeded random schedule of faults, with the operator's
//! invariants checked at every watch event, then every service awaited back to Available.
//!
//! `make chaos` runs it for ten minutes; `make test` runs it for CHAOS_SECONDS (default 90)
//! of faults. CHAOS_SEED replays a schedule: the seed is printed first, and the same seed
//! gives the same faults at the same offsets against the same slots, services and nodes.
//!
//! Faults: pod kills; rollouts of a good template and of a bad one (the pod label
//! `chaos.perennial.dev/mode`: crash-loop, oom, fail or never-ready); node loss and return
//! (`e2e/cluster/fault node-lost` / `node-back`); SIGKILL of the leading (or the standby)
//! operator process of the two that run with leader election; API server and controller
//! manager restarts.
//!
//! Invariants, checked on every pod, service and claim event:
//! - surge ceiling: never more live pods (neither terminating nor ended) than replicas +
//!   maxSurge; replicas alone for a stateful or Recreate service, whose slots are replaced
//!   in place;
//! - stateful slot: never two pods of one stateful slot that may run at once. A pod may
//!   run unless it has ended (Failed or Succeeded): a terminating pod runs until its kubelet
//!   confirms, and a pod on a lost node runs as far as anyone knows, so both count. Only
//!   a deletion removes a pod from the count, which for a lost node means a force-delete
//!   after fencing: a replacement next to a pod on a lost node that was not yet deleted is
//!   exactly the split brain a ReadWriteOnce slot must never see;
//! - availability floor: while a voluntary rollout is in flight (from the template change
//!   until the status reports it complete; a rolled-back or stopped revision stays in
//!   flight), at least replicas - maxUnavailable slots have a Ready pod (at least one down
//!   at a time for stateful slots or maxSurge 0). Ready is looser than the operator's
//!   "available" (minReadySeconds), so a breach seen here is a breach. A rollout that
//!   begins below the floor (after an earlier failure) is held to the most Ready slots it
//!   has had since, up to the floor: the operator cannot conjure availability, but must
//!   never spend what it has. Excluded, because an involuntary fault legitimately lowers
//!   availability: a service, from the moment a pod of it is killed or a node carrying one
//!   of its pods is lost, until no pod such a fault touched (the killed pod, any pod that
//!   was on a node while it was lost) is still leaving, unready or on a lost node, and it
//!   has as many Ready slots as when the fault hit. Recreate services are excluded:
//!   Recreate stops every pod by design. Operator kills and control-plane restarts are not
//!   excluded: they take no pod away;
//! - claims: a claim deleted while its service exists is a breach unless the service's
//!   spec.repair.storage.onVolumeLost is Recreate and the claim's volume was lost with its
//!   node (or the slot took the RebuildStorage rung of its ladder). Nothing scales down and
//!   no service is deleted during the soak, so no retention policy allows a deletion;
//! - convergence: once the faults stop (every lost node back; a bad template under
//!   rollback: Manual, or a rollout stopped for a person, replaced by a good one as a person
//!   would; a bad template under rollback: Automatic left for the operator to roll back),
//!   every service has Available=True and readyReplicas == replicas within
//!   CONVERGENCE_BOUND;
//! - no operator panic ("panicked at" in any operator process's output), no operator
//!   process that stops on its own except a leader that lost its lease (the API server
//!   gone past the renew deadline: it exits by design and is started again), and no log
//!   storm (see STORM_LINES_PER_WINDOW and HOT_LOOP_RECONCILES_PER_WINDOW).
//!
//! The soak restarts the API server and the controller manager, so nothing may run beside
//! it: cargo runs test binaries one after another, and the other test of this binary only
//! checks the checks, on made-up states. A control-plane process that stops on its own
//! (kube-scheduler exits when it finds its cache corrupted, which an API server restart can
//! bring about) is started again, as a kubelet would, and reported. The soak's pods run on
//! fake nodes of its own, tainted so that nothing else lands there; node faults touch only
//! those, every lost node is brought back even when the soak fails, and the nodes, their
//! volumes and the namespace are deleted at the end.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use perennial::api::{
    ResilientService, RollbackPolicy, UpdateStrategy, VolumeLostPolicy, LABEL_SERVICE, LABEL_SLOT,
};
use serde_json::{json, Value};
use support::*;

/// Seconds of faults when CHAOS_SECONDS is not set: short enough for `make test`.
const DEFAULT_SECONDS: u64 = 90;
/// Creating the nodes, volumes and twenty services and seeing them all Available.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Every service Available again after the faults stop: a lost node's pods come back
/// within seconds of node-back, and a replaced bad template is one rollout of at most five
/// pods, each Ready about a second after it is made; the rest is room for a loaded machine.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(180);
const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";
const CHAOS_MODES: [&str; 4] = ["crash-loop", "oom", "fail", "never-ready"];
/// The node label that puts the soak's pods on its own nodes and nowhere else.
const GROUP_LABEL: &str = "perennial.dev/chaos-group";
const TEST_NODE_TAINT: &str = "perennial.dev/test-node";
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
const NODE_PREFIX: &str = "chaos";
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
const NODES: usize = 6;
/// Local volumes per node: the first claims, and the claims rebuilt after node losses
/// (a released volume is not reused: its reclaim policy is Retain).
const VOLUMES_PER_NODE: usize = 12;
/// Nodes lost at once, at most: enough for the storm guard to stay quiet (the cluster has
/// twice as many nodes again) and for one-per-node services to find a node.
const MAX_LOST_NODES: usize = 2;
/// Seconds a lost node stays lost: the operator acts on a loss 23 s after the last
/// heartbeat at the earliest (nodeLostAfterSeconds 10, floored at 12, plus 11 to settle).
const NODE_LOST_SECONDS: (f64, f64) = (25.0, 50.0);
/// How long KWOK may take to heartbeat a node again after node-back.
const NODE_BACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds between two control-plane restarts, at least.
const CONTROL_PLANE_SPACING: f64 = 30.0;
/// Seconds between two faults.
const GAP_SECONDS: (f64, f64) = (2.0, 7.0);
/// Log storm: lines at INFO or above from one operator process in any ten one-second
/// windows. Every such line is an "acting" line (at least one API request follows), a
/// failed reconcile (after a request) or one of a handful of lifecycle lines, and the
/// operator's client is rate limited to 50 requests/s with a burst of 100: ten seconds
/// allow at most 600 requests, so more than 700 lines cannot be explained by work done.
const STORM_LINES_PER_WINDOW: usize = 700;
/// A hot loop: one service reconciled more than 200 times in ten seconds (20/s). A
/// reconcile follows a change to one of the service's few objects or a timer; a service of
/// at most five pods, each changing state a handful of times per replacement, never needs
/// that many, even in a rollout under faults.
const HOT_LOOP_RECONCILES_PER_WINDOW: usize = 200;
const STORM_WINDOW_TICKS: usize = 10;
/// How long after its node came back a claim may still be rebuilt for the loss: the
/// operator's caches and the node's Lease and Ready condition catch up within seconds.
const REBUILD_GRACE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// A seeded random source of our own: splitmix64 (Steele, Lea and Flood, 2014)

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (the modulo bias is below 2^-40 for the small n used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [lo, hi).
    fn between(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // A seed short enough to type back.
    Rng(nanos ^ u64::from(std::process::id())).next() % 1_000_000_000
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a whole number")),
    )
}

// ------------------------------------------------------------------------------------------
// The services

struct Profile {
    name: &'static str,
    replicas: i32,
    spec: Value,
}

fn stateful(extra: Value) -> Value {
    let mut spec = json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }]});
    merge(&mut spec, extra);
    spec
}

/// Twenty services covering the update and repair policies: 13 stateless, 7 stateful.
fn profiles() -> Vec<Profile> {
    let p = |name, replicas, spec| Profile {
        name,
        replicas,
        spec,
    };
    vec![
        p(
            "web-a",
            3,
            json!({"update": {"maxSurge": 1, "maxUnavailable": 0, "minReadySeconds": 1}}),
        ),
        p(
            "web-b",
            4,
            json!({"update": {"maxSurge": 2, "maxUnavailable": 1}}),
        ),
        p(
            "web-c",
            4,
            json!({"update": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
        ),
        p(
            "web-d",
            3,
            json!({"update": {"maxSurge": 0, "maxUnavailable": 1}}),
        ),
        p(
            "wide",
            5,
            json!({"update": {"maxSurge": 2, "maxUnavailable": 2, "minReadySeconds": 1}}),
        ),
        p(
            "spread",
            3,
            json!({"redundancy": {"onePerNode": true, "minDomains": 3, "whenUnsatisfiable": "DoNotSchedule"}}),
        ),
        p(
            "quorum",
            3,
            json!({"disruptionBudget": {"quorum": true}, "update": {"maxSurge": 1}}),
        ),
        p("ordered", 3, json!({"podManagementPolicy": "OrderedReady"})),
        p("partition", 3, json!({"update": {"partition": 1}})),
        p("recreate", 2, json!({"update": {"strategy": "Recreate"}})),
        p(
            "canary",
            4,
            json!({"update": {"canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 5}}, {"replicas": "50%"}, {"pause": {"seconds": 5}}
            ]}}}),
        ),
        p(
            "canary-manual",
            3,
            json!({"update": {"rollback": "Manual", "canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 8}}
            ]}}}),
        ),
        p("manual", 3, json!({"update": {"rollback": "Manual"}})),
        p(
            "db-wait",
            3,
            stateful(json!({"redundancy": {"onePerNode": true}})),
        ),
        p(
            "db-fence",
            3,
            stateful(json!({"repair": {"fencing": "TaintOutOfService"}})),
        ),
        p(
            "db-rebuild",
            3,
            stateful(json!({"redundancy": {"onePerNode": true}, "repair": {
                "fencing": "TaintOutOfService", "storage": {"onVolumeLost": "Recreate"}
            }})),
        ),
        p(
            "db-rebuild-wait",
            2,
            stateful(json!({"repair": {"storage": {"onVolumeLost": "Recreate"}}})),
        ),
        p(
            "db-quorum",
            3,
            stateful(json!({"disruptionBudget": {"quorum": true}, "repair": {
                "fencing": "TaintOutOfService", "storage": {"onVolumeLost": "Recreate"}
            }})),
        ),
        p(
            "db-manual",
            2,
            stateful(json!({"update": {"rollback": "Manual"}})),
        ),
        p(
            "db-canary",
            3,
            stateful(json!({"update": {"canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 5}}
            ]}}})),
        ),
    ]
}

/// Merges `extra` into `base`, objects key by key, anything else replaced.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// The service of `profile`, its pods placed on the soak's own nodes. Short deadlines, so
/// that a bad rollout is judged (and rolled back) within the soak: a crash loop after two
/// restarts, a rollout without progress after 30 s, a silent node after 10 s.
fn service(profile: &Profile, group: &str) -> ResilientService {
    let mut spec = json!({
        "replicas": profile.replicas,
        "update": {"progressDeadlineSeconds": 30},
        "supervision": {"maxRestarts": 2, "periodSeconds": 60},
        "repair": {"nodeLostAfterSeconds": 10},
        "template": {
            "metadata": {"labels": {"app": profile.name}},
            "spec": {
                "containers": [{"name": "app", "image": format!("example/{}:1", profile.name)}],
                "nodeSelector": {GROUP_LABEL: group},
                "tolerations": [{
                    "key": TEST_NODE_TAINT, "operator": "Equal", "value": NODE_PREFIX,
                    "effect": "NoSchedule"
                }]
            }
        }
    });
    merge(&mut spec, profile.spec.clone());
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": profile.name},
        "spec": spec,
    }))
    .expect("a valid ResilientService")
}

/// Back to Available with every replica Ready, at the current generation.
fn converged(svc: &ResilientService) -> Result<(), String> {
    let s = svc.status.clone().unwrap_or_default();
    let available = s
        .conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    if s.observed_generation == svc.metadata.generation
        && available
        && s.ready_replicas == svc.spec.replicas
    {
        return Ok(());
    }
    let waiting: Vec<String> = s
        .replica_statuses
        .iter()
        .filter_map(|r| Some(format!("slot {}: {}", r.ordinal, r.waiting_for.clone()?)))
        .collect();
    Err(format!(
        "generation {:?} observed {:?}, Available={available}, ready {}/{}, reason {:?}, rollout {:?}, {waiting:?}",
        svc.metadata.generation,
        s.observed_generation,
        s.ready_replicas,
        svc.spec.replicas,
        s.reason,
        s.rollout.as_ref().and_then(|r| r.waiting_for.clone()),
    ))
}

// ------------------------------------------------------------------------------------------
// The schedule: every fault and its offset, drawn from the seed before anything runs

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    PodKill,
    Rollout,
    BadRollout,
    NodeLost,
    NodeBack,
    OperatorKill,
    ApiServerRestart,
    ControllerManagerRestart,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::PodKill => "pod-kill",
            Kind::Rollout => "rollout",
            Kind::BadRollout => "bad-rollout",
            Kind::NodeLost => "node-lost",
            Kind::NodeBack => "node-back",
            Kind::OperatorKill => "operator-kill",
            Kind::ApiServerRestart => "apiserver-restart",
            Kind::ControllerManagerRestart => "controller-manager-restart",
        }
    }
}

/// Kinds drawn after every kind has had its turn, with their weights.
const WEIGHTS: [(Kind, usize); 7] = [
    (Kind::PodKill, 6),
    (Kind::Rollout, 4),
    (Kind::BadRollout, 3),
    (Kind::NodeLost, 2),
    (Kind::OperatorKill, 2),
    (Kind::ApiServerRestart, 1),
    (Kind::ControllerManagerRestart, 1),
];

#[derive(Clone, Debug)]
enum Fault {
    PodKill { service: usize, slot: i32 },
    Rollout { service: usize },
    BadRollout { service: usize, mode: &'static str },
    NodeLost { node: usize },
    NodeBack { node: usize },
    OperatorKill { leader: bool },
    ApiServerRestart,
    ControllerManagerRestart,
}

impl Fault {
    fn kind(&self) -> Kind {
        match self {
            Fault::PodKill { .. } => Kind::PodKill,
            Fault::Rollout { .. } => Kind::Rollout,
            Fault::BadRollout { .. } => Kind::BadRollout,
            Fault::NodeLost { .. } => Kind::NodeLost,
            Fault::NodeBack { .. } => Kind::NodeBack,
            Fault::OperatorKill { .. } => Kind::OperatorKill,
            Fault::ApiServerRestart => Kind::ApiServerRestart,
            Fault::ControllerManagerRestart => Kind::ControllerManagerRestart,
        }
    }

    fn describe(&self, profiles: &[Profile]) -> String {
        match self {
            Fault::PodKill { service, slot } => {
                format!("pod-kill {} slot {slot}", profiles[*service].name)
            }
            Fault::Rollout { service } => format!("rollout {}", profiles[*service].name),
            Fault::BadRollout { service, mode } => {
                format!("bad-rollout {} ({mode})", profiles[*service].name)
            }
            Fault::NodeLost { node } => format!("node-lost node #{node}"),
            Fault::NodeBack { node } => format!("node-back node #{node}"),
            Fault::OperatorKill { leader: true } => "operator-kill (the leader)".into(),
            Fault::OperatorKill { leader: false } => "operator-kill (the standby)".into(),
            Fault::ApiServerRestart => "apiserver-restart".into(),
            Fault::ControllerManagerRestart => "controller-manager-restart".into(),
        }
    }
}

struct Step {
    at: f64,
    fault: Fault,
}

/// The faults of a `seconds` long phase. Every kind comes once first, in a random order
/// (so that even a short run sees each), then kinds are drawn by weight among those that
/// may come now: at most MAX_LOST_NODES lost at once, control-plane restarts at least
/// CONTROL_PLANE_SPACING apart. A first turn that may not come yet waits for its time.
fn schedule(rng: &mut Rng, seconds: f64, profiles: &[Profile]) -> Vec<Step> {
    let mut deck: Vec<Kind> = WEIGHTS.iter().map(|(k, _)| *k).collect();
    for i in (1..deck.len()).rev() {
        deck.swap(i, rng.below(i + 1));
    }
    let mut waiting: Vec<Kind> = Vec::new();
    let mut steps = Vec::new();
    let mut lost: Vec<(usize, f64)> = Vec::new();
    let mut last_control_plane = f64::NEG_INFINITY;
    let mut t = rng.between(GAP_SECONDS);
    while t < seconds - 3.0 {
        lost.retain(|&(node, back)| {
            let due = back <= t;
            if due {
                steps.push(Step {
                    at: back,
                    fault: Fault::NodeBack { node },
                });
            }
            !due
        });
        let allowed = |k: Kind| match k {
            Kind::NodeLost => lost.len() < MAX_LOST_NODES,
            Kind::ApiServerRestart | Kind::ControllerManagerRestart => {
                t - last_control_plane >= CONTROL_PLANE_SPACING
            }
            _ => true,
        };
        let kind = if let Some(i) = waiting.iter().position(|k| allowed(*k)) {
            waiting.remove(i)
        } else {
            loop {
                match deck.pop() {
                    Some(k) if allowed(k) => break k,
                    Some(k) => waiting.push(k),
                    None => {
                        let open: Vec<(Kind, usize)> = WEIGHTS
                            .iter()
                            .copied()
                            .filter(|(k, _)| allowed(*k))
                            .collect();
                        let mut x = rng.below(open.iter().map(|(_, w)| w).sum());
                        break open
                            .iter()
                            .find(|(_, w)| {
                                let hit = x < *w;
                                x = x.saturating_sub(*w);
                                hit
                            })
                            .map_or(Kind::PodKill, |(k, _)| *k);
                    }
                }
            }
        };
        let service = rng.below(profiles.len());
        let fault = match kind {
            Kind::PodKill => Fault::PodKill {
                service,
                slot: rng.below(profiles[service].replicas as usize) as i32,
            },
            Kind::Rollout => Fault::Rollout { service },
            Kind::BadRollout => Fault::BadRollout {
                service,
                mode: CHAOS_MODES[rng.below(CHAOS_MODES.len())],
            },
            Kind::NodeLost => {
                let free: Vec<usize> = (0..NODES)
                    .filter(|n| lost.iter().all(|(l, _)| l != n))
                    .collect();
                let node = free[rng.below(free.len())];
                lost.push((node, t + rng.between(NODE_LOST_SECONDS)));
                Fault::NodeLost { node }
            }
            Kind::OperatorKill => Fault::OperatorKill {
                leader: rng.below(10) < 7,
            },
            Kind::ApiServerRestart => {
                last_control_plane = t;
                Fault::ApiServerRestart
            }
            Kind::ControllerManagerRestart => {
                last_control_plane = t;
                Fault::ControllerManagerRestart
            }
            Kind::NodeBack => unreachable!("node-back is scheduled with its loss"),
        };
        steps.push(Step { at: t, fault });
        t += rng.between(GAP_SECONDS);
    }
    // Nodes still lost when the phase ends come back with the other reverts.
    for (node, back) in lost {
        if back < seconds {
            steps.push(Step {
                at: back,
                fault: Fault::NodeBack { node },
            });
        }
    }
    steps.sort_by(|a, b| a.at.total_cmp(&b.at));
    steps
}

// ------------------------------------------------------------------------------------------
// Pods as the watch sees them

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn slot_of(pod: &Pod) -> Option<i32> {
    label(pod, LABEL_SLOT)?.parse().ok()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts toward the surge ceiling.
fn live(pod: &Pod) -> bool {
    !terminating(pod) && !ended(pod)
}

fn describe_pods(pods: &[&Pod], lost: &BTreeSet<String>) -> String {
    pods.iter()
        .map(|p| {
            let node = node_of(p).unwrap_or("-");
            format!(
                "{}[{}{}{}@{node}{}]",
                p.name_any(),
                if ready(p) { "R" } else { "-" },
                if terminating(p) { "T" } else { "" },
                if ended(p) { "E" } else { "" },
                if lost.contains(node) { " lost" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A count or a percentage of `total`, rounded as Kubernetes rounds maxSurge (up) and
/// maxUnavailable (down).
fn count_of(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = total.max(0) * pct.clamp(0, 100);
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
    }
}

/// What the spec promises, read from the service as the watch last saw it.
struct Shape {
    replicas: i32,
    stateful: bool,
    recreate: bool,
    ceiling: i32,
    floor: i32,
}

impl Shape {
    fn of(svc: &ResilientService) -> Self {
        let spec = &svc.spec;
        let replicas = spec.replicas.max(0);
        let stateful = !spec.volume_claim_templates.is_empty();
        let recreate = spec.update.strategy == UpdateStrategy::Recreate;
        let surge = if stateful || recreate {
            0
        } else {
            count_of(&spec.update.max_surge, replicas, true)
        };
        let mut unavailable = count_of(&spec.update.max_unavailable, replicas, false);
        if stateful || surge == 0 {
            unavailable = unavailable.max(1);
        }
        Shape {
            replicas,
            stateful,
            recreate,
            ceiling: replicas + surge,
            floor: replicas - unavailable,
        }
    }
}

fn status_rolling(svc: &ResilientService) -> bool {
    let s = svc.status.clone().unwrap_or_default();
    s.rollout.is_some() || s.update_revision != s.current_revision
}

fn settled(svc: &ResilientService, generation: i64) -> bool {
    let s = svc.status.clone().unwrap_or_default();
    s.observed_generation.is_some_and(|g| g >= generation) && !status_rolling(svc)
}

// ------------------------------------------------------------------------------------------
// The monitor: the namespace's pods, services and claims, and every invariant at every event

#[derive(Clone, Debug)]
struct Violation {
    at: f64,
    until: Option<f64>,
    kind: &'static str,
    subject: String,
    details: String,
}

/// An involuntary fault that hit a service: the floor is not checked until it has as many
/// Ready slots again as it had then (`level`) and no pod on a lost node.
struct Disturbance {
    since: f64,
    level: usize,
}

/// A claim deleted under onVolumeLost: Recreate whose node was not lost, to be explained.
struct Deletion {
    at: f64,
    service: String,
    slot: Option<i32>,
    what: String,
}

enum Seen {
    Pod(Box<watcher::Event<Pod>>),
    Service(Box<watcher::Event<ResilientService>>),
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    Error(String),
}

/// The objects one watch reports, by key. A relist (the watch restarted) is swapped in
/// whole once complete; until then the last complete view stands.
struct Listed<K> {
    now: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    listed: bool,
}

impl<K> Default for Listed<K> {
    fn default() -> Self {
        Self {
            now: BTreeMap::new(),
            relist: None,
            listed: false,
        }
    }
}

impl<K: Clone> Listed<K> {
    /// Applies `event`; returns what left: a deleted object, or what a relist no longer
    /// has (deleted while the watch was down).
    fn apply(&mut self, event: watcher::Event<K>, key: impl Fn(&K) -> String) -> Vec<K> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&o), o);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let gone = self
                    .now
                    .iter()
                    .filter(|(k, _)| !fresh.contains_key(*k))
                    .map(|(_, o)| o.clone())
                    .collect();
                self.now = fresh;
                self.listed = true;
                gone
            }
            watcher::Event::Apply(o) => {
                self.now.insert(key(&o), o);
                Vec::new()
            }
            watcher::Event::Delete(o) => {
                self.now.remove(&key(&o));
                vec![o]
            }
        }
    }
}

struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

/// The namespace's pods, services and claims as the watches report them, and the verdicts.
#[derive(Default)]
struct Monitor {
    clock: Clock,
    /// Prints each breach as it opens (the soak; not the checks of the checks).
    verbose: bool,
    pods: Listed<Pod>,
    services: Listed<ResilientService>,
    /// By uid: a claim made again under its name is another claim.
    claims: Listed<PersistentVolumeClaim>,
    claims_deleted: BTreeSet<String>,
    lost_nodes: BTreeSet<String>,
    /// When each node lost during the soak came back.
    back_at: BTreeMap<String, f64>,
    /// (service, slot, time) of every RebuildStorage rung the ledgers showed.
    rungs: Vec<(String, i32, f64)>,
    unexplained: Vec<Deletion>,
    disturbed: BTreeMap<String, Disturbance>,
    /// Uids of pods an involuntary fault touched: killed, or on a node while it was lost.
    touched: BTreeSet<String>,
    /// Per service whose floor is being checked: the most Ready slots seen since.
    floor_base: BTreeMap<String, usize>,
    /// Template changes made by the soak, by service: the generation they made.
    voluntary: BTreeMap<String, i64>,
    /// The last changes of each service's pods.
    history: BTreeMap<String, VecDeque<String>>,
    /// Breaches in progress: key to index in `violations`.
    open: BTreeMap<String, usize>,
    violations: Vec<Violation>,
    rebuilt: Vec<String>,
    events: u64,
    watch_errors: u64,
    floor_checks: u64,
    /// The least (Ready slots - floor) seen in a rollout, and where.
    tightest_floor: Option<(i32, String)>,
    /// The most (live pods - ceiling) seen, and where.
    closest_ceiling: Option<(i32, String)>,
    exclusions: usize,
    excluded_seconds: f64,
}

impl Monitor {
    fn t(&self) -> f64 {
        self.clock.0.elapsed().as_secs_f64()
    }

    fn listed(&self) -> bool {
        self.pods.listed && self.services.listed && self.claims.listed
    }

    fn apply(&mut self, seen: Seen) {
        self.events += 1;
        match seen {
            Seen::Pod(e) => {
                self.remember(&e);
                self.pods.apply(*e, |p| p.name_any());
            }
            Seen::Service(e) => {
                if let watcher::Event::Apply(svc) | watcher::Event::InitApply(svc) = &*e {
                    let t = self.t();
                    for r in svc.status.iter().flat_map(|s| &s.replica_statuses) {
                        if r.escalation.as_deref() == Some("RebuildStorage") {
                            self.rungs.push((svc.name_any(), r.ordinal, t));
                        }
                    }
                }
                self.services.apply(*e, |s| s.name_any());
            }
            Seen::Claim(e) => {
                let leaving = match &*e {
                    watcher::Event::Apply(c) | watcher::Event::InitApply(c)
                        if c.metadata.deletion_timestamp.is_some() =>
                    {
                        vec![c.clone()]
                    }
                    _ => Vec::new(),
                };
                let gone = self.claims.apply(*e, |c| c.uid().unwrap_or_default());
                for claim in leaving.into_iter().chain(gone) {
                    self.claim_deleted(&claim);
                }
            }
            Seen::Error(e) => {
                self.watch_errors += 1;
                if self.watch_errors <= 5 {
                    println!("[{:7.1}s] watch error (retried): {e}", self.t());
                }
            }
        }
    }

    /// Keeps the last few changes of each service's pods, for a breach's details.
    fn remember(&mut self, event: &watcher::Event<Pod>) {
        let (pod, gone) = match event {
            watcher::Event::Apply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            _ => return,
        };
        let Some(service) = label(pod, LABEL_SERVICE) else {
            return;
        };
        let now = describe_pods(&[pod], &self.lost_nodes);
        let before = self
            .pods
            .now
            .get(&pod.name_any())
            .map(|p| describe_pods(&[p], &self.lost_nodes));
        if !gone && before.as_ref() == Some(&now) {
            return;
        }
        let line = format!("{:.1}s {now}{}", self.t(), if gone { " gone" } else { "" });
        let history = self.history.entry(service.to_string()).or_default();
        history.push_back(line);
        if history.len() > 12 {
            history.pop_front();
        }
    }

    /// A claim is being deleted while its service exists. Nothing scales down and no
    /// service is deleted, so only onVolumeLost: Recreate allows it, and only for a volume
    /// lost with its node (lost now, or back less than REBUILD_GRACE ago: the operator may
    /// act on the loss it saw a moment before the node came back) or for the RebuildStorage
    /// rung of the slot's ladder (judged at the end, from the ledger the status shows).
    fn claim_deleted(&mut self, claim: &PersistentVolumeClaim) {
        let uid = claim.uid().unwrap_or_default();
        if !self.claims_deleted.insert(uid.clone()) {
            return;
        }
        let labels = claim.labels();
        let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let slot = labels.get(LABEL_SLOT).and_then(|s| s.parse().ok());
        let Some(svc) = self
            .services
            .now
            .get(&service)
            .filter(|s| s.metadata.deletion_timestamp.is_none())
        else {
            return;
        };
        let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        // Volumes are named <node>-pv-<n>.
        let node = volume
            .as_deref()
            .and_then(|v| v.rsplit_once("-pv-"))
            .map(|(n, _)| n.to_string());
        let t = self.t();
        let back = |n: &str| self.back_at.get(n).map(|b| t - b);
        let (lost, where_) = match &node {
            Some(n) if self.lost_nodes.contains(n) => (true, format!("on node {n}, lost now")),
            Some(n) => match back(n) {
                Some(ago) => (
                    ago <= REBUILD_GRACE.as_secs_f64(),
                    format!("on node {n}, back {ago:.0} s ago"),
                ),
                None => (false, format!("on node {n}, never lost")),
            },
            None => (false, "not bound".to_string()),
        };
        let what = format!(
            "claim {} (uid {}, volume {volume:?}, {where_})",
            claim.name_any(),
            &uid[..8.min(uid.len())],
        );
        let policy = svc.spec.repair.storage.on_volume_lost;
        let deletion = Deletion {
            at: t,
            service,
            slot,
            what,
        };
        match policy {
            VolumeLostPolicy::Recreate if lost => {
                self.rebuilt.push(format!("t={t:.1}s {}", deletion.what))
            }
            VolumeLostPolicy::Recreate => self.unexplained.push(deletion),
            VolumeLostPolicy::Retain => {
                if self.verbose {
                    println!(
                        "[{t:7.1}s] VIOLATION claim-deleted {}: {}",
                        deletion.service, deletion.what
                    );
                }
                self.violations.push(Violation {
                    at: t,
                    until: Some(t),
                    kind: "claim-deleted",
                    subject: deletion.service,
                    details: format!(
                        "{} deleted while its service exists, with onVolumeLost: Retain and no scale-down",
                        deletion.what
                    ),
                });
            }
        }
    }

    /// Rebuilds under onVolumeLost: Recreate of volumes whose node was not lost: allowed if
    /// the slot's ledger showed the RebuildStorage rung around that time, breaches if not.
    fn judge_rebuilds(&mut self) {
        for d in std::mem::take(&mut self.unexplained) {
            let rung = self.rungs.iter().any(|(s, slot, at)| {
                *s == d.service && Some(*slot) == d.slot && (at - d.at).abs() <= 60.0
            });
            if rung {
                self.rebuilt
                    .push(format!("t={:.1}s {} (RebuildStorage)", d.at, d.what));
                continue;
            }
            self.violations.push(Violation {
                at: d.at,
                until: Some(d.at),
                kind: "claim-deleted",
                subject: d.service,
                details: format!(
                    "{} deleted although its node was not lost and the slot took no RebuildStorage rung: onVolumeLost: Recreate covers volumes lost with their node",
                    d.what
                ),
            });
        }
    }

    fn pods_of(&self, service: &str) -> Vec<&Pod> {
        self.pods
            .now
            .values()
            .filter(|p| label(p, LABEL_SERVICE) == Some(service))
            .collect()
    }

    fn ready_slots(pods: &[&Pod], replicas: i32) -> usize {
        (0..replicas)
            .filter(|s| {
                pods.iter()
                    .any(|p| slot_of(p) == Some(*s) && ready(p) && !terminating(p))
            })
            .count()
    }

    /// Every invariant on the state as it is now. A breach is an episode, recorded once
    /// from the first state that shows it to the first that no longer does.
    fn check(&mut self) {
        if !self.listed() {
            return;
        }
        let now = self.t();
        let mut found: BTreeMap<String, (&'static str, String, String)> = BTreeMap::new();
        for (name, svc) in &self.services.now {
            let shape = Shape::of(svc);
            let pods: Vec<&Pod> = self
                .pods
                .now
                .values()
                .filter(|p| label(p, LABEL_SERVICE) == Some(name.as_str()))
                .collect();
            let describe = |pods: &[&Pod]| describe_pods(pods, &self.lost_nodes);

            let alive = pods.iter().filter(|p| live(p)).count() as i32;
            let over = alive - shape.ceiling;
            if self.closest_ceiling.as_ref().is_none_or(|(o, _)| over > *o) {
                self.closest_ceiling = Some((over, name.clone()));
            }
            if over > 0 {
                let details = format!(
                    "{alive} live pods, ceiling {} (replicas {}): {}",
                    shape.ceiling,
                    shape.replicas,
                    describe(&pods)
                );
                found.insert(
                    format!("ceiling/{name}"),
                    ("surge-ceiling", name.clone(), details),
                );
            }

            if shape.stateful {
                let mut by_slot: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
                for p in pods.iter().filter(|p| !ended(p)) {
                    if let Some(s) = slot_of(p) {
                        by_slot.entry(s).or_default().push(p);
                    }
                }
                for (slot, shared) in by_slot.iter().filter(|(_, v)| v.len() > 1) {
                    found.insert(
                        format!("slot/{name}/{slot}"),
                        (
                            "stateful-slot-shared",
                            format!("{name} slot {slot}"),
                            describe(shared),
                        ),
                    );
                }
            }

            // Involuntary faults in effect: a pod on a lost node, or a pod a fault touched
            // (killed, or on a node while it was lost) still leaving, gone unready or lost.
            for p in pods.iter().filter(|p| !ended(p)) {
                if node_of(p).is_some_and(|n| self.lost_nodes.contains(n)) {
                    self.touched.insert(p.uid().unwrap_or_default());
                }
            }
            let in_effect = pods.iter().any(|p| {
                self.touched.contains(&p.uid().unwrap_or_default())
                    && (terminating(p)
                        || !ready(p)
                        || node_of(p).is_some_and(|n| self.lost_nodes.contains(n)))
            });
            let ready_slots = Self::ready_slots(&pods, shape.replicas);
            if in_effect && !self.disturbed.contains_key(name) {
                let level = ready_slots;
                self.disturbed
                    .insert(name.clone(), Disturbance { since: now, level });
                self.exclusions += 1;
            }
            let recovered = self
                .disturbed
                .get(name)
                .is_some_and(|d| !in_effect && ready_slots >= d.level);
            if let Some(d) = recovered.then(|| self.disturbed.remove(name)).flatten() {
                self.excluded_seconds += now - d.since;
            }

            if self.voluntary.get(name).is_some_and(|g| settled(svc, *g)) {
                self.voluntary.remove(name);
            }
            let rolling = self.voluntary.contains_key(name) || status_rolling(svc);
            if !rolling || shape.recreate || self.disturbed.contains_key(name) {
                self.floor_base.remove(name);
                continue;
            }
            // A rollout that begins below the floor (after an earlier failure) cannot be
            // held to it, only to never losing Ready slots it has while below it.
            let base = self.floor_base.entry(name.clone()).or_insert(ready_slots);
            *base = (*base).max(ready_slots);
            let floor = shape.floor.min(*base as i32);
            self.floor_checks += 1;
            let margin = ready_slots as i32 - floor;
            if self
                .tightest_floor
                .as_ref()
                .is_none_or(|(m, _)| margin < *m)
            {
                self.tightest_floor = Some((margin, name.clone()));
            }
            if margin < 0 {
                let s = svc.status.clone().unwrap_or_default();
                let details = format!(
                    "{ready_slots}/{} slots Ready during a rollout, floor {floor} (spec {}): {}; current {:?}, update {:?}, rollout {:?}; last pod changes: {:?}",
                    shape.replicas,
                    shape.floor,
                    describe(&pods),
                    s.current_revision,
                    s.update_revision,
                    s.rollout.as_ref().map(|r| (&r.progress, &r.waiting_for)),
                    self.history.get(name)
                );
                found.insert(
                    format!("floor/{name}"),
                    ("availability-floor", name.clone(), details),
                );
            }
        }
        let closed: Vec<String> = self
            .open
            .keys()
            .filter(|k| !found.contains_key(*k))
            .cloned()
            .collect();
        for key in closed {
            if let Some(i) = self.open.remove(&key) {
                self.violations[i].until = Some(now);
            }
        }
        for (key, (kind, subject, details)) in found {
            if self.open.contains_key(&key) {
                continue;
            }
            if self.verbose {
                println!("[{now:7.1}s] VIOLATION {kind} {subject}: {details}");
            }
            self.violations.push(Violation {
                at: now,
                until: None,
                kind,
                subject,
                details,
            });
            self.open.insert(key, self.violations.len() - 1);
        }
    }

    /// An involuntary fault is about to hit `service` (its pod `victim`, when one is
    /// killed): the floor waits for its recovery.
    fn involuntary(&mut self, service: &str, victim: Option<&str>) {
        if let Some(uid) = victim
            .and_then(|v| self.pods.now.get(v))
            .and_then(|p| p.uid())
        {
            self.touched.insert(uid);
        }
        let replicas = self
            .services
            .now
            .get(service)
            .map_or(0, |s| s.spec.replicas.max(0));
        let level = Self::ready_slots(&self.pods_of(service), replicas);
        let since = self.t();
        if !self.disturbed.contains_key(service) {
            self.disturbed
                .insert(service.to_string(), Disturbance { since, level });
            self.exclusions += 1;
        }
    }

    /// `node` is about to be lost: every service with a pod there is disturbed now, while
    /// its pods there still look Ready.
    fn node_lost(&mut self, node: &str) {
        let hit: BTreeSet<String> = self
            .pods
            .now
            .values()
            .filter(|p| !ended(p) && node_of(p) == Some(node))
            .filter_map(|p| label(p, LABEL_SERVICE).map(str::to_string))
            .collect();
        for service in hit {
            self.involuntary(&service, None);
        }
        self.lost_nodes.insert(node.to_string());
    }

    fn node_back(&mut self, node: &str) {
        if self.lost_nodes.remove(node) {
            let t = self.t();
            self.back_at.insert(node.to_string(), t);
        }
    }

    /// The pod to kill in `slot` of `service`: one not already leaving.
    fn victim(&self, service: &str, slot: i32) -> Option<String> {
        self.pods_of(service)
            .into_iter()
            .find(|p| slot_of(p) == Some(slot) && !terminating(p))
            .map(|p| p.name_any())
    }

    fn generation(&self, service: &str) -> i64 {
        self.services
            .now
            .get(service)
            .and_then(|s| s.metadata.generation)
            .unwrap_or(0)
    }

    /// Services a person would turn to once the faults stop: a bad template with
    /// rollback: Manual, or a rollout stopped for a person after a failure the faults
    /// caused. A bad template with rollback: Automatic stays: its rollback is awaited.
    fn need_a_new_template(&self) -> Vec<String> {
        self.services
            .now
            .iter()
            .filter(|(_, s)| {
                let bad = s
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref())
                    .is_some_and(|l| l.contains_key(CHAOS_LABEL));
                let manual = s.spec.update.rollback == RollbackPolicy::Manual;
                let stopped = s
                    .status
                    .as_ref()
                    .is_some_and(|st| st.reason.as_deref() == Some("RolloutFailed"));
                (bad && manual) || stopped
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn spawn_monitor(ns: &TestNamespace, monitor: Arc<Mutex<Monitor>>) -> tokio::task::JoinHandle<()> {
    fn watch<K>(api: Api<K>, wrap: fn(watcher::Event<K>) -> Seen) -> BoxStream<'static, Seen>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| match e {
                Ok(e) => wrap(e),
                Err(e) => Seen::Error(e.to_string()),
            })
            .boxed()
    }
    let mut all = stream::select_all(vec![
        watch(ns.api::<Pod>(), |e| Seen::Pod(Box::new(e))),
        watch(ns.api::<ResilientService>(), |e| Seen::Service(Box::new(e))),
        watch(ns.api::<PersistentVolumeClaim>(), |e| {
            Seen::Claim(Box::new(e))
        }),
    ]);
    tokio::spawn(async move {
        while let Some(seen) = all.next().await {
            let mut m = lock(&monitor);
            m.apply(seen);
            m.check();
        }
    })
}

// ------------------------------------------------------------------------------------------
// Two operator processes with leader election, restarted when they stop

struct Fleet {
    namespace: String,
    lease: String,
    origin: Instant,
    running: Vec<Operator>,
    logs: Vec<PathBuf>,
    killed: Vec<String>,
    /// (time, what, whether it was a leader that lost its lease: expected once the API
    /// server is gone longer than the renew deadline).
    exited: Vec<(f64, String, bool)>,
}

impl Fleet {
    fn new(namespace: &str, lease: &str, origin: Instant) -> Self {
        Self {
            namespace: namespace.to_string(),
            lease: lease.to_string(),
            origin,
            running: Vec::new(),
            logs: Vec::new(),
            killed: Vec::new(),
            exited: Vec::new(),
        }
    }

    fn start(&mut self) {
        let op = elector(&self.namespace, &self.lease);
        self.logs.push(op.log.clone());
        self.running.push(op);
    }

    /// Two processes run, as a Deployment of two keeps them: one that stopped on its own
    /// (a leader that could not renew its lease exits) is recorded and replaced.
    fn keep_two(&mut self) {
        let t = self.origin.elapsed().as_secs_f64();
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let op = self.running.remove(i);
                    let last = std::fs::read_to_string(&op.log)
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .map(strip_ansi)
                        .unwrap_or_default();
                    let line = format!(
                        "t={t:.1}s pid {} exited on its own ({status}); last line: {last}",
                        op.child.id()
                    );
                    println!("[{t:7.1}s] operator {line}");
                    let lease_lost = last.contains("lost the leader lease");
                    self.exited.push((t, line, lease_lost));
                }
                _ => i += 1,
            }
        }
        while self.running.len() < 2 {
            self.start();
        }
    }

    /// SIGKILLs the process `pid` and starts its replacement.
    fn kill(&mut self, pid: u32, role: &str) {
        let t = self.origin.elapsed().as_secs_f64();
        if let Some(i) = self.running.iter().position(|o| o.child.id() == pid) {
            let mut op = self.running.remove(i);
            let _ = op.child.kill();
            let _ = op.child.wait();
            self.killed.push(format!("t={t:.1}s pid {pid} ({role})"));
        }
        self.keep_two();
    }

    fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|o| o.child.id()).collect()
    }

    fn stop_all(&mut self) {
        for mut op in self.running.drain(..) {
            let _ = op.child.kill();
            let _ = op.child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// The operators' output: panics, lines per second, reconciles per service

#[derive(Default)]
struct LogFile {
    offset: u64,
    partial: String,
    /// Per one-second tick: (time, lines at INFO or above, reconciles by service).
    ticks: Vec<(f64, usize, BTreeMap<String, usize>)>,
    lines: usize,
}

#[derive(Default)]
struct Logs {
    files: BTreeMap<PathBuf, LogFile>,
    panics: Vec<String>,
}

impl Logs {
    /// Reads what each log gained since the last scan: one tick.
    fn scan(&mut self, paths: &[PathBuf], t: f64) {
        for path in paths {
            let file = self.files.entry(path.clone()).or_default();
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(path) {
                if f.seek(SeekFrom::Start(file.offset)).is_ok() {
                    let mut bytes = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut bytes) {
                        file.offset += n as u64;
                        text = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            let mut info = 0;
            let mut reconciles: BTreeMap<String, usize> = BTreeMap::new();
            let buffered = std::mem::take(&mut file.partial) + &text;
            let mut lines: Vec<&str> = buffered.split('\n').collect();
            file.partial = lines.pop().unwrap_or_default().to_string();
            for raw in lines {
                file.lines += 1;
                let line = strip_ansi(raw);
                if line.contains("panicked at") {
                    self.panics
                        .push(format!("t={t:.1}s {}: {line}", path.display()));
                }
                let level = line.split_whitespace().nth(1).unwrap_or_default();
                if matches!(level, "INFO" | "WARN" | "ERROR") {
                    info += 1;
                }
                if let Some(rest) = line.split("reconciled object=").nth(1) {
                    let name = rest
                        .split('/')
                        .nth(1)
                        .and_then(|n| n.split('.').next())
                        .unwrap_or_default();
                    *reconciles.entry(name.to_string()).or_default() += 1;
                }
            }
            file.ticks.push((t, info, reconciles));
        }
    }

    /// Per file, the busiest window of STORM_WINDOW_TICKS ticks: (time, INFO+ lines) and
    /// (time, service, reconciles).
    fn busiest(file: &LogFile) -> ((f64, usize), (f64, String, usize)) {
        let mut lines = (0.0, 0);
        let mut loops = (0.0, String::new(), 0);
        for w in file
            .ticks
            .windows(STORM_WINDOW_TICKS.min(file.ticks.len()).max(1))
        {
            let t = w[0].0;
            let sum: usize = w.iter().map(|x| x.1).sum();
            if sum > lines.1 {
                lines = (t, sum);
            }
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, _, r) in w {
                for (s, n) in r {
                    *per.entry(s).or_default() += n;
                }
            }
            if let Some((s, n)) = per.into_iter().max_by_key(|(_, n)| *n) {
                if n > loops.2 {
                    loops = (t, s.to_string(), n);
                }
            }
        }
        (lines, loops)
    }
}

// ------------------------------------------------------------------------------------------
// Nodes and volumes of the soak's own

fn local_volume(name: &str, node: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": node, GROUP_LABEL: "volume"}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "local",
            "volumeMode": "Filesystem",
            "local": {"path": "/var/lib/local-volumes/0"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}}
        }
    }))
    .expect("a valid volume")
}

/// Local volumes of the soak's nodes, deleted when the guard drops.
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for chunk in self.0.chunks(40) {
            let mut args = vec!["delete", "pv", "--wait=false", "--ignore-not-found"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = kubectl(&args);
        }
    }
}

/// Leaves the cluster as the soak found it when dropped, also when the test fails: every
/// node still lost back (the nodes are deleted next, but a lost node must never outlive a
/// failing soak), and every control-plane process that stopped running again.
struct Restore(Arc<Mutex<BTreeSet<String>>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let lost = std::mem::take(&mut *lock(&self.0));
        for node in lost {
            if let Err(e) = try_fault("node-back", Some(&node)) {
                println!("cleanup: {e}");
            }
            let _ = kubectl(&["taint", "node", &node, &format!("{OUT_OF_SERVICE_TAINT}-")]);
        }
        for component in CONTROL_PLANE {
            match relaunch_if_stopped(component) {
                Ok(true) => println!("cleanup: {component} had stopped; relaunched"),
                Ok(false) => {}
                Err(e) => println!("cleanup: {component}: {e}"),
            }
        }
    }
}

/// Removes the out-of-service taint from `node`; true when it had one. A person does this
/// once a fenced node is repaired; the operator never does.
async fn untaint(client: &Client, node: &str) -> Result<bool, String> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..5 {
        let n = api.get(node).await.map_err(|e| e.to_string())?;
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !taints.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT) {
            return Ok(false);
        }
        let kept: Vec<_> = taints
            .into_iter()
            .filter(|t| t.key != OUT_OF_SERVICE_TAINT)
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": n.resource_version()},
            "spec": {"taints": kept}
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("node {node}: conflicts on every try"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking task does not panic")
}

// ------------------------------------------------------------------------------------------
// Injecting the faults

struct Chaos {
    client: Client,
    namespace: String,
    lease: String,
    origin: Instant,
    profiles: Vec<Profile>,
    nodes: Vec<String>,
    monitor: Arc<Mutex<Monitor>>,
    fleet: Arc<Mutex<Fleet>>,
    lost: Arc<Mutex<BTreeSet<String>>>,
    images: BTreeMap<String, u32>,
    injected: BTreeMap<Kind, usize>,
    modes: BTreeMap<&'static str, usize>,
    failed: Vec<String>,
    untainted: usize,
    handed_again: usize,
    relaunched: Vec<String>,
}

impl Chaos {
    fn t(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn services(&self) -> Api<ResilientService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Starts again any control-plane process that stopped on its own, as the kubelet of
    /// a real control plane would: not the operator's doing, so not a violation, but
    /// recorded.
    async fn keep_control_plane(&mut self) {
        let stopped = blocking(|| {
            CONTROL_PLANE
                .iter()
                .filter_map(|c| match relaunch_if_stopped(c) {
                    Ok(false) => None,
                    Ok(true) => Some(format!("{c} had stopped; relaunched")),
                    Err(e) => Some(format!("{c}: {e}")),
                })
                .collect::<Vec<_>>()
        })
        .await;
        for what in stopped {
            let line = format!("t={:.1}s {what}", self.t());
            println!("[{:7.1}s] control plane: {what}", self.t());
            self.relaunched.push(line);
        }
    }

    /// Waits until `deadline`, keeping the control plane running meanwhile.
    async fn wait_until(&mut self, deadline: tokio::time::Instant) {
        loop {
            self.keep_control_plane().await;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_secs(2))).await;
        }
    }

    async fn inject(&mut self, fault: &Fault) -> Result<String, String> {
        match fault {
            Fault::PodKill { service, slot } => {
                let name = self.profiles[*service].name;
                let victim = {
                    let mut m = lock(&self.monitor);
                    let victim = m
                        .victim(name, *slot)
                        .ok_or(format!("{name} has no pod in slot {slot} to kill"))?;
                    m.involuntary(name, Some(&victim));
                    victim
                };
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
                pods.delete(&victim, &DeleteParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("deleted pod {victim}"))
            }
            Fault::Rollout { service } => {
                let name = self.profiles[*service].name;
                self.set_template(name, None).await
            }
            Fault::BadRollout { service, mode } => {
                let name = self.profiles[*service].name;
                let out = self.set_template(name, Some(mode)).await?;
                *self.modes.entry(mode).or_default() += 1;
                Ok(out)
            }
            Fault::NodeLost { node } => {
                let node = self.nodes[*node].clone();
                lock(&self.lost).insert(node.clone());
                lock(&self.monitor).node_lost(&node);
                let n = node.clone();
                blocking(move || try_fault("node-lost", Some(&n))).await?;
                Ok(format!("{node} stops heartbeating"))
            }
            Fault::NodeBack { node } => {
                let node = self.nodes[*node].clone();
                self.bring_back(&node).await
            }
            Fault::OperatorKill { leader } => {
                let holder = Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
                    .get_opt(&self.lease)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                let pids = lock(&self.fleet).pids();
                let leading = pids.iter().copied().find(|pid| {
                    holder
                        .as_deref()
                        .is_some_and(|h| h.ends_with(&format!("-{pid}")))
                });
                let (pid, role) = match (leader, leading) {
                    (true, Some(pid)) => (pid, "the leader"),
                    (false, Some(l)) => (
                        pids.iter().copied().find(|p| *p != l).unwrap_or(l),
                        "the standby",
                    ),
                    (_, None) => (
                        *pids.first().ok_or("no operator process runs")?,
                        "no leader known",
                    ),
                };
                lock(&self.fleet).kill(pid, role);
                Ok(format!("SIGKILL pid {pid} ({role}); a new process starts"))
            }
            Fault::ApiServerRestart => blocking(|| try_fault("apiserver-restart", None)).await,
            Fault::ControllerManagerRestart => {
                blocking(|| try_fault("controller-manager-restart", None)).await
            }
        }
    }

    /// A new template for `service`: a new image, with the chaos `mode` or without any.
    /// The rollout counts as voluntary from before the change reaches the server.
    async fn set_template(&mut self, service: &str, mode: Option<&str>) -> Result<String, String> {
        let n = self.images.entry(service.to_string()).or_insert(1);
        *n += 1;
        let image = format!("example/{service}:{n}");
        let body = json!({"spec": {"template": {
            "metadata": {"labels": {CHAOS_LABEL: mode}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }}});
        {
            let mut m = lock(&self.monitor);
            let next = m.generation(service) + 1;
            m.voluntary.insert(service.to_string(), next);
        }
        match self
            .services()
            .patch(service, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(svc) => {
                let generation = svc.metadata.generation.unwrap_or_default();
                lock(&self.monitor)
                    .voluntary
                    .insert(service.to_string(), generation);
                Ok(format!(
                    "{service} to {image}{} (generation {generation})",
                    mode.map(|m| format!(", {CHAOS_LABEL}={m}"))
                        .unwrap_or_default()
                ))
            }
            Err(e) => {
                lock(&self.monitor).voluntary.remove(service);
                Err(e.to_string())
            }
        }
    }

    async fn bring_back(&mut self, node: &str) -> Result<String, String> {
        let n = node.to_string();
        blocking(move || try_fault("node-back", Some(&n))).await?;
        // `fault node-back` hands the node back to KWOK before it deletes the Lease the
        // fault holds; KWOK, finding a foreign holder with a year-long lease, may back off
        // and never renew again. A node that does not heartbeat is not back: hand it over
        // again, the Lease first.
        let mut handed_again = false;
        if !self.heartbeating(node).await {
            self.hand_to_kwok(node).await?;
            if !self.heartbeating(node).await {
                return Err(format!("{node} does not heartbeat after node-back"));
            }
            self.handed_again += 1;
            handed_again = true;
        }
        let untainted = untaint(&self.client, node).await?;
        lock(&self.lost).remove(node);
        lock(&self.monitor).node_back(node);
        if untainted {
            self.untainted += 1;
        }
        Ok(format!(
            "{node} heartbeats again{}{}",
            if handed_again {
                " (handed to KWOK a second time)"
            } else {
                ""
            },
            if untainted {
                " (out-of-service taint removed)"
            } else {
                ""
            }
        ))
    }

    /// Whether KWOK renews `node`'s Lease within NODE_BACK_TIMEOUT.
    async fn heartbeating(&self, node: &str) -> bool {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let deadline = Instant::now() + NODE_BACK_TIMEOUT;
        while Instant::now() < deadline {
            let renewed = leases
                .get_opt(node)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .filter(|s| s.holder_identity.as_deref() != Some("perennial-fault-node-lost"))
                .and_then(|s| s.renew_time)
                .is_some_and(|t| jiff::Timestamp::now().as_second() - t.0.as_second() < 15);
            if renewed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// Takes `node` from KWOK, deletes its Lease, and gives it back.
    async fn hand_to_kwok(&self, node: &str) -> Result<(), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let annotate =
            |value: Value| json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": value}}});
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(annotate(Value::Null)),
            )
            .await
            .map_err(|e| e.to_string())?;
        match leases.delete(node, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.to_string()),
        }
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(annotate(json!("fake"))),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Ends every fault: lost nodes back, out-of-service taints gone, and what a person
    /// would fix fixed (see `need_a_new_template`). Retried while the API server may still
    /// be coming back.
    async fn revert(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lost: Vec<String> = lock(&self.lost).iter().cloned().collect();
            let mut left = 0;
            for node in &lost {
                match self.bring_back(node).await {
                    Ok(what) => println!("[{:7.1}s] revert: {what}", self.t()),
                    Err(e) => {
                        left += 1;
                        println!("[{:7.1}s] revert: node-back {node} failed: {e}", self.t());
                    }
                }
            }
            for node in self.nodes.clone() {
                match untaint(&self.client, &node).await {
                    Ok(true) => {
                        self.untainted += 1;
                        println!(
                            "[{:7.1}s] revert: removed the out-of-service taint of {node}",
                            self.t()
                        );
                    }
                    Ok(false) => {}
                    Err(_) => left += 1,
                }
            }
            let bad = lock(&self.monitor).need_a_new_template();
            for service in bad {
                match self.set_template(&service, None).await {
                    Ok(what) => println!("[{:7.1}s] revert: {what}", self.t()),
                    Err(e) => {
                        left += 1;
                        println!("[{:7.1}s] revert: {service}: {e}", self.t());
                    }
                }
            }
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The soak

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_breaks_no_invariant_and_every_service_recovers() {
    let seed = env_number("CHAOS_SEED").unwrap_or_else(clock_seed);
    let seconds = env_number("CHAOS_SECONDS")
        .unwrap_or(DEFAULT_SECONDS)
        .max(10);
    println!("chaos seed {seed}: replay with CHAOS_SEED={seed} CHAOS_SECONDS={seconds}");
    let wall = Instant::now();
    let profiles = profiles();
    let plan = schedule(&mut Rng(seed), seconds as f64, &profiles);
    println!("schedule ({} faults over {seconds} s):", plan.len());
    for step in &plan {
        println!("  {:6.1} s  {}", step.at, step.fault.describe(&profiles));
    }

    // A namespace, nodes and volumes of the soak's own.
    let ns = TestNamespace::new("chaos").await;
    let client = ns.client.clone();
    install_crd(&client).await;
    let group = format!("{NODE_PREFIX}-{}", unique_suffix());
    let node_api: Api<Node> = Api::all(client.clone());
    let mut test_nodes = Vec::new();
    let mut volumes = Volumes(Vec::new());
    for i in 0..NODES {
        let node = TestNode::new(&client, NODE_PREFIX, ZONES[i % ZONES.len()]).await;
        node_api
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {GROUP_LABEL: &group}}})),
            )
            .await
            .expect("label the node with the soak's group");
        test_nodes.push(node);
    }
    let nodes: Vec<String> = test_nodes.iter().map(|n| n.name.clone()).collect();
    let pv_api: Api<PersistentVolume> = Api::all(client.clone());
    for node in &nodes {
        for i in 0..VOLUMES_PER_NODE {
            let name = format!("{node}-pv-{i}");
            pv_api
                .create(&PostParams::default(), &local_volume(&name, node))
                .await
                .expect("create a local volume");
            volumes.0.push(name);
        }
    }
    let lost = Arc::new(Mutex::new(BTreeSet::new()));
    let _restore = Restore(lost.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for(
        "the soak's nodes to be Ready, with a Lease",
        SETUP_TIMEOUT,
        || {
            let (node_api, leases, nodes) = (node_api.clone(), leases.clone(), nodes.clone());
            async move {
                for name in &nodes {
                    let n = node_api.get(name).await.map_err(|e| e.to_string())?;
                    let ready = n
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let lease = leases.get_opt(name).await.map_err(|e| e.to_string())?;
                    if !ready || lease.is_none() {
                        return Err(format!("{name}: Ready={ready}, lease {}", lease.is_some()));
                    }
                }
                Ok(())
            }
        },
    )
    .await;
    println!("nodes: {nodes:?} ({VOLUMES_PER_NODE} local volumes each)");

    // The watch, then two operators, then the services.
    let origin = Instant::now();
    let monitor = Arc::new(Mutex::new(Monitor {
        clock: Clock(origin),
        verbose: true,
        ..Monitor::default()
    }));
    let watch = spawn_monitor(&ns, monitor.clone());
    wait_for("the watches to list", SETUP_TIMEOUT, || {
        let monitor = monitor.clone();
        async move {
            lock(&monitor)
                .listed()
                .then_some(())
                .ok_or("not yet".to_string())
        }
    })
    .await;
    let lease = format!("chaos-leader-{}", unique_suffix());
    let fleet = Arc::new(Mutex::new(Fleet::new(&ns.name, &lease, origin)));
    lock(&fleet).keep_two();
    let supervisor = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                lock(&fleet).keep_two();
            }
        })
    };
    let logs = Arc::new(Mutex::new(Logs::default()));
    let scanner = {
        let (fleet, logs) = (fleet.clone(), logs.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let paths = lock(&fleet).logs.clone();
                lock(&logs).scan(&paths, origin.elapsed().as_secs_f64());
            }
        })
    };

    let services: Api<ResilientService> = ns.api();
    for profile in &profiles {
        services
            .create(&PostParams::default(), &service(profile, &group))
            .await
            .expect("create a ResilientService");
    }
    let pods_total: i32 = profiles.iter().map(|p| p.replicas).sum();
    wait_for("every service to be Available", SETUP_TIMEOUT, || {
        let services = services.clone();
        async move {
            let list = services
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let waiting: Vec<String> = list
                .iter()
                .filter_map(|s| converged(s).err().map(|e| format!("{}: {e}", s.name_any())))
                .collect();
            waiting.is_empty().then_some(()).ok_or(waiting.join("; "))
        }
    })
    .await;
    let setup = wall.elapsed();
    println!(
        "[{:7.1}s] {} services Available ({pods_total} pods) after {:.1} s of setup; faults begin",
        origin.elapsed().as_secs_f64(),
        profiles.len(),
        setup.as_secs_f64()
    );

    // The fault phase.
    let mut chaos = Chaos {
        client: client.clone(),
        namespace: ns.name.clone(),
        lease: lease.clone(),
        origin,
        profiles,
        nodes: nodes.clone(),
        monitor: monitor.clone(),
        fleet: fleet.clone(),
        lost: lost.clone(),
        images: BTreeMap::new(),
        injected: BTreeMap::new(),
        modes: BTreeMap::new(),
        failed: Vec::new(),
        untainted: 0,
        handed_again: 0,
        relaunched: Vec::new(),
    };
    // The schedule's clock stops while a fault takes more than a moment (a control-plane
    // restart): what follows keeps its offset from it, and a node stays lost as long as
    // planned. The phase itself ends on time; steps pushed past its end are not injected.
    let phase_start = tokio::time::Instant::now();
    let phase_end = phase_start + Duration::from_secs(seconds);
    let mut shift = Duration::ZERO;
    let mut last = phase_start;
    let mut not_reached = 0;
    for step in &plan {
        let due = (phase_start + shift + Duration::from_secs_f64(step.at))
            .max(last + Duration::from_secs(1));
        if due >= phase_end {
            not_reached += 1;
            continue;
        }
        chaos.wait_until(due).await;
        let kind = step.fault.kind();
        let t = chaos.t();
        let began = tokio::time::Instant::now();
        let result = chaos.inject(&step.fault).await;
        let took = began.elapsed();
        if took > Duration::from_secs(1) {
            shift += took;
        }
        match result {
            Ok(what) => {
                *chaos.injected.entry(kind).or_default() += 1;
                println!(
                    "[{t:7.1}s] {} ({:.1} s): {}",
                    kind.name(),
                    took.as_secs_f64(),
                    what.replace('\n', "; ")
                );
            }
            Err(e) => {
                let e = e.replace('\n', "; ");
                println!("[{t:7.1}s] {} not injected: {e}", kind.name());
                chaos.failed.push(format!("t={t:.1}s {}: {e}", kind.name()));
            }
        }
        last = tokio::time::Instant::now();
    }
    chaos.wait_until(phase_end).await;
    let fault_phase = phase_start.elapsed();

    // Faults stop: revert, then every service must come back.
    let stop = Instant::now();
    println!("[{:7.1}s] faults stop; reverting", chaos.t());
    chaos.keep_control_plane().await;
    chaos.revert().await;
    let mut since: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut swept = Instant::now();
    let all_back = loop {
        if let Ok(list) = services.list(&ListParams::default()).await {
            for svc in &list {
                let name = svc.name_any();
                match converged(svc) {
                    Ok(()) => {
                        since
                            .entry(name.clone())
                            .or_insert(stop.elapsed().as_secs_f64());
                        last_seen.remove(&name);
                    }
                    Err(e) => {
                        since.remove(&name);
                        last_seen.insert(name, e);
                    }
                }
            }
            if since.len() == chaos.profiles.len() {
                break true;
            }
        }
        if stop.elapsed() >= CONVERGENCE_BOUND {
            break false;
        }
        // A lost node's fence may be put up after node-back by a pass that ran on the
        // older view; a person would take it down again.
        if swept.elapsed() >= Duration::from_secs(3) {
            swept = Instant::now();
            chaos.keep_control_plane().await;
            for node in &nodes {
                if let Ok(true) = untaint(&client, node).await {
                    chaos.untainted += 1;
                    println!(
                        "[{:7.1}s] removed an out-of-service taint put on {node} after it came back",
                        chaos.t()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let convergence = stop.elapsed();
    println!(
        "[{:7.1}s] {}",
        chaos.t(),
        if all_back {
            "every service is Available again".to_string()
        } else {
            format!("not every service came back: {last_seen:?}")
        }
    );

    // Stop watching and the operators; read their output to the end.
    watch.abort();
    supervisor.abort();
    scanner.abort();
    let _ = watch.await;
    let _ = supervisor.await;
    let _ = scanner.await;
    let paths = {
        let mut f = lock(&fleet);
        f.stop_all();
        f.logs.clone()
    };
    lock(&logs).scan(&paths, origin.elapsed().as_secs_f64());

    // Verdicts that are not about pods.
    lock(&monitor).judge_rebuilds();
    let mut violations = lock(&monitor).violations.clone();
    let now = origin.elapsed().as_secs_f64();
    for v in violations.iter_mut().filter(|v| v.until.is_none()) {
        v.until = Some(now);
    }
    if !all_back {
        for (name, why) in &last_seen {
            violations.push(Violation {
                at: now,
                until: None,
                kind: "not-converged",
                subject: name.clone(),
                details: format!("not Available within {CONVERGENCE_BOUND:?}: {why}"),
            });
        }
    }
    for (at, what, lease_lost) in &lock(&fleet).exited {
        if !lease_lost {
            violations.push(Violation {
                at: *at,
                until: None,
                kind: "operator-exit",
                subject: "operator".into(),
                details: format!("stopped for another reason than a lost lease: {what}"),
            });
        }
    }
    let logs = std::mem::take(&mut *lock(&logs));
    for p in &logs.panics {
        violations.push(Violation {
            at: now,
            until: None,
            kind: "operator-panic",
            subject: "operator".into(),
            details: p.clone(),
        });
    }
    let mut storm_lines = Vec::new();
    for (path, file) in &logs.files {
        let ((lt, lines), (rt, busiest, reconciles)) = Logs::busiest(file);
        storm_lines.push(format!(
            "{}: {} lines; busiest 10 s: {lines} INFO+ lines (t={lt:.0}s), {reconciles} reconciles of {busiest} (t={rt:.0}s)",
            path.file_name().unwrap_or_default().to_string_lossy(),
            file.lines
        ));
        if lines > STORM_LINES_PER_WINDOW {
            violations.push(Violation {
                at: lt,
                until: None,
                kind: "log-storm",
                subject: path.display().to_string(),
                details: format!(
                    "{lines} lines at INFO or above in 10 s (bound {STORM_LINES_PER_WINDOW})"
                ),
            });
        }
        if reconciles > HOT_LOOP_RECONCILES_PER_WINDOW {
            violations.push(Violation {
                at: rt,
                until: None,
                kind: "hot-loop",
                subject: busiest.clone(),
                details: format!(
                    "{reconciles} reconciles in 10 s in {} (bound {HOT_LOOP_RECONCILES_PER_WINDOW})",
                    path.display()
                ),
            });
        }
    }

    // The report.
    let m = lock(&monitor);
    let f = lock(&fleet);
    let mut times: Vec<(f64, String)> = since.iter().map(|(n, t)| (*t, n.clone())).collect();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sorted: Vec<f64> = times.iter().map(|(t, _)| *t).collect();
    println!("\n==================== chaos report ====================");
    println!("seed: {seed} (replay: CHAOS_SEED={seed} CHAOS_SECONDS={seconds} make chaos)");
    println!(
        "duration: faults {:.1} s (planned {seconds} s), setup {:.1} s, convergence {:.1} s, wall {:.1} s",
        fault_phase.as_secs_f64(),
        setup.as_secs_f64(),
        convergence.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    println!(
        "services: {} ({} stateful), {pods_total} pods, on {NODES} nodes in {} zones",
        chaos.profiles.len(),
        chaos
            .profiles
            .iter()
            .filter(|p| p.spec.get("volumeClaimTemplates").is_some())
            .count(),
        ZONES.len()
    );
    let injected: Vec<String> = chaos
        .injected
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    println!(
        "faults injected: {} ({}); bad templates by mode: {:?}",
        chaos.injected.values().sum::<usize>(),
        injected.join(", "),
        chaos.modes
    );
    println!(
        "not injected: {} failed, {not_reached} past the end of the phase{}",
        chaos.failed.len(),
        chaos
            .failed
            .iter()
            .map(|f| format!("\n  {f}"))
            .collect::<String>()
    );
    println!(
        "out-of-service taints removed after node-back: {}; nodes handed to KWOK a second time after node-back: {}",
        chaos.untainted, chaos.handed_again
    );
    println!(
        "control-plane processes that stopped on their own and were relaunched: {}{}",
        chaos.relaunched.len(),
        chaos
            .relaunched
            .iter()
            .map(|r| format!("\n  {r}"))
            .collect::<String>()
    );
    println!(
        "observations: {} watch events ({} watch errors); floor checked on {} service observations, tightest margin {:?}; surge margin closest {:?}",
        m.events, m.watch_errors, m.floor_checks, m.tightest_floor, m.closest_ceiling
    );
    println!(
        "floor exclusions (involuntary faults): {} windows, {:.1} service-seconds",
        m.exclusions, m.excluded_seconds
    );
    println!(
        "claims rebuilt under onVolumeLost: Recreate: {}{}",
        m.rebuilt.len(),
        m.rebuilt
            .iter()
            .map(|r| format!("\n  {r}"))
            .collect::<String>()
    );
    println!(
        "operator restarts: {} (killed by the soak {}, exited on their own {}){}",
        f.killed.len() + f.exited.len(),
        f.killed.len(),
        f.exited.len(),
        f.exited
            .iter()
            .map(|(_, e, _)| format!("\n  {e}"))
            .collect::<String>()
    );
    println!(
        "operator logs (bounds: {STORM_LINES_PER_WINDOW} INFO+ lines, {HOT_LOOP_RECONCILES_PER_WINDOW} reconciles of one service per 10 s):{}",
        storm_lines
            .iter()
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    println!(
        "convergence after the faults stopped: max {:.1} s ({}), median {:.1} s, bound {:?}",
        sorted.last().copied().unwrap_or_default(),
        times.last().map(|(_, n)| n.as_str()).unwrap_or("-"),
        median(&sorted),
        CONVERGENCE_BOUND
    );
    println!(
        "  {}",
        times
            .iter()
            .map(|(t, n)| format!("{n} {t:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("violations: {}", violations.len());
    for v in &violations {
        println!(
            "  t={:.1}s {} {} (for {:.1} s): {}",
            v.at,
            v.kind,
            v.subject,
            v.until.map_or(0.0, |u| u - v.at),
            v.details
        );
    }
    println!("operator logs: {:?}", f.logs);
    println!("======================================================");
    drop((m, f));

    assert!(
        violations.is_empty(),
        "{} invariant violation(s) with seed {seed} (replay: CHAOS_SEED={seed} CHAOS_SECONDS={seconds}); first: {:?}",
        violations.len(),
        violations.first()
    );
}

// ------------------------------------------------------------------------------------------
// The checks themselves, on states made up here: no cluster needed

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
