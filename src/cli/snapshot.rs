//! Everything the plugin shows of one service, read in one go: the service, its pods, its
//! revisions, the zones of its nodes and its Events.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};

use super::CliError;
use crate::api::{ResilientService, LABEL_SERVICE};

/// One service and what it owns, as read at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub service: ResilientService,
    /// The service's pods, by name.
    pub pods: Vec<Pod>,
    /// Its ControllerRevisions, oldest first.
    pub revisions: Vec<ControllerRevision>,
    /// The failure domain (value of `spec.redundancy.topologyKey`) of each node a pod runs
    /// on; a node that could not be read is left out.
    pub zones: BTreeMap<String, String>,
    /// The service's Events, oldest first (empty unless asked for).
    pub events: Vec<Event>,
}

impl Snapshot {
    /// Puts the parts together, keeping only what the service owns, in a stable order.
    pub fn new(
        service: ResilientService,
        pods: Vec<Pod>,
        revisions: Vec<ControllerRevision>,
        zones: BTreeMap<String, String>,
        mut events: Vec<Event>,
    ) -> Self {
        let uid = service.meta().uid.clone();
        let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            uid.is_none() || refs.iter().any(|o| Some(&o.uid) == uid.as_ref())
        };
        let mut pods: Vec<Pod> = pods
            .into_iter()
            .filter(|p| owned(p.owner_references()))
            .collect();
        pods.sort_by_key(|p| p.name_any());
        let mut revisions: Vec<ControllerRevision> = (revisions.into_iter())
            .filter(|r| owned(r.owner_references()))
            .collect();
        revisions.sort_by_key(|r| (r.revision, r.name_any()));
        events.sort_by_key(event_time);
        Snapshot {
            service,
            pods,
            revisions,
            zones,
            events,
        }
    }

    pub fn name(&self) -> String {
        self.service.name_any()
    }

    /// The revision named `name`, if it is still recorded.
    pub fn revision(&self, name: &str) -> Option<&ControllerRevision> {
        self.revisions.iter().find(|r| r.name_any() == name)
    }
}

/// When an Event last happened, as well as it says.
pub fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    (e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// What to read besides the service, its pods and its revisions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    pub zones: bool,
    pub events: bool,
}

impl Want {
    /// What `get` shows: the zones of the nodes.
    pub const TREE: Want = Want {
        zones: true,
        events: false,
    };
    /// What `ledger` shows: the Events.
    pub const LEDGER: Want = Want {
        zones: false,
        events: true,
    };
}

/// Reads service `name` in `namespace` and what it owns.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    name: &str,
    want: Want,
) -> Result<Snapshot, CliError> {
    let services: Api<ResilientService> = Api::namespaced(client.clone(), namespace);
    let service = (services.get_opt(name).await)
        .map_err(|e| CliError::api("read", "resilientservice", name, e))?
        .ok_or_else(|| CliError::NotFound {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })?;
    let selector = ListParams::default().labels(&format!("{LABEL_SERVICE}={name}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = (pods.list(&selector).await)
        .map_err(|e| CliError::api("list", "pods", name, e))?
        .items;
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let revisions = (revisions.list(&selector).await)
        .map_err(|e| CliError::api("list", "controllerrevisions", name, e))?
        .items;
    let zones = if want.zones {
        let key = service.spec.redundancy.topology_key.clone();
        zones_of(client, &pods, &key, &BTreeMap::new()).await
    } else {
        BTreeMap::new()
    };
    let events = if want.events {
        events_of(client, namespace, name).await?
    } else {
        Vec::new()
    };
    Ok(Snapshot::new(service, pods, revisions, zones, events))
}

/// The domain of each node the pods run on; a node in `known` is not read again. Reading
/// nodes is a cluster-wide right a user of one namespace may lack: then the zones are
/// simply not shown.
pub async fn zones_of(
    client: &Client,
    pods: &[Pod],
    key: &str,
    known: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut zones = BTreeMap::new();
    let names: std::collections::BTreeSet<String> = (pods.iter())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    for node in names {
        if let Some(zone) = known.get(&node) {
            zones.insert(node, zone.clone());
        } else if let Ok(Some(n)) = nodes.get_opt(&node).await {
            if let Some(zone) = n.labels().get(key) {
                zones.insert(node, zone.clone());
            }
        }
    }
    zones
}

async fn events_of(client: &Client, namespace: &str, name: &str) -> Result<Vec<Event>, CliError> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let fields = format!("involvedObject.kind=ResilientService,involvedObject.name={name}");
    Ok((events.list(&ListParams::default().fields(&fields)).await)
        .map_err(|e| CliError::api("list", "events", name, e))?
        .items)
}
