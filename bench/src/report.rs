//! The report: a table of rows, printed, and written with the command, the
//! machine and the versions it was measured with into the bench block of
//! BENCHMARKS.md (or of `--output`): the lines between [`BLOCK_BEGIN`] and
//! [`BLOCK_END`]. The summary and the history around the block are written
//! by hand, so a run leaves them as they are.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use chrono::Utc;
use procfs::Current as _;

use crate::options::BenchArgs;

/// The line that opens the block a run replaces. Only a line that is the
/// marker alone counts, so prose may quote it inline.
pub const BLOCK_BEGIN: &str = "<!-- bench:begin -->";

/// The line that closes the block a run replaces.
pub const BLOCK_END: &str = "<!-- bench:end -->";

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

/// What the header says besides the command: when and on what the figures
/// were measured.
struct Conditions {
    /// "YYYY-MM-DD HH:MM", UTC.
    when: String,
    /// The CPU's model name.
    machine: String,
    /// The cores this process may use, which the services share.
    cores: usize,
    /// The worker's, RabbitMQ's and PostgreSQL's versions, as they print them.
    versions: [String; 3],
    /// Whether the database connection used TLS: it costs CPU on both ends of
    /// every statement, and both ends share the machine.
    tls: bool,
}

/// The lines above the table: the command with every option that shapes a
/// figure, the date, the machine and the versions.
fn header(args: &BenchArgs, at: &Conditions) -> String {
    let transport = if at.tls {
        "database connection with TLS (the URL's sslmode)"
    } else {
        "database connection without TLS"
    };
    let [worker, rabbitmq, postgres] = &at.versions;
    if args.failover_only {
        return format!(
            "Measured by `session-guard-bench --failover-only --mix {} --events {} --users {} \
             --rate {} --runs {}` on {} (UTC).\n\nMachine: {}; {} cores. Versions: {worker}, \
             {rabbitmq}, {postgres}; {transport}, broker connection without TLS. Broker, the \
             machine's PostgreSQL, the pg_auto_failover formation (monitor and two nodes), \
             worker and load generator share the machine. Figures vary by +-20% between runs \
             on these shared machines: compare ratios within a run.\n",
            args.mix.name(),
            args.events,
            args.users,
            args.rate,
            args.runs,
            at.when,
            at.machine,
            at.cores,
        );
    }
    format!(
        "Measured by `session-guard-bench --mix {} --events {} --users {} --rate {} \
         --seconds {} --log-rows {} --runs {} --client-events {} --coalescing-sessions {} \
         --coalescing-seconds {} --api-rate {} --api-seconds {}` on {} (UTC).\n\nMachine: {}; {} cores. Versions: \
         {worker}, {rabbitmq}, {postgres}; {transport}, broker connection without TLS. Broker, \
         database, worker and load generator share the machine. Figures vary by +-20% between \
         runs on these shared machines: compare ratios to the baseline of the same run.\n",
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
        args.api_rate,
        args.api_seconds,
        at.when,
        at.machine,
        at.cores,
    )
}

/// Writes the header and the table into the bench block of `file`
/// (created if missing), leaving the rest of the file as it is.
pub async fn write(
    args: &BenchArgs,
    file: &str,
    table: &str,
    worker: &Path,
    tls: bool,
) -> anyhow::Result<()> {
    let worker_version = command_version(&worker.to_string_lossy(), &["--version"])
        .await
        .unwrap_or_else(|| "session-guard ?".into());
    let rabbitmq = command_version("rabbitmqctl", &["version"])
        .await
        .map_or_else(|| "RabbitMQ ?".into(), |v| format!("RabbitMQ {v}"));
    let postgres = command_version("psql", &["--version"])
        .await
        .unwrap_or_else(|| "PostgreSQL ?".into());
    let conditions = Conditions {
        when: Utc::now().format("%Y-%m-%d %H:%M").to_string(),
        machine: machine(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        versions: [worker_version, rabbitmq, postgres],
        tls,
    };
    let block = format!("\n{}\n{table}\n", header(args, &conditions));
    let old = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {file}")),
    };
    let new = with_block(old.as_deref(), &block).with_context(|| {
        format!(
            "{file} has no bench block to replace: nothing written (fix its markers, or name \
             another file with --output)"
        )
    })?;
    std::fs::write(file, new).with_context(|| format!("cannot write {file}"))?;
    Ok(())
}

