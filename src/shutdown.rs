//! Shutdown: the signals that ask for one, and the token that carries it to
//! every task.
//!
//! A [`CancellationToken`] fires only when cancelled: dropping every handle
//! to it never counts as a shutdown, so a task can be given a token that is
//! never cancelled when it must finish whatever happens.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// Sleeps for `delay` unless `shutdown` fires first. Returns `false` if it
/// did: the caller stops retrying at once. (The pauses themselves come from
/// `session_guard_amqp::backoff::Backoff`.)
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shutdown_cuts_a_pause_short() {
        let shutdown = CancellationToken::new();
        let listener = shutdown.clone();
        let started = std::time::Instant::now();
        let paused = tokio::spawn(async move { pause(Duration::from_secs(60), &listener).await });
        shutdown.cancel();
        assert!(!paused.await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn without_a_shutdown_a_pause_runs_its_course() {
        let shutdown = CancellationToken::new();
        assert!(pause(Duration::from_millis(1), &shutdown).await);
    }
}
