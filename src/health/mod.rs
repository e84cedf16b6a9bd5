//! Judging pods: what state each replica is in and, when it fails, why. Pure.

mod assess;
mod node;
mod pod;
mod serving;

pub use assess::{assess, Assessment, ClaimView, FenceView, PodView, RevisionView, ServiceState};
pub use node::{
    judge_node, node_back, node_fingerprint, Heartbeat, NodeHealth, OUT_OF_SERVICE_TAINT,
    SUSPECT_AFTER_SECONDS,
};
pub use pod::{judge_pod, PodState, UNSCHEDULABLE_GRACE};
pub use serving::{
    gate_from, gate_of, normalize_image, Closed, Gate, GateCondition, Listing, Serving, GATE_OPEN,
    GATE_RETIRING, GATE_UPGRADING,
};
