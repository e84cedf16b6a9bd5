//! Canary steps: how many replicas the new revision may have, and what the rollout waits
//! for before the next step.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::is_available;
use crate::api::{ResilientService, RolloutStatus, ANNOTATION_PROMOTE};
use crate::health::PodView;
use crate::plan::resolve;

/// Walks the canary steps; returns the partition the current step allows and how long to
/// wait before looking again.
pub(super) fn canary_step(
    svc: &ResilientService,
    canary: &crate::api::Canary,
    new_pods: &[&PodView],
    now: Timestamp,
    min_ready: i64,
    status: &mut RolloutStatus,
) -> (i32, Option<Duration>) {
    let replicas = svc.spec.replicas.max(0);
    let promoted = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PROMOTE))
        .cloned();
    let available_new = new_pods
        .iter()
        .filter(|p| is_available(p, now, min_ready))
        .count() as i32;
    let mut step = status.canary_step.unwrap_or(0).max(0) as usize;
    // The replicas the steps walked so far give to the new revision.
    let mut share = 0;
    for s in canary.steps.iter().take(step) {
        if let Some(r) = &s.replicas {
            share = resolve(r, replicas, true).min(replicas);
        }
    }
    let mut wait = None;
    while step < canary.steps.len() {
        let s = &canary.steps[step];
        if let Some(r) = &s.replicas {
            share = resolve(r, replicas, true).min(replicas);
            if available_new < share {
                status.waiting_for = Some(format!(
                    "{share} replicas available on the new revision ({available_new} so far)"
                ));
                break;
            }
        } else if let Some(pause) = &s.pause {
            let since = status.paused_since.get_or_insert(Time(now)).0;
            match pause.seconds {
                Some(secs) => {
                    let left = i64::from(secs) - (now.as_second() - since.as_second());
                    if left > 0 {
                        status.waiting_for = Some(format!("a pause of {secs} s ({left} s left)"));
                        wait = Some(Duration::from_secs(left as u64));
                        break;
                    }
                }
                None => {
                    // Promotion is a new value of the annotation; the last one used is kept.
                    let fresh = promoted.is_some() && promoted != status.promoted;
                    if !fresh {
                        status.waiting_for = Some(format!(
                            "promotion: kubectl perennial promote {name}, or kubectl annotate rsvc {name} {ANNOTATION_PROMOTE}=$(date +%s) --overwrite",
                            name = svc.metadata.name.as_deref().unwrap_or_default()
                        ));
                        break;
                    }
                    status.promoted = promoted.clone();
                }
            }
            status.paused_since = None;
        }
        step += 1;
        status.last_progress_at = Time(now);
    }
    status.canary_step = Some(step as i32);
    if step >= canary.steps.len() {
        status.waiting_for = None;
        return (0, None);
    }
    (replicas - share, wait)
}
