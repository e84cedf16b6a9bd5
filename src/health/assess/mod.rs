//! Turns what was observed into the plain views the planner reads, in steps: the pods, the
//! claims, the children (revisions, Service, disruption budget), and the nodes.

mod children;
mod fences;
mod nodes;
mod pods;
mod storage;

#[cfg(test)]
mod fixtures;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::api::ResilientService;
use crate::observe::Observed;

use super::{PodState, Serving};

pub use fences::FenceView;
pub use nodes::NodeJudge;

/// One pod of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    pub slot: i32,
    pub revision: String,
    pub node: Option<String>,
    pub state: PodState,
    /// Its readiness gate, how the EndpointSlices list it, whether it runs its spec.
    pub serving: Serving,
    /// The node it was made to keep off (api::ANNOTATION_AVOIDS_NODE).
    pub avoids: Option<String>,
}

/// One claim of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimView {
    pub name: String,
    pub slot: i32,
    /// The claim template it was made from.
    pub template: String,
    pub deleting: bool,
    /// Its volume can only be used on a node that is lost: (node, fenced).
    pub lost_with: Option<(String, bool)>,
}

/// One recorded revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionView {
    pub name: String,
    pub number: i64,
    /// Marked failed by an earlier rollback; not rolled out again.
    pub bad: bool,
    /// Its record is the template its name says (the name carries the template's hash).
    /// Data cannot be edited, but a revision can be deleted and made again by someone else.
    pub intact: bool,
    /// build::in_place_key of its template: revisions with equal keys differ only in what a
    /// running pod can be changed in place to.
    pub in_place_key: Option<String>,
}

/// Whether the named headless Service exists, and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Missing,
    /// Ours, and whether it matches what we would build.
    Ours {
        up_to_date: bool,
    },
    /// Made by someone else: used as it is, never changed.
    Foreign,
}

/// Everything the planner needs, judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub now: Timestamp,
    pub pods: Vec<PodView>,
    /// Pods we control whose slot or revision label is missing or garbled: deleted.
    pub strays: Vec<String>,
    pub claims: Vec<ClaimView>,
    pub revisions: Vec<RevisionView>,
    /// Revisions whose pods the API server refused as invalid, with its message.
    pub refused: BTreeMap<String, String>,
    pub service: ServiceState,
    /// None when missing; else whether it matches what we would build.
    pub budget_up_to_date: Option<bool>,
    /// Failure domain of each node hosting a pod (value of the topology key), for
    /// status.domains.
    pub node_domains: BTreeMap<String, String>,
    /// Nodes in the cluster, and how many of them are lost: many at once point at the
    /// infrastructure rather than at the nodes.
    pub nodes_total: usize,
    pub nodes_lost: usize,
    /// Seconds until a node hosting one of our pods, silent or unready but not lost yet,
    /// would be judged lost: the planner looks again then, since a dead node sends no event.
    pub node_recheck_seconds: Option<i64>,
    /// Of the nodes the ledger names (a slot's node, or the node it avoids), those that
    /// renew their lease and are Ready: an avoidance of a lost node ends there.
    pub nodes_back: BTreeSet<String>,
    /// The fences (out-of-service taints) this service put on nodes.
    pub fences: Vec<FenceView>,
}

/// Judges everything observed for `svc` at `now`.
pub fn assess(svc: &ResilientService, observed: &Observed, now: Timestamp) -> Assessment {
    let judge = NodeJudge::new(svc, observed, now);
    let (pods, strays) = pods::pods(observed, &judge);
    Assessment {
        now,
        node_recheck_seconds: nodes::recheck_seconds(&pods, &judge),
        nodes_total: observed.nodes.count(),
        nodes_lost: nodes::lost_count(observed, &judge),
        node_domains: nodes::domains(svc, observed, &pods),
        pods,
        strays,
        claims: storage::claims(svc, observed, &judge),
        revisions: children::revisions(svc, observed),
        refused: children::refused(observed),
        service: children::service_state(svc, observed),
        budget_up_to_date: children::budget_up_to_date(svc, observed),
        nodes_back: nodes::back(svc, observed, now),
        fences: fences::fences(svc, observed, now),
    }
}
