//! Scenario 4: many services at once. BENCH_SCALE_SERVICES ResilientServices (default 1000)
//! of BENCH_SCALE_REPLICAS replicas (default 10) on enough KWOK nodes: time until all are
//! Available, the operator's peak RSS and CPU seconds, its API requests by verb (from the API
//! server's audit log), its writes during a steady-state window, and its reconcile latency
//! (from its own histogram). The same number of Deployments is measured after, against the
//! controller manager's deployment and replicaset controllers.
//!
//! BENCH_OPERATOR_ARGS (space-separated) are added to the operator's command line, to find
//! what limits it (`--api-qps 200 --api-burst 400`); such a run's results go to
//! `scale-<pods>-tuned.json`, apart from the curve's.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use perennial::api::ResilientService;
use serde_json::json;

use super::support::*;
use super::{write_results, Kind};

/// How long a heap-profiling operator may take to write its profile once told to stop.
const PROFILE_WRITTEN: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: u64) -> u64 {
    env_opt(name).unwrap_or(default)
}

/// A number from the environment, None when unset or not a number.
fn env_opt<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// Resident set now and at its peak, and CPU seconds used, of a process, from /proc.
fn process_figures(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0, cpu)
}

/// Starts a process's peak RSS afresh from its RSS now (Linux's `clear_refs` 5), so that the
/// controller manager's peak is the one its controllers reach in this run, not one from before
/// it (earlier runs, or the operator's side of this one, whose pods it also garbage-collects).
/// Whether it could is the answer: without it, only the RSS at the end means anything.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub(crate) fn audit_len() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

pub(crate) fn audit_log() -> std::path::PathBuf {
    kubeconfig_path()
        .parent()
        .expect("the cluster directory")
        .join("logs/audit.log")
}

/// The audit log's bytes between two offsets, read alone: at 30,000 pods the file holds
/// gigabytes. A log that shrank was rotated between them, and its count would be wrong.
pub(crate) fn audit_range(from: u64, to: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    assert!(
        audit_len() >= to && to >= from,
        "the audit log was rotated during the measurement: raise AUDIT_LOG_MAX_MB for `make cluster`"
    );
    let mut file = std::fs::File::open(audit_log()).expect("the audit log");
    file.seek(SeekFrom::Start(from))
        .expect("seek in the audit log");
    let mut bytes = Vec::new();
    file.take(to - from)
        .read_to_end(&mut bytes)
        .expect("read the audit log");
    bytes
}

/// Requests by verb that `users` made between two offsets of the audit log, and apart
/// from them the Event writes (create, patch, update of `events`, in either API group) that
/// `event_users` made in namespace `ns`: the built-in controllers' Events may be sent under
/// the controller manager's own identity.
struct Tally {
    by_verb: BTreeMap<String, u64>,
    /// The writes of `users` by `verb resource[/subresource]`: where they go.
    writes_by_resource: BTreeMap<String, u64>,
    event_writes: u64,
}

fn tally(users: &[&str], event_users: &[&str], ns: &str, from: u64, to: u64) -> Tally {
    let bytes = audit_range(from, to);
    let text = String::from_utf8_lossy(&bytes);
    let mut out = Tally {
        by_verb: BTreeMap::new(),
        writes_by_resource: BTreeMap::new(),
        event_writes: 0,
    };
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let user = e["user"]["username"].as_str().unwrap_or_default();
        let verb = e["verb"].as_str().unwrap_or_default();
        // A watch is counted when it starts; every other request when it completes.
        let counted = if verb == "watch" {
            e["stage"] == "ResponseStarted"
        } else {
            e["stage"] == "ResponseComplete"
        };
        if !counted {
            continue;
        }
        let write = ["create", "patch", "update"].contains(&verb);
        if users.contains(&user) {
            *out.by_verb.entry(verb.to_string()).or_default() += 1;
            if write || verb == "delete" {
                let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
                let key = match e["objectRef"]["subresource"].as_str() {
                    Some(sub) => format!("{verb} {resource}/{sub}"),
                    None => format!("{verb} {resource}"),
                };
                *out.writes_by_resource.entry(key).or_default() += 1;
            }
        }
        let event = e["objectRef"]["resource"] == "events" && e["objectRef"]["namespace"] == ns;
        if event && write && (users.contains(&user) || event_users.contains(&user)) {
            out.event_writes += 1;
        }
    }
    out
}

fn writes(verbs: &BTreeMap<String, u64>) -> u64 {
    ["create", "update", "patch", "delete", "deletecollection"]
        .iter()
        .map(|v| verbs.get(*v).copied().unwrap_or(0))
        .sum()
}

/// Reconcile passes the operator has finished, whatever their result.
fn reconciles(text: &str) -> f64 {
    ["ok", "error"]
        .iter()
        .filter_map(|r| {
            metric(
                text,
                &format!("perennial_reconciles_total{{result=\"{r}\"}}"),
            )
        })
        .sum()
}

