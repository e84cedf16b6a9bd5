//! Start-up of `perennial run`: the client, the probes, the check of the installed CRD,
//! leader election, then one controller per watched namespace.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::act;
use crate::controller::{run, Options};
use crate::http::Health;
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;

/// Command-line options of `perennial run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Path of a kubeconfig; without it, KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long, env = "PERENNIAL_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespaces to watch (comma-separated); all namespaces when empty.
    #[arg(long, env = "PERENNIAL_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Reconciles running at once (per namespace watched).
    #[arg(long, env = "PERENNIAL_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "PERENNIAL_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PERENNIAL_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Elect a leader among replicas (turn off only when a single replica runs).
    #[arg(long, env = "PERENNIAL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader lease.
    #[arg(long, env = "PERENNIAL_LEASE_NAME", default_value = "perennial-leader")]
    pub lease_name: String,
    /// Seconds a lease lasts without renewal; a standby takes over after it.
    #[arg(long, env = "PERENNIAL_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds between renewals.
    #[arg(long, env = "PERENNIAL_LEASE_RENEW", default_value_t = 5)]
    pub lease_renew_seconds: u64,
    /// Seconds the leader keeps failing to renew before it stops acting.
    #[arg(long, env = "PERENNIAL_LEASE_RENEW_DEADLINE", default_value_t = 10)]
    pub lease_renew_deadline_seconds: u64,
    /// Requests per second to the API server, sustained.
    #[arg(long, env = "PERENNIAL_API_QPS", default_value_t = 50)]
    pub api_qps: u32,
    /// Requests allowed in a burst above the sustained rate.
    #[arg(long, env = "PERENNIAL_API_BURST", default_value_t = 100)]
    pub api_burst: u32,
    /// The CRD the start-up check reads instead of the ResilientService CRD: for tests,
    /// which may not change the CRD that every other test shares.
    #[arg(long, env = "PERENNIAL_CRD_CHECK_NAME", hide = true)]
    pub crd_check_name: Option<String>,
}

/// Errors that stop the operator before it runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure a client: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot build a client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot listen on {addr} for metrics and probes: {source}; pick another with --metrics-addr")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Leadership(#[from] crate::leader::Error),
}

/// Connects and runs one controller per watched namespace (or one for all).
pub async fn main(args: RunArgs) -> Result<(), StartError> {
    let (mut config, source) = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                StartError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| StartError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            (config, format!("the kubeconfig {}", path.display()))
        }
        None => {
            let config = kube::Config::infer().await?;
            let source = config_source(&config, std::env::var("KUBERNETES_SERVICE_HOST").ok());
            (config, source.to_string())
        }
    };
    // Which identity the operator acts as is the first thing to check on a new install.
    tracing::info!(server = %config.cluster_url, config = %source, "API server configured");
    let identity = identity();
    // The audit log then names the instance behind every request, as it names the
    // holder of the leader Lease: which replica did what can be told apart.
    if let Ok(agent) = http::HeaderValue::from_str(&user_agent(&identity)) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    let client = crate::api_client::client(config, args.api_qps, args.api_burst)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    health.block("checking the installed CustomResourceDefinition".into());
    let listener = crate::http::bind(args.metrics_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.metrics_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
    tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
    ));

    // Neither lead nor act on a CRD that is not this build's: every status write would fail.
    let expected = crate::crd_check::Expected::of_this_build(args.crd_check_name.clone());
    tokio::select! {
        _ = crate::crd_check::wait_until_installed(&client, &expected, &health) => {}
        _ = shutdown_signal() => return Ok(()),
    }

    let elector = args.leader_elect.then(|| {
        Elector::new(
            client.clone(),
            LeaseConfig {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(args.lease_duration_seconds.max(1)),
                renew_every: Duration::from_secs(args.lease_renew_seconds.max(1)),
                renew_deadline: Duration::from_secs(args.lease_renew_deadline_seconds.max(1)),
            },
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
    }
    health.leading.store(true, Ordering::Release);
    metrics.leader.set(1);

    tracing::info!(namespaces = ?args.namespaces, concurrency = args.concurrency, "perennial starting");
    act::arm_kill_point();
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = futures::future::join_all(namespaces.into_iter().map(|namespace| {
        run(
            client.clone(),
            Options {
                namespace,
                concurrency: args.concurrency,
            },
            metrics.clone(),
            health.clone(),
        )
    }));
    match &elector {
        Some(elector) => {
            tokio::select! {
                // A replica that lost the lease stops acting at once: the process ends.
                lost = elector.hold() => return Err(lost.into()),
                _ = controllers => {}
            }
            elector.release().await;
        }
        None => {
            controllers.await;
        }
    }
    Ok(())
}

/// This replica's name in the lease: the pod's name, else host and pid.
/// Where an inferred config came from: kube's inference reads KUBECONFIG or ~/.kube/config
/// first and falls back on the pod's ServiceAccount, whose server is the
/// `kubernetes` Service named by KUBERNETES_SERVICE_HOST.
fn config_source(config: &kube::Config, service_host: Option<String>) -> &'static str {
    let host = config.cluster_url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match service_host {
        Some(h) if !h.is_empty() && h == host => "in-cluster: the pod's ServiceAccount token",
        _ => "KUBECONFIG or ~/.kube/config",
    }
}

/// `perennial/VERSION (IDENTITY)`: the build and the instance.
fn user_agent(identity: &str) -> String {
    format!("perennial/{} ({identity})", env!("CARGO_PKG_VERSION"))
}

fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "perennial".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{config_source, user_agent};

    fn config(url: &str) -> kube::Config {
        kube::Config::new(url.parse().expect("a URL"))
    }

    #[test]
    fn a_config_whose_server_is_the_kubernetes_service_is_called_in_cluster() {
        let source = config_source(&config("https://10.96.0.1:443"), Some("10.96.0.1".into()));
        assert!(source.starts_with("in-cluster"), "{source}");
    }

    #[test]
    fn a_config_for_another_server_or_outside_a_pod_is_called_a_kubeconfig() {
        for host in [Some("10.96.0.1".to_string()), Some(String::new()), None] {
            let source = config_source(&config("https://127.0.0.1:16443"), host.clone());
            assert_eq!(source, "KUBECONFIG or ~/.kube/config", "{host:?}");
        }
    }

    #[test]
    fn the_user_agent_names_the_build_and_the_instance_as_a_valid_header() {
        let agent = user_agent("perennial-6d4f9b7c5-x2x7q");
        assert_eq!(
            agent,
            format!(
                "perennial/{} (perennial-6d4f9b7c5-x2x7q)",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(http::HeaderValue::from_str(&agent).is_ok());
    }
}
