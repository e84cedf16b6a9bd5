//! The verdict over the whole ledger: Degraded when a slot is quarantined or waits for a
//! person or for evidence.

use std::collections::BTreeMap;

use super::super::conditions::Decided;
use super::storage::CLAIM_DELETED_UNDER_POD;
use super::SlotNote;
use crate::api::condition;
use crate::health::Assessment;

pub(super) fn ledger_verdict(
    seen: &Assessment,
    notes: &BTreeMap<i32, SlotNote>,
) -> Option<Decided> {
    let describe = |slot: &i32, n: &SlotNote| {
        let pod = seen.pods.iter().find(|p| p.slot == *slot);
        format!(
            "slot {slot} (pod {}, node {}): waiting for {}",
            pod.map_or("none", |p| p.name.as_str()),
            pod.and_then(|p| p.node.as_deref()).unwrap_or("none"),
            n.waiting_for.as_deref().unwrap_or("nothing")
        )
    };
    if let Some((slot, n)) = notes.iter().find(|(_, n)| n.quarantined) {
        return Some(Decided {
            type_: condition::DEGRADED,
            status: true,
            reason: "Quarantined".into(),
            message: describe(slot, n),
        });
    }
    let waiting: Vec<String> = notes
        .iter()
        .filter(|(_, n)| {
            n.waiting_for
                .as_deref()
                .is_some_and(|w| w.starts_with("a person") || w.starts_with("evidence"))
        })
        .map(|(slot, n)| describe(slot, n))
        .collect();
    let mentions = |what: &str| {
        notes
            .values()
            .any(|n| n.waiting_for.as_deref().is_some_and(|w| w.contains(what)))
    };
    (!waiting.is_empty()).then(|| Decided {
        type_: condition::DEGRADED,
        status: true,
        reason: if mentions(CLAIM_DELETED_UNDER_POD) {
            "ClaimDeleted"
        } else if mentions("claim") {
            "VolumeLost"
        } else {
            "NodeLost"
        }
        .into(),
        message: waiting.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    fn waiting(what: &str) -> SlotNote {
        SlotNote {
            waiting_for: Some(what.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_back_off_or_a_busy_budget_is_no_verdict() {
        let seen = fixtures::converged(&fixtures::service(3, false));
        let notes = [
            (0, waiting("back-off: next repair in 3 s")),
            (1, SlotNote::default()),
        ]
        .into_iter()
        .collect();
        assert_eq!(ledger_verdict(&seen, &notes), None);
    }

    #[test]
    fn a_quarantined_slot_outweighs_the_others() {
        let seen = fixtures::converged(&fixtures::service(3, false));
        let quarantined = SlotNote {
            quarantined: true,
            ..waiting("a person: 6 repairs")
        };
        let notes = [
            (0, waiting("evidence that node n1 is down")),
            (2, quarantined),
        ]
        .into_iter()
        .collect();
        let d = ledger_verdict(&seen, &notes).unwrap();
        assert_eq!(d.reason, "Quarantined");
        assert_eq!(
            d.message,
            "slot 2 (pod web-2-x, node node-2): waiting for a person: 6 repairs"
                .replace("web-2-x", &seen.pods[2].name)
        );
    }

    #[test]
    fn the_reason_names_what_the_slots_wait_for() {
        let seen = fixtures::converged(&fixtures::service(3, false));
        let reason = |notes: &[(i32, &str)]| {
            let notes = notes.iter().map(|(s, w)| (*s, waiting(w))).collect();
            ledger_verdict(&seen, &notes).map(|d| d.reason)
        };
        assert_eq!(
            reason(&[(0, "evidence that node n1 is down")]).as_deref(),
            Some("NodeLost")
        );
        assert_eq!(
            reason(&[
                (0, "evidence that node n1 is down"),
                (1, "a person: claim data-web-1's volume is on lost node n1")
            ])
            .as_deref(),
            Some("VolumeLost")
        );
        let deleted = format!("a person: claim data-web-1 {CLAIM_DELETED_UNDER_POD} web-1");
        assert_eq!(
            reason(&[(1, "a person: claim c's volume is lost"), (2, &deleted)]).as_deref(),
            Some("ClaimDeleted")
        );
    }
}
