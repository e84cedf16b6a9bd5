//! The operator's runtime on the local control plane: leader election and takeover, the
//! lease released on SIGTERM, metrics that count what happened (and forget a deleted
//! service), the start-up check of the installed CRD, and the allocator's settings.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use perennial::api::ResilientService;
use serde_json::json;
use support::service::{patch_spec, service, status};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

fn web(replicas: i32) -> ResilientService {
    let update = json!({"update": {"maxSurge": 2, "maxUnavailable": 1}});
    service("web", replicas, "example/web:1", update)
}

/// Starts a rollout of web: a template change that keeps the image.
async fn restart(api: &Api<ResilientService>) {
    let restarted = json!({"template": {"metadata": {"annotations": {"restartedAt": "1"}}}});
    patch_spec(api, "web", restarted).await;
}

async fn rolled_out(api: &Api<ResilientService>, n: i32) -> ResilientService {
    wait_for("the rollout to complete", TIMEOUT, || {
        let api = api.clone();
        async move {
            let svc = api.get("web").await.map_err(|e| e.to_string())?;
            let s = svc.status.clone().unwrap_or_default();
            let done = s.observed_generation == svc.metadata.generation
                && s.updated_replicas == n
                && s.available_replicas == n
                && s.replicas == n
                && s.current_revision == s.update_revision;
            done.then_some(svc).ok_or(format!("{s:?}"))
        }
    })
    .await
}

/// A namespace `prefix-…` with the CRD installed, and a lease name of its own.
async fn with_lease(prefix: &str) -> (TestNamespace, String) {
    let ns = TestNamespace::new(prefix).await;
    install_crd(&ns.client).await;
    (ns, format!("leader-{}", unique_suffix()))
}

/// Waits until someone holds `lease`; returns the holder.
async fn wait_leader(ns: &TestNamespace, lease: &str, what: &str) -> String {
    wait_for(what, TIMEOUT, || async {
        holder(ns, lease).await.ok_or("no holder".to_string())
    })
    .await
}

/// The operator's client offers HTTP/2 and the API server takes it: every request and
/// watch shares one connection, where HTTP/1.1 opened one per request in flight.
#[tokio::test]
async fn the_operators_client_speaks_http2_to_the_api_server_also_with_many_requests_at_once() {
    let client = perennial::api_client::client(config().await, 50, 100).unwrap();
    let versions = futures::future::join_all((0..20).map(|_| {
        let client = client.clone();
        async move {
            let request = http::Request::get("/version")
                .body(kube::client::Body::empty())
                .unwrap();
            let response = client.send(request).await.expect("the API server answers");
            assert!(response.status().is_success(), "{:?}", response.status());
            response.version()
        }
    }))
    .await;
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "answered with {versions:?}"
    );
}

