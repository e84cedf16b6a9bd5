//! How long a failed reconcile pass waits before it is tried again, and a failed watch
//! before it is opened again: never a hot loop, and never long once a server that failed
//! answers again.

use std::time::{Duration, Instant};

/// Doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The last step when the server or the connection failed, not the service: once the
/// server answers again, every service is back within this.
const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before the `attempts`th retry of a failed pass: doubling, up to 30 s when the
/// fault was the server's or the connection's, up to 5 minutes when the service's.
pub fn retry_delay(attempts: u32, transient: bool) -> Duration {
    let max = if transient {
        TRANSIENT_BACKOFF_MAX
    } else {
        BACKOFF_MAX
    };
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(max)
}

/// A watch that failed is opened again after 0.8 s, doubling up to 30 s while it keeps
/// failing as soon as it opens (a server that refuses, a watch the server ends at once).
const WATCH_FIRST: Duration = Duration::from_millis(800);
const WATCH_MAX: Duration = Duration::from_secs(30);
/// A watch that stayed open this long before it failed was healthy: the next failure
/// starts from the first delay again. The default policy of the watcher starts over only
/// after two minutes without an error, so a connection reset every few seconds held every
/// quiet watch closed for up to 30 s of each reset, and the operator saw changes late.
const WATCH_HEALTHY: Duration = Duration::from_secs(1);

/// The waits before each watch of the operator's caches is opened again after it failed.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    /// Failures since the watch was last healthy.
    failures: u32,
    /// When the last failure came and the wait it was given.
    last: Option<(Instant, Duration)>,
}

impl WatchBackoff {
    /// The wait after a failure at `now`.
    pub fn after_failure_at(&mut self, now: Instant) -> Duration {
        if let Some((at, wait)) = self.last {
            let open_for = now.saturating_duration_since(at + wait);
            if open_for >= WATCH_HEALTHY {
                self.failures = 0;
            }
        }
        self.failures = self.failures.saturating_add(1);
        let wait = WATCH_FIRST
            .saturating_mul(2u32.saturating_pow((self.failures - 1).min(16)))
            .min(WATCH_MAX);
        self.last = Some((now, wait));
        wait
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.after_failure_at(Instant::now()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    /// Called on every event the watch delivers: it is healthy.
    fn reset(&mut self) {
        self.failures = 0;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act;
    use kube::runtime::utils::Backoff;

    #[test]
    fn a_watch_failing_as_it_opens_waits_longer_each_time_up_to_30_s() {
        let mut backoff = WatchBackoff::default();
        let mut now = Instant::now();
        let mut waits = vec![];
        for _ in 0..8 {
            let wait = backoff.after_failure_at(now);
            waits.push(wait.as_millis());
            now += wait + Duration::from_millis(50); // failed again 50 ms after it opened
        }
        assert_eq!(waits, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
    }

    #[test]
    fn a_watch_cut_every_few_seconds_is_opened_again_within_a_second_each_time() {
        let mut backoff = WatchBackoff::default();
        let mut now = Instant::now();
        for _ in 0..20 {
            let wait = backoff.after_failure_at(now);
            assert_eq!(wait, WATCH_FIRST);
            now += wait + Duration::from_secs(2); // open for 2 s, then reset
        }
    }

    #[test]
    fn an_event_from_the_watch_starts_the_waits_over() {
        let mut backoff = WatchBackoff::default();
        let now = Instant::now();
        backoff.after_failure_at(now);
        backoff.after_failure_at(now + Duration::from_millis(900));
        backoff.reset();
        assert_eq!(
            backoff.after_failure_at(now + Duration::from_secs(3)),
            WATCH_FIRST
        );
    }

    #[test]
    fn a_failed_pass_is_retried_later_each_time_and_sooner_when_the_server_was_at_fault() {
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(n, false).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n, true).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(u32::MAX, false), BACKOFF_MAX);
        assert_eq!(retry_delay(0, true), BACKOFF_FIRST);
    }

    fn api_error(code: u16) -> act::Error {
        let status = kube::core::Status::failure("refused", "Reason").with_code(code);
        act::Error::Api {
            what: "create pod web-0".into(),
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn throttling_server_errors_and_conflicts_are_transient_and_refusals_are_not() {
        for code in [409, 429, 500, 503, 504] {
            assert!(api_error(code).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!api_error(code).is_transient(), "{code}");
        }
        let invalid = act::Error::InvalidTemplate {
            revision: "web-1".into(),
            message: "spec.containers: Required value".into(),
        };
        assert!(!invalid.is_transient());
    }
}
