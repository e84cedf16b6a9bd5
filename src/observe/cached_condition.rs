//! A pod condition as the cache keeps it. A `PodCondition` is 160 bytes and two strings
//! (its type and status) before it says anything, and a pod has four or more: most of what
//! a cached pod weighed. Only the kinds a judgement reads are kept, each as a kind and a
//! status of a byte, with the reason, message and time of the change where they are read.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Deserializer};

use crate::api::GATE_SERVING;

/// The conditions the health judgement, the gate and in-place upgrades read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionKind {
    PodScheduled,
    Ready,
    ContainersReady,
    Serving,
    ResizePending,
    ResizeInProgress,
}

impl ConditionKind {
    const ALL: [ConditionKind; 6] = [
        ConditionKind::PodScheduled,
        ConditionKind::Ready,
        ConditionKind::ContainersReady,
        ConditionKind::Serving,
        ConditionKind::ResizePending,
        ConditionKind::ResizeInProgress,
    ];

    /// The condition's type, as the API server spells it.
    pub fn word(self) -> &'static str {
        match self {
            ConditionKind::PodScheduled => "PodScheduled",
            ConditionKind::Ready => "Ready",
            ConditionKind::ContainersReady => "ContainersReady",
            ConditionKind::Serving => GATE_SERVING,
            ConditionKind::ResizePending => "PodResizePending",
            ConditionKind::ResizeInProgress => "PodResizeInProgress",
        }
    }

    fn of(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.word() == word)
    }
}

/// A condition's status. The API defines three; any other word is read as Unknown, which
/// is what every reader makes of it (neither True nor False).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    fn of(word: &str) -> Self {
        match word {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedCondition {
    pub kind: ConditionKind,
    pub status: ConditionStatus,
    /// Read of PodScheduled (Unschedulable) and of the gate (why it closed) alone.
    pub reason: Option<Box<str>>,
    /// Reported of an unschedulable pod alone.
    pub message: Option<Box<str>>,
    /// When it last changed, in whole seconds as the API server keeps it.
    since: Option<i64>,
}

impl CachedCondition {
    /// What the cache keeps of `c`; nothing of a kind no judgement reads.
    fn keep(c: PodCondition) -> Option<Self> {
        let kind = ConditionKind::of(&c.type_)?;
        let reason_read = matches!(kind, ConditionKind::PodScheduled | ConditionKind::Serving);
        Some(Self {
            kind,
            status: ConditionStatus::of(&c.status),
            reason: c.reason.filter(|_| reason_read).map(String::into_boxed_str),
            message: (c.message)
                .filter(|_| kind == ConditionKind::PodScheduled)
                .map(String::into_boxed_str),
            since: c.last_transition_time.map(|t| t.0.as_second()),
        })
    }

    /// When it last changed.
    pub fn since(&self) -> Option<Timestamp> {
        Timestamp::from_second(self.since?).ok()
    }

    /// The condition as the API server would return it, with what was not kept unset.
    pub fn to_condition(&self) -> PodCondition {
        PodCondition {
            type_: self.kind.word().to_string(),
            status: self.status.word().to_string(),
            reason: self.reason.as_deref().map(String::from),
            message: self.message.as_deref().map(String::from),
            last_transition_time: self.since().map(Time),
            ..Default::default()
        }
    }
}

/// Decodes a pod's conditions into what the cache keeps of them.
pub fn decode<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<CachedCondition>>, D::Error> {
    let all = Option::<Vec<PodCondition>>::deserialize(deserializer)?;
    Ok(all.map(|all| {
        // A list of its own size, not the decoded list's buffer reused in place.
        let mut kept = Vec::with_capacity(all.len());
        kept.extend(all.into_iter().filter_map(CachedCondition::keep));
        kept.shrink_to_fit();
        kept
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_condition_is_under_half_a_pod_condition_and_reads_back_the_same() {
        assert!(std::mem::size_of::<CachedCondition>() * 2 < std::mem::size_of::<PodCondition>());
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        for kind in ConditionKind::ALL {
            for status in ["True", "False", "Unknown", "Maybe"] {
                let condition = PodCondition {
                    type_: kind.word().to_string(),
                    status: status.to_string(),
                    reason: Some("Why".into()),
                    message: Some("what".into()),
                    last_transition_time: Some(Time(at)),
                    last_probe_time: Some(Time(at)),
                    observed_generation: Some(3),
                };
                let kept = CachedCondition::keep(condition).unwrap().to_condition();
                assert_eq!(kept.type_, kind.word());
                let read = if status == "Maybe" { "Unknown" } else { status };
                assert_eq!(kept.status, read);
                assert_eq!(kept.last_transition_time, Some(Time(at)));
                assert_eq!(
                    (kept.last_probe_time, kept.observed_generation),
                    (None, None)
                );
                let reason = matches!(kind, ConditionKind::PodScheduled | ConditionKind::Serving);
                assert_eq!(kept.reason.is_some(), reason, "{kind:?}");
                assert_eq!(
                    kept.message.is_some(),
                    kind == ConditionKind::PodScheduled,
                    "{kind:?}"
                );
            }
        }
        let other = PodCondition {
            type_: "Initialized".into(),
            status: "True".into(),
            ..Default::default()
        };
        assert_eq!(CachedCondition::keep(other), None);
    }
}
