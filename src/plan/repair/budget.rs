//! The repair budget: at most `repair.maxConcurrentRepairs` slots under destructive repair
//! at once.

use crate::api::{ResilientService, ResilientServiceStatus};

/// What is left of the budget in one pass.
#[derive(Debug)]
pub(super) struct Budget {
    /// Slots whose repair is under way (state Repairing in the ledger).
    in_repair: Vec<i32>,
    free: usize,
}

impl Budget {
    pub fn new(svc: &ResilientService, previous: &ResilientServiceStatus) -> Self {
        // A slot whose repair is under way holds its share of the budget until it is Ready
        // again, and may use it for the next step of the same repair: counting it against
        // itself would leave it waiting for a free repair slot forever.
        let in_repair: Vec<i32> = previous
            .replica_statuses
            .iter()
            .filter(|r| r.state == "Repairing")
            .map(|r| r.ordinal)
            .collect();
        let free = (svc.spec.repair.max_concurrent_repairs.max(1) as usize)
            .saturating_sub(in_repair.len());
        Self { in_repair, free }
    }

    /// Whether `slot` may be repaired now; a new repair takes a share of the budget.
    pub fn take(&mut self, slot: i32) -> bool {
        if self.in_repair.contains(&slot) {
            true
        } else if self.free > 0 {
            self.free -= 1;
            true
        } else {
            false
        }
    }
}

/// What a slot waiting for the budget waits for.
pub(super) const WAITING_FOR_BUDGET: &str = "a free repair slot (maxConcurrentRepairs)";

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use crate::api::ReplicaStatus;

    fn ledger(states: &[(i32, &str)]) -> ResilientServiceStatus {
        ResilientServiceStatus {
            replica_statuses: states
                .iter()
                .map(|(ordinal, state)| ReplicaStatus {
                    ordinal: *ordinal,
                    state: state.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn new_repairs_share_what_the_repairs_under_way_leave() {
        let mut svc = fixtures::service(5, false);
        svc.spec.repair.max_concurrent_repairs = 2;
        let mut budget = Budget::new(&svc, &ledger(&[(0, "Repairing"), (1, "Ready")]));
        assert!(budget.take(3), "one share is left");
        assert!(!budget.take(4), "and only one");
        assert!(
            budget.take(0),
            "a repair under way goes on with its own share"
        );
        assert!(budget.take(0), "as often as it needs");
    }

    #[test]
    fn more_repairs_under_way_than_allowed_leave_nothing_but_do_not_stop_them() {
        let svc = fixtures::service(5, false);
        let mut budget = Budget::new(&svc, &ledger(&[(0, "Repairing"), (1, "Repairing")]));
        assert!(!budget.take(2));
        assert!(budget.take(1));
    }
}
