//! Crash safety on the local control plane: the operator is stopped as abruptly as a
//! SIGKILL right after its k-th write (the PERENNIAL_CRASH_AFTER_WRITES test hook), for
//! every k a scenario needs, and a fresh operator must finish the job and end where a run
//! without the crash ended: the same pods by slot and revision, all Ready, the same claims,
//! the same revisions and status. A watch checks the invariants on every event throughout,
//! the crash and the recovery included.
//!
//! Each kill point plays the whole scenario in a namespace of its own, so points run side
//! by side without seeing each other.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use perennial::api::ResilientService;
use serde_json::json;
use support::scenario::*;
use support::*;

/// Convergence of a handful of pods on KWOK nodes, with room for a busy machine running
/// several scenarios at once.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Kill points played at once, each with its own namespace and operators.
const PARALLEL: usize = 4;
/// More kill points than this are spread evenly over the writes instead of all played.
const MAX_POINTS: usize = 24;
const KILL_POINT_ENV: &str = "PERENNIAL_CRASH_AFTER_WRITES";

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Four stateless replicas move to a new image, maxSurge 1, maxUnavailable 1.
    RollingUpdate,
    /// Three replicas with a claim each: one pod is deleted by hand and the template
    /// changes, so the slot is repaired and the others are replaced in place.
    StatefulRepair,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::RollingUpdate => "web",
            Scenario::StatefulRepair => "db",
        }
    }

    fn replicas(self) -> i32 {
        match self {
            Scenario::RollingUpdate => 4,
            Scenario::StatefulRepair => 3,
        }
    }

    fn service(self) -> ResilientService {
        let spec = match self {
            Scenario::RollingUpdate => json!({"update": {
                "strategy": "RollingUpdate", "maxSurge": 1, "maxUnavailable": 1
            }}),
            Scenario::StatefulRepair => local_storage(),
        };
        service(self.name(), self.replicas(), "example/app:1", spec)
    }

    /// replicas + maxSurge pods at most; stateful slots are replaced in place, one pod each.
    fn bounds(self) -> Bounds {
        match self {
            Scenario::RollingUpdate => Bounds {
                max_alive: 5,
                one_per_slot: false,
            },
            Scenario::StatefulRepair => Bounds {
                max_alive: 3,
                one_per_slot: true,
            },
        }
    }

    /// What happens while no operator runs; the operator that starts next must act on it.
    async fn disturb(self, ns: &TestNamespace, api: &Api<ResilientService>) {
        if let Scenario::StatefulRepair = self {
            let pods: Api<Pod> = ns.api();
            let victim = format!("{}-1-", self.name());
            let pod = pods
                .list(&Default::default())
                .await
                .expect("list pods")
                .into_iter()
                .find(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .unwrap_or("")
                        .starts_with(&victim)
                })
                .expect("slot 1 has a pod");
            let name = pod.metadata.name.clone().unwrap_or_default();
            pods.delete(&name, &DeleteParams::default())
                .await
                .expect("delete the pod of slot 1");
            wait_for("the deleted pod to be gone", TIMEOUT, || {
                let pods = pods.clone();
                let name = name.clone();
                async move {
                    match pods.get_opt(&name).await.map_err(|e| e.to_string())? {
                        None => Ok(()),
                        Some(_) => Err("still there".into()),
                    }
                }
            })
            .await;
        }
        merge_patch(api, self.name(), image_patch("example/app:2")).await;
    }
}

/// How one play of a scenario went.
struct Outcome {
    kill: Option<u64>,
    end: Snapshot,
    /// Writes the server accepted from the operators that ran after the disturbance.
    writes: usize,
    /// With a kill point: the writes accepted from the operator that had it, and the write
    /// it said it died at (None when the run needed fewer writes and it lived).
    killed: Option<(usize, Option<u64>)>,
    claims_kept: bool,
    most_alive: usize,
    violations: Vec<String>,
    seconds: f64,
}

