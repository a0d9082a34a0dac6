//! Draining a pre-filled queue: a baseline consumer that only acks, then
//! the same events through 1 worker and through 2, back to back, and once
//! more through 1 worker with a large log.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection};
use session_guard::Settings;
use session_guard::broker;
use sqlx::PgPool;

use crate::report::{Row, median, spread};
use crate::services::{fill_history, forget_bench_sessions, reset_log};
use crate::traffic::Mix;
use crate::workers::{BatchMetrics, Progress, WorkerProcess};

/// Events published before waiting for their confirms.
const IN_FLIGHT: usize = 1000;
/// The baseline acks every this many deliveries at once (`multiple`).
const BASELINE_ACK_EVERY: usize = 500;
/// A drain that takes longer has stalled.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// What the drain runs share: the database, the broker connection, the
/// publishing channel and the events to replay.
pub struct Drains<'a> {
    /// The bench's settings.
    pub settings: &'a Settings,
    /// The bench's database.
    pub pool: &'a PgPool,
    /// The bench's broker connection.
    pub connection: &'a Connection,
    /// A channel in confirm mode.
    pub publisher: &'a Channel,
    /// The worker binary.
    pub worker: &'a Path,
    /// The generated events, replayed by every run.
    pub events: &'a [Vec<u8>],
    /// How many of them are requests: what the writes the last-seen
    /// resolution skips are a share of.
    pub requests: usize,
}

/// The figures of the empty-log drain runs, one entry per run.
#[derive(Default)]
pub struct DrainFigures {
    /// Pre-fill publish rates.
    publish: Vec<f64>,
    /// Baseline rates.
    baseline: Vec<f64>,
    /// Rates with 1 and with 2 workers.
    rates: [Vec<f64>; 2],
    /// Each of those rates over the baseline of its run.
    ratios: [Vec<f64>; 2],
    /// The highest VmHWM of any worker, KiB.
    pub peak_rss: u64,
    /// The baseline's CPU (the bench process), ms per 1,000 events.
    baseline_cpu: Vec<f64>,
    /// With 1 and with 2 workers: the workers' CPU, ms per 1,000 events.
    worker_cpu: [Vec<f64>; 2],
    /// With 1 and with 2 workers: the CPU of the PostgreSQL backends
    /// serving the workers' connections, ms per 1,000 events.
    postgres_cpu: [Vec<f64>; 2],
    /// With 1 and with 2 workers: the workers' CPU per event over the
    /// baseline's in the same run.
    worker_cpu_ratio: [Vec<f64>; 2],
    /// With 1 and with 2 workers: their PostgreSQL backends' CPU per event
    /// over the baseline's in the same run.
    postgres_cpu_ratio: [Vec<f64>; 2],
    /// With 1 and with 2 workers: what the batches did, from the workers'
    /// own metrics, to see where the time goes.
    batches: [Vec<BatchFigures>; 2],
}

/// CPU per event over the baseline consumer's CPU per event, both ms per
/// 1,000 events of the same run (0 when the baseline measured none).
fn cpu_ratio(per_1000: f64, baseline_per_1000: f64) -> f64 {
    if baseline_per_1000 > 0.0 {
        per_1000 / baseline_per_1000
    } else {
        0.0
    }
}

/// One drain's batches, as ratios that compare across runs and mixes.
#[derive(Debug, Clone, Copy)]
struct BatchFigures {
    /// Committed batches.
    batches: f64,
    /// Users locked per batch.
    locked_per_batch: f64,
    /// Passes run again with more users locked, per batch.
    relocks_per_batch: f64,
    /// Rows written by the lock-free touch, per 1,000 requests.
    touched_per_1000_requests: f64,
    /// Requests whose write the last-seen resolution left out, % of the
    /// requests in the traffic.
    skipped_percent: f64,
    /// Sessions revoked per 1,000 events.
    revokes_per_1000: f64,
    /// Revoke messages repeated per 1,000 events.
    repeats_per_1000: f64,
}

