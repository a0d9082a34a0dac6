//! Logging (tracing) and metrics (Prometheus) set-up.

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings, MetricsSettings};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over
/// `log.level`. Logs go to stderr so that command output (`sessions --json`)
/// stays clean on stdout.
pub fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&settings.level),
    }
    .with_context(|| format!("invalid log level {:?}", settings.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match settings.format {
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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

/// Serves Prometheus metrics on `metrics.listen`, unless it is empty. A port
/// already taken is logged, not fatal: metrics must never stop the worker.
pub fn init_metrics(settings: &MetricsSettings) {
    if settings.listen.is_empty() {
        return;
    }
    let addr: std::net::SocketAddr = match settings.listen.parse() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::warn!(listen = %settings.listen, error = %e, "invalid metrics.listen; no metrics endpoint");
            return;
        }
    };
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
    {
        Ok(()) => tracing::info!(%addr, "serving Prometheus metrics on /metrics"),
        Err(e) => tracing::warn!(%addr, error = %e, "cannot serve metrics; going on without"),
    }
}
