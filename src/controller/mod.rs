//! kube-runtime wiring: shared caches, triggers, the reconcile pass and its error policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::act::Recorder;
use crate::api::LABEL_SERVICE;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::observe::{
    claim_service_key, controller_uid, heartbeat_changes, index_event, node_news, observe,
    trim_node, CachedPod, CachedService, Caches, Heartbeats, NodeFactsCache, OwnerIndex, PodCache,
    SliceIndex,
};
use crate::own_writes::OwnWrites;
use crate::status_writes::StatusWrites;
use crate::work_queue::Next;
use crate::{act, health, plan};

mod passes;
mod spec_changes;

/// How often a healthy service is looked at even when nothing changes.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a pass that found the caches still filling is tried again.
const CACHE_SYNC_RETRY: Duration = Duration::from_millis(250);
/// How soon a pass skipped after a refused status write is tried again, should the watch
/// event of the newer copy (which triggers a pass itself) be slow to come.
const STALE_COPY_RETRY: Duration = Duration::from_secs(1);
/// How often the counts of repeated Events are written: a repeat shows in
/// `kubectl describe` within this.
const EVENT_FLUSH: Duration = Duration::from_secs(30);
/// How often what is kept per service (its metric series, its error backoff) is dropped
/// for services that no longer exist.
const SWEEP: Duration = Duration::from_secs(5);

/// A service, as the controller's queue names it.
type ServiceRef = ObjectRef<CachedService>;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Act(#[from] act::Error),
    /// The cache keeps each service as the JSON it was decoded from: decoding it again
    /// cannot fail unless the operator has a bug.
    #[error("the cached copy of ResilientService {namespace}/{name} could not be decoded; this is a bug of the operator: {source}")]
    Decode {
        namespace: String,
        name: String,
        source: serde_json::Error,
    },
}

/// Options of a running controller.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace to watch; None for all.
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
}

/// What every reconcile pass shares.
pub struct Context {
    client: Client,
    caches: Caches,
    recorder: Recorder,
    failures: Mutex<HashMap<ServiceRef, u32>>,
    /// The status writes: which copy a pass plans from and writes over, and when.
    status_writes: Arc<StatusWrites>,
    /// Copies of pods whose gate our patch opened: a pass that reads one takes the gate
    /// as open rather than opening it again.
    gates_opened: OwnWrites<ObjectRef<CachedPod>>,
    /// Set once every cache has its first full list. A flag, not a second waiter on the
    /// stores: a store's readiness wakes only one waiting task.
    synced: AtomicBool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What a watch cache needs of its objects.
trait Cacheable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Cacheable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A cache fed by a watch; managed fields are dropped, since nothing reads them.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Cacheable,
{
    cached_trimmed(api, config, |_| {})
}

/// A cache that keeps only what `trim` leaves of each object, and no managed fields.
fn cached_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Cacheable,
{
    indexed(api, config, trim, |_| {})
}

/// A trimmed cache whose raw watch events also feed `index` (an OwnerIndex), as they feed
/// the store.
fn indexed<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    index: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Cacheable,
{
    let (reader, events) = reflected(api, config, trim, index);
    (reader, events.touched_objects())
}

/// A trimmed cache, indexed as `indexed` does, whose watch events are passed on whole:
/// what was deleted, and where a list begins and ends, are told apart.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    index: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
)
where
    K: Cacheable,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, config)
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .inspect(move |e| {
            if let Ok(e) = e {
                index(e);
            }
        });
    let stream =
        reflector::reflector(writer, events).backoff(crate::backoff::WatchBackoff::default());
    (reader, stream)
}

/// Maps an object carrying our service label to its ResilientService.
fn by_label<K: Resource>(object: K) -> Option<ServiceRef> {
    service_of(&object)
}

/// Keeps the first of each service: a pass is asked for once.
fn unique(services: &mut Vec<ServiceRef>) {
    let mut seen = std::collections::HashSet::new();
    services.retain(|s| seen.insert(s.clone()));
}

fn service_of<K: Resource>(object: &K) -> Option<ServiceRef> {
    let name = object.meta().labels.as_ref()?.get(LABEL_SERVICE)?;
    let ns = object.meta().namespace.as_deref()?;
    Some(ObjectRef::new(name).within(ns))
}

/// The service a cached pod belongs to, by the label of ours the cache keeps apart.
fn service_of_pod(pod: &CachedPod) -> Option<ServiceRef> {
    let name = pod.label(LABEL_SERVICE)?;
    Some(ObjectRef::new(name).within(pod.metadata.namespace.as_deref()?))
}

/// The service that fenced a node, as the node's fence record names it.
fn fenced_by(node: &Node) -> Option<ServiceRef> {
    let (ns, name) = crate::build::FenceRecord::of(node)?.fencer()?;
    Some(ObjectRef::new(&name).within(&ns))
}