/// The p-quantile of a Prometheus histogram, as the upper bound of the bucket it falls in.
fn histogram_quantile(text: &str, name: &str, p: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, count)| *count >= p * total)
        .map(|(le, _)| *le)
}

/// Waits until `services` of `kind` in `ns` are Available, by a watch: a list polled every
/// 200 ms cost the API server a list of every service each time (11 MB of JSON at 3,000
/// ResilientServices), load that neither controller makes and that grew with the services.
async fn all_available(ns: &TestNamespace, kind: Kind, services: usize, replicas: i32) {
    match kind {
        Kind::Perennial => {
            until_all(ns.api::<ResilientService>(), services, |s| {
                let st = s.status.clone().unwrap_or_default();
                st.available_replicas == replicas
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
            })
            .await
        }
        _ => {
            until_all(ns.api::<Deployment>(), services, |d| {
                d.status.as_ref().and_then(|s| s.available_replicas) == Some(replicas)
            })
            .await
        }
    }
}

/// Follows the objects of `api` until `count` of them are `available` at once.
async fn until_all<K>(api: Api<K>, count: usize, available: impl Fn(&K) -> bool)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let timeout = Duration::from_secs(env_or("BENCH_SCALE_TIMEOUT", 3600));
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut ready = HashSet::new();
    let followed = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    if available(&o) {
                        ready.insert(o.name_any());
                    } else {
                        ready.remove(&o.name_any());
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    ready.remove(&o.name_any());
                }
                // A new list tells the state afresh.
                Ok(watcher::Event::Init) => ready.clear(),
                Ok(watcher::Event::InitDone) | Err(_) => {}
            }
            if ready.len() == count {
                return;
            }
        }
    };
    if tokio::time::timeout(timeout, followed).await.is_err() {
        panic!(
            "timed out after {timeout:?} waiting for {count} {} Available; {} were",
            K::kind(&()),
            ready.len()
        );
    }
}

async fn create_many(ns: &TestNamespace, kind: Kind, services: usize, replicas: i32, group: &str) {
    let template = json!({
        "metadata": {"labels": {"app": "scale"}},
        "spec": {
            "containers": [{"name": "app", "image": "example/app:1"}],
            "nodeSelector": {"bench-group": group},
            "tolerations": [{"key": "perennial.dev/test-node", "operator": "Exists", "effect": "NoSchedule"}]
        }
    });
    // BENCH_SCALE_NODE_LOST_AFTER: at 300 KWOK nodes on two cores, KWOK renews the node
    // Leases more than the default 30 s apart; 300 is what a Deployment's pods tolerate of
    // a node not ready by default.
    let node_lost_after: Option<i32> = env_opt("BENCH_SCALE_NODE_LOST_AFTER");
    // BENCH_SCALE_PROGRESS_DEADLINE: a pod not Ready within the deadline is restarted, and
    // with 30,000 pods queued KWOK marks them Ready more than the default 600 s late. A
    // Deployment waits for its pods however long they take.
    let progress_deadline: Option<i32> = env_opt("BENCH_SCALE_PROGRESS_DEADLINE");
    stream::iter(0..services)
        .for_each_concurrent(16, |i| {
            let template = template.clone();
            async move {
                let name = format!("s{i:04}");
                let mut template = template;
                template["metadata"]["labels"]["app"] = json!(name);
                let pp = PostParams::default();
                match kind {
                    Kind::Perennial => {
                        let mut spec = json!({"replicas": replicas, "template": template});
                        if let Some(seconds) = node_lost_after {
                            spec["repair"] = json!({"nodeLostAfterSeconds": seconds});
                        }
                        if let Some(seconds) = progress_deadline {
                            spec["update"] = json!({"progressDeadlineSeconds": seconds});
                        }
                        let svc: ResilientService = serde_json::from_value(json!({
                            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                            "metadata": {"name": name}, "spec": spec
                        }))
                        .unwrap();
                        ns.api::<ResilientService>().create(&pp, &svc).await.unwrap();
                    }
                    _ => {
                        let d: Deployment = serde_json::from_value(json!({
                            "metadata": {"name": name},
                            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template}
                        }))
                        .unwrap();
                        ns.api::<Deployment>().create(&pp, &d).await.unwrap();
                    }
                }
            }
        })
        .await;
}

async fn wait_no_pods(ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    wait_for(
        "the namespace's pods to be gone",
        Duration::from_secs(1800),
        || async {
            // One item and the count of the rest: not a list of every pod each time.
            let n = pods
                .list(&ListParams::default().limit(1))
                .await
                .map(|l| {
                    l.items.len() as u64
                        + l.metadata.remaining_item_count.unwrap_or(0).max(0) as u64
                })
                // A failed list says nothing of the pods: not "none left".
                .map_err(|e| e.to_string())?;
            (n == 0).then_some(()).ok_or(format!("{n} pods left"))
        },
    )
    .await;
}

