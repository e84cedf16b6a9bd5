//! Leader election on a coordination.k8s.io Lease: several replicas run, one acts. The
//! leader renews the lease; a replica that cannot renew in time stops acting at once, and
//! a graceful shutdown releases the lease so that a standby takes over without waiting.

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
            match self.try_acquire_or_renew().await {
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

    /// Renews the lease for as long as it can; returns when leadership is lost.
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    return self.lost(format!("{holder} holds it now"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leader lease");
                    if last_renewal.elapsed() >= self.config.renew_deadline {
                        return self
                            .lost(format!("not renewed for {:?}: {e}", last_renewal.elapsed()));
                    }
                }
            }
        }
    }

    /// Gives the lease up, so that a standby takes over at once.
    pub async fn release(&self) {
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
