//! Prometheus metrics: what the operator does and what it finds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::ResilientServiceStatus;
use crate::plan::Action;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub namespace: String,
    pub name: String,
    pub state: String,
}

/// The replica states the ledger reports, each exported even at zero.
const STATES: [&str; 10] = [
    "Pending",
    "Starting",
    "Ready",
    "NotReady",
    "Failing",
    "Terminating",
    "OnLostNode",
    "Repairing",
    "Waiting",
    "Quarantined",
];

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_seconds: Histogram,
    pub failures: Family<ReasonLabel, Counter>,
    pub repairs: Family<KindLabel, Counter>,
    pub rollouts: Family<EventLabel, Counter>,
    pub replicas: Family<ReplicaLabels, Gauge>,
    pub leader: Gauge,
    pub reconciles_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("perennial");
        let m = Self {
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            failures: Family::default(),
            repairs: Family::default(),
            rollouts: Family::default(),
            replicas: Family::default(),
            leader: Gauge::default(),
            reconciles_in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconcile passes by result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "failures_detected",
            "Replica failures identified, by reason",
            m.failures.clone(),
        );
        registry.register("repairs", "Repairs made, by kind", m.repairs.clone());
        registry.register(
            "rollouts",
            "Rollouts started, completed and rolled back",
            m.rollouts.clone(),
        );
        registry.register(
            "replicas",
            "Replicas by service and state",
            m.replicas.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconcile passes running now (the work queue's depth)",
            m.reconciles_in_flight.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Counts what one pass found and did: new failures in the ledger, repairs, rollout
    /// transitions, and replicas by state.
    pub fn observe_pass(
        &self,
        namespace: &str,
        name: &str,
        before: Option<&ResilientServiceStatus>,
        after: &ResilientServiceStatus,
        actions: &[Action],
    ) {
        for entry in &after.replica_statuses {
            let Some(failure) = &entry.last_failure else {
                continue;
            };
            let known = before
                .and_then(|b| {
                    b.replica_statuses
                        .iter()
                        .find(|r| r.ordinal == entry.ordinal)
                })
                .and_then(|r| r.last_failure.as_ref())
                .is_some_and(|f| f.reason == failure.reason && f.at == failure.at);
            if !known {
                self.failures
                    .get_or_create(&ReasonLabel {
                        reason: failure.reason.clone(),
                    })
                    .inc();
            }
        }
        for action in actions {
            let kind = match action {
                Action::ForceDeletePod { .. } => "NodeLost",
                Action::RebuildClaim { .. } => "RebuildStorage",
                Action::TaintNode { .. } => "Fence",
                Action::DeletePod { reason, .. } => {
                    match ["Restart", "Reschedule", "RebuildStorage"]
                        .into_iter()
                        .find(|k| reason.starts_with(k))
                    {
                        Some(k) => k,
                        None => continue,
                    }
                }
                Action::MarkRevisionBad { .. } => {
                    self.rollouts
                        .get_or_create(&EventLabel {
                            event: "rolled_back".into(),
                        })
                        .inc();
                    continue;
                }
                _ => continue,
            };
            self.repairs
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        }
        let was_rolling = before
            .and_then(|b| b.rollout.as_ref())
            .map(|r| r.revision.clone());
        let is_rolling = after.rollout.as_ref().map(|r| r.revision.clone());
        if is_rolling.is_some() && is_rolling != was_rolling {
            self.rollouts
                .get_or_create(&EventLabel {
                    event: "started".into(),
                })
                .inc();
        }
        // A rollout that ends without a rollback has completed.
        let rolled_back = after
            .conditions
            .iter()
            .any(|c| c.type_ == "RolledBack" && c.status == "True");
        if was_rolling.is_some() && is_rolling.is_none() && !rolled_back {
            self.rollouts
                .get_or_create(&EventLabel {
                    event: "completed".into(),
                })
                .inc();
        }
        for state in STATES {
            let n = after
                .replica_statuses
                .iter()
                .filter(|r| r.state == state)
                .count();
            self.replicas
                .get_or_create(&ReplicaLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
