//! The client's failed requests against the soak's fault windows: a request may fail only
//! while a declared fault touches what serves it.

use super::*;

/// A failed request, `at` seconds on the soak's clock, and why it failed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub(crate) at: f64,
    pub(crate) why: String,
}

/// The failures of `counts`, on the soak's clock: `origin` is the wall time of its zero.
pub(crate) fn failures(counts: &TrafficCount, origin: jiff::Timestamp) -> Vec<Failure> {
    (counts.failed_at.iter())
        .map(|(sent, why)| Failure {
            at: sent.duration_since(origin).as_secs_f64(),
            why: why.clone(),
        })
        .collect()
}

/// The failures no window excuses. A window (from, to) excuses what was sent from its start
/// until TRAFFIC_GRACE after its end: the proxy learns that an endpoint is back or gone
/// through the API server, a moment after the pod's condition changes.
pub(crate) fn unexcused(failures: &[Failure], windows: &[(f64, f64)]) -> Vec<Failure> {
    let grace = TRAFFIC_GRACE.as_secs_f64();
    (failures.iter())
        .filter(|f| {
            !windows
                .iter()
                .any(|(from, to)| f.at >= *from && f.at <= to + grace)
        })
        .cloned()
        .collect()
}

/// One violation per run of unexcused failures less than a second apart.
pub(crate) fn violations(unexcused: &[Failure]) -> Vec<Violation> {
    let mut out: Vec<Violation> = Vec::new();
    let mut runs: Vec<Vec<&Failure>> = Vec::new();
    for f in unexcused {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|l| f.at - l.at < 1.0) => run.push(f),
            _ => runs.push(vec![f]),
        }
    }
    for run in runs {
        let (first, last) = (run[0], run[run.len() - 1]);
        let mut why: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &run {
            *why.entry(f.why.as_str()).or_default() += 1;
        }
        out.push(Violation {
            at: first.at,
            until: Some(last.at),
            kind: "failed-request",
            subject: SERVED.into(),
            details: format!(
                "{} requests failed outside any fault window: {why:?}",
                run.len()
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64) -> Failure {
        Failure {
            at: t,
            why: "ConnectionRefused".into(),
        }
    }

    #[test]
    fn a_failure_inside_a_fault_window_or_its_grace_is_excused_and_one_outside_is_not() {
        let grace = TRAFFIC_GRACE.as_secs_f64();
        let windows = [(10.0, 20.0), (50.0, 51.0)];
        let failures = [
            at(9.9),
            at(10.0),
            at(15.0),
            at(20.0 + grace),
            at(20.1 + grace),
            at(50.5),
        ];
        assert_eq!(
            unexcused(&failures, &windows),
            vec![at(9.9), at(20.1 + grace)]
        );
        assert_eq!(unexcused(&failures, &[]).len(), failures.len());
    }

    #[test]
    fn unexcused_failures_close_together_are_one_violation_and_apart_are_two() {
        let v = violations(&[at(30.0), at(30.5), at(31.2), at(40.0)]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!((v[0].at, v[0].until), (30.0, Some(31.2)));
        assert!(v[0].details.starts_with("3 requests failed"), "{v:?}");
        assert_eq!((v[1].at, v[1].until), (40.0, Some(40.0)));
        assert!(violations(&[]).is_empty());
    }
}
