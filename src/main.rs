use clap::{Parser, Subcommand};

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
    Crd,
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", perennial::api::crd_yaml()),
    }
}
