//! `session-guard bench`: throughput, latency and memory of the worker
//! against the local RabbitMQ and PostgreSQL, compared with a baseline
//! measured in the same run (a consumer that only acks). Prints a table and
//! writes it to BENCHMARKS.md.
//!
//! Everything runs with a fresh database and unique exchange and queue names,
//! deleted at the end. Workers run as real `session-guard run` processes (the
//! current executable), so their memory can be read from /proc.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::json;

use crate::broker;
use crate::configuration::{Settings, with_database};
use crate::store;

/// What to run; every figure of the benchmark has a knob here.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events in the pre-filled queue for the drain runs.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
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
    /// Where to write the report (empty = do not write).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub output: String,
    /// Times each drain is repeated; the report gives medians, and ratios
    /// are taken within a repetition (worker and baseline back to back).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events published through the client crate's EventPublisher (and,
    /// back to back, with raw publisher confirms) to measure the app side.
    #[arg(long, default_value_t = 100_000)]
    pub client_events: usize,
    /// Measure only the app side (publishing through the client crate next
    /// to raw confirms); prints the table and writes no report.
    #[arg(long)]
    pub client_only: bool,
}

/// A deterministic xorshift64* generator: reproducible traffic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed towards 0: a few users produce most of the traffic.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64) * self.unit().powi(3)) as usize % n.max(1)
    }
}

/// Realistic traffic: 85% requests on live sessions, 10% logins, 5%
/// logouts; about 5% of logins go to a user who already has a session
/// (with the limit at 1, each of those revokes one).
struct Traffic {
    rng: Rng,
    users: usize,
    /// Live sessions by user, as the generator believes them.
    live: HashMap<usize, Vec<String>>,
    /// (user, session) pairs that are live, for picking requests.
    pool: Vec<(usize, String)>,
    next_session: u64,
    clock: DateTime<Utc>,
    /// Session ids the next conflicting logins will revoke.
    pub conflicts: u64,
}

impl Traffic {
    fn new(users: usize, seed: u64) -> Traffic {
        Traffic {
            rng: Rng(seed | 1),
            users,
            live: HashMap::new(),
            pool: Vec::new(),
            next_session: 0,
            clock: Utc::now() - chrono::Duration::hours(1),
            conflicts: 0,
        }
    }

