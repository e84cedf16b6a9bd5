//! `kubectl perennial`: the kubectl plugin, as a library the integration tests drive too.
//!
//! The pure parts (`tree`, `verdict`, `history`, `ledger`, `style`) turn a [`Snapshot`]
//! into text or a judgement and carry the unit tests; `snapshot`, `verbs` and `watch` are
//! the only ones that talk to the API server. `args` is the command line.

pub mod args;
#[cfg(test)]
mod fixtures;
pub mod history;
pub mod ledger;
pub mod snapshot;
pub mod style;
pub mod tree;
pub mod verbs;
pub mod verdict;
pub mod watch;

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use snapshot::Snapshot;

/// What went wrong, said so that the person at the terminal knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("resilientservice {namespace}/{name} not found (kubectl get rsvc -n {namespace} lists those there are)")]
    NotFound { name: String, namespace: String },
    #[error("could not {verb} {what} of {name}: {source}")]
    Api {
        verb: &'static str,
        what: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("no cluster to talk to: {0}")]
    Config(String),
    #[error("{0}")]
    Refused(String),
    #[error("service {0} changed while this command ran; run it again")]
    Conflict(String),
}

impl CliError {
    pub fn api(verb: &'static str, what: &'static str, name: &str, source: kube::Error) -> Self {
        CliError::Api {
            verb,
            what,
            name: name.to_string(),
            source,
        }
    }
}

/// Where the plugin's commands go: a client and the namespace they act in.
#[derive(Clone)]
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

/// The cluster as kubectl would find it: `--kubeconfig`, else `KUBECONFIG`, else
/// `~/.kube/config`, else the in-cluster config; `--context` and `--namespace` as kubectl
/// reads them (the context's namespace, else `default`).
pub async fn connect(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
) -> Result<Target, CliError> {
    let options = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(&path)
                .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options).await
        }
        None if options.context.is_some() => Config::from_kubeconfig(&options).await,
        None => return connect_inferred(namespace).await,
    }
    .map_err(|e| CliError::Config(e.to_string()))?;
    target(config, namespace)
}

async fn connect_inferred(namespace: Option<String>) -> Result<Target, CliError> {
    let config = Config::infer()
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    target(config, namespace)
}

fn target(config: Config, namespace: Option<String>) -> Result<Target, CliError> {
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| CliError::Config(e.to_string()))?;
    Ok(Target { client, namespace })
}