/// Plays `scenario` in a namespace of its own: converges it with one operator, stops that
/// one, disturbs the service, runs an operator with the kill point `kill` (when given)
/// until it has died, and then a normal operator until the service has converged.
async fn play(scenario: Scenario, kill: Option<u64>) -> Outcome {
    let started = Instant::now();
    let ns = TestNamespace::new(&format!("crash-{}", scenario.name())).await;
    install_crd(&ns.client).await;
    let name = scenario.name();
    let _volumes = match scenario {
        Scenario::StatefulRepair => {
            Some(Volumes::reserve(&ns, "data", name, scenario.replicas()).await)
        }
        Scenario::RollingUpdate => None,
    };
    let api = {
        let _setup = Operator::start(&ns.name);
        let api = create_service(&ns, &scenario.service()).await;
        wait_settled(&ns, name, TIMEOUT).await;
        api
    };
    let claims_before = claim_identities(&ns, name).await;
    let watch = PodWatch::start(&ns, name, scenario.bounds()).await;
    let writes_before = accepted_object_writes(&ns.name).len();
    scenario.disturb(&ns, &api).await;

    let killed = match kill {
        None => None,
        Some(k) => {
            let mut op = operator_with_env(&ns.name, &[(KILL_POINT_ENV, &k.to_string())]);
            // It dies at its k-th write, or converges first when this run needs fewer.
            let exited = wait_for(&format!("{name}: kill point {k}"), TIMEOUT, || {
                let exited = op.child.try_wait().expect("poll the operator");
                let api = api.clone();
                async move {
                    if exited.is_some() {
                        return Ok(true);
                    }
                    converged(&api.get(name).await.map_err(|e| e.to_string())?).map(|_| false)
                }
            })
            .await;
            if !exited {
                // Converged first. Stop it as a pod is stopped, not with a kill: a write the
                // server accepted just before a kill would be counted without the hook having
                // seen its answer. A graceful stop lets that pass finish and the hook count.
                op.stop(TIMEOUT).await;
            }
            let said = op
                .output()
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{KILL_POINT_ENV}: aborting after write ")))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
            if exited {
                assert_eq!(
                    said,
                    Some(k),
                    "the operator died, but not by the hook at write {k}; log {}",
                    op.log.display()
                );
            }
            drop(op);
            let crash_writes = accepted_object_writes(&ns.name).len() - writes_before;
            Some((crash_writes, said))
        }
    };

    let mut recovery = Operator::start(&ns.name);
    let end = wait_settled(&ns, name, TIMEOUT).await;
    recovery.assert_sound("the recovery");
    let writes = accepted_object_writes(&ns.name).len() - writes_before;
    drop(recovery);
    let claims_kept = claim_identities(&ns, name).await == claims_before;
    let seen = watch.seen();
    Outcome {
        kill,
        end,
        writes,
        killed,
        claims_kept,
        most_alive: seen.most_alive,
        violations: seen.violations.clone(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The kill points to play for a scenario of `writes` writes: every one, or an even spread
/// from the first to the last.
fn kill_points(writes: usize) -> Vec<u64> {
    let (n, m) = (writes.max(1), MAX_POINTS.min(writes.max(1)));
    let mut points: Vec<u64> = (0..m)
        .map(|i| (1 + i * (n - 1) / (m - 1).max(1)) as u64)
        .collect();
    points.dedup();
    points
}

/// Plays `scenario` once without a kill, then once per kill point, and checks that every
/// crashed run ended as the run without a crash did and kept the invariants throughout.
async fn crash_at_every_write(scenario: Scenario) {
    let started = Instant::now();
    let baseline = play(scenario, None).await;
    let replicas = scenario.replicas() as usize;
    let revision = baseline.end.update_revision.clone().expect("a revision");
    assert_eq!(baseline.end.current_revision.as_ref(), Some(&revision));
    assert_eq!(baseline.end.available.as_deref(), Some("True"));
    assert_eq!(baseline.end.pods.len(), replicas, "{:?}", baseline.end.pods);
    for (slot, pods) in &baseline.end.pods {
        assert!(
            matches!(pods.as_slice(), [(_, r, true)] if *r == revision),
            "slot {slot} has one Ready pod at {revision}: {pods:?}"
        );
    }
    assert!(baseline.end.budget && baseline.end.headless_service);
    let points = kill_points(baseline.writes);
    println!(
        "{scenario:?}: {} writes without a crash ({:.1} s); kill points {points:?}",
        baseline.writes, baseline.seconds
    );

    let outcomes: Vec<Outcome> = futures::stream::iter(points.iter().copied())
        .map(|k| play(scenario, Some(k)))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    let mut fired = 0;
    for o in std::iter::once(&baseline).chain(&outcomes) {
        let k = o.kill.map_or("none".to_string(), |k| k.to_string());
        println!(
            "  kill point {k}: {}, {} writes in all, at most {} pods alive, {:.1} s",
            match o.killed {
                Some((accepted, Some(_))) => format!("died ({accepted} writes accepted by then)"),
                Some((accepted, None)) => format!("lived: the run needed {accepted} writes"),
                None => "no kill point".into(),
            },
            o.writes,
            o.most_alive,
            o.seconds
        );
        assert!(
            o.violations.is_empty(),
            "kill point {k}: {} states broke the bounds {:?}, first: {}",
            o.violations.len(),
            scenario.bounds(),
            o.violations[0]
        );
        assert_eq!(
            o.end, baseline.end,
            "kill point {k} ended otherwise than the run without a crash"
        );
        assert!(
            o.claims_kept,
            "kill point {k}: a claim was lost, replaced or added"
        );
        match (o.kill, o.killed) {
            (Some(k), Some((accepted, Some(at)))) => {
                fired += 1;
                // The hook counts only what the server accepted; writes in flight may land too.
                assert!(
                    at == k && accepted as u64 >= k,
                    "kill point {k}: {accepted} < {k}"
                );
            }
            // Runs differ by a few status writes (how pod readiness events fall into
            // passes): a kill point past what this run needed does not fire, and no other.
            (Some(k), Some((accepted, None))) => assert!(
                (accepted as u64) < k,
                "kill point {k} did not fire although {accepted} writes were accepted"
            ),
            _ => {}
        }
    }
    assert!(
        fired * 2 >= points.len(),
        "only {fired} of {} kill points fired",
        points.len()
    );
    println!(
        "{scenario:?}: {fired} of {} kill points fired, all converged to the same end; {:.1} s",
        points.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_killed_after_any_write_ends_as_without_the_crash_within_surge_bounds() {
    crash_at_every_write(Scenario::RollingUpdate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_repair_killed_after_any_write_keeps_one_pod_per_slot_and_every_claim() {
    crash_at_every_write(Scenario::StatefulRepair).await;
}