impl BatchFigures {
    /// The figures of `m`, for a drain of `events` events, `requests` of
    /// them requests.
    fn of(m: &BatchMetrics, events: usize, requests: usize) -> BatchFigures {
        let per = |x: f64, n: f64| if n > 0.0 { x / n } else { 0.0 };
        BatchFigures {
            batches: m.batches,
            locked_per_batch: per(m.locked_users, m.batches),
            relocks_per_batch: per(m.relocks, m.batches),
            touched_per_1000_requests: per(m.touched * 1000.0, requests as f64),
            skipped_percent: per(m.skipped * 100.0, requests as f64),
            revokes_per_1000: per(m.revoked * 1000.0, events as f64),
            repeats_per_1000: per(m.repeated * 1000.0, events as f64),
        }
    }
}

/// What one drain through workers measured.
pub struct WorkerDrain {
    /// Events per second.
    pub rate: f64,
    /// The highest VmHWM of the workers, KiB.
    pub rss: u64,
    /// The workers' CPU time (utime + stime), ms, start-up included.
    pub worker_cpu_ms: f64,
    /// The CPU time of their PostgreSQL backends during the drain, ms.
    pub postgres_cpu_ms: f64,
    /// What their batches did, summed over the workers.
    batches: BatchMetrics,
}

/// A process's CPU time (utime + stime, all threads) from /proc, ms.
fn cpu_ms(process: &procfs::process::Process) -> Option<f64> {
    let stat = process.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 * 1000.0 / procfs::ticks_per_second() as f64)
}

/// The CPU time of the process `pid`, ms (0 once it is gone).
fn pid_cpu_ms(pid: i32) -> f64 {
    procfs::process::Process::new(pid)
        .ok()
        .and_then(|p| cpu_ms(&p))
        .unwrap_or(0.0)
}

/// This (the bench's) process's CPU time, ms.
fn own_cpu_ms() -> f64 {
    procfs::process::Process::myself()
        .ok()
        .and_then(|p| cpu_ms(&p))
        .unwrap_or(0.0)
}

/// The pids of the client backends on the bench's database, except the
/// one answering; with each one's CPU time, ms. PostgreSQL runs on this
/// host, so /proc has them.
async fn backends(pool: &PgPool) -> anyhow::Result<Vec<(i32, f64)>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend'",
    )
    .fetch_all(pool)
    .await?;
    Ok(pids.into_iter().map(|p| (p, pid_cpu_ms(p))).collect())
}

/// Every client backend on the bench's database, the answering one too:
/// the bench's own connections, before a worker starts.
async fn all_backends(pool: &PgPool) -> anyhow::Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'client backend'",
    )
    .fetch_all(pool)
    .await?)
}

/// Worker counts of the drain runs.
const WORKERS: [usize; 2] = [1, 2];

/// A connection to the broker(s) of `settings`, the bench's topology
/// declared, a queue bound like an app's (so revokes are routed, not
/// logged as unroutable; gone with the connection: keep it open while a
/// worker drains), and a confirm channel on it.
pub async fn side(settings: &Settings) -> anyhow::Result<(Connection, Channel)> {
    let connection = broker::connect(&settings.amqp, "bench").await?;
    broker::declare_topology(&connection, &settings.amqp).await?;
    let setup = connection.create_channel().await?;
    broker::declare_revoke_tap(&setup, &settings.amqp.revocations_exchange).await?;
    let publisher = broker::confirm_channel(&connection).await?;
    Ok((connection, publisher))
}

/// One worker draining `events` on each of two setups (a label, the
/// settings, and a pool on the settings' database), back to back: each
/// from a connection of its own ([`side`]) and an empty log. The two
/// rates, each printed after `prefix` as it is measured.
pub async fn side_by_side(
    setups: [(&str, &Settings, &PgPool); 2],
    worker: &Path,
    events: &[Vec<u8>],
    prefix: &str,
) -> anyhow::Result<[f64; 2]> {
    let mut rates = [0.0; 2];
    for (i, (label, settings, pool)) in setups.into_iter().enumerate() {
        let (connection, publisher) = side(settings).await?;
        let drains = Drains::on(settings, pool, worker, events, &connection, &publisher);
        reset_log(pool).await?;
        drains.fill().await?;
        rates[i] = drains.through_workers(1).await?.rate;
        println!("{prefix}: 1 worker on {label}: {:.0} events/s", rates[i]);
        let _ = connection.close(200, "done".into()).await;
    }
    Ok(rates)
}