fn controller_manager_pid() -> Option<u32> {
    let path = kubeconfig_path()
        .parent()?
        .join("pids/kube-controller-manager.pid");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes of a tally, Events included: for the built-in controllers, those its Events'
/// identity sent too.
fn all_writes(t: &Tally, events_apart: bool) -> u64 {
    writes(&t.by_verb) + if events_apart { t.event_writes } else { 0 }
}

#[tokio::test]
#[ignore = "a benchmark: run with make bench"]
async fn bench_scale_many_services() {
    let services = env_or("BENCH_SCALE_SERVICES", 1000) as usize;
    let replicas = env_or("BENCH_SCALE_REPLICAS", 10) as i32;
    let steady = Duration::from_secs(env_or("BENCH_STEADY_SECONDS", 120));
    let client = client().await;
    let group = format!("scale-{}", unique_suffix());
    let pods_total = services * replicas as usize;
    let node_count = pods_total.div_ceil(100).max(1);
    let mut nodes = Vec::new();
    for i in 0..node_count {
        let zone = ["zone-a", "zone-b", "zone-c"][i % 3];
        let node = TestNode::new(&client, "bench-scale", zone).await;
        kubectl(&["label", "node", &node.name, &format!("bench-group={group}")]);
        nodes.push(node);
    }
    let mut rows = Vec::new();
    println!("\nScale: {services} services x {replicas} replicas = {pods_total} pods on {node_count} nodes");

    // Perennial.
    let ns = TestNamespace::new("bench-scale").await;
    install_crd(&ns.client).await;
    let tuning = std::env::var("BENCH_OPERATOR_ARGS").unwrap_or_default();
    let mut args = vec!["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"];
    args.extend(tuning.split_whitespace());
    let mut op = Operator::start_with(&ns.name, &args);
    let addr = metrics_addr(&op).await;
    let (_, _, cpu0) = process_figures(op.child.id());
    let passes0 = reconciles(&scrape(&addr).await);
    let a0 = audit_len();
    let t0 = Instant::now();
    create_many(&ns, Kind::Perennial, services, replicas, &group).await;
    all_available(&ns, Kind::Perennial, services, replicas).await;
    let converged = t0.elapsed();
    let a1 = audit_len();
    let (_, _, cpu1) = process_figures(op.child.id());
    let passes1 = reconciles(&scrape(&addr).await);
    tokio::time::sleep(steady).await; // a measuring window, not a wait for a condition
    let a2 = audit_len();
    let (rss, peak, cpu2) = process_figures(op.child.id());
    let text = scrape(&addr).await;
    let steady_passes = reconciles(&text) - passes1;
    let p50 = histogram_quantile(&text, "perennial_reconcile_duration_seconds", 0.5);
    let p99 = histogram_quantile(&text, "perennial_reconcile_duration_seconds", 0.99);
    let ours = ["perennial-operator"];
    let converging = tally(&ours, &[], &ns.name, a0, a1);
    let steady_ours = tally(&ours, &[], &ns.name, a1, a2);
    let ours_row = Figures {
        available: converged.as_secs_f64(),
        rss_mib: peak,
        cpu_converging: cpu1 - cpu0,
        cpu_steady: cpu2 - cpu1,
        writes: all_writes(&converging, false),
        event_writes: converging.event_writes,
        steady_writes: all_writes(&steady_ours, false),
    };
    rows.push(json!({
        "controller": "perennial", "services": services, "replicas": replicas, "pods": pods_total,
        "all_available_seconds": ours_row.available,
        "rss_mib": rss, "peak_rss_mib": peak, "cpu_seconds_converging": ours_row.cpu_converging,
        "cpu_seconds_steady": ours_row.cpu_steady, "requests_by_verb": converging.by_verb,
        "writes_by_resource": converging.writes_by_resource,
        "writes_converging": ours_row.writes, "event_writes_converging": ours_row.event_writes,
        "steady_writes": ours_row.steady_writes, "steady_seconds": steady.as_secs(),
        "steady_reconciles": steady_passes,
        "reconciles_converging": passes1 - passes0,
        "reconcile_p50_s_upper_bound": p50, "reconcile_p99_s_upper_bound": p99,
        "peak_rss_kib_per_pod": peak * 1024.0 / pods_total as f64,
        "cpu_ms_per_pod_converging": ours_row.cpu_converging * 1000.0 / pods_total as f64,
    }));
    if std::env::var_os("PERENNIAL_HEAP_PROFILE").is_some() {
        // SIGTERM, so that the heap-profiling build writes its profile.
        op.stop(PROFILE_WRITTEN).await;
    } else {
        drop(op);
    }
    let ns_name = ns.name.clone();
    drop(ns);
    wait_no_pods(&ns_name).await;
    if env_or("BENCH_SCALE_BUILTIN", 1) == 0 {
        println!("{}", serde_json::to_string(&rows[0]).unwrap());
        return;
    }

    // The built-in deployment and replicaset controllers, inside the controller manager.
    let ns = TestNamespace::new("bench-scale").await;
    let kcm = controller_manager_pid();
    let peak_from_now = kcm.is_some_and(reset_peak_rss);
    let (_, _, kcpu0) = kcm.map(process_figures).unwrap_or_default();
    let a0 = audit_len();
    let t0 = Instant::now();
    create_many(&ns, Kind::Deployment, services, replicas, &group).await;
    all_available(&ns, Kind::Deployment, services, replicas).await;
    let converged = t0.elapsed();
    let a1 = audit_len();
    let (_, _, kcpu1) = kcm.map(process_figures).unwrap_or_default();
    tokio::time::sleep(steady).await; // a measuring window, not a wait for a condition
    let a2 = audit_len();
    let (krss_end, kpeak, kcpu2) = kcm.map(process_figures).unwrap_or_default();
    // The controller manager's peak over its side when its mark could be reset, as the
    // operator's is over its whole life; else its RSS at the end, and the table says which.
    let krss = if peak_from_now { kpeak } else { krss_end };
    let theirs = [
        "system:serviceaccount:kube-system:deployment-controller",
        "system:serviceaccount:kube-system:replicaset-controller",
    ];
    let their_events = ["system:kube-controller-manager"];
    let converging = tally(&theirs, &their_events, &ns.name, a0, a1);
    let steady_theirs = tally(&theirs, &their_events, &ns.name, a1, a2);
    let theirs_row = Figures {
        available: converged.as_secs_f64(),
        rss_mib: krss,
        cpu_converging: kcpu1 - kcpu0,
        cpu_steady: kcpu2 - kcpu1,
        writes: all_writes(&converging, true),
        event_writes: converging.event_writes,
        steady_writes: all_writes(&steady_theirs, true),
    };
    rows.push(json!({
        "controller": "deployment", "services": services, "replicas": replicas, "pods": pods_total,
        "all_available_seconds": theirs_row.available,
        "controller_manager_rss_mib": krss,
        "controller_manager_rss_is_peak": peak_from_now,
        "controller_manager_rss_at_end_mib": krss_end,
        "controller_manager_cpu_seconds_converging": theirs_row.cpu_converging,
        "controller_manager_cpu_seconds_steady": theirs_row.cpu_steady,
        "requests_by_verb": converging.by_verb,
        "writes_by_resource": converging.writes_by_resource,
        "writes_converging": theirs_row.writes, "event_writes_converging": theirs_row.event_writes,
        "steady_writes": theirs_row.steady_writes, "steady_seconds": steady.as_secs(),
        "cpu_ms_per_pod_converging": theirs_row.cpu_converging * 1000.0 / pods_total as f64,
    }));
    let ns_name = ns.name.clone();
    drop(ns);
    wait_no_pods(&ns_name).await;

    for r in &rows {
        println!("{}", serde_json::to_string(r).unwrap());
    }
    println!(
        "{:<11} {:>10} {:>8} {:>11} {:>10} {:>8} {:>8} {:>8}",
        "controller",
        "Available",
        "RSS MiB",
        "CPU s conv",
        "CPU s idle",
        "writes",
        "events",
        "idle wr"
    );
    for (name, f) in [("perennial", &ours_row), ("deployment", &theirs_row)] {
        println!(
            "{:<11} {:>9.1}s {:>8.1} {:>11.1} {:>10.2} {:>8} {:>8} {:>8}",
            name,
            f.available,
            f.rss_mib,
            f.cpu_converging,
            f.cpu_steady,
            f.writes,
            f.event_writes,
            f.steady_writes
        );
    }
    println!(
        "(RSS: the operator's peak; for the built-in, the whole controller manager's {}; \
         writes include Events; idle: the {} s steady window)",
        if peak_from_now {
            "peak while its controllers converged and idled"
        } else {
            "RSS at the end (its peak could not be reset)"
        },
        steady.as_secs()
    );
    write_results("scale", json!(rows));
    // One file per size too: the scaling curve (docs/plot_scale.py) reads them all.
    let tuned = if tuning.trim().is_empty() {
        ""
    } else {
        "-tuned"
    };
    write_results(&format!("scale-{pods_total}{tuned}"), json!(rows));
}

/// One side's figures, as the table prints them.
struct Figures {
    available: f64,
    rss_mib: f64,
    cpu_converging: f64,
    cpu_steady: f64,
    writes: u64,
    event_writes: u64,
    steady_writes: u64,
}
