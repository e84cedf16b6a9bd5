//! Which old pods can move to their target revision in place (spec.update.inPlace).

use crate::api::{InPlacePolicy, ResilientService};
use crate::build;
use crate::health::{Assessment, Gate, PodState, PodView};

/// The in-place keys of the revisions, the update revision's computed from the spec (it may
/// not be recorded yet).
pub(in crate::plan) struct InPlace<'a> {
    enabled: bool,
    update: String,
    update_key: String,
    seen: &'a Assessment,
}

impl<'a> InPlace<'a> {
    pub fn new(svc: &ResilientService, seen: &'a Assessment) -> Self {
        Self {
            enabled: svc.spec.update.in_place == InPlacePolicy::IfPossible,
            update: build::revision_name(svc),
            update_key: build::in_place_key(&svc.spec.template),
            seen,
        }
    }

    fn key(&self, revision: &str) -> Option<&str> {
        if revision == self.update {
            return Some(&self.update_key);
        }
        self.seen
            .revisions
            .iter()
            .find(|r| r.name == revision)
            .and_then(|r| r.in_place_key.as_deref())
    }

    /// Whether `pod` can be patched to `target`: in place is asked for, the two templates
    /// differ only in what a running pod may change, the pod carries the gate that lets it
    /// be drained first, and it is on a node with its containers created (a pod the
    /// scheduler cannot place, or one that has ended, is replaced).
    pub fn possible(&self, pod: &PodView, target: &str) -> bool {
        self.enabled
            && pod.serving.gate != Gate::Absent
            && matches!(
                pod.state,
                PodState::Starting
                    | PodState::NotReady { .. }
                    | PodState::Ready { .. }
                    | PodState::CrashLooping { .. }
                    | PodState::ImagePullFailing { .. }
            )
            && self
                .key(&pod.revision)
                .is_some_and(|k| Some(k) == self.key(target))
    }
}
