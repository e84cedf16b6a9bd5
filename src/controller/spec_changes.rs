//! Which watch events of a child ask for a pass: a change of its spec, told by its
//! generation, or its deletion. The controller manager rewrites a budget's status each
//! time a pod of it turns Ready or not, and no pass reads that status: at 10,000 pods
//! those writes were the only passes left once every service was Available.

use std::collections::HashMap;

use futures::{future, Stream, StreamExt};
use kube::runtime::watcher;
use kube::Resource;

/// The generation last seen of each object, by namespace and name.
#[derive(Default)]
pub(super) struct SpecChanges {
    seen: HashMap<(String, String), i64>,
}

impl SpecChanges {
    /// The object of `event` when the event asks for a pass.
    pub(super) fn news<K: Resource>(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            // A relist announces each object again, so that nothing changed while the
            // watch was down goes unseen; it also forgets the objects deleted meanwhile.
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::InitDone => None,
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let key = key(&object);
                // A kind with no generation cannot tell its spec from its status apart.
                let Some(generation) = object.meta().generation else {
                    return Some(object);
                };
                let changed = self.seen.insert(key, generation) != Some(generation);
                changed.then_some(object)
            }
            watcher::Event::Delete(object) => {
                self.seen.remove(&key(&object));
                Some(object)
            }
        }
    }
}

fn key<K: Resource>(object: &K) -> (String, String) {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The objects of `events` whose spec changed, or that were deleted; errors pass through.
pub(super) fn spec_changes<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    events
        .scan(SpecChanges::default(), |seen, event| {
            future::ready(Some(event.map(|e| seen.news(e))))
        })
        .filter_map(|found| future::ready(found.transpose()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn budget(name: &str, generation: Option<i64>, healthy: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                generation,
                ..ObjectMeta::default()
            },
            status: Some(PodDisruptionBudgetStatus {
                current_healthy: Some(healthy),
                ..PodDisruptionBudgetStatus::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    fn asks(seen: &mut SpecChanges, event: watcher::Event<PodDisruptionBudget>) -> bool {
        seen.news(event).is_some()
    }

    #[test]
    fn a_status_write_asks_for_no_pass_and_a_spec_change_does() {
        let mut seen = SpecChanges::default();
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 0))
        ));
        assert!(!asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 2))
        ));
        assert!(!asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 3))
        ));
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(2), 3))
        ));
        // Another object's generation is its own.
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("api", Some(2), 0))
        ));
    }

    #[test]
    fn a_deletion_asks_for_a_pass_and_a_budget_made_again_is_news() {
        let mut seen = SpecChanges::default();
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 0))
        ));
        assert!(asks(
            &mut seen,
            watcher::Event::Delete(budget("web", Some(1), 0))
        ));
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 0))
        ));
    }

    #[test]
    fn a_relist_announces_every_object_again() {
        let mut seen = SpecChanges::default();
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 0))
        ));
        assert!(!asks(&mut seen, watcher::Event::Init));
        assert!(asks(
            &mut seen,
            watcher::Event::InitApply(budget("web", Some(1), 2))
        ));
        assert!(!asks(&mut seen, watcher::Event::InitDone));
        assert!(!asks(
            &mut seen,
            watcher::Event::Apply(budget("web", Some(1), 3))
        ));
    }

    #[test]
    fn an_object_without_a_generation_asks_for_a_pass_each_time() {
        let mut seen = SpecChanges::default();
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", None, 0))
        ));
        assert!(asks(
            &mut seen,
            watcher::Event::Apply(budget("web", None, 1))
        ));
    }
}