    fn tick(&mut self) -> String {
        self.clock += chrono::Duration::microseconds(250);
        self.clock.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// A login for `user`; returns the event and the session it revokes.
    fn login_for(&mut self, user: usize) -> (serde_json::Value, Option<String>) {
        self.next_session += 1;
        let session = format!("s{}", self.next_session);
        let at = self.tick();
        let sessions = self.live.entry(user).or_default();
        let revoked = sessions.pop();
        if let Some(old) = &revoked {
            self.pool.retain(|(_, s)| s != old);
            self.conflicts += 1;
        }
        sessions.push(session.clone());
        self.pool.push((user, session.clone()));
        let event = json!({
            "type": "login", "app": "bench", "session_id": session,
            "user_id": format!("user{user}"), "occurred_at": at,
            "ip": "192.0.2.1", "user_agent": "bench/1.0",
        });
        (event, revoked)
    }

    fn next_event(&mut self) -> serde_json::Value {
        let r = self.rng.unit();
        if self.pool.is_empty() || r < 0.10 {
            // 95% of logins go to a user without a live session.
            let conflict = self.rng.unit() < 0.05;
            let mut user = self.rng.skewed(self.users);
            for _ in 0..20 {
                let has = self.live.get(&user).is_some_and(|s| !s.is_empty());
                if has == conflict {
                    break;
                }
                user = if conflict {
                    self.pool[self.rng.next() as usize % self.pool.len().max(1)].0
                } else {
                    self.rng.next() as usize % self.users
                };
                if self.pool.is_empty() {
                    break;
                }
            }
            return self.login_for(user).0;
        }
        if r < 0.95 {
            let (user, session) = self.pool[self.rng.skewed(self.pool.len())].clone();
            let at = self.tick();
            return json!({
                "type": "request", "app": "bench", "session_id": session,
                "user_id": format!("user{user}"), "occurred_at": at, "ip": "192.0.2.1",
            });
        }
        let i = self.rng.next() as usize % self.pool.len();
        let (user, session) = self.pool.swap_remove(i);
        if let Some(s) = self.live.get_mut(&user) {
            s.retain(|x| x != &session);
        }
        let at = self.tick();
        json!({"type": "logout", "app": "bench", "session_id": session, "occurred_at": at})
    }
}

/// In the report file, everything from this line on is kept when the
/// figures above it are written again.
const KEEP_MARKER: &str = "<!-- kept by session-guard bench -->";

/// One line of the report.
struct Row {
    what: String,
    figure: String,
    note: String,
}

/// Runs the benchmark; see the module docs.
pub async fn run(base: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let mut settings = base.clone();
    settings.database.url = with_database(&base.database.url, &format!("sg_bench_{id}"));
    settings.amqp.events_exchange = format!("sg_bench.{id}.events");
    settings.amqp.events_queue = format!("sg_bench.{id}.events");
    settings.amqp.revocations_exchange = format!("sg_bench.{id}.revocations");
    settings.amqp.dead_letter_exchange = format!("sg_bench.{id}.dead");
    settings.amqp.dead_letter_queue = format!("sg_bench.{id}.dead");
    settings.limits.max_sessions = 1;

    let result = if args.client_only {
        client_only(&settings, args).await.map(|rows| (rows, false))
    } else {
        bench(&settings, args).await
    };
    cleanup(&settings).await;
    let (rows, tls) = result?;
    // TLS costs CPU on both ends of every statement (about 13% of the drain
    // rate when all of it runs on one machine): say which was measured.
    let transport = if tls {
        "database connection with TLS (the URL's sslmode)"
    } else {
        "database connection without TLS"
    };

    let mut table = String::new();
    writeln!(table, "| measure | figure | note |")?;
    writeln!(table, "|---|---|---|")?;
    for r in &rows {
        writeln!(table, "| {} | {} | {} |", r.what, r.figure, r.note)?;
    }
    println!("\n{table}");
    if !args.output.is_empty() && !args.client_only {
        let report = format!(
            "# Benchmarks\n\nMeasured by `session-guard bench --events {} --users {} --rate {} \
             --seconds {} --log-rows {} --runs {} --client-events {}` on {} (UTC).\n\nMachine: {}; {} cores. Versions: \
             session-guard {}, {}, {}; {transport}, broker connection without TLS. Broker, \
             database, worker and load generator share the machine. Figures vary by +-20% between runs on these shared machines: compare \
             ratios to the baseline of the same run.\n\n{table}\n",
            args.events,
            args.users,
            args.rate,
            args.seconds,
            args.log_rows,
            args.runs,
            args.client_events,
            Utc::now().format("%Y-%m-%d %H:%M"),
            machine(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            env!("CARGO_PKG_VERSION"),
            command_version("rabbitmqctl", &["version"]).unwrap_or_else(|| "RabbitMQ ?".into()),
            command_version("psql", &["--version"]).unwrap_or_else(|| "PostgreSQL ?".into()),
        );
        // Hand-written analysis below the marker survives a new run.
        let kept = std::fs::read_to_string(&args.output)
            .ok()
            .and_then(|old| old.find(KEEP_MARKER).map(|at| old[at..].to_owned()))
            .unwrap_or_default();
        std::fs::write(&args.output, format!("{report}\n{kept}"))
            .with_context(|| format!("cannot write {}", args.output))?;
        println!("written to {}", args.output);
    }
    Ok(())
}

/// The report's rows, and whether the database connection used TLS.
async fn bench(settings: &Settings, args: &BenchArgs) -> anyhow::Result<(Vec<Row>, bool)> {
    let pool = store::connect_and_migrate(&settings.database).await?;
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    println!(
        "database connection {} TLS",
        if tls { "with" } else { "without" }
    );
    let connection = broker::connect(&settings.amqp, "bench").await?;
    let setup = connection.create_channel().await?;
    broker::declare_topology(&setup, &settings.amqp).await?;
    let publisher = broker::confirm_channel(&connection).await?;
    // A queue bound like an app's, so revokes are routed (and not logged as
    // unroutable); gone with the bench's connection.
    revoke_listener(&setup, settings).await?;
    let mut rows = client_rows(&setup, &publisher, settings, args.client_events).await?;

    // The traffic, generated once and replayed for each drain run.
    let mut traffic = Traffic::new(args.users, 0x5eed);
    let events: Vec<Vec<u8>> = (0..args.events)
        .map(|_| traffic.next_event().to_string().into_bytes())
        .collect();
    let logins = events
        .iter()
        .filter(|e| std::str::from_utf8(e).is_ok_and(|s| s.contains("\"type\":\"login\"")))
        .count();
    println!(
        "traffic: {} events, {} logins, {} of them over the limit",
        events.len(),
        logins,
        traffic.conflicts
    );

    // 1 and 2. Baseline (a consumer that only acks), then the same events
    // through 1 worker and through 2, back to back, `runs` times.
    let runs = args.runs.max(1);
    let mut publish = Vec::new();
    let mut baseline = Vec::new();
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut peak_rss = 0;
    for run in 1..=runs {
        publish.push(fill(&publisher, settings, &events).await?);
        let base = drain_baseline(&connection, settings, events.len()).await?;
        baseline.push(base);
        println!("run {run}/{runs}: baseline {base:.0} events/s");
        for (i, workers) in [1usize, 2].into_iter().enumerate() {
            reset_log(&pool).await?;
            fill(&publisher, settings, &events).await?;
            let (rate, rss) = drain_workers(settings, workers, events.len()).await?;
            peak_rss = peak_rss.max(rss);
            println!(
                "run {run}/{runs}: {workers} worker(s) {rate:.0} events/s ({:.2} of the baseline)",
                rate / base
            );
            rates[i].push(rate);
            ratios[i].push(rate / base);
        }
    }
    rows.push(Row {
        what: "publish with confirms (pre-fill)".into(),
        figure: format!("{:.0} events/s", median(&publish)),
        note: format!("1,000 in flight; {}", spread(&publish)),
    });
    rows.push(Row {
        what: "baseline: consumer that only acks".into(),
        figure: format!("{:.0} events/s", median(&baseline)),
        note: format!(
            "prefetch {}, multiple-ack per 500; {}",
            settings.amqp.prefetch,
            spread(&baseline)
        ),
    });
    for (i, workers) in [1usize, 2].into_iter().enumerate() {
        rows.push(Row {
            what: format!(
                "{workers} worker{} draining the same events",
                if workers > 1 { "s" } else { "" }
            ),
            figure: format!("{:.0} events/s", median(&rates[i])),
            note: format!(
                "{:.2} of the baseline (median of the runs' ratios: {}); {}",
                median(&ratios[i]),
                ratios[i]
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                spread(&rates[i])
            ),
        });
    }

    // 3. Latency from a login over the limit to its revoke, at a steady rate.
    reset_log(&pool).await?;
    let (p50, p99, max, n) = latency(&connection, &publisher, settings, args).await?;
    rows.push(Row {
        what: format!(
            "login-to-revoke latency at {} events/s for {} s",
            args.rate, args.seconds
        ),
        figure: format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"),
        note: format!("{n} revokes measured, 1 worker"),
    });

    // 4. Memory, and the rate once the log is large.
    rows.push(Row {
        what: "worker peak RSS".into(),
        figure: format!("{:.1} MB", peak_rss as f64 / 1024.0),
        note: "VmHWM of the worker processes above".into(),
    });
    if args.log_rows > 0 {
        reset_log(&pool).await?;
        let filled = Instant::now();
        sqlx::query(
            "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at,
                                   ended_at, end_reason)
             SELECT 'bench-history', 'h' || g, 'old' || (g % 1000000),
                    now() - interval '30 days', true, now() - interval '29 days',
                    now() - interval '29 days', 'logout'
             FROM generate_series(1, $1) g",
        )
        .bind(args.log_rows as i64)
        .execute(&pool)
        .await?;
        // A log that grew over months has been vacuumed along the way; one
        // filled in a second has not, and autovacuum would then scan all of
        // it during the drain. Measure the steady state.
        sqlx::query("VACUUM ANALYZE sessions")
            .execute(&pool)
            .await?;
        println!(
            "log filled with {} rows and vacuumed in {:?}",
            args.log_rows,
            filled.elapsed()
        );
        let mut large = Vec::new();
        for run in 1..=runs {
            forget_bench_sessions(&pool).await?;
            fill(&publisher, settings, &events).await?;
            let (rate, _) = drain_workers(settings, 1, events.len()).await?;
            println!("run {run}/{runs}: 1 worker, large log, {rate:.0} events/s");
            large.push(rate);
        }
        let empty = median(&rates[0]);
        rows.push(Row {
            what: format!("1 worker with {} rows in the log", args.log_rows),
            figure: format!("{:.0} events/s", median(&large)),
            note: format!(
                "{:.2} of the rate with an empty log; {}",
                median(&large) / empty,
                spread(&large)
            ),
        });
    }
    pool.close().await;
    let _ = connection.close(200, "done".into()).await;
    Ok((rows, tls))
}

/// Only the app side: the broker, no database and no worker.
async fn client_only(settings: &Settings, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let connection = broker::connect(&settings.amqp, "bench").await?;
    let setup = connection.create_channel().await?;
    broker::declare_topology(&setup, &settings.amqp).await?;
    let publisher = broker::confirm_channel(&connection).await?;
    let rows = client_rows(&setup, &publisher, settings, args.client_events).await;
    let _ = connection.close(200, "done".into()).await;
    rows
}

/// Publishing as an app does, through the client crate's EventPublisher,
/// next to raw publisher confirms with the same events, back to back; the
/// events queue is emptied after each.
async fn client_rows(
    setup: &Channel,
    publisher: &Channel,
    settings: &Settings,
    n: usize,
) -> anyhow::Result<Vec<Row>> {
    use session_guard_client::protocol::event::{AppName, EventBody, EventKind};
    use session_guard_client::{EventPublisher, PublisherConfig};

    let n = n.max(1);
    let mut traffic = Traffic::new(n.clamp(1, 50_000), 0xc11e);
    let values: Vec<serde_json::Value> = (0..n).map(|_| traffic.next_event()).collect();
    let raw: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
    let bodies = values
        .into_iter()
        .map(serde_json::from_value::<EventBody>)
        .collect::<Result<Vec<_>, _>>()?;
    let purge = || async {
        setup
            .queue_purge(
                settings.amqp.events_queue.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
            .context("cannot purge the events queue")
    };

    let raw_rate = fill(publisher, settings, &raw).await?;
    purge().await?;
    println!("raw publisher confirms: {raw_rate:.0} events/s");

    let mut config = PublisherConfig::new(
        settings.amqp.url.clone(),
        AppName::parse("bench").expect("a valid app name"),
    );
    config.exchange = settings.amqp.events_exchange.clone();
    // Room for every event: the rate measured is the publisher's, not the
    // drop policy's.
    config.capacity = n;
    config.max_in_flight = 1_000;
    let client = EventPublisher::connect(config).await?;
    // An app's request thread: sends one event after another, timed one by
    // one, building included.
    let sender = client.clone();
    let (started, mut times) = tokio::task::spawn_blocking(move || {
        let mut times = Vec::with_capacity(bodies.len());
        let started = Instant::now();
        for body in bodies {
            let before = Instant::now();
            let session = body.session_id.as_str();
            let user = body.user_id.as_deref().unwrap_or_default();
            let mut event = match body.kind {
                EventKind::Login => sender.login(session, user),
                EventKind::Request => sender.request(session, user),
                EventKind::Logout => sender.logout(session),
                EventKind::LogoutOthers => sender.logout_others(session, user),
                EventKind::LogoutAll => sender.logout_all(session, user),
            }
            .occurred_at(body.occurred_at);
            if let Some(ip) = body.ip {
                event = event.ip(ip);
            }
            if let Some(agent) = &body.user_agent {
                event = event.user_agent(agent);
            }
            let sent = event.send();
            times.push(before.elapsed().as_secs_f64() * 1e6);
            sent?;
        }
        Ok::<_, session_guard_client::SendError>((started, times))
    })
    .await??;
    client.flush().await?;
    let client_rate = n as f64 / started.elapsed().as_secs_f64();
    let stats = client.stats();
    client.close().await?;
    purge().await?;
    anyhow::ensure!(
        stats.published == n as u64,
        "EventPublisher confirmed {} of {n} events",
        stats.published
    );
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (p50, p99, max) = (pick(0.5), pick(0.99), times[times.len() - 1]);
    println!("EventPublisher: {client_rate:.0} events/s; send() p50 {p50:.2} µs, p99 {p99:.2} µs");
    Ok(vec![
        Row {
            what: format!("publish with confirms, raw lapin ({n} events)"),
            figure: format!("{raw_rate:.0} events/s"),
            note: "1,000 in flight; the baseline of the next two rows, same run".into(),
        },
        Row {
            what: "publish through EventPublisher (session-guard-client)".into(),
            figure: format!("{client_rate:.0} events/s"),
            note: format!(
                "{:.2} of raw confirms; first send to last confirm, 1,000 in flight",
                client_rate / raw_rate
            ),
        },
        Row {
            what: "caller's time per EventPublisher send()".into(),
            figure: format!("p50 {p50:.2} µs, p99 {p99:.2} µs, max {max:.0} µs"),
            note: format!(
                "{n} sends from one thread, building and validating the event included; \
                 target under 5 µs"
            ),
        },
    ])
}

/// Empties the session log between runs, so each starts from the same state.
async fn reset_log(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE sessions, session_tombstones, outbox, user_overrides, session_users")
        .execute(pool)
        .await?;
    Ok(())
}

/// Removes what a drain run wrote, keeping the large history around it.
async fn forget_bench_sessions(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE app <> 'bench-history'")
        .execute(pool)
        .await?;
    sqlx::query("TRUNCATE session_tombstones, outbox, session_users")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE sessions").execute(pool).await?;
    Ok(())
}

/// The median of some figures (0 if none).
fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "runs: a-b" for a report's note.
fn spread(figures: &[f64]) -> String {
    let min = figures.iter().copied().fold(f64::INFINITY, f64::min);
    let max = figures.iter().copied().fold(0.0, f64::max);
    format!("{} runs: {min:.0}-{max:.0}", figures.len())
}

/// Publishes every event with confirms, 1,000 in flight; returns events/s.
async fn fill(channel: &Channel, settings: &Settings, events: &[Vec<u8>]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for chunk in events.chunks(1000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for body in chunk {
            pending.push(
                channel
                    .basic_publish(
                        settings.amqp.events_exchange.as_str().into(),
                        "bench.bench".into(),
                        BasicPublishOptions::default(),
                        body,
                        properties.clone(),
                    )
                    .await?,
            );
        }
        for confirm in pending {
            anyhow::ensure!(confirm.await?.is_ack(), "the broker refused an event");
        }
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

async fn drain_baseline(
    connection: &lapin::Connection,
    settings: &Settings,
    n: usize,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    // The workers' own consumer setup: same queue, same prefetch.
    let mut consumer = broker::consume_events(&channel, &settings.amqp).await?;
    let started = Instant::now();
    let mut count = 0usize;
    while count < n {
        let delivery = consumer.next().await.context("consumer ended")??;
        count += 1;
        if count.is_multiple_of(500) || count == n {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    Ok(rate)
}

/// Starts `workers` worker processes on the pre-filled queue and waits until
/// they have processed `n` events; returns events/s and the peak RSS (KiB).
async fn drain_workers(
    settings: &Settings,
    workers: usize,
    n: usize,
) -> anyhow::Result<(f64, u64)> {
    let mut children: Vec<(Child, String)> = Vec::new();
    let started = Instant::now();
    for _ in 0..workers {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let child = worker_command(settings, &listen)?.spawn()?;
        children.push((child, listen));
    }
    let result = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut done = 0u64;
            for (_, listen) in &children {
                done += processed(listen).await.unwrap_or(0);
            }
            if done >= n as u64 {
                return Ok::<f64, anyhow::Error>(n as f64 / started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3600),
                "workers did not finish within an hour ({done} of {n})"
            );
        }
    }
    .await;
    let mut rss = 0;
    for (child, _) in &mut children {
        rss = rss.max(peak_rss(child.id()).unwrap_or(0));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    Ok((result?, rss))
}

fn worker_command(settings: &Settings, listen: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .env("SESSION_GUARD__DATABASE__URL", &settings.database.url)
        .env("SESSION_GUARD__AMQP__URL", &settings.amqp.url)
        .env(
            "SESSION_GUARD__AMQP__EVENTS_EXCHANGE",
            &settings.amqp.events_exchange,
        )
        .env(
            "SESSION_GUARD__AMQP__EVENTS_QUEUE",
            &settings.amqp.events_queue,
        )
        .env(
            "SESSION_GUARD__AMQP__REVOCATIONS_EXCHANGE",
            &settings.amqp.revocations_exchange,
        )
        .env(
            "SESSION_GUARD__AMQP__DEAD_LETTER_EXCHANGE",
            &settings.amqp.dead_letter_exchange,
        )
        .env(
            "SESSION_GUARD__AMQP__DEAD_LETTER_QUEUE",
            &settings.amqp.dead_letter_queue,
        )
        .env("SESSION_GUARD__LIMITS__MAX_SESSIONS", "1")
        .env("SESSION_GUARD__HTTP__LISTEN", listen)
        .env("SESSION_GUARD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // To look inside a worker during a run: SESSION_GUARD_BENCH_WORKER_LOG=debug
    if let Ok(filter) = std::env::var("SESSION_GUARD_BENCH_WORKER_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    Ok(cmd)
}

/// [`crate::metric::EVENTS_PROCESSED`] of a worker, from its endpoint.
async fn processed(listen: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(listen).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let series = format!("{} ", crate::metric::EVENTS_PROCESSED.name);
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Publishes at a steady rate with one worker running; every login over the
/// limit is timed from its publish to the arrival of the revoke it causes.
async fn latency(
    connection: &lapin::Connection,
    publisher: &Channel,
    settings: &Settings,
    args: &BenchArgs,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let listen_channel = connection.create_channel().await?;
    let queue = revoke_listener(&listen_channel, settings).await?;
    let mut revokes = listen_channel
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut worker = worker_command(settings, &listen)?.spawn()?;
    // Ready once its endpoint answers.
    for _ in 0..100 {
        if processed(&listen).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let published: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let receiver = {
        let published = published.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_secs(3), revokes.next()).await
            {
                let now = Instant::now();
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&delivery.data) else {
                    continue;
                };
                let Some(session) = body["session_id"].as_str() else {
                    continue;
                };
                if let Some(sent) = published.lock().unwrap().remove(session) {
                    latencies.push(now.duration_since(sent).as_secs_f64() * 1000.0);
                }
            }
            latencies
        })
    };

    let mut traffic = Traffic::new(args.users, 0xfeed);
    let per_tick = (args.rate / 100).max(1);
    let ticks = args.seconds * 100;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for tick in 0..ticks {
        interval.tick().await;
        let mut pending = Vec::with_capacity(per_tick);
        for i in 0..per_tick {
            // Every 50th event a login over the limit, timed.
            let (event, victim) =
                if (tick as usize * per_tick + i) % 50 == 49 && !traffic.pool.is_empty() {
                    let user = traffic.pool[traffic.rng.next() as usize % traffic.pool.len()].0;
                    traffic.login_for(user)
                } else {
                    (traffic.next_event(), None)
                };
            if let Some(victim) = victim {
                published.lock().unwrap().insert(victim, Instant::now());
            }
            pending.push(
                publisher
                    .basic_publish(
                        settings.amqp.events_exchange.as_str().into(),
                        "bench.bench".into(),
                        BasicPublishOptions::default(),
                        event.to_string().as_bytes(),
                        properties.clone(),
                    )
                    .await?,
            );
        }
        for confirm in pending {
            confirm.await?;
        }
    }
    let mut latencies = receiver.await?;
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    let _ = listen_channel.close(200, "done".into()).await;
    anyhow::ensure!(
        !latencies.is_empty(),
        "no revoke arrived during the latency run"
    );
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((
        pick(0.5),
        pick(0.99),
        *latencies.last().unwrap(),
        latencies.len(),
    ))
}

/// An exclusive queue, gone with the connection, bound to every app's
/// revokes; returns its name.
async fn revoke_listener(
    channel: &Channel,
    settings: &Settings,
) -> anyhow::Result<lapin::types::ShortString> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            settings.amqp.revocations_exchange.as_str().into(),
            "revoke.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(queue.name().clone())
}

/// Peak resident set (VmHWM) of a process, in KiB.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn command_version(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then(|| {
        if cmd == "rabbitmqctl" {
            format!("RabbitMQ {text}")
        } else {
            text
        }
    })
}

/// Deletes the bench's database, exchanges and queues.
async fn cleanup(settings: &Settings) {
    broker::delete_topology(&settings.amqp, "bench cleanup").await;
    use sqlx::migrate::MigrateDatabase as _;
    let _ = sqlx::Postgres::force_drop_database(&settings.database.url).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_has_the_documented_mix() {
        let mut t = Traffic::new(5_000, 1);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let n = 50_000;
        let mut logins = 0;
        for _ in 0..n {
            let e = t.next_event();
            let kind = e["type"].as_str().unwrap().to_owned();
            logins += usize::from(kind == "login");
            *counts.entry(kind).or_default() += 1;
        }
        let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share("request") - 0.85).abs() < 0.02, "{counts:?}");
        assert!((share("login") - 0.10).abs() < 0.02, "{counts:?}");
        assert!((share("logout") - 0.05).abs() < 0.02, "{counts:?}");
        let over = t.conflicts as f64 / logins as f64;
        assert!(
            (0.02..0.10).contains(&over),
            "{over} of logins over the limit"
        );
    }
}
