use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = session_guard::cli::Cli::parse();
    match session_guard::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The subscriber may not be installed yet (bad config): print too.
            tracing::error!(error = format!("{e:#}"), "session-guard failed");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
