//! The chaos soak: twenty ResilientServices on KWOK nodes (stateless and stateful, canaries,
//! partitions, rollouts in flight) and two on the real nodes (the test application, one
//! stateless behind a ClusterIP Service that a client sends requests to, one stateful) under
//! a seeded random schedule of faults, with the operator's invariants checked at every watch
//! event, then every service awaited back to Available.
//!
//! `make chaos` runs it for ten minutes; `make test` runs it for CHAOS_SECONDS (default 90)
//! of faults, with one fixed seed. CHAOS_SEED replays a schedule: the seed is printed first, and the same seed
//! gives the same faults at the same offsets against the same slots, services and nodes.
//!
//! Faults: pod kills; rollouts of a good template and of a bad one (the pod label
//! `chaos.perennial.dev/mode`: crash-loop, oom, fail or never-ready); node loss and return
//! (`e2e/cluster/fault node-lost` / `node-back`); SIGKILL of the leading (or the standby)
//! operator process of the two that run with leader election; API server, etcd and
//! controller manager restarts; on the real nodes, SIGKILL of a container's main process
//! (`container-kill`; its kubelet restarts it), and a real node crashed (`node-crash`: its
//! kubelet, containerd and containers killed) or cut off (`node-partition`: its kubelet stops,
//! its containers run on) for 25 to 50 s, one real node at a time. After an etcd restart every service must be there with the
//! UID and creation time it had before (data kept), else a `data-lost` violation.
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
//! - a claim's containers: on the real nodes, never two pods' containers running at once
//!   with one local volume mounted, as each node's containerd reports its tasks starting and
//!   ending (see containers.rs): the pods cannot show a container a stopped kubelet left
//!   running after its pod was deleted;
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
//! - one lease term at a time: every write of the operators in the soak's namespace (the
//!   audit log's, Lease updates aside) comes from the process that held the leader Lease
//!   when the API server received it; the operator names itself in its User-Agent;
//! - no failed request: the client sends TRAFFIC_PER_SECOND requests a second to the real
//!   stateless service's ClusterIP from before the faults until every service is back, each
//!   on a new connection; one may fail only inside a fault window on that service (a pod of
//!   it killed, its container killed, a node under one of its pods lost, until it has
//!   recovered) or during a control-plane restart (the proxy learns of endpoints through the
//!   API server), or TRAFFIC_GRACE after either. A rolling update, an operator kill or a
//!   fault elsewhere fails none;
//! - no operator panic ("panicked at" in any operator process's output), no operator
//!   process that stops on its own except a leader that lost its lease (the API server
//!   gone past the renew deadline: it exits by design and is started again), and no log
//!   storm (see STORM_LINES_PER_WINDOW and HOT_LOOP_RECONCILES_PER_WINDOW).
//!
//! The soak restarts the API server, etcd and the controller manager, so nothing may run beside
//! it: cargo runs test binaries one after another, and the other test of this binary only
//! checks the checks, on made-up states. A control-plane process that stops on its own
//! (kube-scheduler exits when it finds its cache corrupted, which an API server restart can
//! bring about) is started again, as a kubelet would, and reported. The soak's pods run on
//! fake nodes of its own, tainted so that nothing else lands there; node faults touch only
//! those, every lost node is brought back even when the soak fails, and the nodes, their
//! volumes and the namespace are deleted at the end.

mod checks;
mod containers;
mod faults;
mod fleet;
mod handshakes;
mod monitor;
mod nodes;
mod pods;
mod schedule;
mod services;
#[path = "../support/mod.rs"]
mod support;
mod terms;
mod traffic;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containers::*;
use faults::*;
use fleet::*;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use monitor::*;
use nodes::*;
use perennial::api::{
    ResilientService, RollbackPolicy, UpdateStrategy, VolumeLostPolicy, LABEL_SERVICE, LABEL_SLOT,
};
use pods::*;
use schedule::*;
use serde_json::{json, Value};
use services::*;
use support::real::{
    cluster_ip_service_of, node_socket, on_real_nodes, real_nodes, testapp_container, wait_serving,
    Traffic, TrafficCount, TESTAPP_V1_IMAGE, TESTAPP_V2_IMAGE,
};
use support::*;
use terms::*;

