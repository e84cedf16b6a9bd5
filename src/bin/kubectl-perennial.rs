//! `kubectl perennial`: kubectl finds this binary on PATH by its name.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    perennial::cli::args::main().await
}