/// Runs the controller until a shutdown signal.
pub async fn run(client: Client, options: Options, metrics: Arc<Metrics>, health: Arc<Health>) {
    let ns = options.namespace.as_deref();
    let ours = watcher::Config::default().labels(LABEL_SERVICE);
    let pods = PodCache::default();
    let cache = pods.clone();
    let pod_events = watcher(api::<CachedPod>(&client, ns), ours.clone())
        .modify(CachedPod::trim)
        .inspect(move |event| {
            if let Ok(event) = event {
                cache.apply(event);
            }
        })
        .backoff(crate::backoff::WatchBackoff::default())
        .touched_objects();
    let claims_by_service = OwnerIndex::default();
    let by_service = claims_by_service.clone();
    let (claims, claim_events) = indexed(
        api::<PersistentVolumeClaim>(&client, ns),
        ours.clone(),
        |_| {},
        move |e| index_event(&by_service, e, claim_service_key),
    );
    let revisions_by_owner = OwnerIndex::default();
    let by_owner = revisions_by_owner.clone();
    let (revisions, revision_events) = indexed(
        api::<ControllerRevision>(&client, ns),
        ours.clone(),
        crate::build::record_as_text,
        move |e| index_event(&by_owner, e, controller_uid),
    );
    // No pass reads a budget's status, so the cache drops it and its writes ask for none.
    let (budgets, budget_events) = reflected(
        api::<PodDisruptionBudget>(&client, ns),
        ours,
        |b| b.status = None,
        |_| {},
    );
    let budget_events = spec_changes::spec_changes(budget_events);
    // A user's own Service may serve as the headless Service, so every Service is cached.
    let (services, service_events) =
        cached(api::<Service>(&client, ns), watcher::Config::default());
    let (nodes, node_events) = reflected(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        trim_node,
        |_| {},
    );
    let node_facts = NodeFactsCache::default();
    let facts = node_facts.clone();
    let node_events = node_events.inspect(move |_| facts.node_changed());
    let (leases, lease_events) = reflected(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
        |_| {},
        |_| {},
    );
    let heartbeats = Heartbeats::default();
    let book = heartbeats.clone();
    let lease_events = lease_events
        .inspect(move |event| match event {
            Ok(
                watcher::Event::Apply(lease)
                | watcher::Event::InitApply(lease)
                | watcher::Event::Delete(lease),
            ) => book.saw(lease, jiff::Timestamp::now()),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => book.listed(),
            Err(_) => book.lost_sight(),
        })
        .touched_objects();
    let (volumes, volume_events) = cached(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    );

    // Every slice of the watched namespaces: a pod of ours may be behind any Service. The
    // index by pod is all that is kept of them.
    let slice_index = SliceIndex::default();
    let index = slice_index.clone();
    let slice_events = watcher(
        api::<EndpointSlice>(&client, ns),
        watcher::Config::default(),
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            index.apply(event);
        }
    })
    .backoff(crate::backoff::WatchBackoff::default())
    .touched_objects();

    let caches = Caches {
        pods: pods.clone(),
        claims,
        revisions,
        services,
        budgets,
        nodes: nodes.clone(),
        leases: leases.clone(),
        volumes,
        heartbeats: heartbeats.clone(),
        node_facts,
        slice_index,
        revisions_by_owner,
        claims_by_service,
    };
    let reporter = Reporter {
        controller: "perennial".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (status_writes, status_retries) = StatusWrites::new(client.clone());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        caches: caches.clone(),
        failures: Mutex::default(),
        status_writes,
        gates_opened: OwnWrites::default(),
        synced: AtomicBool::new(false),
        metrics: metrics.clone(),
        health: health.clone(),
    });

    // A node event reconciles every service with a pod on that node, the service that
    // fenced it (its pods have left the node, but the fence is its to remove), and every
    // service a slot of which keeps off the node (the avoidance is lifted once it is back).
    let pods_on_node = pods.clone();
    let watched = options.namespace.clone();
    let (service_store, service_writer) = reflector::store::<CachedService>();
    let avoiding = service_store.clone();
    let node_to_services = move |node: Node| {
        let node_name = node.name_any();
        let mut services = (pods_on_node.on_node(&node_name).iter())
            .filter_map(|p| service_of_pod(p))
            .collect::<Vec<_>>();
        // Node events are few (heartbeats are filtered out), so the scan is rare.
        services.extend(
            (avoiding.state().iter())
                .filter(|s| s.keeps_off(&node_name))
                .map(|s| ObjectRef::from(s.as_ref())),
        );
        unique(&mut services);
        // A fence record may name a service of a namespace this instance does not watch.
        services.extend(fenced_by(&node).filter(|s| {
            watched
                .as_deref()
                .is_none_or(|ns| s.namespace.as_deref() == Some(ns))
        }));
        services
    };

    // A slice change may end the drain of a pod of ours whose gate is closed.
    let pods_in_slices = pods.clone();
    let slice_to_services = move |slice: EndpointSlice| {
        let ns = slice.namespace().unwrap_or_default();
        let mut services: Vec<ServiceRef> = SliceIndex::pods_of(&slice)
            .filter_map(|pod| pods_in_slices.get(&ns, pod))
            .filter(|p| matches!(p.gate(), health::Gate::Closed { .. }))
            .filter_map(|p| service_of_pod(&p))
            .collect();
        unique(&mut services);
        services
    };

    let silent_nodes = node_to_services.clone();
    // The least loss threshold of the services: a node silent for less is news to no one.
    let thresholds = service_store.clone();
    let first_loss = move || {
        (thresholds.state().iter())
            .map(|s| i64::from(s.node_lost_after_seconds()))
            .min()
    };
    // The services' own watch backs off as each cache's does (WatchBackoff), and the
    // triggers are merged with no backoff of their own: a reset fails every watch at once,
    // and one shared backoff counted those failures as one watch failing again and again,
    // up to 30 s with nothing watched.
    let service_triggers = reflector::reflector(
        service_writer,
        watcher(
            api::<CachedService>(&client, ns),
            watcher::Config::default(),
        ),
    )
    .backoff(crate::backoff::WatchBackoff::default())
    .applied_objects();
    let triggers = vec![
        passes::trigger("service", service_triggers, |s: CachedService| {
            Some(ObjectRef::from(&s))
        }),
        status_retries
            .map(|s| ("status retry", Ok(vec![s])))
            .boxed(),
        // A trimmed pod keeps of its owners the service that controls it.
        passes::trigger("pod", pod_events, |p: CachedPod| {
            let (_, name) = p.controller()?;
            Some(ObjectRef::new(name).within(&p.namespace()?))
        }),
        passes::trigger("revision", revision_events, passes::owners),
        passes::trigger("disruption budget", budget_events, passes::owners),
        passes::trigger("claim", claim_events, by_label),
        passes::trigger("Service", service_events, |s: Service| {
            // Services are matched by name: the headless Service is named by the spec.
            let ns = s.namespace()?;
            Some(ObjectRef::new(&s.name_any()).within(&ns))
        }),
        passes::trigger("node", node_news(node_events), node_to_services),
        // Renewals are not news; a node that falls silent or wakes up is (below).
        passes::followed(lease_events),
        passes::followed(volume_events),
        passes::trigger(
            "node heartbeat",
            heartbeat_changes(nodes, leases, heartbeats, first_loss),
            silent_nodes,
        ),
        passes::trigger("EndpointSlice", slice_events, slice_to_services),
    ];
    // Repeats of an Event are counted in memory and written on this beat.
    let flusher = context.recorder.spawn_flusher(EVENT_FLUSH);
    let last_flush = context.clone();
    // A deletion triggers no pass, so what is kept per service is swept against the store.
    let sweep = tokio::spawn(sweep_deleted(
        service_store.clone(),
        options.namespace.clone(),
        context.clone(),
    ));

    let synced = context.clone();
    let ready = async move {
        caches.ready().await;
        synced.synced.store(true, Ordering::Release);
        synced.health.synced.store(true, Ordering::Release);
        tracing::info!("caches synced");
    };
    // Shutdown must not wait for caches that never sync (an unreachable API server).
    let ready = tokio::spawn(ready);
    passes::run(service_store, triggers, options.concurrency, context).await;
    ready.abort();
    sweep.abort();
    flusher.abort();
    // The counts of the last beat are not lost on a clean shutdown.
    last_flush.recorder.flush().await;
}

