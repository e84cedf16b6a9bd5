//! Leader election on a coordination.k8s.io Lease: several replicas run, one acts. The
//! leader renews the lease; a replica that cannot renew in time stops acting at once, and
//! a graceful shutdown releases the lease so that a standby takes over without waiting.
//! Every lease request has a time limit of its own, shorter than the renew deadline: the
//! client's read timeout is minutes, and a connection that hangs must not keep a leader
//! acting after its lease may have passed to another replica.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

/// How often a standby checks whether the lease is free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Lease timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name, or host and pid).
    pub identity: String,
    /// How long a lease is valid without renewal; a standby takes over after it.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// The longest one lease request may take: one renewal period, and never more than the
    /// renew deadline, so that a request that hangs leaves time for another.
    pub fn request_timeout(&self) -> Duration {
        self.renew_every.min(self.renew_deadline)
    }

    /// How long a renewal tried `since` the last successful one may take: the request
    /// timeout, cut to what is left of the renew deadline. None once the deadline has
    /// passed: the leader gives up rather than tries again.
    pub fn renew_timeout(&self, since: Duration) -> Option<Duration> {
        let left = self.renew_deadline.checked_sub(since)?;
        (!left.is_zero()).then(|| left.min(self.request_timeout()))
    }

    /// How long the leader waits to try again after a failed renewal, `since` the last
    /// successful one: soon (a failed renewal is not a reason to wait a whole period),
    /// and never past the renew deadline.
    pub fn retry_after(&self, since: Duration) -> Duration {
        self.renew_deadline
            .saturating_sub(since)
            .min(STANDBY_POLL)
            .min(self.renew_every)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lost the leader lease {namespace}/{name}: {why}")]
    Lost {
        namespace: String,
        name: String,
        why: String,
    },
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

enum Attempt {
    Held,
    HeldByOther(String),
}

/// Why a lease request did not answer.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut last_holder = String::new();
        loop {
            match self.attempt(self.config.request_timeout()).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    if holder != last_holder {
                        tracing::info!(%holder, "standing by: another replica leads");
                        last_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read or take the leader lease"),
            }
            // A standby looks often, so that a released lease is taken over at once.
            tokio::time::sleep(self.config.renew_every.min(STANDBY_POLL)).await;
        }
    }

    /// Renews the lease for as long as it can; returns when leadership is lost, at the
    /// latest at the renew deadline, whatever the API server does.
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        let mut wait = self.config.renew_every;
        let mut last_error = String::from("no renewal was tried");
        loop {
            tokio::time::sleep(wait).await;
            let Some(limit) = self.config.renew_timeout(last_renewal.elapsed()) else {
                return self.lost(format!(
                    "not renewed for {:?}: {last_error}",
                    last_renewal.elapsed()
                ));
            };
            match self.attempt(limit).await {
                Ok(Attempt::Held) => {
                    last_renewal = tokio::time::Instant::now();
                    wait = self.config.renew_every;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    return self.lost(format!("{holder} holds it now"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leader lease");
                    last_error = e.to_string();
                    wait = self.config.retry_after(last_renewal.elapsed());
                }
            }
        }
    }

    /// Gives the lease up, so that a standby takes over at once; a shutdown does not wait
    /// on an API server that does not answer.
    pub async fn release(&self) {
        let limit = self.config.request_timeout();
        if tokio::time::timeout(limit, self.try_release())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?limit, "could not release the leader lease in time");
        }
    }

    async fn try_release(&self) {
        let Ok(mut lease) = self.api.get(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
        }
    }

    fn lost(&self, why: String) -> Error {
        Error::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            why,
        }
    }

    /// One try to take or renew the lease, given up after `limit`.
    async fn attempt(&self, limit: Duration) -> Result<Attempt, AttemptError> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(AttemptError::TimedOut(limit)),
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let me = self.config.identity.as_str();
        let duration = self.config.duration.as_secs().max(1) as i32;
        let existing = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.to_string()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Held),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther(
                        "a replica that created it first".into(),
                    )),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = spec
            .renew_time
            .as_ref()
            .map(|t| {
                t.0.as_second() + i64::from(spec.lease_duration_seconds.unwrap_or(0))
                    < now.as_second()
            })
            .unwrap_or(true);
        if !holder.is_empty() && holder != me && !expired {
            return Ok(Attempt::HeldByOther(holder));
        }
        let mut lease = existing;
        let taking_over = holder != me;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(me.to_string());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(MicroTime(now));
        if taking_over {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        // The resourceVersion in the body makes this a compare-and-swap: of two replicas
        // racing for an expired lease, one gets a conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::HeldByOther("a replica that renewed first".into()))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(renew_every: u64, renew_deadline: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(renew_every),
            renew_deadline: Duration::from_secs(renew_deadline),
        }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn a_renewal_may_take_one_period_and_never_reaches_past_the_renew_deadline() {
        let c = config(5, 10);
        assert_eq!(c.request_timeout(), secs(5));
        // The first renewal, one period after the last: the whole period.
        assert_eq!(c.renew_timeout(secs(5)), Some(secs(5)));
        // A retry late in the window gets only what is left of it.
        assert_eq!(c.renew_timeout(secs(8)), Some(secs(2)));
        assert_eq!(
            c.renew_timeout(Duration::from_millis(9_900)),
            Some(Duration::from_millis(100))
        );
        // At or past the deadline there is no further try: leadership is lost.
        assert_eq!(c.renew_timeout(secs(10)), None);
        assert_eq!(c.renew_timeout(secs(11)), None);
    }

    #[test]
    fn a_request_timeout_is_never_longer_than_the_renew_deadline() {
        // Renewing less often than the deadline allows (a misconfiguration) still gives up in time.
        let c = config(20, 10);
        assert_eq!(c.request_timeout(), secs(10));
        assert_eq!(c.renew_timeout(secs(0)), Some(secs(10)));
        assert_eq!(c.renew_timeout(secs(4)), Some(secs(6)));
    }

    #[test]
    fn a_failed_renewal_is_retried_within_a_second_and_never_after_the_deadline() {
        let c = config(5, 10);
        assert_eq!(c.retry_after(secs(5)), secs(1));
        assert_eq!(
            c.retry_after(Duration::from_millis(9_500)),
            Duration::from_millis(500)
        );
        assert_eq!(c.retry_after(secs(12)), Duration::ZERO);
        // With renewals more often than every second, a retry waits no longer than a period.
        let fast = LeaseConfig {
            renew_every: Duration::from_millis(300),
            ..config(1, 10)
        };
        assert_eq!(fast.retry_after(secs(1)), Duration::from_millis(300));
    }

    #[test]
    fn with_the_default_timings_a_hanging_renewal_gives_up_by_the_deadline() {
        // The defaults of `perennial run`: renew every 5 s, deadline 10 s. Every try hangs
        // for its whole limit; the leader must know it lost the lease at 10 s, not later.
        let c = config(5, 10);
        let mut at = c.renew_every;
        while let Some(limit) = c.renew_timeout(at) {
            at += limit;
            at += c.retry_after(at);
        }
        assert_eq!(at, c.renew_deadline);
    }

    #[tokio::test]
    async fn a_leader_whose_api_server_stops_answering_gives_up_by_its_renew_deadline() {
        // An API server that accepts connections and never answers: the client's own read
        // timeout is minutes away.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let url = format!("http://{addr}").parse().unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        let elector = Elector::new(
            client,
            LeaseConfig {
                renew_every: secs(1),
                renew_deadline: secs(2),
                ..config(1, 2)
            },
        );
        let started = std::time::Instant::now();
        let lost = tokio::time::timeout(secs(30), elector.hold())
            .await
            .expect("the leader gives up instead of waiting on the connection");
        let took = started.elapsed();
        assert!(
            took >= secs(2),
            "gave up after {took:?}, before its deadline"
        );
        assert!(
            took < secs(4),
            "gave up after {took:?}, long past its deadline"
        );
        let why = lost.to_string();
        assert!(why.contains("did not answer within"), "{why}");
        server.abort();
    }
}
