use clap::{Parser, Subcommand};
use perennial::{start, telemetry};

/// Perennial keeps services alive, spread, upgraded and repaired.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ResilientService CustomResourceDefinition as YAML.
    Crd {
        /// Print the field reference generated from it instead, as Markdown.
        #[arg(long)]
        reference: bool,
    },
    /// Run the operator.
    Run(start::RunArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Crd { reference } => {
            if reference {
                print!("{}", perennial::api::crd_reference());
            } else {
                print!("{}", perennial::api::crd_yaml());
            }
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => {
            telemetry::init(args.log_format);
            match start::main(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "perennial stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
