//! Faults between one operator and the API server only, through toxiproxy: latency, a
//! bandwidth limit and connection resets slow the operator down but change nothing it
//! does; a blackhole makes a leader stop within its renew deadline, before a standby that
//! still reaches the server takes the lease and finishes the rollout. And the server's own
//! throttling: API Priority and Fairness refusing the operator with 429s.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use perennial::api::ResilientService;
use serde_json::json;
use support::fault_proxy::FaultProxy;
use support::nodes::*;
use support::service::*;
use support::*;

const THREE_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Every request of the operator is slowed here: room for a busy machine on top.
const SLOW: Duration = Duration::from_secs(360);
/// Pods the operator's identity created in `namespace`, by name, counting only creates
/// the server accepted: a create retried after a reset must find the pod there, not make
/// a second one.
fn accepted_pod_creates(namespace: &str) -> BTreeMap<String, usize> {
    count_accepted_pod_creates(operator_write_entries(namespace))
}

fn count_accepted_pod_creates(entries: Vec<serde_json::Value>) -> BTreeMap<String, usize> {
    let mut creates = BTreeMap::new();
    for e in entries {
        if e["verb"] == "create"
            && e["objectRef"]["resource"] == "pods"
            && e["responseStatus"]["code"] == 201
        {
            let name = e["objectRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *creates.entry(name).or_default() += 1;
        }
    }
    creates
}

/// Resets every connection through `proxy` (watches included) at once, now and then every
/// `period`, until the task is aborted; counts the resets.
fn reset_every(
    proxy: &Arc<FaultProxy>,
    period: Duration,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let resets = Arc::new(AtomicUsize::new(0));
    let (proxy, count) = (proxy.clone(), resets.clone());
    let task = tokio::spawn(async move {
        loop {
            proxy.reset_all();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(period).await; // the fault's period
        }
    });
    (resets, task)
}

/// Waits until `op` holds `lease` (its identity ends in its process id).
async fn wait_holder(ns: &TestNamespace, lease: &str, op: &Operator, what: &str) {
    let id = format!("-{}", op.child.id());
    wait_for(what, SLOW, || async {
        match holder(ns, lease).await {
            Some(h) if h.ends_with(&id) => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
}

/// The `retry_in` of a "reconcile failed" line (a Duration's Debug: `16s`, `500ms`).
fn retry_in(line: &str) -> Option<Duration> {
    let token = line.split("retry_in=").nth(1)?.split_whitespace().next()?;
    if let Some(ms) = token.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    }
    token
        .strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

fn assert_each_pod_created_once(namespace: &str) {
    let creates = accepted_pod_creates(namespace);
    assert!(
        !creates.is_empty(),
        "the audit log shows the operator's creates"
    );
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pods created more than once: {twice:?}");
}

#[tokio::test]
async fn through_latency_a_bandwidth_limit_and_connection_resets_the_operator_rolls_out_and_creates_each_pod_once(
) {
    let proxy = Arc::new(FaultProxy::start());
    let ns = TestNamespace::new("api-slow").await;
    let nodes = NodeGroup::new(&ns.client, "api-slow", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    // 300 to 500 ms on every answer, and 256 KiB/s for all of them together.
    proxy.add("slow", "latency", &[("latency", "400"), ("jitter", "100")]);
    proxy.add("narrow", "bandwidth", &[("rate", "256")]);
    let mut operator = Operator::start_with_kubeconfig(
        &ns.name,
        &proxy.kubeconfig,
        &["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"],
    );
    // Each new pod is held 5 s before the next is replaced: the rollout lasts longer than
    // two periods of the resets below, whatever the machine's speed.
    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 5}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, SLOW).await;

    // Then, while a rolling update goes on, every connection (watches included) is reset
    // at once every 5 s, as a load balancer dropping its connections does.
    proxy.remove("slow");
    proxy.remove("narrow");
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let (resets, resetter) = reset_every(&proxy, Duration::from_secs(5));
    let revision = wait_update_revision(&api, "web", generation, SLOW).await;
    wait_svc(
        &api,
        "web",
        "the rollout complete through the resets",
        SLOW,
        |svc| complete(svc, 3, &revision),
    )
    .await;
    resetter.abort();
    let resets = resets.load(Ordering::SeqCst);
    println!("the rollout completed through {resets} resets of every connection");
    assert!(
        resets >= 2,
        "the rollout outlasted at least two resets, or they proved nothing"
    );
    operator.assert_sound("the resets");
    let log = operator.output();
    assert!(
        log.contains("error") || log.contains("WARN"),
        "the resets were felt by the operator (else they did not happen): {}",
        operator.log.display()
    );
    assert_each_pod_created_once(&ns.name);
    let svc: ResilientService = api.get("web").await.unwrap();
    assert_eq!(status(&svc).replicas, 3);
}

#[tokio::test]
async fn with_every_connection_reset_every_10_s_from_start_to_finish_the_operator_converges_and_retries_within_30_s(
) {
    let proxy = Arc::new(FaultProxy::start());
    let ns = TestNamespace::new("api-resets").await;
    let nodes = NodeGroup::new(&ns.client, "api-resets", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    // Every answer takes 200 to 400 ms, and every connection (watches included) is reset
    // every 10 s from before the operator starts until the rollout is done, as behind a
    // load balancer that ends its connections early: requests are cut mid-flight, every
    // watch is opened again and again, and a pass of a few requests may be cut anywhere.
    proxy.add("slow", "latency", &[("latency", "300"), ("jitter", "100")]);
    let (resets, resetter) = reset_every(&proxy, Duration::from_secs(10));
    let mut operator = Operator::start_with_kubeconfig(
        &ns.name,
        &proxy.kubeconfig,
        &["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"],
    );
    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 3}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, SLOW).await;
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let revision = wait_update_revision(&api, "web", generation, SLOW).await;
    wait_svc(
        &api,
        "web",
        "the rollout complete through the resets",
        SLOW,
        |svc| complete(svc, 3, &revision),
    )
    .await;
    resetter.abort();
    println!(
        "converged and rolled out through {} resets of every connection",
        resets.load(Ordering::SeqCst)
    );
    operator.assert_sound("constant resets");
    let log = operator.output();
    let failed: Vec<&str> = (log.lines())
        .filter(|l| l.contains("reconcile failed"))
        .collect();
    println!("{} passes failed on a reset and were retried", failed.len());
    // A pass cut off by a reset is a transient failure, retried within 30 s rather than
    // after the minutes a pass that fails on its own input waits.
    let late: Vec<&&str> = (failed.iter())
        .filter(|l| {
            !l.contains("transient=true") || retry_in(l).is_none_or(|d| d > Duration::from_secs(30))
        })
        .collect();
    assert!(
        late.is_empty(),
        "passes cut off by a reset not retried as transient within 30 s: {late:?}"
    );
    assert_each_pod_created_once(&ns.name);
}

#[tokio::test]
async fn a_leader_cut_off_by_a_blackhole_stops_within_its_renew_deadline_before_a_standby_takes_over_and_finishes_the_rollout(
) {
    let proxy = FaultProxy::start();
    let ns = TestNamespace::new("api-blackhole").await;
    let nodes = NodeGroup::new(&ns.client, "api-blackhole", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    let lease = "blackhole-leader";
    let mut args = vec![
        "--leader-elect=true",
        "--lease-namespace",
        &ns.name,
        "--lease-name",
        lease,
    ];
    args.extend(SHORT_LEASE);
    args.extend(["--metrics-addr", "127.0.0.1:0"]);
    let mut cut_off = Operator::start_with_kubeconfig(&ns.name, &proxy.kubeconfig, &args);
    wait_holder(&ns, lease, &cut_off, "the proxied operator to lead").await;
    let standby = elector_with(&ns.name, lease, &SHORT_LEASE);

    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 0}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, SLOW).await;
    let generation = patch_spec(&api, "web", new_image("example/app:2")).await;
    let revision = wait_update_revision(&api, "web", generation, SLOW).await;

    // Its connections hang: nothing comes back and nothing it sends arrives.
    proxy.add_both_ways("blackhole", "timeout", &[("timeout", "0")]);
    let cut_at = Instant::now();
    let exited_at = wait_for("the cut-off leader to stop", SLOW, || {
        let exited = cut_off.child.try_wait().expect("poll the operator");
        async move {
            exited
                .map(|_| jiff::Timestamp::now())
                .ok_or("still running".to_string())
        }
    })
    .await;
    let stopped_after = cut_at.elapsed();
    println!(
        "the cut-off leader stopped {stopped_after:?} after the blackhole (renew deadline 4 s)"
    );
    assert!(
        stopped_after <= Duration::from_secs(4 + 2 + 5),
        "a leader that cannot renew stops at its renew deadline, not {stopped_after:?} later"
    );

    wait_holder(&ns, lease, &standby, "the standby to take the lease").await;
    let leases: Api<Lease> = ns.api();
    let acquired = (leases.get(lease).await.unwrap().spec)
        .and_then(|s| s.acquire_time)
        .expect("the lease says when it was taken")
        .0;
    assert!(
        acquired >= exited_at - jiff::SignedDuration::from_secs(1),
        "one term at a time: the standby took the lease at {acquired}, the cut-off leader stopped at {exited_at}"
    );
    wait_svc(
        &api,
        "web",
        "the standby to finish the rollout",
        SLOW,
        |svc| complete(svc, 3, &revision),
    )
    .await;
    proxy.remove("blackhole-up");
    proxy.remove("blackhole-down");
    assert_each_pod_created_once(&ns.name);
    let log = cut_off.output();
    assert!(!log.contains("panicked at"), "{}", cut_off.log.display());
}

/// A PriorityLevel of one share that rejects what it cannot seat at once, and a FlowSchema
/// that sends it every namespaced request of one ServiceAccount in one namespace; both
/// deleted when the guard drops (they are cluster-scoped).
struct Squeeze {
    name: String,
}

impl Squeeze {
    fn apply(service_account: (&str, &str), namespace: &str) -> Self {
        let name = format!("squeeze-{}", unique_suffix());
        let (sa_namespace, sa_name) = service_account;
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
             "metadata": {"name": name},
             "spec": {"type": "Limited", "limited": {
                 "nominalConcurrencyShares": 1, "lendablePercent": 0,
                 "limitResponse": {"type": "Reject"}}}},
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
             "metadata": {"name": name},
             "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 200,
                      "distinguisherMethod": {"type": "ByUser"},
                      "rules": [{"subjects": [{"kind": "ServiceAccount",
                                               "serviceAccount": {"namespace": sa_namespace, "name": sa_name}}],
                                 "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                    "namespaces": [namespace]}]}]}}
        ]});
        let (ok, out, err) = kubectl_stdin(&["apply", "-f", "-"], &objects.to_string());
        assert!(ok, "apply the squeeze: {out}{err}");
        Self { name }
    }

    fn lift(&self) {
        let (ok, out, err) = kubectl(&self.delete_args());
        assert!(ok, "lift the squeeze: {out}{err}");
    }

    fn delete_args(&self) -> Vec<&str> {
        vec!["delete", "flowschema", &self.name, "--ignore-not-found"]
    }

    /// Requests of the squeezed priority level the API server rejected and dispatched,
    /// from its own metrics.
    fn counts(&self) -> (f64, f64) {
        let (ok, text, err) = kubectl(&["get", "--raw", "/metrics"]);
        assert!(ok, "read the API server's metrics: {err}");
        let label = format!("priority_level=\"{}\"", self.name);
        let sum = |metric: &str| -> f64 {
            (text.lines())
                .filter(|l| l.starts_with(metric) && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        (
            sum("apiserver_flowcontrol_rejected_requests_total"),
            sum("apiserver_flowcontrol_dispatched_requests_total"),
        )
    }
}

impl Drop for Squeeze {
    fn drop(&mut self) {
        let _ = kubectl(&self.delete_args());
        let _ = kubectl(&[
            "delete",
            "prioritylevelconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// The audit log's entries of requests `user` was impersonated for in `namespace`.
fn impersonated_entries(user: &str, namespace: &str) -> Vec<serde_json::Value> {
    audit_entries(&[user, namespace])
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == user)
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .collect()
}

/// The shortest time between two refused attempts of one request (the same verb on the
/// same object): a client that retries a 429 at once shows here.
fn shortest_retry_of_a_refusal(entries: &[serde_json::Value]) -> Option<(Duration, String)> {
    let mut attempts: BTreeMap<String, Vec<jiff::Timestamp>> = BTreeMap::new();
    for e in entries {
        let named = e["objectRef"]["name"].as_str().is_some();
        if e["responseStatus"]["code"] != 429 || !named {
            continue;
        }
        let key = format!("{} {}", e["verb"], e["requestURI"]);
        if let Some(at) = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
        {
            attempts.entry(key).or_default().push(at);
        }
    }
    (attempts.into_iter())
        .flat_map(|(key, mut at)| {
            at.sort();
            (at.windows(2))
                .map(|w| (w[1].duration_since(w[0]).unsigned_abs(), key.clone()))
                .collect::<Vec<_>>()
        })
        .min()
}

#[tokio::test]
async fn squeezed_by_priority_and_fairness_the_operator_retries_after_each_429_creates_nothing_twice_and_converges(
) {
    let system = TestNamespace::new("api-squeeze-sys").await;
    let ns = TestNamespace::new("api-squeeze").await;
    let nodes = NodeGroup::new(&ns.client, "api-squeeze", &THREE_ZONES, 0).await;
    install_crd(&ns.client).await;
    // The chart's ServiceAccount and RBAC only: the operator's own identity is exempt from
    // Priority and Fairness (system:masters), a ServiceAccount is not.
    let (_release, _) = support::chart::Release::install(&system.name, &json!({"replicaCount": 0}));
    let user = format!(
        "system:serviceaccount:{}:{}",
        system.name,
        support::chart::RELEASE
    );
    let kubeconfig = support::chart::TempFile(
        repo_root()
            .join("target/chart-kubeconfigs")
            .join(format!("{}.kubeconfig", ns.name)),
    );
    write_impersonating_kubeconfig(&user, &kubeconfig.0);
    let squeeze = Squeeze::apply((&system.name, support::chart::RELEASE), &ns.name);
    let mut operator = Operator::start_with_kubeconfig(
        &ns.name,
        &kubeconfig.0,
        &["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"],
    );
    wait_for(
        "the squeeze to see the operator's requests",
        SLOW,
        || async {
            let (_, dispatched) = squeeze.counts();
            (dispatched > 0.0)
                .then_some(())
                .ok_or("no request of the operator's in the squeezed level yet".to_string())
        },
    )
    .await;

    // Eight services at once: many more requests in flight than the level has seats.
    let names: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    let mut apis = Vec::new();
    for name in &names {
        let spec = json!({"replicas": 4, "update": {"minReadySeconds": 0}});
        apis.push(create_service(&ns, &placed_service(name, nodes.placement(), spec)).await);
    }
    for (api, name) in apis.iter().zip(&names) {
        wait_available(api, name, 4, SLOW).await;
    }
    let (rejected, dispatched) = squeeze.counts();
    println!("under the squeeze: {rejected} requests rejected with 429, {dispatched} dispatched");
    assert!(
        rejected > 0.0,
        "the squeeze refused nothing, so it proved nothing"
    );
    operator.assert_sound("the squeeze");

    squeeze.lift();
    let lifted = Instant::now();
    let api = create_service(
        &ns,
        &placed_service(
            "after",
            nodes.placement(),
            json!({"replicas": 3, "update": {"minReadySeconds": 0}}),
        ),
    )
    .await;
    wait_available(&api, "after", 3, SLOW).await;
    println!(
        "after the squeeze: a new service available in {:?}",
        lifted.elapsed()
    );
    operator.assert_sound("the squeeze was lifted");

    let entries = impersonated_entries(&user, &ns.name);
    let refused = entries
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 429)
        .count();
    println!("the audit log shows {refused} of the operator's requests refused with 429");
    assert!(refused > 0, "the audit log shows the refusals");
    // Backing off, never a hot loop: a refused request is tried again after the server's
    // Retry-After (1 s), not at once.
    if let Some((gap, request)) = shortest_retry_of_a_refusal(&entries) {
        println!("the shortest retry of a refused request: {gap:?} ({request})");
        assert!(
            gap >= Duration::from_millis(500),
            "{request} was retried {gap:?} after a 429: a hot loop"
        );
    }
    let creates = count_accepted_pod_creates(
        entries
            .into_iter()
            .filter(|e| e["verb"] == "create")
            .collect(),
    );
    assert_eq!(creates.len(), 8 * 4 + 3, "every pod created: {creates:?}");
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pods created more than once: {twice:?}");
}