/// The allocator's settings are compiled into the operator: its own thread gives freed
/// memory back while the operator is idle. Under a misspelt settings symbol jemalloc would
/// run on its defaults, silently and with no such thread.
#[tokio::test]
async fn the_operator_runs_the_allocators_thread_that_gives_freed_memory_back() {
    let ns = TestNamespace::new("rt-alloc").await;
    let op = Operator::with_crd(&ns).await;
    let tasks = format!("/proc/{}/task", op.child.id());
    wait_for("the allocator's background thread", TIMEOUT, || {
        let tasks = tasks.clone();
        async move {
            let names: Vec<String> = std::fs::read_dir(&tasks)
                .map_err(|e| format!("{tasks}: {e}"))?
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect();
            (names.iter().any(|n| n.starts_with("jemalloc_bg_thd")))
                .then_some(())
                .ok_or(format!("the operator's threads: {names:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn standby_takes_over_a_rollout_after_the_leader_is_killed_with_no_duplicate_pods() {
    let (ns, lease) = with_lease("rt-failover").await;
    let a = elector(&ns.name, &lease);
    let b = elector(&ns.name, &lease);
    let api: Api<ResilientService> = ns.api();
    api.create(&PostParams::default(), &web(6)).await.unwrap();
    rolled_out(&api, 6).await;

    let leader = wait_leader(&ns, &lease, "a leader").await;
    let mut ops = [a, b];
    let idx = ops
        .iter()
        .position(|o| leader.ends_with(&format!("-{}", o.child.id())))
        .expect("the leader is one of the two replicas");
    let pods: Api<Pod> = ns.api();
    roll_and_kill(&ns, &api, &pods, &lease, &leader, &mut ops[idx]).await;
}

/// Starts a rollout, SIGKILLs the leader, and checks that the other replica finishes it
/// without two pods ever sharing a slot and revision, and within the pod ceiling.
async fn roll_and_kill(
    ns: &TestNamespace,
    api: &Api<ResilientService>,
    pods: &Api<Pod>,
    lease: &str,
    leader: &str,
    killed: &mut Operator,
) {
    restart(api).await;
    // Kill as soon as the rollout has begun.
    wait_for("the rollout to begin", TIMEOUT, || {
        let api = api.clone();
        async move {
            let s = status(&api.get("web").await.map_err(|e| e.to_string())?);
            (s.update_revision != s.current_revision)
                .then_some(())
                .ok_or("not yet".to_string())
        }
    })
    .await;
    let killed_at = Instant::now();
    let _ = killed.child.kill();
    let _ = killed.child.wait();

    let new_leader = wait_for("another replica to take the lease", TIMEOUT, || async {
        match holder(ns, lease).await {
            Some(h) if h != leader => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let takeover = killed_at.elapsed();
    println!("takeover after SIGKILL: {takeover:?} (lease duration 6 s), new leader {new_leader}");
    assert!(
        takeover <= Duration::from_secs(6 + 5),
        "took over after {takeover:?}"
    );

    // Watch until the rollout completes: never two live pods with the same slot and revision,
    // never more than replicas + maxSurge alive.
    let worst = std::sync::atomic::AtomicUsize::new(0);
    let done = wait_for("the new leader to finish the rollout", TIMEOUT, || {
        let api = api.clone();
        let pods = pods.clone();
        let worst = &worst;
        async move {
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
            let mut alive = 0;
            for p in list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                let l = p.metadata.labels.clone().unwrap_or_default();
                *per.entry((
                    l["perennial.dev/slot"].clone(),
                    l["perennial.dev/revision"].clone(),
                ))
                .or_default() += 1;
                alive += 1;
            }
            worst.fetch_max(alive, std::sync::atomic::Ordering::Relaxed);
            if let Some(dup) = per.iter().find(|(_, n)| **n > 1) {
                return Ok(Err(format!("duplicate pods for slot/revision {:?}", dup.0)));
            }
            let s = status(&api.get("web").await.map_err(|e| e.to_string())?);
            let complete = s.updated_replicas == 6
                && s.available_replicas == 6
                && s.current_revision == s.update_revision;
            complete.then_some(Ok(())).ok_or(format!(
                "{} updated, {} available",
                s.updated_replicas, s.available_replicas
            ))
        }
    })
    .await;
    done.unwrap_or_else(|e| panic!("{e}"));
    let worst = worst.into_inner();
    assert!(worst <= 6 + 2, "{worst} pods alive at once");
}

#[tokio::test]
async fn sigterm_releases_the_lease_at_once_and_the_standby_takes_over() {
    let (ns, lease) = with_lease("rt-sigterm").await;
    let first = elector(&ns.name, &lease);
    let leader = wait_leader(&ns, &lease, "the first replica to lead").await;
    assert!(leader.ends_with(&format!("-{}", first.child.id())));
    let second = elector(&ns.name, &lease);
    let addr = metrics_addr(&second).await;
    assert_eq!(
        metric(&scrape(&addr).await, "perennial_leader "),
        Some(0.0),
        "the second replica stands by"
    );

    let sent = Instant::now();
    first.terminate();
    let taken = wait_for("the standby to take over", TIMEOUT, || async {
        match holder(&ns, &lease).await {
            Some(h) if h.ends_with(&format!("-{}", second.child.id())) => Ok(sent.elapsed()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    println!("takeover after SIGTERM: {taken:?} (lease duration 6 s)");
    assert!(
        taken < Duration::from_secs(4),
        "the released lease was taken after {taken:?}"
    );
    wait_for("the standby to report leadership", TIMEOUT, || {
        let addr = addr.clone();
        async move {
            (metric(&scrape(&addr).await, "perennial_leader ") == Some(1.0))
                .then_some(())
                .ok_or("not yet".to_string())
        }
    })
    .await;
    drop(first);
}

#[tokio::test]
async fn metrics_count_reconciles_rollouts_repairs_and_replicas_by_state_and_forget_a_deleted_service(
) {
    let ns = TestNamespace::new("rt-metrics").await;
    let op = Operator::with_crd(&ns).await;
    let addr = metrics_addr(&op).await;
    let api: Api<ResilientService> = ns.api();
    api.create(&PostParams::default(), &web(3)).await.unwrap();
    rolled_out(&api, 3).await;
    restart(&api).await;
    rolled_out(&api, 3).await;

    let text = wait_for("the rollout to be counted", TIMEOUT, || {
        let addr = addr.clone();
        async move {
            let text = scrape(&addr).await;
            (metric(&text, "perennial_rollouts_total{event=\"completed\"}").unwrap_or(0.0) >= 1.0)
                .then_some(text)
                .ok_or("no completed rollout counted".to_string())
        }
    })
    .await;
    let excerpt: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .collect();
    println!("{}", excerpt.join("\n"));
    assert!(metric(&text, "perennial_reconciles_total{result=\"ok\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "perennial_rollouts_total{event=\"started\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "perennial_reconcile_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    assert_eq!(metric(&text, "perennial_leader "), Some(1.0));
    let ready = format!(
        "perennial_replicas{{namespace=\"{}\",name=\"web\",state=\"Ready\"}}",
        ns.name
    );
    assert_eq!(metric(&text, &ready), Some(3.0), "{ready}");

    // A deleted service leaves no replica series behind.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let series = format!(
        "perennial_replicas{{namespace=\"{}\",name=\"web\",",
        ns.name
    );
    wait_for(
        "the deleted service's replica series to go",
        TIMEOUT,
        || {
            let addr = addr.clone();
            let series = series.clone();
            async move {
                let text = scrape(&addr).await;
                let left: Vec<&str> = text.lines().filter(|l| l.starts_with(&series)).collect();
                match (text.contains("perennial_leader 1"), left.is_empty()) {
                    (true, true) => Ok(()),
                    (false, _) => Err(format!("no answer from the operator: {text:?}")),
                    (true, false) => Err(left.join("\n")),
                }
            }
        },
    )
    .await;
}

/// A CRD of a test's own for the operator's start-up check to read in place of the shared
/// ResilientService CRD, which no test may change; deleted when the guard drops.
struct CheckedCrd {
    name: String,
    group: String,
}

impl CheckedCrd {
    fn new() -> Self {
        let group = format!("crd-check-{}.perennial.dev", unique_suffix());
        Self {
            name: format!("probes.{group}"),
            group,
        }
    }

    /// Creates it, or replaces its stamp, with `schema_hash`.
    async fn apply(&self, client: &kube::Client, schema_hash: &str) {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.name,
                "annotations": {
                    perennial::api::ANNOTATION_SCHEMA_HASH: schema_hash,
                    perennial::api::ANNOTATION_VERSION: "0.0.1"
                }
            },
            "spec": {
                "group": self.group,
                "names": {"kind": "Probe", "plural": "probes", "singular": "probe", "listKind": "ProbeList"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }]
            }
        }))
        .unwrap();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        api.patch(
            &self.name,
            &PatchParams::apply("perennial-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply the test's CRD");
    }
}

impl Drop for CheckedCrd {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "crd", &self.name, "--wait=false"]);
    }
}

/// Waits until `/readyz` answers `status` with a body containing `reason`.
async fn readyz(addr: &str, status: &str, reason: &str) -> String {
    wait_for(
        &format!("/readyz to answer {status} {reason:?}"),
        TIMEOUT,
        || async {
            let answer = get(addr, "/readyz").await;
            let body = answer
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            (answer.starts_with(&format!("HTTP/1.1 {status}")) && body.contains(reason))
                .then_some(body)
                .ok_or(answer)
        },
    )
    .await
}

#[tokio::test]
async fn an_operator_meeting_another_crd_stays_unready_saying_what_to_apply_until_its_own_is_installed(
) {
    let ns = TestNamespace::new("rt-crd-check").await;
    install_crd(&ns.client).await;
    let crd = CheckedCrd::new();
    let op = Operator::start_with(
        &ns.name,
        &[
            "--leader-elect=false",
            "--metrics-addr",
            "127.0.0.1:0",
            "--crd-check-name",
            &crd.name,
        ],
    );
    let addr = metrics_addr(&op).await;
    let apply = "kubectl apply --server-side -f crds/";

    let missing = readyz(&addr, "503", "is not installed").await;
    assert!(missing.contains(apply), "{missing}");
    assert!(get(&addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        metric(&scrape(&addr).await, "perennial_leader "),
        Some(0.0),
        "it does not act"
    );

    crd.apply(&ns.client, "sha256:0123456789abcdef").await;
    let differs = readyz(&addr, "503", "sha256:0123456789abcdef").await;
    println!("/readyz: {differs}");
    assert!(differs.contains(perennial::api::schema_hash()), "{differs}");
    assert!(differs.contains(apply), "{differs}");

    // The right stamp, and no restart.
    crd.apply(&ns.client, perennial::api::schema_hash()).await;
    readyz(&addr, "200", "ok").await;
    wait_for("the operator to act", TIMEOUT, || async {
        (metric(&scrape(&addr).await, "perennial_leader ") == Some(1.0))
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;

    // One log line per reason, not one per retry.
    let log = strip_ansi(&std::fs::read_to_string(&op.log).unwrap());
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&crd.name))
        .collect();
    assert_eq!(said.len(), 2, "{}", said.join("\n"));
    assert!(said[0].contains("is not installed") && said[1].contains("sha256:0123456789abcdef"));
}
