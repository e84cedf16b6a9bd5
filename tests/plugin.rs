//! `kubectl perennial` on the local control plane: the library code the plugin runs, driven
//! here as the binary runs it, and the binary itself found by kubectl on PATH, with the
//! exit codes a CI script reads.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perennial::api::{ResilientService, LABEL_SERVICE};
use perennial::cli::history::{self, RevisionVerdict};
use perennial::cli::snapshot::{self, Want};
use perennial::cli::verdict::{judge, Verdict};
use perennial::cli::{verbs, watch, Target};
use serde_json::json;
use support::nodes::*;
use support::pods::*;
use support::service::*;
use support::*;

/// Pods on KWOK nodes start within seconds; the rest is room for a busy machine.
const ROLLOUT: Duration = Duration::from_secs(180);
const GRACE: Duration = Duration::from_secs(30);
const THREE_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn target(ns: &TestNamespace) -> Target {
    Target {
        client: ns.client.clone(),
        namespace: ns.name.clone(),
    }
}

async fn done(t: &Target, name: &str) -> String {
    match watch::wait_status(t, name, Some(ROLLOUT), GRACE, |_| {}).await {
        Ok(Verdict::Done(m)) => m,
        other => panic!("{name} did not settle: {other:?}"),
    }
}

async fn update_revision(t: &Target, name: &str) -> String {
    let snap = snapshot::fetch(&t.client, &t.namespace, name, Want::default())
        .await
        .expect("read the service");
    snap.service
        .status
        .unwrap_or_default()
        .update_revision
        .expect("an update revision")
}

fn pod_uids(pods: &[k8s_openapi::api::core::v1::Pod]) -> Vec<String> {
    pods.iter().map(uid).collect()
}

/// A kubectl whose PATH finds the plugin binary this test was built with.
fn kubectl_perennial(args: &[&str]) -> (i32, String, String) {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-perennial"));
    let path = format!(
        "{}:{}",
        plugin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(kubectl_bin())
        .arg("perennial")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("run kubectl perennial");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn set_image_undo_pause_resume_and_restart_steer_rolling_updates_with_the_history_to_show_for_it(
) {
    let ns = TestNamespace::new("plugin-verbs").await;
    let nodes = NodeGroup::new(&ns.client, "plugin-verbs", &THREE_ZONES, 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 0}});
    create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    let t = target(&ns);
    done(&t, "web").await;
    let first = update_revision(&t, "web").await;

    // set image: a new revision, rolled out, told in the history as what it changed.
    let said = verbs::set_image(&t, "web", &[("app".into(), "example/app:2".into())])
        .await
        .expect("set image");
    assert_eq!(said, "web: image set: app=example/app:2");
    let settled = done(&t, "web").await;
    let second = update_revision(&t, "web").await;
    assert_ne!(second, first);
    assert_eq!(
        settled,
        format!("3 of 3 replicas available on revision {second}")
    );
    let snap = snapshot::fetch(&t.client, &t.namespace, "web", Want::default())
        .await
        .unwrap();
    let rows = history::rows(&snap);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].name.as_str(), &rows[0].verdict),
        (first.as_str(), &RevisionVerdict::Superseded)
    );
    assert_eq!(
        rows[1].change,
        "from #1: app: example/app:1 → example/app:2"
    );
    assert_eq!(rows[1].roles, ["stable", "update"]);

    // undo: the first template again, so the first revision again.
    let said = verbs::undo(&t, "web", None, false).await.expect("undo");
    assert!(
        said.contains(&format!("re-applied; it rolls out as {first}")),
        "{said}"
    );
    done(&t, "web").await;
    assert_eq!(update_revision(&t, "web").await, first);

    // pause: a new template waits, and status says why.
    verbs::set_paused(&t, "web", true).await.expect("pause");
    verbs::set_image(&t, "web", &[("app".into(), "example/app:3".into())])
        .await
        .expect("set image while paused");
    let api = ns.api::<ResilientService>();
    let paused = wait_svc(&api, "web", "the paused template seen", ROLLOUT, |svc| {
        current_generation(svc)
            .then(|| svc.clone())
            .ok_or_else(|| ledger(svc))
    })
    .await;
    let snap = snapshot::fetch(&t.client, &t.namespace, "web", Want::default())
        .await
        .unwrap();
    assert_eq!(snap.service.metadata.generation, paused.metadata.generation);
    match judge(&snap) {
        Verdict::Waiting(m) => assert!(m.contains("spec.paused: true"), "{m}"),
        other => panic!("a paused rollout is waiting, not {other:?}"),
    }
    let on_first = pods(&ns, &format!("{LABEL_SERVICE}=web")).await;
    assert!(
        on_first.iter().all(|p| revision(p) == first),
        "{}",
        describe_all(&on_first)
    );
    assert!(verbs::restart(&t, "web")
        .await
        .unwrap_err()
        .to_string()
        .contains("is paused"));
    verbs::set_paused(&t, "web", false).await.expect("resume");
    done(&t, "web").await;
    let third = update_revision(&t, "web").await;
    assert!(![first.as_str(), second.as_str()].contains(&third.as_str()));

    // restart: every pod replaced, through a revision that differs by its annotation only.
    let live = |pods: Vec<k8s_openapi::api::core::v1::Pod>| -> Vec<_> {
        pods.into_iter().filter(|p| !terminating(p)).collect()
    };
    let before = pod_uids(&live(pods(&ns, &format!("{LABEL_SERVICE}=web")).await));
    verbs::restart(&t, "web").await.expect("restart");
    done(&t, "web").await;
    // Done counts the replicas that serve; an old pod may still be on its way out.
    let after = live(pods(&ns, &format!("{LABEL_SERVICE}=web")).await);
    assert_eq!(after.len(), 3, "{}", describe_all(&after));
    assert!(
        pod_uids(&after).iter().all(|u| !before.contains(u)),
        "every pod is new"
    );
    let snap = snapshot::fetch(&t.client, &t.namespace, "web", Want::default())
        .await
        .unwrap();
    let last = history::rows(&snap).pop().unwrap();
    assert_eq!(last.change, format!("from #{}: restart", last.number - 1));

    // What would do nothing, or harm, is refused with what there is instead.
    let wrong = verbs::set_image(&t, "web", &[("ap".into(), "x".into())])
        .await
        .unwrap_err();
    assert_eq!(
        wrong.to_string(),
        "web has no container ap; its containers are app"
    );
    let nothing = verbs::abort(&t, "web").await.unwrap_err();
    assert_eq!(
        nothing.to_string(),
        "web is not rolling out: there is nothing to abort"
    );
}