/// Seconds of faults when CHAOS_SECONDS is not set: short enough for `make test`.
pub(crate) const DEFAULT_SECONDS: u64 = 90;
/// Creating the nodes, volumes and twenty services and seeing them all Available.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Every service Available again after the faults stop: a lost node's pods come back
/// within seconds of node-back, and a replaced bad template is one rollout of at most five
/// pods, each Ready about a second after it is made; the rest is room for a loaded machine.
pub(crate) const CONVERGENCE_BOUND: Duration = Duration::from_secs(180);
pub(crate) const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";
pub(crate) const CHAOS_MODES: [&str; 4] = ["crash-loop", "oom", "fail", "never-ready"];
/// The node label that puts the soak's pods on its own nodes and nowhere else.
pub(crate) const GROUP_LABEL: &str = "perennial.dev/chaos-group";
pub(crate) const TEST_NODE_TAINT: &str = "perennial.dev/test-node";
pub(crate) const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
pub(crate) const NODE_PREFIX: &str = "chaos";
pub(crate) const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
pub(crate) const NODES: usize = 6;
/// Real nodes the soak's real services run on and its real-node faults hit: the cluster's
/// default. At most one of them is down at a time, so that each real service has somewhere
/// to run.
pub(crate) const REAL_NODE_COUNT: usize = 2;
/// Requests per second the client sends to the real stateless service's ClusterIP.
pub(crate) const TRAFFIC_PER_SECOND: u32 = 20;
/// How long after a fault window closes a request may still fail: the proxy learns of an
/// endpoint's change through the API server, a moment after the pod's condition changes.
pub(crate) const TRAFFIC_GRACE: Duration = Duration::from_secs(5);
/// Local volumes per node: the first claims, and the claims rebuilt after node losses
/// (a released volume is not reused: its reclaim policy is Retain).
pub(crate) const VOLUMES_PER_NODE: usize = 12;
/// Nodes lost at once, at most: enough for the storm guard to stay quiet (the cluster has
/// twice as many nodes again) and for one-per-node services to find a node.
pub(crate) const MAX_LOST_NODES: usize = 2;
/// Seconds a lost node stays lost: the operator acts on a loss 23 s after the last
/// heartbeat at the earliest (nodeLostAfterSeconds 10, floored at 12, plus 11 to settle).
pub(crate) const NODE_LOST_SECONDS: (f64, f64) = (25.0, 50.0);
/// How long KWOK may take to heartbeat a node again after node-back.
pub(crate) const NODE_BACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds between two control-plane restarts, at least.
pub(crate) const CONTROL_PLANE_SPACING: f64 = 30.0;
/// Seconds between two faults.
pub(crate) const GAP_SECONDS: (f64, f64) = (2.0, 7.0);
/// Log storm: lines at INFO or above from one operator process in any ten one-second
/// windows. Every such line is an "acting" line (at least one API request follows), a
/// failed reconcile (after a request) or one of a handful of lifecycle lines, and the
/// operator's client is rate limited to 50 requests/s with a burst of 100: ten seconds
/// allow at most 600 requests, so more than 700 lines cannot be explained by work done.
pub(crate) const STORM_LINES_PER_WINDOW: usize = 700;
/// A hot loop: one service reconciled more than 200 times in ten seconds (20/s). A
/// reconcile follows a change to one of the service's few objects or a timer; a service of
/// at most five pods, each changing state a handful of times per replacement, never needs
/// that many, even in a rollout under faults.
pub(crate) const HOT_LOOP_RECONCILES_PER_WINDOW: usize = 200;
pub(crate) const STORM_WINDOW_TICKS: usize = 10;
/// How long after its node came back a claim may still be rebuilt for the loss: the
/// operator's caches and the node's Lease and Ready condition catch up within seconds.
pub(crate) const REBUILD_GRACE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// The soak

