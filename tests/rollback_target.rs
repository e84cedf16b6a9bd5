//! The revision a rollback returns to, on the local control plane: after a rollout of v2
//! completes, a crash-looping v3 is rolled back to v2, never to the v1 that v2 replaced,
//! however fast v3 follows v2 and whatever is still terminating.
//!
//! Twenty cycles back to back in one service. Half of them send v3 as a user would, once
//! the status says every replica is updated and available; the other half send it the
//! moment the pods show the last slot Ready on v2, before the operator has had a pass to
//! record anything.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use perennial::api::{ResilientService, ANNOTATION_BAD_REVISION, LABEL_REVISION};
use serde_json::{json, Value};
use support::scenario::{
    condition_status, create_service, merge_patch, ready, service, slot, status, terminating,
    wait_converged,
};
use support::*;

const REPLICAS: i32 = 8;
const CYCLES: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(120);
const CHAOS_LABEL: &str = "chaos.perennial.dev/mode";

fn template(image: &str, crash_loop: bool) -> Value {
    json!({"spec": {"template": {
        "metadata": {"labels": {CHAOS_LABEL: if crash_loop { Value::from("crash-loop") } else { Value::Null }}},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }}})
}

fn revision(pod: &Pod) -> String {
    pod.labels()
        .get(LABEL_REVISION)
        .cloned()
        .unwrap_or_default()
}

/// The update revision once the API server has the change and the operator has seen it.
async fn update_revision(api: &Api<ResilientService>, generation: Option<i64>) -> String {
    wait_for(
        "the operator to see the new template",
        TIMEOUT,
        || async move {
            let svc = api.get("web").await.map_err(|e| e.to_string())?;
            let s = status(&svc);
            (s.observed_generation == generation)
                .then(|| s.update_revision.clone())
                .flatten()
                .ok_or(format!(
                    "observed {:?} of {generation:?}",
                    s.observed_generation
                ))
        },
    )
    .await
}

/// The status says what a user waits for: every replica updated and available, and every
/// pod that is not on its way out runs `rev`.
async fn wait_status_says_rolled_out(api: &Api<ResilientService>, pods: &Api<Pod>, rev: &str) {
    wait_for(
        "the status to say the rollout is done",
        TIMEOUT,
        || async move {
            let s = status(&api.get("web").await.map_err(|e| e.to_string())?);
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let live: Vec<&Pod> = list.items.iter().filter(|p| !terminating(p)).collect();
            let done = s.update_revision.as_deref() == Some(rev)
                && s.updated_replicas == REPLICAS
                && s.available_replicas == REPLICAS
                && live.len() == REPLICAS as usize
                && live.iter().all(|p| revision(p) == rev);
            done.then_some(()).ok_or(format!(
                "updated {} available {} live {}",
                s.updated_replicas,
                s.available_replicas,
                live.len()
            ))
        },
    )
    .await
}

