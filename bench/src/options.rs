//! The benchmark's command line: every figure it measures has a knob here.
//! Its own module, so that the parts that read the options (the latency
//! run, the report) import them without importing `main.rs`.

use std::path::PathBuf;

use clap::Parser;

use crate::traffic::Mix;

/// What to run; every figure of the benchmark has a knob here.
#[derive(Debug, Clone, Parser)]
#[command(name = "session-guard-bench", version, about)]
pub struct BenchArgs {
    /// Configuration file layered over the built-in defaults, as the
    /// worker reads it (environment variables SESSION_GUARD__SECTION__KEY
    /// override both): the servers to measure against.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The worker binary to measure (default: `session-guard` beside this
    /// executable).
    #[arg(long, value_name = "FILE")]
    pub worker: Option<PathBuf>,
    /// Events in the pre-filled queue for the drain runs.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// The traffic of the drain runs (see BENCHMARKS.md, "Traffic mixes").
    #[arg(long, value_enum, default_value = "production")]
    pub mix: Mix,
    /// Distinct users in the generated traffic.
    #[arg(long, default_value_t = 50_000)]
    pub users: usize,
    /// Publish rate of the latency run, events per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: usize,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Ended sessions put in the log before the last drain run (0 = skip it).
    #[arg(long, default_value_t = 5_000_000)]
    pub log_rows: u64,
    /// The file whose bench block (the lines between `<!-- bench:begin -->`
    /// and `<!-- bench:end -->`) the report replaces, leaving the rest as it
    /// is; created if missing (empty = do not write). Default BENCHMARKS.md,
    /// except with `--failover-only`, which writes only into a file named
    /// here.
    #[arg(long, value_name = "FILE")]
    pub output: Option<String>,
    /// Times each drain is repeated; the report gives medians, and ratios
    /// are taken within a repetition (worker and baseline back to back).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events published through the client crate's EventPublisher (and,
    /// back to back, with raw publisher confirms) to measure the app side.
    #[arg(long, default_value_t = 100_000)]
    pub client_events: usize,
    /// Measure only the app side (publishing through the client crate next
    /// to raw confirms, and request coalescing); prints the table and writes
    /// no report.
    #[arg(long, conflicts_with_all = ["coalescing_only", "api_only"])]
    pub client_only: bool,
    /// Sessions of the page-load traffic request coalescing is measured on
    /// (a page and 5 more requests within a second per visit, visits every
    /// 10-60 s per session).
    #[arg(long, default_value_t = 5_000)]
    pub coalescing_sessions: usize,
    /// Event time the page-load traffic spans, seconds (synthetic: it is
    /// sent as fast as the publisher takes it).
    #[arg(long, default_value_t = 300)]
    pub coalescing_seconds: u64,
    /// Measure only request coalescing (the broker only, a few seconds);
    /// prints the table and writes no report.
    #[arg(long, conflicts_with = "api_only")]
    pub coalescing_only: bool,
    /// Requests per second of the sessions API run, sent open-loop to
    /// `GET /v1/users/{id}/sessions` and, back to back, to `/health/live`.
    #[arg(long, default_value_t = 1_000)]
    pub api_rate: u64,
    /// Least length of each load of the sessions API run, seconds (it goes
    /// on until the consumer has drained the queue).
    #[arg(long, default_value_t = 20)]
    pub api_seconds: u64,
    /// Measure only the sessions API (after filling the log with
    /// `--log-rows`); prints the table and writes no report.
    #[arg(long)]
    pub api_only: bool,
    /// Measure only the worker on a three-node RabbitMQ cluster the bench
    /// starts (scripts/rabbitmq-cluster, on free ports; stopped at the
    /// end): 1 worker draining `--events` on the configured broker and on
    /// the cluster, back to back in each of `--runs` runs, and how long the
    /// worker is without a broker when its node is killed; prints the table
    /// and writes no report.
    #[arg(long, conflicts_with_all = ["client_only", "coalescing_only", "api_only"])]
    pub cluster_only: bool,
    /// Measure only the worker whose database fails over: a pg_auto_failover
    /// formation the bench starts (scripts/pg-failover, a primary with a
    /// synchronous standby on free ports; stopped at the end). 1 worker
    /// draining `--events` on the configured server and on the formation,
    /// back to back in each of `--runs` runs; then, in each run, a steady
    /// stream of `--rate` events/s during which the primary is killed, and
    /// one during a planned failover: the time to the first batch committed
    /// on the new primary, and whether every event was logged and each
    /// revoke published once. Writes its report only into a file `--output`
    /// names.
    #[arg(
        long,
        conflicts_with_all = ["client_only", "coalescing_only", "api_only", "cluster_only"]
    )]
    pub failover_only: bool,
    /// Measure only what notices cost: 1 worker draining `--events` of the
    /// mix with `notices.enabled` off and on, back to back in each of
    /// `--runs` runs; prints the table and writes no report.
    #[arg(
        long,
        conflicts_with_all = [
            "client_only", "coalescing_only", "api_only", "cluster_only", "failover_only"
        ]
    )]
    pub notices_only: bool,
}

/// Where the report goes unless `--output` says.
pub const DEFAULT_OUTPUT: &str = "BENCHMARKS.md";

impl BenchArgs {
    /// Only a part that needs the broker alone: no worker, no database, no
    /// report.
    pub fn broker_only(&self) -> bool {
        self.client_only || self.coalescing_only
    }

    /// Only a part of the figures: the table is printed, and the report's
    /// block, which holds a full run, is left as it is.
    pub fn partial(&self) -> bool {
        self.broker_only() || self.api_only || self.cluster_only || self.notices_only
    }

    /// The file the report is written into, if any: `--output` (empty: none),
    /// else [`DEFAULT_OUTPUT`]; none for a partial run. A `--failover-only`
    /// run writes only into a file named on the command line: its figures
    /// are not the full run the default file's block holds.
    pub fn report_file(&self) -> Option<&str> {
        let file = match (&self.output, self.failover_only) {
            (Some(file), _) => file.as_str(),
            (None, true) => return None,
            (None, false) => DEFAULT_OUTPUT,
        };
        (!file.is_empty() && !self.partial()).then_some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> BenchArgs {
        BenchArgs::parse_from(std::iter::once("session-guard-bench").chain(args.iter().copied()))
    }

    #[test]
    fn the_report_goes_where_the_mode_allows() {
        assert_eq!(parse(&[]).report_file(), Some(DEFAULT_OUTPUT));
        assert_eq!(parse(&["--output", "x.md"]).report_file(), Some("x.md"));
        assert_eq!(parse(&["--output", ""]).report_file(), None);
        assert_eq!(
            parse(&["--cluster-only", "--output", "x.md"]).report_file(),
            None
        );
        assert_eq!(parse(&["--failover-only"]).report_file(), None);
        assert_eq!(
            parse(&["--failover-only", "--output", "x.md"]).report_file(),
            Some("x.md")
        );
    }
}