impl<'a> Drains<'a> {
    /// Drains of `events` on the servers of `settings` (`pool` on its
    /// database), through `connection` and its confirm channel `publisher`;
    /// without the batch figures, which need the number of requests.
    pub fn on(
        settings: &'a Settings,
        pool: &'a PgPool,
        worker: &'a Path,
        events: &'a [Vec<u8>],
        connection: &'a Connection,
        publisher: &'a Channel,
    ) -> Drains<'a> {
        Drains {
            settings,
            pool,
            connection,
            publisher,
            worker,
            events,
            requests: 0,
        }
    }
}

impl Drains<'_> {
    /// The baseline, then 1 and 2 workers, `runs` times.
    pub async fn empty_log(&self, runs: usize) -> anyhow::Result<DrainFigures> {
        let mut figures = DrainFigures::default();
        for run in 1..=runs {
            figures.publish.push(self.fill().await?);
            let (base, base_cpu) = self.baseline().await?;
            figures.baseline.push(base);
            let base_per_1000 = base_cpu * 1000.0 / self.events.len() as f64;
            figures.baseline_cpu.push(base_per_1000);
            println!("run {run}/{runs}: baseline {base:.0} events/s, {base_cpu:.0} ms CPU");
            for (i, workers) in WORKERS.into_iter().enumerate() {
                reset_log(self.pool).await?;
                self.fill().await?;
                let drain = self.through_workers(workers).await?;
                let rate = drain.rate;
                figures.peak_rss = figures.peak_rss.max(drain.rss);
                let per_1000 = 1000.0 / self.events.len() as f64;
                let (worker_cpu, postgres_cpu) = (
                    drain.worker_cpu_ms * per_1000,
                    drain.postgres_cpu_ms * per_1000,
                );
                let worker_ratio = cpu_ratio(worker_cpu, base_per_1000);
                let postgres_ratio = cpu_ratio(postgres_cpu, base_per_1000);
                figures.worker_cpu[i].push(worker_cpu);
                figures.postgres_cpu[i].push(postgres_cpu);
                figures.worker_cpu_ratio[i].push(worker_ratio);
                figures.postgres_cpu_ratio[i].push(postgres_ratio);
                let b = BatchFigures::of(&drain.batches, self.events.len(), self.requests);
                figures.batches[i].push(b);
                println!(
                    "run {run}/{runs}: {workers} worker(s) {rate:.0} events/s ({:.2} of the baseline), \
                     CPU {:.0} ms worker, {:.0} ms PostgreSQL; CPU per event over the baseline's: \
                     worker {worker_ratio:.2}, PostgreSQL {postgres_ratio:.2}",
                    rate / base,
                    drain.worker_cpu_ms,
                    drain.postgres_cpu_ms
                );
                println!(
                    "run {run}/{runs}: {workers} worker(s) {:.0} batches, {:.1} users locked and {:.3} relocks \
                     per batch; {:.1}% of requests left unwritten by the last-seen resolution, {:.0} rows \
                     touched per 1,000 requests; {:.0} sessions revoked ({:.1} per 1,000 events), {:.0} \
                     revokes repeated",
                    b.batches,
                    b.locked_per_batch,
                    b.relocks_per_batch,
                    b.skipped_percent,
                    b.touched_per_1000_requests,
                    drain.batches.revoked,
                    b.revokes_per_1000,
                    drain.batches.repeated
                );
                figures.rates[i].push(rate);
                figures.ratios[i].push(rate / base);
            }
        }
        Ok(figures)
    }

    /// 1 worker on a log with `rows` old sessions, `runs` times; the row
    /// compares it with `empty_rate`.
    pub async fn large_log(&self, rows: u64, runs: usize, empty_rate: f64) -> anyhow::Result<Row> {
        reset_log(self.pool).await?;
        fill_history(self.pool, rows).await?;
        let mut large = Vec::new();
        for run in 1..=runs {
            forget_bench_sessions(self.pool).await?;
            self.fill().await?;
            let rate = self.through_workers(1).await?.rate;
            println!("run {run}/{runs}: 1 worker, large log, {rate:.0} events/s");
            large.push(rate);
        }
        Ok(Row {
            what: format!("1 worker with {rows} rows in the log"),
            figure: format!("{:.0} events/s", median(&large)),
            note: format!(
                "{:.2} of the rate with an empty log; {}",
                median(&large) / empty_rate,
                spread(&large)
            ),
        })
    }

    /// Publishes every event with confirms; returns events/s.
    pub async fn fill(&self) -> anyhow::Result<f64> {
        publish_all(self.publisher, self.settings, self.events).await
    }

    /// A consumer that only acks, set up as the workers' consumer is;
    /// returns events/s and the CPU time of the bench process (where it
    /// runs, nothing else busy) during the drain, ms.
    async fn baseline(&self) -> anyhow::Result<(f64, f64)> {
        let n = self.events.len();
        let channel = self.connection.create_channel().await?;
        let mut consumer = broker::consume_events(&channel, &self.settings.amqp).await?;
        let cpu_before = own_cpu_ms();
        let started = Instant::now();
        let mut count = 0usize;
        while count < n {
            let delivery = consumer.next().await.context("consumer ended")??;
            count += 1;
            if count.is_multiple_of(BASELINE_ACK_EVERY) || count == n {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let cpu = own_cpu_ms() - cpu_before;
        let _ = channel.close(200, "done".into()).await;
        Ok((rate, cpu))
    }

    /// Starts `workers` worker processes on the pre-filled queue and waits
    /// until they have processed every event; returns the rate, the peak
    /// RSS and the CPU of the workers and of their PostgreSQL backends.
    pub async fn through_workers(&self, workers: usize) -> anyhow::Result<WorkerDrain> {
        let n = self.events.len() as u64;
        let progress = Progress::new()?;
        // The bench's own connections, and any backend's CPU before.
        let ours = all_backends(self.pool).await?;
        let before: std::collections::HashMap<i32, f64> =
            backends(self.pool).await?.into_iter().collect();
        let started = Instant::now();
        let processes = (0..workers)
            .map(|_| WorkerProcess::start(self.worker, self.settings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let result = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = progress.total(&processes).await;
                if done >= n {
                    return Ok(n as f64 / started.elapsed().as_secs_f64());
                }
                anyhow::ensure!(
                    started.elapsed() < DRAIN_LIMIT,
                    "workers did not finish within an hour ({done} of {n})"
                );
            }
        }
        .await;
        // Read before the workers stop and their backends exit.
        let mut postgres_cpu_ms = 0.0;
        let mut batches = BatchMetrics::default();
        if result.is_ok() {
            batches = progress.batches(&processes).await?;
            for (pid, cpu) in backends(self.pool).await? {
                if !ours.contains(&pid) {
                    postgres_cpu_ms += cpu - before.get(&pid).copied().unwrap_or(0.0);
                }
            }
        }
        let worker_cpu_ms = processes.iter().filter_map(WorkerProcess::cpu_ms).sum();
        let mut rss = 0;
        for process in processes {
            rss = rss.max(process.peak_rss().unwrap_or(0));
            process.stop().await;
        }
        Ok(WorkerDrain {
            rate: result?,
            rss,
            worker_cpu_ms,
            postgres_cpu_ms,
            batches,
        })
    }
}

impl DrainFigures {
    /// The median rate of 1 worker on an empty log.
    pub fn one_worker_rate(&self) -> f64 {
        median(&self.rates[0])
    }

    /// The report's rows: pre-fill, baseline, 1 and 2 workers.
    pub fn rows(&self, prefetch: u16, mix: Mix) -> Vec<Row> {
        let mix = mix.name();
        let mut rows = vec![
            Row {
                what: "publish with confirms (pre-fill)".into(),
                figure: format!("{:.0} events/s", median(&self.publish)),
                note: format!("1,000 in flight; {}", spread(&self.publish)),
            },
            Row {
                what: "baseline: consumer that only acks".into(),
                figure: format!("{:.0} events/s", median(&self.baseline)),
                note: format!(
                    "prefetch {prefetch}, multiple-ack per 500; {}",
                    spread(&self.baseline)
                ),
            },
        ];
        for (i, workers) in WORKERS.into_iter().enumerate() {
            let ratios: Vec<String> = self.ratios[i].iter().map(|r| format!("{r:.2}")).collect();
            rows.push(Row {
                what: format!(
                    "{workers} worker{} draining the same events ({mix} mix)",
                    if workers > 1 { "s" } else { "" }
                ),
                figure: format!("{:.0} events/s", median(&self.rates[i])),
                note: format!(
                    "{:.2} of the baseline (median of the runs' ratios: {}); {}",
                    median(&self.ratios[i]),
                    ratios.join(", "),
                    spread(&self.rates[i])
                ),
            });
        }
        for (i, workers) in WORKERS.into_iter().enumerate() {
            rows.push(Row {
                what: format!(
                    "CPU per 1,000 events, {workers} worker{} ({mix} mix)",
                    if workers > 1 { "s" } else { "" }
                ),
                figure: format!(
                    "{:.1} ms worker, {:.1} ms PostgreSQL",
                    median(&self.worker_cpu[i]),
                    median(&self.postgres_cpu[i])
                ),
                note: format!(
                    "baseline consumer {:.1} ms (bench process); utime+stime from /proc, \
                     worker processes (start-up included) and the backends of their \
                     connections, before and after the drain; median of {} runs",
                    median(&self.baseline_cpu),
                    self.baseline_cpu.len()
                ),
            });
            let ratios = |r: &[f64]| -> String {
                let runs: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
                format!("{:.2} (runs {})", median(r), runs.join(", "))
            };
            rows.push(Row {
                what: format!(
                    "CPU per event over the baseline's, {workers} worker{} ({mix} mix)",
                    if workers > 1 { "s" } else { "" }
                ),
                figure: format!(
                    "worker {}, PostgreSQL {}",
                    ratios(&self.worker_cpu_ratio[i]),
                    ratios(&self.postgres_cpu_ratio[i])
                ),
                note: "each run's CPU per event (the row above) over the baseline consumer's CPU \
                       per event in the same run; medians of the runs' ratios"
                    .into(),
            });
        }
        for (i, workers) in WORKERS.into_iter().enumerate() {
            let runs = &self.batches[i];
            let of = |f: fn(&BatchFigures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            rows.push(Row {
                what: format!(
                    "batches, {workers} worker{} ({mix} mix)",
                    if workers > 1 { "s" } else { "" }
                ),
                figure: format!(
                    "{:.1} users locked per batch, {:.3} relocks per batch, {:.0} batches",
                    of(|b| b.locked_per_batch),
                    of(|b| b.relocks_per_batch),
                    of(|b| b.batches)
                ),
                note: format!(
                    "{:.1}% of requests left unwritten by the last-seen resolution; {:.1} revokes \
                     per 1,000 events ({:.1} repeated); {:.0} rows touched lock-free per 1,000 \
                     requests; the workers' own metrics, summed over the workers; median of {} runs",
                    of(|b| b.skipped_percent),
                    of(|b| b.revokes_per_1000),
                    of(|b| b.repeats_per_1000),
                    of(|b| b.touched_per_1000_requests),
                    runs.len()
                ),
            });
        }
        rows
    }
}

/// Publishes every event with confirms, [`IN_FLIGHT`] at a time; returns
/// events/s.
pub async fn publish_all(
    channel: &Channel,
    settings: &Settings,
    events: &[Vec<u8>],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let properties = event_properties();
    for chunk in events.chunks(IN_FLIGHT) {
        publish_confirmed(channel, settings, chunk, &properties).await?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// JSON, persistent: as apps publish events.
/// Publishes `chunk` at once and waits for every confirm: the events
/// exchange, the bench's routing key, `properties`.
pub async fn publish_confirmed(
    channel: &Channel,
    settings: &Settings,
    chunk: &[Vec<u8>],
    properties: &BasicProperties,
) -> anyhow::Result<()> {
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
    Ok(())
}

pub fn event_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}