/// The pods show every slot Ready on `rev`; whatever the status says.
async fn wait_pods_serve(pods: &Api<Pod>, rev: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list = pods.list(&ListParams::default()).await.expect("list pods");
        let serving = (0..REPLICAS).all(|s| {
            list.items
                .iter()
                .any(|p| slot(p) == s && revision(p) == rev && ready(p) && !terminating(p))
        });
        if serving {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the slots never all served {rev}"
        );
        // As tight as the API server allows without hammering it: the point is to beat
        // the operator's next pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the rollback; fails at once if it goes anywhere but `to`.
async fn wait_rolled_back(
    api: &Api<ResilientService>,
    pods: &Api<Pod>,
    to: &str,
    older: &[String],
) {
    wait_for("the rollback", TIMEOUT, || async move {
        let svc = api.get("web").await.map_err(|e| e.to_string())?;
        let s = status(&svc);
        let current = s.current_revision.clone().unwrap_or_default();
        assert!(
            !older.contains(&current),
            "rolled back to {current}, older than {to} which served every replica"
        );
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let live: Vec<&Pod> = list.items.iter().filter(|p| !terminating(p)).collect();
        for p in &live {
            assert!(
                !older.contains(&revision(p)),
                "pod {} was made at the older revision {}",
                p.name_any(),
                revision(p)
            );
        }
        let done = condition_status(&svc, "RolledBack").as_deref() == Some("True")
            && current == to
            && s.available_replicas == REPLICAS
            && live.len() == REPLICAS as usize
            && live.iter().all(|p| revision(p) == to && ready(p));
        done.then_some(()).ok_or(format!(
            "current {current} available {} live {} reason {:?}",
            s.available_replicas,
            live.len(),
            s.reason
        ))
    })
    .await
}

#[tokio::test]
async fn twenty_bad_templates_right_after_good_rollouts_each_go_back_to_the_good_one() {
    let ns = TestNamespace::new("rollback-target").await;
    install_crd(&ns.client).await;
    let _operator = Operator::start(&ns.name);
    let spec = json!({
        "update": {"maxSurge": 1, "maxUnavailable": 1, "minReadySeconds": 0,
                   "progressDeadlineSeconds": 30, "rollback": "Automatic"},
        "supervision": {"maxRestarts": 1},
    });
    let api = create_service(&ns, &service("web", REPLICAS, "example/app:1", spec)).await;
    let pods: Api<Pod> = ns.api();
    let revisions: Api<ControllerRevision> = ns.api();
    let mut older = vec![wait_converged(&api, "web", TIMEOUT).await];

    let mut results = Vec::new();
    for cycle in 0..CYCLES {
        let racing = cycle % 2 == 1;
        let image = format!("example/app:{}", cycle + 2);
        let generation = merge_patch(&api, "web", template(&image, false))
            .await
            .metadata
            .generation;
        let good = update_revision(&api, generation).await;
        if racing {
            wait_pods_serve(&pods, &good).await;
        } else {
            wait_status_says_rolled_out(&api, &pods, &good).await;
        }
        let sent = Instant::now();
        let generation = merge_patch(&api, "web", template(&image, true))
            .await
            .metadata
            .generation;
        let recorded_then = status(&api.get("web").await.expect("get the service"))
            .current_revision
            .unwrap_or_default();
        let bad = update_revision(&api, generation).await;
        wait_rolled_back(&api, &pods, &good, &older).await;
        let took = sent.elapsed();
        let marked = revisions
            .get(&bad)
            .await
            .expect("the bad revision")
            .annotations()
            .contains_key(ANNOTATION_BAD_REVISION);
        assert!(marked, "revision {bad} is marked failed");
        println!(
            "cycle {cycle:2}: v3 sent {} (status then named {}), rolled back to {good} in {:.1} s",
            if racing {
                "as the last slot turned Ready"
            } else {
                "once the status said done"
            },
            if recorded_then == good { "v2" } else { "v1" },
            took.as_secs_f64()
        );
        results.push((racing, recorded_then == good));
        older.push(good);
    }
    let raced = results
        .iter()
        .filter(|(r, recorded)| *r && !recorded)
        .count();
    println!(
        "{CYCLES} cycles, every one back on its v2; in {raced} of them v3 arrived before the status named v2"
    );
}

#[tokio::test]
async fn an_abort_is_carried_out_then_cleared_so_the_next_rollout_goes_through() {
    let ns = TestNamespace::new("rollback-abort").await;
    install_crd(&ns.client).await;
    let _operator = Operator::start(&ns.name);
    let spec = json!({"update": {"minReadySeconds": 0, "progressDeadlineSeconds": 600}});
    let api = create_service(&ns, &service("web", 3, "example/app:1", spec)).await;
    let v1 = wait_converged(&api, "web", TIMEOUT).await;

    // A rollout that waits for ever: its new pod never turns Ready.
    let stuck = json!({"spec": {"template": {
        "metadata": {"labels": {CHAOS_LABEL: "never-ready"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:2"}]}
    }}});
    let generation = merge_patch(&api, "web", stuck).await.metadata.generation;
    let v2 = update_revision(&api, generation).await;
    merge_patch(
        &api,
        "web",
        json!({"metadata": {"annotations": {"perennial.dev/abort": "true"}}}),
    )
    .await;
    wait_for("the abort to roll back and be cleared", TIMEOUT, || async {
        let svc = api.get("web").await.map_err(|e| e.to_string())?;
        let s = status(&svc);
        let aborted = s
            .conditions
            .iter()
            .any(|c| c.type_ == "RolledBack" && c.status == "True" && c.reason == "RolloutAborted");
        let cleared = !svc.annotations().contains_key("perennial.dev/abort");
        (aborted && cleared && s.current_revision.as_deref() == Some(v1.as_str()))
            .then_some(())
            .ok_or(format!(
                "aborted {aborted} cleared {cleared} current {:?}",
                s.current_revision
            ))
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "AbortCleared"), "{reasons:?}");

    // The next template rolls out: nothing is left to abort it.
    merge_patch(&api, "web", template("example/app:3", false)).await;
    let v3 = wait_converged(&api, "web", TIMEOUT).await;
    assert_ne!(v3, v1);
    assert_ne!(v3, v2);
}
