//! The gauges of each service (replicas by state, conditions, the storm guard), kept as
//! numbers and written out at each scrape. A family of gauges keeps a label set of three
//! strings and a gauge for each of the 15 series of a service, about 3 kB a service; this
//! keeps the service's name once and its 15 values in a few bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{CONDITIONS, STATES};

/// What one pass last found of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceGauges {
    /// Replicas in each state, in the order of STATES.
    pub replicas: [u32; STATES.len()],
    /// Each condition, in the order of CONDITIONS: true while True.
    pub conditions: [bool; CONDITIONS.len()],
    /// The storm guard holds the service's node-loss repairs.
    pub storm: bool,
}

/// The gauges of each service of a namespace, by the namespace: its name kept once.
type ByNamespace = BTreeMap<Arc<str>, BTreeMap<Box<str>, ServiceGauges>>;

/// The gauges of every service, by namespace and name.
#[derive(Debug, Default)]
pub struct ServiceSeries {
    by_namespace: Mutex<ByNamespace>,
}

impl ServiceSeries {
    fn lock(&self) -> MutexGuard<'_, ByNamespace> {
        self.by_namespace.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, namespace: &str, name: &str, gauges: ServiceGauges) {
        let mut by_namespace = self.lock();
        let services = match by_namespace.get_mut(namespace) {
            Some(services) => services,
            None => by_namespace.entry(namespace.into()).or_default(),
        };
        match services.get_mut(name) {
            Some(kept) => *kept = gauges,
            None => {
                services.insert(name.into(), gauges);
            }
        }
    }

    /// Drops the series of every service in `namespace` (all when None) that `exists` no
    /// longer finds.
    pub fn retain(&self, namespace: Option<&str>, exists: impl Fn(&str, &str) -> bool) {
        let mut by_namespace = self.lock();
        by_namespace.retain(|ns, services| {
            if namespace.is_none_or(|n| n == &**ns) {
                services.retain(|name, _| exists(ns, name));
            }
            !services.is_empty()
        });
    }
}

/// Writes one gauge family: for each of `rows` (namespace, name, gauges), a series per
/// `(label value, value)` that `values` gives, labelled by namespace, name and `label` (by
/// namespace and name alone when `label` is None).
fn gauge_family<'a, V: IntoIterator<Item = (&'static str, i64)>>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    rows: impl Iterator<Item = (&'a str, &'a str, &'a ServiceGauges)>,
    label: Option<&str>,
    values: impl Fn(&ServiceGauges) -> V,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (ns, service, gauges) in rows {
        for (label_value, value) in values(gauges) {
            let gauge = ConstGauge::new(value);
            match label {
                Some(key) => {
                    let labels = [("namespace", ns), ("name", service), (key, label_value)];
                    gauge.encode(family.encode_family(&labels)?)?;
                }
                None => {
                    let labels = [("namespace", ns), ("name", service)];
                    gauge.encode(family.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

impl Collector for ServiceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let by_namespace = self.lock();
        let rows = || {
            (by_namespace.iter())
                .flat_map(|(ns, services)| services.iter().map(move |(n, g)| (&**ns, &**n, g)))
        };
        gauge_family(
            &mut encoder,
            ("replicas", "Replicas by service and state"),
            rows(),
            Some("state"),
            |g| STATES.into_iter().zip(g.replicas.map(i64::from)),
        )?;
        gauge_family(
            &mut encoder,
            (
                "service_condition",
                "1 while the condition of the service is True, 0 otherwise",
            ),
            rows(),
            Some("condition"),
            |g| CONDITIONS.into_iter().zip(g.conditions.map(i64::from)),
        )?;
        gauge_family(
            &mut encoder,
            (
                "storm_guard_holding",
                "1 while the storm guard holds the node-loss repairs of the service (MassFailureSuspected)",
            ),
            rows(),
            None,
            |g| [("", i64::from(g.storm))],
        )
    }
}