#[tokio::test]
async fn promote_passes_a_canary_pause_and_abort_rolls_the_next_rollout_back() {
    let ns = TestNamespace::new("plugin-canary").await;
    let nodes = NodeGroup::new(&ns.client, "plugin-canary", &THREE_ZONES, 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"replicas": 3, "update": {"minReadySeconds": 0,
        "canary": {"steps": [{"replicas": 1}, {"pause": {}}]}}});
    create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    let t = target(&ns);
    let api = ns.api::<ResilientService>();
    done(&t, "web").await;
    let at_pause = |svc: &ResilientService| {
        let r = status(svc).rollout;
        let waits = r
            .as_ref()
            .and_then(|r| r.waiting_for.clone())
            .unwrap_or_default();
        (current_generation(svc)
            && r.as_ref().and_then(|r| r.canary_step) == Some(1)
            && waits.contains("promot"))
        .then_some(())
        .ok_or_else(|| format!("{r:?}"))
    };

    verbs::set_image(&t, "web", &[("app".into(), "example/app:2".into())])
        .await
        .unwrap();
    wait_svc(
        &api,
        "web",
        "the canary waiting at its pause",
        ROLLOUT,
        at_pause,
    )
    .await;
    let canary = update_revision(&t, "web").await;
    let live = pods(&ns, &format!("{LABEL_SERVICE}=web")).await;
    let new = live
        .iter()
        .filter(|p| revision(p) == canary && !terminating(p))
        .count();
    assert_eq!(new, 1, "one replica on the canary: {}", describe_all(&live));
    let said = verbs::promote(&t, "web").await.expect("promote");
    assert_eq!(said, "web: promoted past canary step 2 (a pause)");
    assert_eq!(
        done(&t, "web").await,
        format!("3 of 3 replicas available on revision {canary}")
    );

    verbs::set_image(&t, "web", &[("app".into(), "example/app:3".into())])
        .await
        .unwrap();
    wait_svc(
        &api,
        "web",
        "the next canary waiting at its pause",
        ROLLOUT,
        at_pause,
    )
    .await;
    let aborted = update_revision(&t, "web").await;
    let said = verbs::abort(&t, "web").await.expect("abort");
    assert_eq!(
        said,
        format!("web: rollout of {aborted} aborted; it returns to {canary}")
    );
    match watch::wait_status(&t, "web", Some(ROLLOUT), GRACE, |_| {}).await {
        Ok(Verdict::Failed(m)) => assert!(m.starts_with("rolled back (RolloutAborted)"), "{m}"),
        other => panic!("an aborted rollout fails status, not {other:?}"),
    }
    wait_svc(
        &api,
        "web",
        "every replica back on the promoted canary",
        ROLLOUT,
        |svc| {
            let s = status(svc);
            (s.current_revision.as_deref() == Some(canary.as_str()) && s.available_replicas == 3)
                .then_some(())
                .ok_or_else(|| ledger(svc))
        },
    )
    .await;
    let snap = snapshot::fetch(&t.client, &t.namespace, "web", Want::default())
        .await
        .unwrap();
    let rows = history::rows(&snap);
    let row = rows
        .iter()
        .find(|r| r.name == aborted)
        .expect("the aborted revision is kept");
    assert!(
        matches!(&row.verdict, RevisionVerdict::Failed(_)),
        "{row:?}"
    );
}

