//! The status writes of each service: which copy a pass plans from and writes over, when a
//! write may wait, and the writes of counts alone, which the next pass need not wait for.
//!
//! A pass of a service runs only once the previous one is over, and a status write costs
//! the API server a validation of the whole service (9 ms at the median here). A write that
//! carries no decision a later pass reads back (what each pass derives again: see
//! `ResilientServiceStatus::decides_as`) goes on in the background and the pass ends:
//! a pod deleted meanwhile gets its replacement from the next pass at once, planned from the
//! copy the write started from with the status being written in place. The next status
//! write waits for it, then goes over the copy it returned. A write that records a decision
//! (the ledger, the rollout, a revision) is done before its pass ends, so that no pass acts
//! on a decision the API server has not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use tokio::task::JoinHandle;

use crate::act::{self, StatusTarget, StatusWrite};
use crate::api::{ResilientService, ResilientServiceStatus};
use crate::observe::{trim_service, CachedService};
use crate::own_writes::{Freshness, OwnWrites};
use crate::plan;

/// A service, as the service cache and the controller's queue name it.
pub type Key = ObjectRef<CachedService>;

/// The least time between two status writes of a service that change only what the world
/// shows again on the next pass (counts, slot states, messages): while pods start in a
/// burst, each of their events would otherwise write the status once more. A write that
/// records something (a condition, the ledger, the rollout) never waits. At 10,000 pods,
/// 3 s made 3,565 status writes where 1 s made 4,116 (docs/benchmarks.md); each costs
/// the API server a validation of the whole service, pod template included.
const STATUS_COALESCE: Duration = Duration::from_secs(3);

pub struct StatusWrites {
    client: Client,
    /// Copies our writes superseded, and the copy the last write returned.
    own: OwnWrites<Key, Arc<ResilientService>>,
    /// When each service's status was last written (see STATUS_COALESCE).
    written_at: Mutex<HashMap<Key, Instant>>,
    /// The background write of each service, while it runs.
    in_flight: Mutex<HashMap<Key, JoinHandle<()>>>,
    /// While a background write runs: the version it goes over and the status being
    /// written, which the next pass plans from when it plans from that same version.
    pending: Mutex<HashMap<Key, Pending>>,
    /// Background writes that failed in a row, per service: the retry backs off.
    failures: Mutex<HashMap<Key, u32>>,
    /// Asks for a pass of a service whose background write failed: nothing else may.
    retry: mpsc::UnboundedSender<Key>,
}

