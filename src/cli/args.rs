//! The command line of `kubectl perennial`, and what each verb does with it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use super::snapshot::{self, Want};
use super::style::{ColorChoice, Style};
use super::verdict::Verdict;
use super::{connect, history, ledger, tree, verbs, watch, CliError, Target};

/// Exit codes a script can tell apart.
pub mod exit {
    /// The service is Available with its rollout complete (or the verb did what it said).
    pub const OK: u8 = 0;
    /// The service is degraded, rolled back, or its rollout failed.
    pub const FAILED: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// `status --timeout` ran out while the service was still on its way.
    pub const TIMEOUT: u8 = 3;
    /// The cluster could not be reached, the service is not there, or a verb was refused.
    pub const ERROR: u8 = 4;
}

/// Watch and steer ResilientServices: their revisions, rollouts, slots and failure ledger.
#[derive(Parser, Debug)]
#[command(name = "kubectl-perennial", bin_name = "kubectl perennial", version)]
pub struct Cli {
    /// The kubeconfig file (else KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (else its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (else the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Show the service as a tree: status, revisions, the rollout and every slot.
    Get {
        name: String,
        /// Redraw on every change until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Wait until the service is Available with its rollout complete. Exits 0 then, 1 when
    /// it is rolled back, its rollout failed or it stays degraded, 3 when the timeout runs out.
    Status {
        name: String,
        /// How long to wait: `90s`, `5m`, `1h` (default: no limit).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// How long a rolled-out service may stay Degraded (a repair under way) before
        /// `status` gives up on it.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        degraded_grace: Duration,
    },
    /// Pass the canary pause (`pause: {}`) the rollout waits at.
    Promote { name: String },
    /// Give up the rollout in progress: back to the stable revision, the new one marked failed.
    Abort { name: String },
    /// Freeze rollouts (spec.paused): no pod moves to a new revision; repairs go on.
    Pause { name: String },
    /// Let a paused service roll out again.
    Resume { name: String },
    /// Replace every replica by a rolling update, with all its guarantees.
    Restart { name: String },
    /// Re-apply the template of an earlier revision (default: the newest earlier one that
    /// did not fail).
    Undo {
        name: String,
        /// The revision number, as `history` lists them.
        #[arg(long)]
        to_revision: Option<i64>,
        /// Also for a revision marked failed: clear the mark and roll it out again.
        #[arg(long)]
        force: bool,
    },
    /// Change the service's template.
    #[command(subcommand)]
    Set(SetVerb),
    /// List the recorded revisions, what each changed and what became of it.
    History { name: String },
    /// Each slot's failures and repairs, and the service's recent Events.
    Ledger { name: String },
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish; `kubectl`
    /// prints the `kubectl_complete-perennial` helper that kubectl's own completion calls.
    Completion { shell: CompletionShell },
    /// Completion candidates for kubectl's plugin completion (used by the helper).
    #[command(name = "__complete", hide = true)]
    Complete { words: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum SetVerb {
    /// Set the image of one or more containers: `set image NAME CONTAINER=IMAGE...`.
    Image {
        name: String,
        #[arg(required = true, value_parser = verbs::parse_image, value_name = "CONTAINER=IMAGE")]
        images: Vec<(String, String)>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
    Kubectl,
}

/// `90s`, `5m`, `1h30m`, `2h`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration such as 90s, 5m or 1h"))?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            _ => return Err(format!("`{text}` is not a duration such as 90s, 5m or 1h")),
        };
    }
    if !number.is_empty() || total == 0 && !text.starts_with('0') {
        return Err(format!("`{text}` is not a duration such as 90s, 5m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

/// Runs the command line and returns the exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is no error of ours.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

/// Runs one parsed command line: what the binary does, and what the tests drive.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let style = Style::for_stdout(cli.color);
    match &cli.verb {
        Verb::Completion { shell } => {
            completion(*shell);
            return Ok(exit::OK);
        }
        Verb::Complete { words } => {
            let target = connect(
                cli.kubeconfig.clone(),
                cli.context.clone(),
                cli.namespace.clone(),
            )
            .await
            .ok();
            out(&complete(target.as_ref(), words).await);
            return Ok(exit::OK);
        }
        _ => {}
    }
    let target = connect(
        cli.kubeconfig.clone(),
        cli.context.clone(),
        cli.namespace.clone(),
    )
    .await?;
    let said = |m: String| {
        out(&format!("{m}\n"));
        Ok(exit::OK)
    };
    match cli.verb {
        Verb::Get { name, watch: false } => {
            let snap =
                snapshot::fetch(&target.client, &target.namespace, &name, Want::TREE).await?;
            out(&tree::render(&snap, jiff::Timestamp::now(), style));
            Ok(exit::OK)
        }
        Verb::Get { name, watch: true } => {
            use std::io::IsTerminal;
            let terminal = std::io::stdout().is_terminal();
            watch::watch_tree(&target, &name, style, terminal, out).await?;
            Ok(exit::OK)
        }
        Verb::Status {
            name,
            timeout,
            degraded_grace,
        } => status(&target, &name, timeout, degraded_grace).await,
        Verb::Promote { name } => said(verbs::promote(&target, &name).await?),
        Verb::Abort { name } => said(verbs::abort(&target, &name).await?),
        Verb::Pause { name } => said(verbs::set_paused(&target, &name, true).await?),
        Verb::Resume { name } => said(verbs::set_paused(&target, &name, false).await?),
        Verb::Restart { name } => said(verbs::restart(&target, &name).await?),
        Verb::Undo {
            name,
            to_revision,
            force,
        } => said(verbs::undo(&target, &name, to_revision, force).await?),
        Verb::Set(SetVerb::Image { name, images }) => {
            said(verbs::set_image(&target, &name, &images).await?)
        }
        Verb::History { name } => {
            let snap =
                snapshot::fetch(&target.client, &target.namespace, &name, Want::default()).await?;
            out(&history::render(&snap, style));
            Ok(exit::OK)
        }
        Verb::Ledger { name } => {
            let snap =
                snapshot::fetch(&target.client, &target.namespace, &name, Want::LEDGER).await?;
            out(&ledger::render(&snap, jiff::Timestamp::now(), style));
            Ok(exit::OK)
        }
        Verb::Completion { .. } | Verb::Complete { .. } => unreachable!("handled above"),
    }
}

/// `status`: prints each new waiting message, then the verdict; the exit code says which.
pub async fn status(
    target: &Target,
    name: &str,
    timeout: Option<Duration>,
    degraded_grace: Duration,
) -> Result<u8, CliError> {
    let verdict = watch::wait_status(target, name, timeout, degraded_grace, |v| {
        out(&format!("waiting: {}\n", v.message()));
    })
    .await?;
    Ok(match verdict {
        Verdict::Done(m) => {
            out(&format!("{name}: {m}\n"));
            exit::OK
        }
        Verdict::Failed(m) | Verdict::Degraded(m) => {
            out(&format!("{name}: {m}\n"));
            exit::FAILED
        }
        Verdict::Waiting(m) => {
            let waited = timeout
                .map(|t| format!(" after {} s", t.as_secs()))
                .unwrap_or_default();
            out(&format!("{name}: timed out{waited}: {m}\n"));
            exit::TIMEOUT
        }
    })
}

fn completion(shell: CompletionShell) {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
        CompletionShell::Elvish => Shell::Elvish,
        CompletionShell::Kubectl => {
            out(KUBECTL_COMPLETE_HELPER);
            return;
        }
    };
    let mut command = Cli::command();
    let mut buffer = Vec::new();
    clap_complete::generate(shell, &mut command, "kubectl-perennial", &mut buffer);
    out(&String::from_utf8_lossy(&buffer));
}

/// kubectl (1.26 and later) completes `kubectl perennial ...` by running an executable
/// named `kubectl_complete-perennial` with the words typed so far; it prints one candidate
/// per line and then cobra's directive (`:4`, no file names).
const KUBECTL_COMPLETE_HELPER: &str = r#"#!/bin/sh
# Install as an executable named kubectl_complete-perennial on PATH, beside kubectl-perennial.
exec kubectl-perennial __complete "$@"
"#;

/// The verbs, as completion offers them: every verb of the command line but the hidden.
fn verbs() -> Vec<String> {
    (Cli::command().get_subcommands())
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .chain(["help".to_string()])
        .collect()
}

/// The candidates for the last of `words`: a verb, then a service name of the namespace.
pub async fn complete(target: Option<&Target>, words: &[String]) -> String {
    let partial = words.last().map(String::as_str).unwrap_or("");
    let positional: Vec<&str> = (words.iter().take(words.len().saturating_sub(1)))
        .map(String::as_str)
        .filter(|w| !w.starts_with('-'))
        .collect();
    let candidates: Vec<String> = match positional.as_slice() {
        [] => verbs(),
        ["set"] => vec!["image".into()],
        ["completion"] => ["bash", "zsh", "fish", "powershell", "elvish", "kubectl"]
            .map(String::from)
            .to_vec(),
        [verb] | ["set", verb] if *verb != "help" => match target {
            Some(t) => service_names(t).await,
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut text: String = (candidates.into_iter())
        .filter(|c| c.starts_with(partial))
        .map(|c| format!("{c}\n"))
        .collect();
    text.push_str(":4\n");
    text
}

async fn service_names(target: &Target) -> Vec<String> {
    use kube::api::{Api, ListParams};
    use kube::ResourceExt;
    let api: Api<crate::api::ResilientService> =
        Api::namespaced(target.client.clone(), &target.namespace);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items.iter().map(|s| s.name_any()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_writes_them() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn every_verb_has_help_and_the_command_line_is_consistent() {
        Cli::command().debug_assert();
        for verb in Cli::command().get_subcommands() {
            if verb.is_hide_set() {
                continue;
            }
            assert!(
                verb.get_about().is_some(),
                "verb {} has no help",
                verb.get_name()
            );
        }
    }

    #[tokio::test]
    async fn completion_offers_verbs_then_nothing_it_cannot_know() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(complete(None, &words(&["pro"])).await, "promote\n:4\n");
        assert_eq!(complete(None, &words(&["set", ""])).await, "image\n:4\n");
        // Without a cluster no service name is offered, and no file name either.
        assert_eq!(complete(None, &words(&["get", "w"])).await, ":4\n");
    }
}