#[tokio::test]
async fn status_through_kubectl_exits_1_on_a_rollback_and_0_after_undo_and_says_why() {
    let ns = TestNamespace::new("plugin-status").await;
    let nodes = NodeGroup::new(&ns.client, "plugin-status", &THREE_ZONES, 0).await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"replicas": 2, "update": {"minReadySeconds": 0},
                      "supervision": {"maxRestarts": 2}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    let n = ns.name.as_str();
    let (code, out, err) = kubectl_perennial(&["status", "web", "-n", n, "--timeout", "180s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("web: 2 of 2 replicas available on revision web-"),
        "{out}"
    );

    merge_patch(&api, "web", json!({"spec": crash_looping("web")})).await;
    let (code, out, err) = kubectl_perennial(&["status", "web", "-n", n, "--timeout", "240s"]);
    assert_eq!(code, 1, "a rolled-back rollout exits 1: {out}{err}");
    assert!(
        out.lines()
            .last()
            .unwrap_or("")
            .starts_with("web: rolled back (RevisionFailed): rolled back from web-"),
        "{out}"
    );

    let (code, out, _) = kubectl_perennial(&["history", "web", "-n", n]);
    assert_eq!(code, 0);
    let failed = out
        .lines()
        .find(|l| l.starts_with("2 "))
        .expect("revision 2 listed");
    assert!(
        failed.contains("failed: ") && failed.contains("from #1: labels: chaos.perennial.dev/mode"),
        "{out}"
    );

    // Rolled back, the template is still the failed one: undo goes back to the newest
    // revision that did not fail, and refuses to roll the failed one out again unasked.
    let (code, _, err) = kubectl_perennial(&["undo", "web", "-n", n, "--to-revision", "2"]);
    assert_eq!(code, 4);
    assert!(err.contains("is the template web has now"), "{err}");
    let (code, out, err) = kubectl_perennial(&["undo", "web", "-n", n]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("web: template of revision #1 "), "{out}");
    let (code, out, err) = kubectl_perennial(&["status", "web", "-n", n, "--timeout", "180s"]);
    assert_eq!(code, 0, "after undo: {out}{err}");
    let (code, _, err) = kubectl_perennial(&["undo", "web", "-n", n, "--to-revision", "2"]);
    assert_eq!(
        code, 4,
        "a failed revision is not rolled out again without --force"
    );
    assert!(
        err.contains("is marked failed") && err.contains("--force"),
        "{err}"
    );

    // Errors a script can tell apart: not found, and a command line that is wrong.
    let (code, _, err) = kubectl_perennial(&["get", "nothere", "-n", n]);
    assert_eq!(code, 4);
    assert!(
        err.contains(&format!("resilientservice {n}/nothere not found")),
        "{err}"
    );
    let (code, _, err) = kubectl_perennial(&["status", "web", "-n", n, "--timeout", "soon"]);
    assert_eq!(code, 2, "{err}");
    for verb in [
        "get",
        "status",
        "promote",
        "abort",
        "pause",
        "resume",
        "restart",
        "undo",
        "history",
        "ledger",
        "completion",
    ] {
        let (code, out, _) = kubectl_perennial(&[verb, "--help"]);
        assert!(
            code == 0 && out.contains("Usage: kubectl perennial"),
            "{verb} --help: {out}"
        );
    }
    let (code, out, _) = kubectl_perennial(&["set", "image", "--help"]);
    assert!(code == 0 && out.contains("CONTAINER=IMAGE"), "{out}");
    let (code, out, _) = kubectl_perennial(&["completion", "bash"]);
    assert!(code == 0 && out.contains("kubectl-perennial"), "{out}");
    let (code, out, _) = kubectl_perennial(&["__complete", "-n", n, "get", "w"]);
    assert_eq!((code, out.as_str()), (0, "web\n:4\n"));
}

#[tokio::test]
async fn get_watch_shows_a_lost_node_the_failed_slot_and_its_repair_as_they_happen() {
    const LOST_AFTER: u64 = 10;
    let ns = TestNamespace::new("plugin-get").await;
    let nodes = NodeGroup::new(
        &ns.client,
        "plugin-get",
        &["zone-a", "zone-b", "zone-c", "zone-a"],
        0,
    )
    .await;
    let _operator = Operator::with_crd(&ns).await;
    let spec = json!({"replicas": 3, "redundancy": {"onePerNode": true},
                      "update": {"minReadySeconds": 0},
                      "repair": {"nodeLostAfterSeconds": LOST_AFTER}});
    let api = create_service(&ns, &placed_service("web", nodes.placement(), spec)).await;
    wait_available(&api, "web", 3, ROLLOUT).await;
    let slot0 = slots(&ns, "web").await[&0][0].clone();
    let lost = node_of(&slot0);

    let plugin = env!("CARGO_BIN_EXE_kubectl-perennial");
    let mut child = Command::new(plugin)
        .args(["get", "web", "--watch", "-n", &ns.name, "--kubeconfig"])
        .arg(kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start get --watch");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let output = || seen.lock().unwrap().clone();
    wait_for("the first tree", ROLLOUT, || async {
        output()
            .contains("Status:      Healthy")
            .then_some(())
            .ok_or_else(output)
    })
    .await;

    fault("node-lost", Some(&lost));
    let failure = "last failure NodeLost".to_string();
    wait_for(
        "the slot's NodeLost failure in the watched tree",
        ROLLOUT,
        || async { output().contains(&failure).then_some(()).ok_or_else(output) },
    )
    .await;
    let repaired = format!("avoids node {lost} (NodeLost)");
    wait_for(
        "a tree after the repair: Healthy, slot 0 elsewhere",
        ROLLOUT,
        || async {
            let text = output();
            let last = text
                .rsplit("web (ResilientService")
                .next()
                .unwrap_or("")
                .to_string();
            let slot0 = last.lines().find(|l| l.contains("slot 0 ")).unwrap_or("");
            (last.contains("Status:      Healthy")
                && last.contains(&repaired)
                && !slot0.contains(&lost)
                && slot0.contains(" Ready "))
            .then_some(())
            .ok_or(text)
        },
    )
    .await;
    child.kill().expect("stop get --watch");
    let _ = child.wait();
    let _ = reader.join();
    let text = output();
    println!("{text}");
    let trees = text.matches("web (ResilientService").count();
    assert!(trees >= 3, "a tree per change, not one: {text}");
    assert!(!text.contains('\x1b'), "no colour on a pipe");

    // A plain `get`: slot 0 on another node, with its zone, its failure and what it avoids.
    let (code, out, err) = kubectl_perennial(&["get", "web", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let slot_line = out
        .lines()
        .find(|l| l.contains("slot 0 "))
        .expect("slot 0 shown");
    assert!(
        slot_line.contains("Ready")
            && slot_line.contains("zone zone-")
            && !slot_line.contains(&lost),
        "{out}"
    );
    assert!(out.contains(&repaired) && out.contains(&failure), "{out}");
    fault("node-back", Some(&lost));
}