/// A background write as the passes see it while it runs. Only the status and a version:
/// when the writes wait their turn behind the request rate limit (hundreds of them as the
/// last pods of a thousand services turn Ready), a copy of the whole service each held
/// tens of MiB at once.
struct Pending {
    version: Option<String>,
    status: Arc<ResilientServiceStatus>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusWrites {
    /// The writer, and the services whose background write failed, to be passed again.
    pub fn new(client: Client) -> (Arc<Self>, impl Stream<Item = Key> + Send + 'static) {
        let (retry, retries) = mpsc::unbounded();
        let writes = Self {
            client,
            own: OwnWrites::default(),
            written_at: Mutex::default(),
            in_flight: Mutex::default(),
            pending: Mutex::default(),
            failures: Mutex::default(),
            retry,
        };
        (Arc::new(writes), retries)
    }

    /// The copy a pass plans from: the cached one, or the one our last write returned when
    /// that write superseded the cached one; while a background write goes over that copy,
    /// the copy with the status being written in place. None when a write of ours was
    /// refused because the service changed: the pass waits for the newer copy's watch event.
    pub fn copy_to_plan_from(
        &self,
        key: &Key,
        cached: &Arc<ResilientService>,
    ) -> Option<Arc<ResilientService>> {
        let newest = self.newest(key, cached)?;
        let status = match guard(&self.pending).get(key) {
            // Someone else's change since the write began: the write will be refused.
            Some(p) if p.version == newest.metadata.resource_version => p.status.clone(),
            _ => return Some(newest),
        };
        let mut written = (*newest).clone();
        written.status = Some((*status).clone());
        Some(Arc::new(written))
    }

    /// The newest copy the API server has: the cached one, or the one our last write
    /// returned when it superseded the cached one. None after a refused write.
    fn newest(&self, key: &Key, cached: &Arc<ResilientService>) -> Option<Arc<ResilientService>> {
        match self
            .own
            .freshness(key, cached.metadata.resource_version.as_deref())
        {
            Freshness::Fresh => Some(cached.clone()),
            Freshness::Superseded(copy) => copy,
        }
    }

    /// The copy a status write goes over, once the service's background write is done:
    /// the newest the API server has. After a refused write, the cached copy, whose write
    /// is refused in turn; never the copy a pass planned from with a status not yet written,
    /// which would take that status for written.
    pub async fn copy_to_write_over(
        &self,
        key: &Key,
        cached: &Arc<ResilientService>,
    ) -> Arc<ResilientService> {
        let running = guard(&self.in_flight).remove(key);
        if let Some(running) = running {
            // A panic in it is logged by the runtime; the copy below stays right.
            let _ = running.await;
        }
        guard(&self.pending).remove(key);
        self.newest(key, cached).unwrap_or_else(|| cached.clone())
    }

    /// How long the status write of this pass may wait: only when the pass records nothing
    /// new (no action but opening gates, and the same ledger, conditions and rollout) and
    /// the last write is less than STATUS_COALESCE old. The pass is then asked for again
    /// when it is over.
    pub fn hold(&self, key: &Key, old: &ResilientService, plan: &plan::Plan) -> Option<Duration> {
        let old = old.status.as_ref()?;
        let quiet = (plan.actions.iter()).all(|a| matches!(a, plan::Action::OpenGate { .. }));
        if !quiet || *old == plan.status || !old.records_as(&plan.status) {
            return None;
        }
        let last = *guard(&self.written_at).get(key)?;
        STATUS_COALESCE.checked_sub(last.elapsed())
    }

    /// Writes `status` over `base` unless it has it. A write that carries no new decision
    /// goes on in the background; one that records a decision is done before the pass ends,
    /// and its error is the pass's.
    pub async fn write(
        self: &Arc<Self>,
        key: &Key,
        base: Arc<ResilientService>,
        status: &ResilientServiceStatus,
    ) -> Result<(), act::Error> {
        let Some(old) = base.status.as_ref() else {
            return self.write_now(key, &StatusTarget::of(&base), status).await;
        };
        if old == status {
            return Ok(());
        }
        if !old.decides_as(status) {
            return self.write_now(key, &StatusTarget::of(&base), status).await;
        }
        let status = Arc::new(status.clone());
        // The write keeps the service's name and version, not the copy: it may wait long.
        let to = StatusTarget::of(&base);
        let pending = Pending {
            version: to.resource_version.clone(),
            status: status.clone(),
        };
        guard(&self.pending).insert(key.clone(), pending);
        let (writes, key2) = (self.clone(), key.clone());
        let running = tokio::spawn(async move {
            let result = writes.write_now(&key2, &to, &status).await;
            // Only now: a pass before this plans from the status being written, one after
            // from what the write left (the copy it returned, or none after a refusal).
            guard(&writes.pending).remove(&key2);
            match result {
                Ok(()) => {
                    guard(&writes.failures).remove(&key2);
                }
                Err(error) => writes.retry_later(key2, &error),
            }
        });
        guard(&self.in_flight).insert(key.clone(), running);
        Ok(())
    }

    async fn write_now(
        &self,
        key: &Key,
        to: &StatusTarget,
        status: &ResilientServiceStatus,
    ) -> Result<(), act::Error> {
        let version = to.resource_version.as_deref();
        match act::write_status(&self.client, to, status).await? {
            (StatusWrite::Unchanged, _) => {}
            (StatusWrite::Written, copy) => {
                guard(&self.written_at).insert(key.clone(), Instant::now());
                let copy = copy.map(|mut c| {
                    trim_service(&mut c);
                    Arc::new(c)
                });
                self.own.superseded_by(key, version, copy);
            }
            (StatusWrite::Refused, _) => self.own.superseded(key, version),
        }
        Ok(())
    }

    /// A background write failed: the service is passed again after a backoff that grows
    /// while its writes keep failing, as a failed pass's would.
    fn retry_later(&self, key: Key, error: &act::Error) {
        let attempts = {
            let mut failures = guard(&self.failures);
            let n = failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = crate::backoff::retry_delay(attempts, error.is_transient());
        tracing::warn!(namespace = %key.namespace.clone().unwrap_or_default(), name = %key.name, %error, retry_in = ?delay, "status write failed");
        let retry = self.retry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = retry.unbounded_send(key);
        });
    }

