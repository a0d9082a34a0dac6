//! The report: a table of rows, printed and written to BENCHMARKS.md with
//! the command, the machine and the versions it was measured with.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use chrono::Utc;
use procfs::Current as _;

use crate::options::BenchArgs;

/// In the report file, everything from this line on is kept when the
/// figures above it are written again.
const KEEP_MARKER: &str = "<!-- kept by session-guard bench -->";

/// One line of the report.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The figure, with its unit.
    pub figure: String,
    /// How it was measured, and its spread or ratio.
    pub note: String,
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut table = String::new();
    let _ = writeln!(table, "| measure | figure | note |");
    let _ = writeln!(table, "|---|---|---|");
    for r in rows {
        let _ = writeln!(table, "| {} | {} | {} |", r.what, r.figure, r.note);
    }
    table
}

/// Writes the report to `args.output`, keeping what follows the marker in
/// the file there: hand-written analysis survives a new run.
pub async fn write(args: &BenchArgs, table: &str, worker: &Path, tls: bool) -> anyhow::Result<()> {
    // TLS costs CPU on both ends of every statement, and both ends share
    // the machine: say which was measured.
    let transport = if tls {
        "database connection with TLS (the URL's sslmode)"
    } else {
        "database connection without TLS"
    };
    let worker_version = command_version(&worker.to_string_lossy(), &["--version"])
        .await
        .unwrap_or_else(|| "session-guard ?".into());
    let rabbitmq = command_version("rabbitmqctl", &["version"])
        .await
        .map_or_else(|| "RabbitMQ ?".into(), |v| format!("RabbitMQ {v}"));
    let postgres = command_version("psql", &["--version"])
        .await
        .unwrap_or_else(|| "PostgreSQL ?".into());
    let report = format!(
        "# Benchmarks\n\nMeasured by `session-guard-bench --mix {} --events {} --users {} --rate {} \
         --seconds {} --log-rows {} --runs {} --client-events {} --coalescing-sessions {} \
         --coalescing-seconds {}` on {} (UTC).\n\nMachine: {}; {} cores. Versions: \
         {worker_version}, {rabbitmq}, {postgres}; {transport}, broker connection without TLS. Broker, \
         database, worker and load generator share the machine. Figures vary by +-20% between runs on these shared machines: compare \
         ratios to the baseline of the same run.\n\n{table}\n",
        args.mix.name(),
        args.events,
        args.users,
        args.rate,
        args.seconds,
        args.log_rows,
        args.runs,
        args.client_events,
        args.coalescing_sessions,
        args.coalescing_seconds,
        Utc::now().format("%Y-%m-%d %H:%M"),
        machine(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let kept = std::fs::read_to_string(&args.output)
        .ok()
        .and_then(|old| old.find(KEEP_MARKER).map(|at| old[at..].to_owned()))
        .unwrap_or_default();
    std::fs::write(&args.output, format!("{report}\n{kept}"))
        .with_context(|| format!("cannot write {}", args.output))?;
    Ok(())
}

/// The median of some figures (0 if none).
pub fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "N runs: min-max" for a report's note.
pub fn spread(figures: &[f64]) -> String {
    let min = figures.iter().copied().fold(f64::INFINITY, f64::min);
    let max = figures.iter().copied().fold(0.0, f64::max);
    format!("{} runs: {min:.0}-{max:.0}", figures.len())
}

/// The CPU's model name, else the architecture.
fn machine() -> String {
    procfs::CpuInfo::current()
        .ok()
        .and_then(|cpu| cpu.model_name(0).map(|m| m.trim().to_owned()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

/// What a program prints for its version, if it runs.
async fn command_version(program: &str, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_runs() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[10.0, 30.0, 20.0]), "3 runs: 10-30");
    }
}
