//! Conditions whose lastTransitionTime moves only when their status does.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the planner decides it, before its transition time is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// Merges decided conditions into the previous ones: a condition keeps its
/// lastTransitionTime unless its status changed; conditions not decided are kept as they were.
pub fn merge_conditions(
    previous: &[Condition],
    decided: Vec<Decided>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !decided.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in decided {
        let status = if d.status { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: d.type_.to_string(),
            status,
            reason: d.reason,
            message: d.message,
            last_transition_time,
            observed_generation: generation,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}