    /// Forgets what is kept of services `keep` refuses (deleted ones), of writes too old to
    /// hold another and of finished background writes.
    pub fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.own.retain(&keep);
        guard(&self.written_at).retain(|k, at| keep(k) && at.elapsed() < STATUS_COALESCE);
        guard(&self.in_flight).retain(|k, running| keep(k) && !running.is_finished());
        guard(&self.pending).retain(|k, _| keep(k));
        guard(&self.failures).retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of `svc`.
    fn key_of(svc: &ResilientService) -> Key {
        ObjectRef::new(&svc.metadata.name.clone().unwrap_or_default())
            .within(svc.metadata.namespace.as_deref().unwrap_or_default())
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn service(status: ResilientServiceStatus) -> ResilientService {
        let mut svc: ResilientService = serde_json::from_value(serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}},
        }))
        .expect("a valid service");
        svc.status = Some(status);
        svc
    }

    fn plan(status: ResilientServiceStatus, actions: Vec<plan::Action>) -> plan::Plan {
        plan::Plan {
            actions,
            status,
            requeue_after: None,
        }
    }

    /// No request is made: the client is only held.
    fn writes() -> Arc<StatusWrites> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        StatusWrites::new(Client::try_from(config).expect("a client")).0
    }

    #[tokio::test]
    async fn only_a_quiet_pass_that_changes_counts_soon_after_a_write_holds_its_status() {
        let writes = writes();
        let old = ResilientServiceStatus {
            ready_replicas: 2,
            conditions: vec![serde_json::from_value::<Condition>(serde_json::json!({
                "type": "Available", "status": "True", "reason": "Ready", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }))
            .expect("a valid condition")],
            ..Default::default()
        };
        let svc = service(old.clone());
        let key = key_of(&svc);
        let counts = ResilientServiceStatus {
            ready_replicas: 3,
            ..old.clone()
        };
        assert_eq!(
            writes.hold(&key, &svc, &plan(counts.clone(), vec![])),
            None,
            "no write yet to coalesce with"
        );
        guard(&writes.written_at).insert(key.clone(), Instant::now());
        let held = writes.hold(&key, &svc, &plan(counts.clone(), vec![]));
        assert!(held.is_some_and(|h| h <= STATUS_COALESCE), "{held:?}");
        let gate = plan::Action::OpenGate { name: "p".into() };
        assert!(writes
            .hold(&key, &svc, &plan(counts.clone(), vec![gate]))
            .is_some());

        let recorded = ResilientServiceStatus {
            reason: Some("Degraded".into()),
            ..counts.clone()
        };
        assert_eq!(writes.hold(&key, &svc, &plan(recorded, vec![])), None);
        let act = plan::Action::DeletePod {
            name: "p".into(),
            reason: "r".into(),
        };
        assert_eq!(writes.hold(&key, &svc, &plan(counts, vec![act])), None);
        assert_eq!(
            writes.hold(&key, &svc, &plan(old, vec![])),
            None,
            "nothing to write"
        );

        guard(&writes.written_at).insert(key.clone(), Instant::now() - STATUS_COALESCE);
        let later = ResilientServiceStatus {
            ready_replicas: 1,
            ..svc.status.clone().unwrap_or_default()
        };
        assert_eq!(
            writes.hold(&key, &svc, &plan(later, vec![])),
            None,
            "long enough ago"
        );
    }

    fn at_version(mut svc: ResilientService, version: &str) -> Arc<ResilientService> {
        svc.metadata.resource_version = Some(version.into());
        Arc::new(svc)
    }

    /// What `write` keeps while its write of `status` over `base` runs.
    fn pending(writes: &StatusWrites, base: &ResilientService, status: &ResilientServiceStatus) {
        let pending = Pending {
            version: base.metadata.resource_version.clone(),
            status: Arc::new(status.clone()),
        };
        guard(&writes.pending).insert(key_of(base), pending);
    }

    #[tokio::test]
    async fn a_pass_plans_from_the_status_being_written_over_its_copy_and_writes_over_what_landed()
    {
        let (writes, fresh) = (writes(), writes());
        let old = ResilientServiceStatus {
            ready_replicas: 2,
            ..Default::default()
        };
        let cached = at_version(service(old.clone()), "7");
        let key = key_of(&cached);
        let being_written = ResilientServiceStatus {
            ready_replicas: 3,
            ..old.clone()
        };
        pending(&writes, &cached, &being_written);

        let planned = writes.copy_to_plan_from(&key, &cached).expect("a copy");
        assert_eq!(planned.status.as_ref(), Some(&being_written));
        assert_eq!(planned.metadata.resource_version.as_deref(), Some("7"));

        // Someone else changed the service meanwhile: the write in flight will be refused,
        // and the pass plans from their copy.
        let theirs = at_version(service(old.clone()), "8");
        let planned = writes.copy_to_plan_from(&key, &theirs).expect("a copy");
        assert_eq!(planned.metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(planned.status.as_ref(), Some(&old));

        // The write landed: the next write goes over the copy it returned, not the one
        // planned from, and no pass plans from the overlay any more.
        let landed = at_version(service(being_written.clone()), "9");
        writes
            .own
            .superseded_by(&key, Some("7"), Some(landed.clone()));
        let base = writes.copy_to_write_over(&key, &cached).await;
        assert_eq!(base.metadata.resource_version.as_deref(), Some("9"));
        assert!(guard(&writes.pending).is_empty());
        let planned = writes.copy_to_plan_from(&key, &cached).expect("a copy");
        assert_eq!(planned.metadata.resource_version.as_deref(), Some("9"));

        // A write that never landed (it failed): the next write goes over the cached copy,
        // so the status it meant to write is written then.
        pending(&fresh, &cached, &being_written);
        let base = fresh.copy_to_write_over(&key, &cached).await;
        assert_eq!(base.status.as_ref(), Some(&old));
    }
}
