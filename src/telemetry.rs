//! Logging (tracing) and metrics (Prometheus) set-up.

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings};
use crate::metric::{self, Kind};

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

/// The Prometheus recorder's handle: set by the first [`init_metrics`],
/// `None` if the recorder could not be installed.
static METRICS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// Installs the global Prometheus recorder (once per process); the worker's
/// health server renders it on `/metrics`. Every metric of [`metric::ALL`]
/// is described here and created at zero, so it shows before anything
/// happened, and every histogram gets its buckets (without them the
/// exporter renders a summary).
pub fn init_metrics() {
    init_metrics_but(&[]);
}

/// [`init_metrics`] for `session-guard api`, which serves the sessions API
/// and never consumes: without `session_guard_broker_up`, whose 0 would
/// read as a worker that stopped consuming (and fire its alert).
pub fn init_api_metrics() {
    init_metrics_but(&[metric::BROKER_UP.name]);
}

/// Installs the recorder and creates every metric but those named in `skip`.
fn init_metrics_but(skip: &[&str]) {
    METRICS.get_or_init(|| match install_recorder() {
        Ok(handle) => {
            describe_metrics(skip);
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the metrics recorder");
            None
        }
    });
}

fn install_recorder()
-> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for m in metric::ALL {
        if let Kind::Histogram(buckets) = m.kind {
            builder = builder.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(m.name.to_owned()),
                buckets,
            )?;
        }
    }
    builder.install_recorder()
}

/// The metrics in Prometheus' text format, if a recorder is installed.
pub fn render_metrics() -> Option<String> {
    METRICS.get()?.as_ref().map(|h| h.render())
}

/// Folds the histogram samples recorded since the last call into their
/// buckets. Rendering does it too; without either, samples pile up in
/// memory, so housekeeping calls this every few seconds.
pub fn run_metrics_upkeep() {
    if let Some(Some(handle)) = METRICS.get() {
        handle.run_upkeep();
    }
}

fn describe_metrics(skip: &[&str]) {
    for m in metric::ALL.iter().filter(|m| !skip.contains(&m.name)) {
        match m.kind {
            Kind::Counter => {
                metrics::describe_counter!(m.name, m.help);
                if m.labels.is_empty() {
                    metrics::counter!(m.name).increment(0);
                }
                for labels in m.initial {
                    metrics::counter!(m.name, *labels).increment(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(m.name, m.help);
                // Registered, it renders (at 0 until set).
                if m.labels.is_empty() {
                    let _ = metrics::gauge!(m.name);
                }
                for labels in m.initial {
                    let _ = metrics::gauge!(m.name, *labels);
                }
            }
            Kind::Histogram(_) => {
                metrics::describe_histogram!(m.name, m.help);
                // Registered, it renders with empty buckets.
                if m.labels.is_empty() {
                    let _ = metrics::histogram!(m.name);
                }
                for labels in m.initial {
                    let _ = metrics::histogram!(m.name, *labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_and_rendered_with_its_type() {
        init_metrics();
        let text = render_metrics().expect("the recorder is installed");
        for m in metric::ALL {
            let help = format!("# HELP {} {}", m.name, m.help);
            assert!(text.contains(&help), "{} is not described:\n{text}", m.name);
            let kind = format!("# TYPE {} {}", m.name, m.kind.prometheus_type());
            assert!(
                text.contains(&kind),
                "{} is not a {}:\n{text}",
                m.name,
                m.kind.prometheus_type()
            );
            let sets: Vec<String> = m
                .initial
                .iter()
                .map(|labels| {
                    let set: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    set.join(",")
                })
                .collect();
            if let Kind::Histogram(buckets) = m.kind {
                // Its buckets, for the unlabelled series or each initial one.
                let prefixes = if m.labels.is_empty() {
                    vec![String::new()]
                } else {
                    sets.iter().map(|set| format!("{set},")).collect()
                };
                for prefix in prefixes {
                    let first = format!("{}_bucket{{{prefix}le=\"{}\"}}", m.name, buckets[0]);
                    assert!(text.contains(&first), "{first} missing:\n{text}");
                }
                continue;
            }
            for set in sets {
                let series = format!("{}{{{set}}} 0", m.name);
                assert!(text.contains(&series), "{series} missing:\n{text}");
            }
        }
    }
}
