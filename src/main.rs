// No unsafe code, as in the library (src/lib.rs says why).
#![forbid(unsafe_code)]

use clap::Parser;
use session_guard::cli::{Cli, Command};

// jemalloc rather than glibc's malloc: a batch allocates and frees many
// small strings and maps, and jemalloc's thread caches take 14-17% off
// the worker's CPU per event (BENCHMARKS.md, issue 24). Here only, in the
// binary: the library leaves the choice to the programs that embed it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The daemon reports to its log, where collectors look; one-off commands
    // report to the operator. Either way once.
    let daemon = matches!(cli.command, Command::Run);
    match session_guard::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            // Without a subscriber (the configuration did not load) a log
            // line would go nowhere.
            if daemon && tracing::dispatcher::has_been_set() {
                tracing::error!(error = message, "session-guard failed");
            } else {
                eprintln!("error: {}", session_guard::terminal::escape(&message));
            }
            std::process::ExitCode::FAILURE
        }
    }
}