/// Drops, every SWEEP, the replica series and error backoffs of services the store no
/// longer holds: a deleted service leaves no gauge and no entry behind.
async fn sweep_deleted(store: Store<CachedService>, namespace: Option<String>, ctx: Arc<Context>) {
    let mut interval = tokio::time::interval(SWEEP);
    loop {
        interval.tick().await;
        if !ctx.synced.load(Ordering::Acquire) {
            continue;
        }
        ctx.metrics
            .forget_deleted_services(namespace.as_deref(), |ns, name| {
                store.get(&ObjectRef::new(name).within(ns)).is_some()
            });
        if let Ok(mut failures) = ctx.failures.lock() {
            failures.retain(|object, _| store.get(object).is_some());
        }
        ctx.status_writes
            .retain(|object| store.get(object).is_some());
        let pods = &ctx.caches.pods;
        ctx.gates_opened.retain(|pod| {
            pods.get(pod.namespace.as_deref().unwrap_or_default(), &pod.name)
                .is_some()
        });
        // Most sweeps find no drain under way: no scan of every pod then.
        if ctx.caches.slice_index.any_drained() {
            let uids = ctx.caches.pods.uids();
            ctx.caches
                .slice_index
                .retain_drained(|uid| uids.contains(uid));
        }
    }
}

