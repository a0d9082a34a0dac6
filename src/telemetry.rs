//! Logging (tracing) and metrics (Prometheus) set-up.

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over
/// `log.level`. Logs go to stderr so that command output (`sessions --json`)
/// stays clean on stdout; colours only when stderr is a terminal and
/// `NO_COLOR` is not set.
pub fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&settings.level),
    }
    .with_context(|| format!("invalid log level {:?}", settings.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match settings.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(crate::terminal::stderr_colours())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .context("cannot install the log subscriber")
}

/// The Prometheus recorder's handle, once installed.
static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the global Prometheus recorder (once per process); the worker's
/// health server renders it on `/metrics`. Metrics are described here so they
/// show, at zero, before anything happened.
pub fn init_metrics() {
    if METRICS.get().is_some() {
        return;
    }
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            let _ = METRICS.set(handle);
            describe_metrics();
        }
        Err(e) => tracing::warn!(error = %e, "cannot install the metrics recorder"),
    }
}

/// The metrics in Prometheus' text format, if a recorder is installed.
pub fn render_metrics() -> Option<String> {
    METRICS.get().map(|h| h.render())
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    for (name, help) in [
        (
            "session_guard_events_processed_total",
            "Valid events applied and acked.",
        ),
        (
            "session_guard_events_dead_lettered_total",
            "Messages sent to the dead-letter queue, by kind.",
        ),
        (
            "session_guard_sessions_revoked_total",
            "Sessions revoked by the worker.",
        ),
        (
            "session_guard_revokes_repeated_total",
            "Repeat revokes for sessions apps kept using.",
        ),
        (
            "session_guard_shadow_revocations_total",
            "Sessions shadow mode would have revoked.",
        ),
        (
            "session_guard_revokes_published_total",
            "Revoke messages confirmed by the broker.",
        ),
        (
            "session_guard_revokes_unroutable_total",
            "Revokes no app queue was bound for.",
        ),
        (
            "session_guard_database_retries_total",
            "Batches retried after a transient database error.",
        ),
    ] {
        describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    describe_gauge!("session_guard_database_up", "1 while PostgreSQL answers.");
    describe_gauge!(
        "session_guard_broker_up",
        "1 while consuming from RabbitMQ."
    );
}