pub(crate) fn median(sorted: &[f64]) -> f64 {
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
        let zone = ZONES[i % ZONES.len()];
        let labels = [(GROUP_LABEL, group.as_str())];
        test_nodes.push(TestNode::with_labels(&client, NODE_PREFIX, zone, &labels).await);
    }
    let nodes: Vec<String> = test_nodes.iter().map(|n| n.name.clone()).collect();
    let mut real = real_nodes(&client, REAL_NODE_COUNT).await;
    real.sort();
    real.truncate(REAL_NODE_COUNT);
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
    println!("nodes: {nodes:?} ({VOLUMES_PER_NODE} local volumes each); real nodes: {real:?}");

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
    // What the real nodes' runtimes run, followed from before the first pod is made.
    let containers = Arc::new(Mutex::new(Containers {
        clock: Clock(origin),
        verbose: true,
        ..Containers::default()
    }));
    let container_watch = ContainerWatch::start(&real, &ns.name, containers.clone());
    let lease = format!("chaos-leader-{}", unique_suffix());
    let (terms, term_watch) = watch_terms(&client, &ns.name, &lease);
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
    // The client: requests through a ClusterIP Service to the real stateless service, from
    // before the faults until every service is back.
    let served = cluster_ip_service_of(&ns, &format!("{SERVED}-client"), SERVED).await;
    wait_serving(served, "v1").await;
    let traffic_origin = jiff::Timestamp::now() - origin.elapsed();
    let handshakes = handshakes::Recorder::start(served);
    let client_traffic = Traffic::start(served, TRAFFIC_PER_SECOND);
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
        real_nodes: real.clone(),
        control_plane_windows: Vec::new(),
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
            for node in nodes.iter().chain(&real) {
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

    // The client stops; a request may have failed only inside a fault window on what serves
    // it, or during a control-plane restart.
    let counts = client_traffic.stop();
    let failed = traffic::failures(&counts, traffic_origin);
    let windows: Vec<(f64, f64)> = {
        let now = origin.elapsed().as_secs_f64();
        let mut w = lock(&monitor).fault_windows(SERVED, now);
        w.extend(chaos.control_plane_windows.iter().copied());
        w
    };
    let outside_windows = traffic::unexcused(&failed, &windows);
    let network = handshakes.stop();

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
    drop(container_watch);
    let runtime = std::mem::take(&mut *lock(&containers));
    violations.extend(runtime.violations.iter().cloned());
    let stateful_real = (chaos.profiles.iter())
        .filter(|p| p.real && p.spec.get("volumeClaimTemplates").is_some())
        .count();
    if runtime.claims_seen.len() < stateful_real {
        violations.push(Violation {
            at: 0.0,
            until: None,
            kind: "claims-unwatched",
            subject: "containerd".into(),
            details: format!(
                "{} local volumes seen mounted by a running container on the real nodes, {stateful_real} stateful services there: the runtime check watched nothing",
                runtime.claims_seen.len()
            ),
        });
    }
    let now = origin.elapsed().as_secs_f64();
    term_watch.abort();
    let watched = lock(&terms).len();
    let terms = all_terms(&lock(&terms), &ns.name, &lease);
    let (writes_checked, outside) = writes_outside_their_term(&ns.name, &terms, now);
    violations.extend(outside);
    violations.extend(traffic::violations(&outside_windows));
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
    println!(
        "requests to {SERVED} through its ClusterIP: {counts}; {} failed inside {} fault windows, {} outside",
        failed.len() - outside_windows.len(),
        windows.len(),
        outside_windows.len()
    );
    handshakes::report(&network, &outside_windows, traffic_origin);
    println!(
        "containers on the real nodes (containerd's events): {} starts and {} ends of the soak's, read whole {} times; claims mounted by a running container: {:?}, most pods running on one at once: {}",
        runtime.starts,
        runtime.ends,
        runtime.listings,
        runtime.claims_seen,
        runtime.most_on_one_claim
    );
    println!(
        "one lease term at a time: {writes_checked} writes in the audit log, each checked against {} states of the lease ({} of them seen only in the audit log's record of the Lease's writes)",
        terms.len(),
        terms.len() - watched
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