async fn reconcile(svc: Arc<CachedService>, ctx: Arc<Context>) -> Result<Next, Error> {
    ctx.metrics.reconciles_in_flight.inc();
    let started = std::time::Instant::now();
    let result = reconcile_pass(&svc, &ctx).await;
    ctx.metrics.reconciles_in_flight.dec();
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    // Logged here, inside the worker's span, so the line names what triggered the pass.
    let next = result.as_ref().ok();
    tracing::debug!(result = label, next = ?next, "reconciled");
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabel {
            result: label.into(),
        })
        .inc();
    result
}

async fn reconcile_pass(kept: &CachedService, ctx: &Arc<Context>) -> Result<Next, Error> {
    // Plan nothing from half-filled caches: an empty pod cache would look like lost pods.
    if !ctx.synced.load(Ordering::Acquire) {
        return Ok(Next::After(CACHE_SYNC_RETRY));
    }
    let span = tracing::info_span!("reconcile", namespace = %kept.namespace().unwrap_or_default(), name = %kept.name_any());
    let _enter = span.enter();
    if kept.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes what the service owns; retained claims stay.
        return Ok(Next::OnChange);
    }
    let key = ObjectRef::from(kept);
    let cached = &Arc::new(kept.decode().map_err(|source| Error::Decode {
        namespace: kept.namespace().unwrap_or_default(),
        name: kept.name_any(),
        source,
    })?);
    let Some(svc) = ctx.status_writes.copy_to_plan_from(&key, cached) else {
        tracing::debug!("skipped: a status write was refused, the newer copy is on its way");
        return Ok(Next::After(STALE_COPY_RETRY));
    };
    let svc = &svc;
    let mut observed = observe(svc, &ctx.caches);
    let ns = svc.namespace().unwrap_or_default();
    let pod_key = |name: &str| ObjectRef::<CachedPod>::new(name).within(&ns);
    observed.gates_opened = (observed.pods.iter())
        .filter(|p| {
            let version = p.metadata.resource_version.as_deref();
            ctx.gates_opened.is_stale(&pod_key(&p.name_any()), version)
        })
        .map(|p| p.name_any())
        .collect();
    // Whole seconds, as the API server stores times: a status computed twice then compares equal.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default();
    let seen = health::assess(svc, &observed, now);
    let plan = plan::plan(svc, &seen);
    ctx.metrics.observe_pass(
        &svc.namespace().unwrap_or_default(),
        &svc.name_any(),
        svc.status.as_ref(),
        &plan.status,
        &plan.actions,
    );
    if !plan.actions.is_empty() {
        tracing::info!(actions = ?plan.actions, "acting");
    }
    drop(_enter);
    // Only actions read the recorded templates: a pass with none decodes none of them.
    let templates: act::Templates = if plan.actions.is_empty() {
        act::Templates::default()
    } else {
        (observed.revisions.iter())
            .filter_map(|r| Some((r.name_any(), crate::build::recorded_template(r)?)))
            .collect()
    };
    act::execute(&ctx.client, &ctx.recorder, svc, &templates, &plan).await?;
    for action in &plan.actions {
        let plan::Action::OpenGate { name } = action else {
            continue;
        };
        if let Some(pod) = observed.pods.iter().find(|p| p.name_any() == *name) {
            ctx.gates_opened
                .superseded(&pod_key(name), pod.metadata.resource_version.as_deref());
        }
    }
    // The status is compared with the copy it goes over, which a background write may have
    // changed since the pass planned, or not written: the planned copy may show a status
    // still on its way, and the world may be back to what an older copy shows.
    let writes = &ctx.status_writes;
    let hold = writes.hold(&key, svc, &plan);
    if hold.is_none() {
        let base = writes.copy_to_write_over(&key, cached).await;
        writes.write(&key, base, &plan.status).await?;
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&key);
    }
    let next = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    Ok(Next::After(hold.map_or(next, |h| h.min(next))))
}

/// Transient errors are retried with a per-object exponential backoff: never a hot loop.
fn error_policy(svc: Arc<CachedService>, error: &Error, ctx: Arc<Context>) -> Next {
    let attempts = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(ObjectRef::from(svc.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let transient = match error {
        Error::Act(e) => e.is_transient(),
        Error::Decode { .. } => false,
    };
    let delay = crate::backoff::retry_delay(attempts, transient);
    tracing::warn!(namespace = %svc.namespace().unwrap_or_default(), name = %svc.name_any(), %error, transient, retry_in = ?delay, "reconcile failed");
    Next::After(delay)
}
