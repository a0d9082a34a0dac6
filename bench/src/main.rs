//! `session-guard-bench`: throughput, latency and memory of the worker
//! against the local RabbitMQ and PostgreSQL, compared with a baseline
//! measured in the same run (a consumer that only acks). Prints a table and
//! writes it into the bench block of BENCHMARKS.md (see report.rs).
//!
//! Everything runs with a fresh database and unique exchange and queue
//! names, deleted at the end. Workers run as real `session-guard run`
//! processes (the worker binary built beside this one), so their memory
//! can be read from /proc.

mod api;
mod client;
mod cluster;
mod coalescing;
#[cfg(test)]
mod docs_drift;
mod drain;
mod failover;
mod latency;
mod notices;
mod options;
mod report;
mod services;
mod traffic;
mod workers;

use clap::Parser;
use session_guard::broker;
use session_guard::{Settings, telemetry};

use crate::drain::Drains;
use crate::options::BenchArgs;
use crate::report::Row;
use crate::traffic::Traffic;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark on names of its own, removes them, then reports.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let base = Settings::load(args.config.as_deref())?;
    telemetry::init_logging(&base.log)?;
    let worker = match &args.worker {
        Some(path) => path.clone(),
        None => workers::default_binary()?,
    };
    if !args.broker_only() {
        workers::check_binary(&worker)?;
    }
    let settings = services::bench_settings(&base);
    let result = if args.coalescing_only {
        coalescing::rows(&settings, args.coalescing_sessions, args.coalescing_seconds)
            .await
            .map(|rows| (rows, false))
    } else if args.cluster_only {
        let events = generate(&args);
        cluster::rows(&settings, &args, &worker, &events)
            .await
            .map(|rows| (rows, false))
    } else if args.failover_only {
        let events = generate(&args);
        failover::rows(&settings, &args, &worker, &events).await
    } else if args.notices_only {
        let events = generate(&args);
        notices::rows(&settings, &args, &worker, &events)
            .await
            .map(|rows| (rows, false))
    } else if args.client_only {
        client_only(&settings, &args)
            .await
            .map(|rows| (rows, false))
    } else {
        measure(&settings, &args, &worker).await
    };
    services::clean_up(&settings).await;
    let (rows, tls) = result?;
    let table = report::table(&rows);
    println!("\n{table}");
    if let Some(file) = args.report_file() {
        report::write(&args, file, &table, &worker, tls).await?;
        println!("written to the bench block of {file}");
    }
    Ok(())
}

/// Only the app side: the broker, no database and no worker.
async fn client_only(settings: &Settings, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let connection = broker::connect(&settings.amqp, "bench").await?;
    let setup = connection.create_channel().await?;
    broker::declare_topology(&connection, &settings.amqp).await?;
    let publisher = broker::confirm_channel(&connection).await?;
    let rows = client::rows(&setup, &publisher, settings, args.client_events).await;
    let _ = connection.close(200, "done".into()).await;
    let mut rows = rows?;
    rows.extend(
        coalescing::rows(settings, args.coalescing_sessions, args.coalescing_seconds).await?,
    );
    Ok(rows)
}

/// Every measure; the report's rows, and whether the database connection
/// used TLS.
async fn measure(
    settings: &Settings,
    args: &BenchArgs,
    worker: &std::path::Path,
) -> anyhow::Result<(Vec<Row>, bool)> {
    let pool = session_guard::db::connect_and_migrate(&settings.database).await?;
    let tls = services::uses_tls(&pool).await?;
    println!(
        "database connection {} TLS",
        if tls { "with" } else { "without" }
    );
    let connection = broker::connect(&settings.amqp, "bench").await?;
    let setup = connection.create_channel().await?;
    broker::declare_topology(&connection, &settings.amqp).await?;
    let publisher = broker::confirm_channel(&connection).await?;
    // A queue bound like an app's, so revokes are routed (and not logged as
    // unroutable); gone with the bench's connection.
    broker::declare_revoke_tap(&setup, &settings.amqp.revocations_exchange).await?;
    let mut rows = Vec::new();
    if !args.api_only {
        rows = client::rows(&setup, &publisher, settings, args.client_events).await?;
        rows.extend(
            coalescing::rows(settings, args.coalescing_sessions, args.coalescing_seconds).await?,
        );
    }

    let events = generate(args);
    let drains = Drains {
        settings,
        pool: &pool,
        connection: &connection,
        publisher: &publisher,
        worker,
        events: &events,
        requests: of_type(&events, "request"),
    };
    if args.api_only {
        if args.log_rows > 0 {
            services::fill_history(&pool, args.log_rows).await?;
        }
    } else {
        rows.extend(drain_rows(&drains, args).await?);
    }
    // On the large log the last drain left (or --api-only filled).
    rows.extend(api::measure(&drains, args).await?);
    pool.close().await;
    let _ = connection.close(200, "done".into()).await;
    Ok((rows, tls))
}

/// The drain runs on an empty log, the latency run, and the drain on a
/// large log (which leaves the log filled).
async fn drain_rows(drains: &Drains<'_>, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let (settings, worker) = (drains.settings, drains.worker);
    let mut rows = Vec::new();
    let runs = args.runs.max(1);
    let figures = drains.empty_log(runs).await?;
    rows.extend(figures.rows(settings.amqp.prefetch, args.mix));

    services::reset_log(drains.pool).await?;
    rows.push(latency::measure(drains.connection, drains.publisher, settings, worker, args).await?);
    rows.push(Row {
        what: "worker peak RSS".into(),
        figure: format!("{:.1} MB", figures.peak_rss as f64 / 1024.0),
        note: "VmHWM of the worker processes above".into(),
    });
    if args.log_rows > 0 {
        let empty_rate = figures.one_worker_rate();
        rows.push(drains.large_log(args.log_rows, runs, empty_rate).await?);
    }
    Ok(rows)
}

/// The traffic of the drain runs, generated once and replayed for each.
fn generate(args: &BenchArgs) -> Vec<Vec<u8>> {
    let mut traffic = Traffic::with_mix(args.mix, args.users, 0x5eed);
    let events: Vec<Vec<u8>> = (0..args.events)
        .map(|_| traffic.next_event().to_string().into_bytes())
        .collect();
    let logins = of_type(&events, "login");
    let sightings = if traffic.first_sightings > 0 {
        format!(
            ", {} first sightings, {} of them finding their user with a live session \
             ({} revoking the session just seen: its user had logged in since)",
            traffic.first_sightings, traffic.sighting_conflicts, traffic.sightings_revoked
        )
    } else {
        String::new()
    };
    println!(
        "traffic ({} mix): {} events, {} logins, {} of them over the limit, {} requests on sessions not live{sightings}",
        args.mix.name(),
        events.len(),
        logins,
        traffic.conflicts,
        traffic.unknown
    );
    events
}

/// How many of `events` are of type `kind`.
fn of_type(events: &[Vec<u8>], kind: &str) -> usize {
    let needle = format!("\"type\":\"{kind}\"");
    events
        .iter()
        .filter(|e| std::str::from_utf8(e).is_ok_and(|s| s.contains(&needle)))
        .count()
}
