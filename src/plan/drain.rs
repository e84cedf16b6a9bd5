//! Drain before delete. A pod that may be serving is never deleted (or patched in place) at
//! once: its readiness gate is closed first, and the pod is acted on once no EndpointSlice
//! of a Service that routes by readiness shows it ready, and the proxies have had
//! `spec.drain.settleSeconds` to follow. A drain that the slices never confirm ends after
//! `spec.drain.timeoutSeconds`, so that it never stops a rollout or a repair. A pod on a
//! lost node or one that has failed serves nobody, and is not drained.
//!
//! The closed gate is the record: a pod drained to be deleted stays on its way out on every
//! later pass (PodState::Retiring), whatever the planner would decide about it now.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use super::Action;
use crate::api::ResilientService;
use crate::health::{Assessment, Closed, Gate, Listing, PodState, PodView};

/// The pass's actions once drained, and what the drains wait for.
#[derive(Debug, Default)]
pub(super) struct Drained {
    pub actions: Vec<Action>,
    /// Per slot, what its drain waits for, for the ledger and the rollout.
    pub waits: BTreeMap<i32, String>,
    pub requeue: Option<Duration>,
}

impl Drained {
    fn wait(&mut self, slot: i32, what: String, after: Duration) {
        self.waits.entry(slot).or_insert(what);
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

/// Whether a drain is done.
enum Left {
    /// Done; the words say how it ended, for the Event.
    Done(&'static str),
    Wait(String, Duration),
}

/// Drains what the pass deletes or upgrades in place, deletes pods whose drain is done,
/// and opens the gates of pods that are ready to serve.
pub(super) fn gate(svc: &ResilientService, seen: &Assessment, actions: Vec<Action>) -> Drained {
    let find = |name: &str| seen.pods.iter().find(|p| p.name == name);
    let mut out = Drained::default();
    // Pods this pass drains or upgrades: their gates stay as they are.
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for action in actions {
        match &action {
            Action::DeletePod { name, reason } => match find(name) {
                // Its drain is under way: it is deleted below once done.
                Some(p) if matches!(p.state, PodState::Retiring { .. }) => {}
                Some(p) if may_serve(p) => {
                    held.insert(&p.name);
                    out.actions.push(Action::CloseGate {
                        name: name.clone(),
                        upgrade: false,
                        reason: reason.clone(),
                    });
                    out.wait(
                        p.slot,
                        format!("pod {name} to be drained from its Services before it is deleted"),
                        Duration::from_secs(1),
                    );
                }
                _ => out.actions.push(action),
            },
            Action::UpgradeInPlace { name, revision, .. } => {
                let Some(p) = find(name) else { continue };
                held.insert(&p.name);
                match p.serving.gate {
                    Gate::Closed {
                        since,
                        why: Closed::Upgrade,
                    } => match left(svc, p, since, seen.now) {
                        Left::Done(_) => out.actions.push(action),
                        Left::Wait(what, after) => out.wait(p.slot, what, after),
                    },
                    _ if may_serve(p) => {
                        out.actions.push(Action::CloseGate {
                            name: name.clone(),
                            upgrade: true,
                            reason: format!("upgrading in place to revision {revision}"),
                        });
                        out.wait(
                            p.slot,
                            format!("pod {name} to be drained from its Services before it is upgraded in place"),
                            Duration::from_secs(1),
                        );
                    }
                    _ => out.actions.push(action),
                }
            }
            _ => out.actions.push(action),
        }
    }
    for p in &seen.pods {
        let PodState::Retiring { since } = p.state else {
            continue;
        };
        match left(svc, p, since, seen.now) {
            Left::Done(how) => out.actions.push(Action::DeletePod {
                name: p.name.clone(),
                reason: format!("drained{how}"),
            }),
            Left::Wait(what, after) => out.wait(p.slot, what, after),
        }
    }
    // Whatever this pass drains, deletes or patches keeps its gate as it is.
    for a in &out.actions {
        if let Action::DeletePod { name, .. }
        | Action::ForceDeletePod { name, .. }
        | Action::CloseGate { name, .. }
        | Action::UpgradeInPlace { name, .. } = a
        {
            held.insert(name.as_str());
        }
    }
    let mut opens = Vec::new();
    for p in &seen.pods {
        if held.contains(p.name.as_str()) {
            continue;
        }
        let closed_for_us = matches!(
            p.serving.gate,
            Gate::Unset
                | Gate::Closed {
                    why: Closed::Upgrade,
                    ..
                }
        );
        let running = matches!(
            p.state,
            PodState::Starting | PodState::NotReady { .. } | PodState::Ready { .. }
        );
        if closed_for_us && running && p.serving.containers_ready && p.serving.current {
            opens.push(Action::OpenGate {
                name: p.name.clone(),
            });
        }
    }
    out.actions.extend(opens);
    out
}

/// A pod whose gate is open (or closed for an upgrade) and that runs: some proxy may send
/// it traffic. A pod whose gate never opened was never Ready; a failed one, a pod on a lost
/// node and one already deleted serve nobody.
pub(super) fn may_serve(p: &PodView) -> bool {
    matches!(
        p.serving.gate,
        Gate::Open
            | Gate::Closed {
                why: Closed::Upgrade,
                ..
            }
    ) && matches!(
        p.state,
        PodState::Starting | PodState::NotReady { .. } | PodState::Ready { .. }
    )
}

/// What is left of the drain of `p`, whose gate closed at `closed`.
fn left(svc: &ResilientService, p: &PodView, closed: Timestamp, now: Timestamp) -> Left {
    let settle = i64::from(svc.spec.drain.settle_seconds.max(0));
    let timeout = i64::from(svc.spec.drain.timeout_seconds.max(1));
    let waited = now.as_second() - closed.as_second();
    let secs = |s: i64| Duration::from_secs(s.max(1) as u64);
    match p.serving.listing {
        // In no slice that routes by readiness: no proxy has a rule to forget.
        Listing::Unlisted => Left::Done(""),
        Listing::Ready if waited >= timeout => {
            Left::Done(" (the drain timed out: an EndpointSlice still shows it ready)")
        }
        Listing::Ready => Left::Wait(
            format!(
                "pod {} to be shown not ready by every EndpointSlice (drain.timeoutSeconds: {timeout})",
                p.name
            ),
            secs(timeout - waited),
        ),
        Listing::NotReady => match p.serving.drained_since {
            Some(since) if now.as_second() - since.as_second() >= settle => Left::Done(""),
            Some(since) => Left::Wait(
                format!(
                    "the proxies to settle after pod {} left the endpoints (drain.settleSeconds: {settle})",
                    p.name
                ),
                secs(settle - (now.as_second() - since.as_second())),
            ),
            None => Left::Wait(
                format!("the proxies to settle after pod {} left the endpoints (drain.settleSeconds: {settle})", p.name),
                secs(1),
            ),
        },
    }
}
