//! The passes: the watches ask for services through the work queue, and workers reconcile
//! what it hands out, a service by one worker at a time.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::Resource;
use tracing::Instrument;

use super::{error_policy, reconcile, Context, ServiceRef};
use crate::observe::CachedService;
use crate::work_queue::{Next, Why, WorkQueue};

/// What a watch asks for: the services an object of it concerns.
pub(super) type Trigger = BoxStream<'static, (Why, Result<Vec<ServiceRef>, watcher::Error>)>;

/// A trigger of the objects of `stream`, each asking for the services `to` names.
pub(super) fn trigger<K, I>(
    why: Why,
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    to: impl Fn(K) -> I + Send + 'static,
) -> Trigger
where
    I: IntoIterator<Item = ServiceRef>,
{
    stream
        .map(move |found| (why, found.map(|o| to(o).into_iter().collect())))
        .boxed()
}

/// A watch whose objects ask for no pass: it is followed only to fill its cache.
pub(super) fn followed<K: Send + 'static>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> Trigger {
    trigger("cache", stream, |_| None)
}

/// The services whose ResilientService objects `o` names as owners.
pub(super) fn owners<K: Resource>(o: K) -> Vec<ServiceRef> {
    let meta = o.meta();
    (meta.owner_references.iter().flatten())
        .filter_map(|owner| ObjectRef::from_owner_ref(meta.namespace.as_deref(), owner, ()))
        .collect()
}

/// Runs the passes until a shutdown signal; then waits for those under way to end. A
/// second signal ends them at once.
pub(super) async fn run(
    services: Store<CachedService>,
    triggers: Vec<Trigger>,
    workers: u16,
    ctx: Arc<Context>,
) {
    let queue = &WorkQueue::default();
    let asking = async {
        tokio::select! {
            _ = feed(queue, triggers) => {}
            _ = crate::start::shutdown_signal() => {
                tracing::info!("shutting down once the passes under way end; a second signal ends them now");
            }
        }
        queue.close();
    };
    let working = async {
        // A service is looked up in the store: no pass before its first full list.
        let listed = tokio::select! {
            listed = services.wait_until_ready() => listed.is_ok(),
            _ = queue.closed() => false,
        };
        if listed {
            let workers = (0..workers.max(1)).map(|_| worker(queue, &services, &ctx));
            futures::future::join_all(workers).await;
        }
    };
    let forced = async {
        crate::start::shutdown_signal().await;
        crate::start::shutdown_signal().await;
        tracing::info!("forced shutdown");
    };
    tokio::select! {
        _ = async { tokio::join!(asking, working) } => {}
        _ = forced => {}
    }
}

/// Asks the queue for what every trigger names.
async fn feed(queue: &WorkQueue<ServiceRef>, triggers: Vec<Trigger>) {
    let mut all = stream::select_all(triggers);
    while let Some((why, found)) = all.next().await {
        match found {
            Ok(services) => {
                for service in services {
                    queue.add(service, why);
                }
            }
            // Each watch backs off and resumes on its own (WatchBackoff).
            Err(error) => tracing::debug!(%error, watch = why, "a watch failed"),
        }
    }
}

/// Reconciles what the queue hands out until it closes.
async fn worker(queue: &WorkQueue<ServiceRef>, store: &Store<CachedService>, ctx: &Arc<Context>) {
    while let Some((key, why)) = queue.next().await {
        // Deleted since it was asked for: nothing is left to do for it.
        let Some(svc) = store.get(&key) else {
            queue.finish(&key, Next::OnChange);
            continue;
        };
        let span =
            tracing::info_span!("reconciling object", object.ref = %key, object.reason = why);
        let next = match reconcile(svc.clone(), ctx.clone()).instrument(span).await {
            Ok(next) => next,
            Err(error) => error_policy(svc, &error, ctx.clone()),
        };
        queue.finish(&key, next);
    }
}
