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

/// With the heap-profile feature every allocation is recorded, at a cost in speed: for
/// finding what holds memory, never for production.
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// jemalloc, for what it gives back: glibc's malloc kept up to 39 MiB the operator had
/// freed after each burst of pods turning Ready, more than half the live heap.
#[cfg(not(feature = "heap-profile"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the system within a second (jemalloc's default is ten), by a
/// thread of the allocator's own, so also while the operator is idle; and at once rather
/// than lazily (MADV_FREE), which would leave them in the RSS, and so against the pod's
/// memory limit, until the node runs short. `_RJEM_MALLOC_CONF` overrides any of it.
#[cfg(not(feature = "heap-profile"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
            // Written when the operator stops (SIGTERM): the peak heap by allocation site.
            #[cfg(feature = "heap-profile")]
            let _profiler = dhat::Profiler::builder()
                .file_name(
                    std::env::var("PERENNIAL_HEAP_PROFILE")
                        .unwrap_or_else(|_| "perennial-heap.json".into()),
                )
                .build();
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
