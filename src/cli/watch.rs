//! The commands that follow a service as it changes: `get --watch` and `status`.

use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::time::Instant;

use super::snapshot::{self, Want};
use super::style::Style;
use super::verdict::{judge, Verdict};
use super::{tree, CliError, Target};
use crate::api::{ResilientService, LABEL_SERVICE};

/// A tick for each change the API server tells of the service (and, with `owned`, of its
/// pods and revisions). Watch errors are retried with kube's backoff; a read that follows
/// says what is wrong, if anything stays wrong.
fn changes(target: &Target, name: &str, owned: bool) -> impl Stream<Item = ()> + Send + 'static {
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let by_label = watcher::Config::default().labels(&format!("{LABEL_SERVICE}={name}"));
    let services: Api<ResilientService> = Api::namespaced(target.client.clone(), &target.namespace);
    let service = watcher(services, by_name)
        .default_backoff()
        .map(|_| ())
        .boxed();
    if !owned {
        return service;
    }
    let pods: Api<Pod> = Api::namespaced(target.client.clone(), &target.namespace);
    let revisions: Api<ControllerRevision> =
        Api::namespaced(target.client.clone(), &target.namespace);
    let pods = watcher(pods, by_label.clone())
        .default_backoff()
        .map(|_| ());
    let revisions = watcher(revisions, by_label).default_backoff().map(|_| ());
    futures::stream::select_all([service, pods.boxed(), revisions.boxed()]).boxed()
}

/// Waits until the service is done or has failed, or `timeout` passes (then the last
/// verdict, `Waiting`, is returned). A service that is rolled out but Degraded is given
/// `degraded_grace` to mend (a repair under way) before it is returned as Degraded.
/// `progress` hears each new waiting message.
pub async fn wait_status(
    target: &Target,
    name: &str,
    timeout: Option<Duration>,
    degraded_grace: Duration,
    mut progress: impl FnMut(&Verdict),
) -> Result<Verdict, CliError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut changes = changes(target, name, false);
    let mut last: Option<Verdict> = None;
    let mut degraded_since: Option<Instant> = None;
    loop {
        let snap =
            snapshot::fetch(&target.client, &target.namespace, name, Want::default()).await?;
        let verdict = judge(&snap);
        let mut wake = deadline;
        match &verdict {
            Verdict::Done(_) | Verdict::Failed(_) => return Ok(verdict),
            Verdict::Degraded(_) => {
                let since = *degraded_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= degraded_grace {
                    return Ok(verdict);
                }
                let mended_by = since + degraded_grace;
                wake = Some(wake.map_or(mended_by, |d| d.min(mended_by)));
            }
            Verdict::Waiting(_) => degraded_since = None,
        }
        if last.as_ref() != Some(&verdict) {
            progress(&verdict);
            last = Some(verdict.clone());
        }
        let next = changes.next();
        match wake {
            Some(at) => {
                if tokio::time::timeout_at(at, next).await.is_err()
                    && deadline.is_some_and(|d| Instant::now() >= d)
                {
                    return Ok(verdict);
                }
            }
            None => {
                next.await;
            }
        }
    }
}

/// How often `get --watch` reads again after a change, at most.
const REDRAW_AT_MOST_EVERY: Duration = Duration::from_millis(500);
/// How often a terminal's tree is redrawn without a change, so that ages move.
const AGES_EVERY: Duration = Duration::from_secs(5);

/// Draws the tree on every change until the process is stopped. On a terminal the screen is
/// redrawn in place; elsewhere each tree that differs from the last is printed after it.
pub async fn watch_tree(
    target: &Target,
    name: &str,
    style: Style,
    terminal: bool,
    mut print: impl FnMut(&str),
) -> Result<(), CliError> {
    let mut changes = changes(target, name, true);
    let mut zones = std::collections::BTreeMap::new();
    let mut last = String::new();
    loop {
        let mut snap =
            snapshot::fetch(&target.client, &target.namespace, name, Want::default()).await?;
        // A node's zone does not change under a running pod: each node is read once.
        let key = snap.service.spec.redundancy.topology_key.clone();
        zones = snapshot::zones_of(&target.client, &snap.pods, &key, &zones).await;
        snap.zones = zones.clone();
        let text = tree::render(&snap, jiff::Timestamp::now(), style);
        if terminal {
            print(&format!("\x1b[H\x1b[2J{text}"));
        } else if text != last {
            if !last.is_empty() {
                print("\n");
            }
            print(&text);
        }
        last = text;
        loop {
            match tokio::time::timeout(AGES_EVERY, changes.next()).await {
                Ok(Some(())) => break,
                Ok(None) => return Ok(()),
                // Only a terminal's tree is redrawn for its ages alone.
                Err(_) if terminal => break,
                Err(_) => continue,
            }
        }
        // Several changes come together (a pod and the status it caused): read once.
        tokio::time::sleep(REDRAW_AT_MOST_EVERY).await;
        while let Some(Some(())) = changes.next().now_or_never() {}
    }
}
