//! Prometheus metrics: what the operator does and what it finds.

mod service_series;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use service_series::{ServiceGauges, ServiceSeries};

use crate::api::{condition, ResilientServiceStatus};
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

/// The condition types of a service, each exported for every service (1 while True).
const CONDITIONS: [&str; 4] = [
    condition::AVAILABLE,
    condition::PROGRESSING,
    condition::DEGRADED,
    condition::ROLLED_BACK,
];

/// The Degraded reason of a service whose node-loss repairs the storm guard holds.
const STORM_REASON: &str = "MassFailureSuspected";

/// Label values known in advance: their series exist at zero from the start, so that a
/// rate over them is defined before the first event.
const RESULTS: [&str; 2] = ["ok", "error"];
const REPAIR_KINDS: [&str; 5] = [
    "Restart",
    "Reschedule",
    "RebuildStorage",
    "NodeLost",
    "Fence",
];
const ROLLOUT_EVENTS: [&str; 3] = ["started", "completed", "rolled_back"];

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
    /// Replicas by state, conditions and the storm guard, of each service.
    services: Arc<ServiceSeries>,
    pub leader: Gauge,
    pub reconciles_in_flight: Gauge,
    /// The length of the last text rendered.
    rendered: AtomicUsize,
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
            services: Arc::default(),
            leader: Gauge::default(),
            reconciles_in_flight: Gauge::default(),
            rendered: AtomicUsize::new(0),
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
        registry.register(
            "repairs",
            "Repairs made, by kind; a storage rebuild counts once per replica, whatever its claims",
            m.repairs.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts started, completed and rolled back",
            m.rollouts.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconcile passes running now; at most the concurrency per watched namespace",
            m.reconciles_in_flight.clone(),
        );
        for result in RESULTS {
            let _ = m.reconciles.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        for kind in REPAIR_KINDS {
            let _ = m.repairs.get_or_create(&KindLabel { kind: kind.into() });
        }
        for event in ROLLOUT_EVENTS {
            let _ = m.rollouts.get_or_create(&EventLabel {
                event: event.into(),
            });
        }
        registry.register_collector(Box::new(m.services.clone()));
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
        // A storage rebuild is one repair of one slot: counted by the slots whose claims are
        // rebuilt, not by claims, and not again for the pod the RebuildStorage rung deletes.
        let mut rebuilt: BTreeSet<i32> = BTreeSet::new();
        for action in actions {
            let kind = match action {
                Action::ForceDeletePod { .. } => "NodeLost",
                Action::RebuildClaim { ordinal, .. } => {
                    if !rebuilt.insert(*ordinal) {
                        continue;
                    }
                    "RebuildStorage"
                }
                Action::TaintNode { .. } => "Fence",
                // A repair of a pod that may serve is decided when its drain starts.
                Action::DeletePod { reason, .. } | Action::CloseGate { reason, .. } => {
                    match ["Restart", "Reschedule"]
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
        let mut gauges = ServiceGauges::default();
        for (n, state) in gauges.replicas.iter_mut().zip(STATES) {
            let count = (after.replica_statuses.iter())
                .filter(|r| r.state == state)
                .count();
            *n = u32::try_from(count).unwrap_or(u32::MAX);
        }
        let is_true = |type_: &str| {
            after
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
        };
        for (is, type_) in gauges.conditions.iter_mut().zip(CONDITIONS) {
            *is = is_true(type_).is_some();
        }
        gauges.storm = is_true(condition::DEGRADED).is_some_and(|c| c.reason == STORM_REASON);
        self.services.set(namespace, name, gauges);
    }

    /// Drops the replica series of every service in `namespace` (all namespaces when None)
    /// that `exists` no longer finds, so that a deleted service leaves no gauge behind. A
    /// pass racing with this for a service just deleted writes its series again; the next
    /// sweep drops them.
    pub fn forget_deleted_services(
        &self,
        namespace: Option<&str>,
        exists: impl Fn(&str, &str) -> bool,
    ) {
        self.services.retain(namespace, exists);
    }

    /// The metrics in the Prometheus text format (version 0.0.4, what `/metrics` declares).
    pub fn render(&self) -> String {
        // Room for as much as the last scrape wrote: the text is not copied as it grows.
        let mut out = String::with_capacity(self.rendered.load(Ordering::Relaxed) + 4096);
        let mut text = ClassicText::new(&mut out);
        let written = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text.finish();
        if written.is_err() {
            out.clear();
        }
        self.rendered.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// Writes the OpenMetrics text the encoder makes as the Prometheus text format, line by line
/// as it comes, so that a scrape holds one copy of the text (at 1,000 services, some 1.4 MB)
/// and not a second one to convert. The formats differ in what this registry uses in two
/// places: a counter family is named without `_total` in OpenMetrics and with it in the
/// Prometheus format (where HELP and TYPE name the samples' metric), and OpenMetrics ends
/// with `# EOF`, and may carry `# UNIT` lines, which the Prometheus format does not know.
struct ClassicText<'a> {
    out: &'a mut String,
    /// The line being written.
    line: String,
    /// A family's HELP line, held until its TYPE line says whether it is a counter.
    help: Option<String>,
}

impl<'a> ClassicText<'a> {
    fn new(out: &'a mut String) -> Self {
        Self {
            out,
            line: String::new(),
            help: None,
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if line == "# EOF" || line.starts_with("# UNIT ") {
            return;
        }
        if line.starts_with("# HELP ") {
            self.flush_help("");
            self.help = Some(line);
            return;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            let help_of_family = (self.help.as_deref())
                .and_then(|h| h.strip_prefix("# HELP "))
                .and_then(|h| h.strip_prefix(family))
                .is_some_and(|tail| tail.is_empty() || tail.starts_with(' '));
            self.flush_help(if help_of_family { suffix } else { "" });
            for part in ["# TYPE ", family, suffix, " ", kind, "\n"] {
                self.out.push_str(part);
            }
            return;
        }
        self.flush_help("");
        self.out.push_str(&line);
        self.out.push('\n');
    }

    /// Writes the HELP line held, its family's name followed by `suffix`.
    fn flush_help(&mut self, suffix: &str) {
        let Some(help) = self.help.take() else {
            return;
        };
        let rest = help.strip_prefix("# HELP ").unwrap_or(&help);
        let (family, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        for part in ["# HELP ", family, suffix, " ", tail, "\n"] {
            self.out.push_str(part);
        }
    }

    fn finish(mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.flush_help("");
    }
}

impl std::fmt::Write for ClassicText<'_> {
    fn write_str(&mut self, mut s: &str) -> std::fmt::Result {
        while let Some(end) = s.find('\n') {
            self.line.push_str(&s[..end]);
            self.end_line();
            s = &s[end + 1..];
        }
        self.line.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReplicaStatus;

    fn repairs(m: &Metrics, kind: &str) -> u64 {
        m.repairs
            .get_or_create(&KindLabel { kind: kind.into() })
            .get()
    }

    fn rebuild_claim(name: &str, ordinal: i32, reason: &str) -> Action {
        Action::RebuildClaim {
            name: name.into(),
            ordinal,
            reason: reason.into(),
        }
    }

    fn ready(ordinals: &[i32]) -> ResilientServiceStatus {
        ResilientServiceStatus {
            replica_statuses: ordinals
                .iter()
                .map(|&ordinal| ReplicaStatus {
                    ordinal,
                    state: "Ready".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_storage_rebuild_counts_once_per_replica_whatever_its_claims_and_its_deleted_pod() {
        let m = Metrics::default();
        let status = ready(&[0, 1, 2]);
        // The RebuildStorage rung: the pod and both claims of slot 0, as repair::plan emits them.
        let why = "CrashLoopBackOff: back-off restarting";
        m.observe_pass(
            "shop",
            "db",
            None,
            &status,
            &[
                Action::DeletePod {
                    name: "db-0-abc12".into(),
                    reason: format!("RebuildStorage after {why}"),
                },
                rebuild_claim("data-db-0", 0, why),
                rebuild_claim("logs-db-0", 0, why),
            ],
        );
        assert_eq!(repairs(&m, "RebuildStorage"), 1);

        // Volumes lost with a node: two slots, two claims each, one pass.
        let lost = "VolumeLost: its volume was bound to node n1, which is lost";
        m.observe_pass(
            "shop",
            "db",
            Some(&status),
            &status,
            &[
                Action::ForceDeletePod {
                    name: "db-1-abc12".into(),
                    reason: "NodeLost".into(),
                },
                rebuild_claim("data-db-1", 1, lost),
                rebuild_claim("logs-db-1", 1, lost),
                rebuild_claim("data-db-2", 2, lost),
                rebuild_claim("logs-db-2", 2, lost),
            ],
        );
        assert_eq!(repairs(&m, "RebuildStorage"), 3);
        assert_eq!(repairs(&m, "NodeLost"), 1);
    }

    #[test]
    fn restarts_and_reschedules_count_one_per_deleted_pod() {
        let m = Metrics::default();
        let delete = |name: &str, reason: &str| Action::DeletePod {
            name: name.into(),
            reason: reason.into(),
        };
        m.observe_pass(
            "shop",
            "web",
            None,
            &ready(&[0, 1]),
            &[
                delete("web-0-a", "Restart after OOMKilled: exit 137"),
                delete("web-1-a", "Reschedule after CrashLoopBackOff: x"),
                // A rollout's delete is no repair.
                delete("web-1-b", "replaced by revision web-2"),
            ],
        );
        assert_eq!(repairs(&m, "Restart"), 1);
        assert_eq!(repairs(&m, "Reschedule"), 1);
        assert_eq!(repairs(&m, "RebuildStorage"), 0);
    }

    /// The metric names of the samples of `text`, and those HELP and TYPE lines name.
    fn names(text: &str) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
        let mut samples = BTreeSet::new();
        let mut helped = BTreeSet::new();
        let mut typed = BTreeSet::new();
        for line in text.lines() {
            let word = |rest: &str| rest.split(' ').next().unwrap_or_default().to_string();
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(word(rest));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(word(rest));
            } else if !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                samples.insert(name.to_string());
            }
        }
        (samples, helped, typed)
    }

    #[test]
    fn the_text_is_the_prometheus_format_its_counters_named_with_total_in_help_and_type() {
        let m = Metrics::default();
        m.observe_pass("shop", "web", None, &ready(&[0]), &[]);
        m.reconcile_seconds.observe(0.01);
        let text = m.render();
        assert!(!text.contains("# EOF"), "{text}");
        let (samples, helped, typed) = names(&text);
        for counter in [
            "perennial_reconciles_total",
            "perennial_repairs_total",
            "perennial_rollouts_total",
        ] {
            assert!(samples.contains(counter), "{text}");
            assert!(
                text.contains(&format!("# TYPE {counter} counter")),
                "{text}"
            );
        }
        // Every sample belongs to a family with HELP and TYPE; a histogram's by its base name.
        for sample in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .into_iter()
                .find_map(|s| sample.strip_suffix(s))
                .filter(|base| typed.contains(*base))
                .unwrap_or(sample);
            assert!(
                helped.contains(family) && typed.contains(family),
                "{sample} has no HELP or TYPE of its family:\n{text}"
            );
        }
    }

    #[test]
    fn open_metrics_text_becomes_the_prometheus_format_however_the_encoder_cuts_it() {
        let open_metrics = "# HELP perennial_repairs Repairs made, by kind.\n\
            # TYPE perennial_repairs counter\n\
            perennial_repairs_total{kind=\"Restart\"} 2\n\
            # HELP perennial_leader 1 while this replica is the leader.\n\
            # TYPE perennial_leader gauge\n\
            # UNIT perennial_leader bool\n\
            perennial_leader 1\n\
            # EOF\n";
        let expected = "# HELP perennial_repairs_total Repairs made, by kind.\n\
            # TYPE perennial_repairs_total counter\n\
            perennial_repairs_total{kind=\"Restart\"} 2\n\
            # HELP perennial_leader 1 while this replica is the leader.\n\
            # TYPE perennial_leader gauge\n\
            perennial_leader 1\n";
        for piece in [1, 2, 7, 4096] {
            let mut out = String::new();
            let mut text = ClassicText::new(&mut out);
            let bytes = open_metrics.as_bytes();
            for chunk in bytes.chunks(piece) {
                // The sample is ASCII: every cut is on a character boundary.
                std::fmt::Write::write_str(&mut text, std::str::from_utf8(chunk).unwrap()).unwrap();
            }
            text.finish();
            assert_eq!(out, expected, "written {piece} bytes at a time");
        }
    }

    #[test]
    fn counters_of_known_label_values_start_at_zero() {
        let text = Metrics::default().render();
        for series in [
            "perennial_reconciles_total{result=\"error\"} 0",
            "perennial_repairs_total{kind=\"NodeLost\"} 0",
            "perennial_rollouts_total{event=\"rolled_back\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "no {series}:\n{text}");
        }
    }

    fn with_condition(
        mut status: ResilientServiceStatus,
        type_: &str,
        reason: &str,
    ) -> ResilientServiceStatus {
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            });
        status
    }

    #[test]
    fn each_condition_of_a_service_is_a_series_and_the_storm_guard_one_of_its_own() {
        let m = Metrics::default();
        let value = |text: &str, series: &str| -> Option<String> {
            text.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')
                    .map(str::to_string)
            })
        };
        let degraded = with_condition(ready(&[0]), condition::DEGRADED, "CrashLoopBackOff");
        m.observe_pass("shop", "web", None, &degraded, &[]);
        let text = m.render();
        let degraded_series =
            "perennial_service_condition{namespace=\"shop\",name=\"web\",condition=\"Degraded\"}";
        let available_series =
            "perennial_service_condition{namespace=\"shop\",name=\"web\",condition=\"Available\"}";
        let storm_series = "perennial_storm_guard_holding{namespace=\"shop\",name=\"web\"}";
        assert_eq!(
            value(&text, degraded_series).as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value(&text, available_series).as_deref(),
            Some("0"),
            "{text}"
        );
        assert_eq!(value(&text, storm_series).as_deref(), Some("0"), "{text}");

        let storm = with_condition(ready(&[0]), condition::DEGRADED, STORM_REASON);
        m.observe_pass("shop", "web", Some(&degraded), &storm, &[]);
        assert_eq!(value(&m.render(), storm_series).as_deref(), Some("1"));

        m.forget_deleted_services(None, |_, _| false);
        let text = m.render();
        assert!(!text.contains("namespace=\"shop\""), "{text}");
    }

    #[test]
    fn the_replica_series_of_a_deleted_service_are_dropped_and_those_of_others_stay() {
        let m = Metrics::default();
        for (ns, name) in [("a", "web"), ("a", "db"), ("b", "web")] {
            m.observe_pass(ns, name, None, &ready(&[0]), &[]);
        }
        let series = |ns: &str, name: &str| {
            m.render()
                .lines()
                .filter(|l| {
                    l.starts_with(&format!(
                        "perennial_replicas{{namespace=\"{ns}\",name=\"{name}\","
                    ))
                })
                .count()
        };
        assert_eq!(series("a", "web"), STATES.len());

        // The sweep of namespace a, where only db still exists.
        m.forget_deleted_services(Some("a"), |_, name| name == "db");
        assert_eq!(series("a", "web"), 0, "{}", m.render());
        assert_eq!(series("a", "db"), STATES.len());
        assert_eq!(
            series("b", "web"),
            STATES.len(),
            "another namespace's sweep"
        );

        // A pass after the sweep brings a service back; a sweep of every namespace drops all.
        m.observe_pass("a", "web", None, &ready(&[0]), &[]);
        assert_eq!(series("a", "web"), STATES.len());
        m.forget_deleted_services(None, |_, _| false);
        assert!(
            !m.render().contains("perennial_replicas{"),
            "{}",
            m.render()
        );
    }
}