/// `old`, the report file's text (`None`: no file yet), with the lines
/// between the [`BLOCK_BEGIN`] and [`BLOCK_END`] lines replaced by `block`.
/// A file without either marker keeps its text and gets the block appended;
/// a new file is a title and the block. Markers out of order or more than
/// one of either are refused: which part the hand-written text is would be
/// a guess.
fn with_block(old: Option<&str>, block: &str) -> anyhow::Result<String> {
    let block = format!("{BLOCK_BEGIN}\n{block}{BLOCK_END}\n");
    let Some(old) = old else {
        return Ok(format!("# Benchmarks\n\n{block}"));
    };
    // Byte offsets of each marker line's start and of the line after it.
    let mut begins = Vec::new();
    let mut ends = Vec::new();
    let mut at = 0;
    for line in old.split_inclusive('\n') {
        let next = at + line.len();
        match line.trim() {
            BLOCK_BEGIN => begins.push((at, next)),
            BLOCK_END => ends.push((at, next)),
            _ => {}
        }
        at = next;
    }
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => {
            let separator = if old.is_empty() || old.ends_with("\n\n") {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{old}{separator}{block}"))
        }
        ([(begin, _)], [(end, after_end)]) if begin < end => {
            Ok(format!("{}{block}{}", &old[..*begin], &old[*after_end..]))
        }
        _ => anyhow::bail!(
            "expected one `{BLOCK_BEGIN}` line and, after it, one `{BLOCK_END}` line; found {} and {}",
            begins.len(),
            ends.len()
        ),
    }
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

    /// Hand-written text around a block, quoting the markers inline as the
    /// summary of BENCHMARKS.md does.
    const CURATED: &str = "# Benchmarks\n\n## Summary\n\nA run replaces what is between \
        `<!-- bench:begin -->` and `<!-- bench:end -->`.\n\n<!-- bench:begin -->\nold figures\n\
        <!-- bench:end -->\n\n## History\n\nkept\n";

    #[test]
    fn a_run_replaces_only_its_block() {
        let new = with_block(Some(CURATED), "\nnew figures\n\n").unwrap();
        assert_eq!(
            new,
            "# Benchmarks\n\n## Summary\n\nA run replaces what is between \
             `<!-- bench:begin -->` and `<!-- bench:end -->`.\n\n<!-- bench:begin -->\n\n\
             new figures\n\n<!-- bench:end -->\n\n## History\n\nkept\n"
        );
        // The next run finds the block it wrote.
        assert_eq!(
            with_block(Some(&new), "\nnewer\n\n").unwrap(),
            with_block(Some(CURATED), "\nnewer\n\n").unwrap()
        );
    }

    #[test]
    fn a_file_without_a_block_keeps_its_text_and_gets_one() {
        assert_eq!(
            with_block(None, "figures\n").unwrap(),
            "# Benchmarks\n\n<!-- bench:begin -->\nfigures\n<!-- bench:end -->\n"
        );
        assert_eq!(
            with_block(Some("notes"), "figures\n").unwrap(),
            "notes\n\n<!-- bench:begin -->\nfigures\n<!-- bench:end -->\n"
        );
        assert_eq!(
            with_block(Some("notes\n"), "figures\n").unwrap(),
            "notes\n\n<!-- bench:begin -->\nfigures\n<!-- bench:end -->\n"
        );
    }

    #[test]
    fn a_block_that_cannot_be_told_apart_is_refused() {
        for broken in [
            "<!-- bench:begin -->\nfigures\n",
            "<!-- bench:end -->\nfigures\n",
            "<!-- bench:end -->\nfigures\n<!-- bench:begin -->\n",
            "<!-- bench:begin -->\na\n<!-- bench:end -->\n<!-- bench:begin -->\nb\n<!-- bench:end -->\n",
        ] {
            assert!(with_block(Some(broken), "figures\n").is_err(), "{broken:?}");
        }
    }

    /// The repository's BENCHMARKS.md has the one block a default run
    /// replaces, and a run changes nothing outside it.
    #[test]
    fn benchmarks_md_has_one_block_and_keeps_the_rest() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
        let text = std::fs::read_to_string(path).unwrap();
        let new = with_block(Some(&text), "\nfigures\n\n").unwrap();
        let outside = |t: &str| {
            let begin = t.find(&format!("\n{BLOCK_BEGIN}\n")).unwrap();
            let end = t.find(&format!("\n{BLOCK_END}\n")).unwrap();
            (t[..begin].to_owned(), t[end..].to_owned())
        };
        assert_eq!(outside(&new), outside(&text));
        assert!(new.contains("<!-- bench:begin -->\n\nfigures\n\n<!-- bench:end -->\n"));
    }

    #[test]
    fn the_header_names_every_option_that_shapes_a_figure() {
        use clap::Parser as _;
        let args =
            BenchArgs::parse_from(["session-guard-bench", "--events", "2000", "--runs", "1"]);
        let at = Conditions {
            when: "2026-12-07 06:00".into(),
            machine: "CPU".into(),
            cores: 2,
            versions: [
                "session-guard 0.1.0".into(),
                "RabbitMQ 3.10.8".into(),
                "psql 15".into(),
            ],
            tls: false,
        };
        assert_eq!(
            header(&args, &at).lines().next().unwrap(),
            "Measured by `session-guard-bench --mix production --events 2000 --users 50000 \
             --rate 2000 --seconds 20 --log-rows 5000000 --runs 1 --client-events 100000 \
             --coalescing-sessions 5000 --coalescing-seconds 300 --api-rate 1000 --api-seconds 20` \
             on 2026-12-07 06:00 (UTC)."
        );
    }
}
