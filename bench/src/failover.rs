//! `--failover-only`: the worker whose database is a pg_auto_failover
//! formation (`scripts/pg-failover`: a monitor and two nodes on this
//! machine, the standby synchronous; started in a fresh `mktemp -d`
//! directory and stopped at the end, also after an error) next to the same
//! worker on the configured server, in the same run: the drain rate of one
//! worker on each; the time from the loss of the primary (killed, or a
//! planned failover) to the first batch committed on the new one while the
//! worker drains a steady stream; and whether every event of those streams
//! was logged and each revoke published once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::{Channel, Connection};
use procfs::Current as _;
use session_guard::broker;
use session_guard::configuration::with_database;
use session_guard::{Settings, db};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::drain::{self, Drains, event_properties, side, side_by_side};
use crate::options::BenchArgs;
use crate::report::{Row, median, spread};
use crate::services::{reset_log, uses_tls};
use crate::workers::{Progress, WorkerProcess, longest_pause};

/// The script that runs the formation, in the repository.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-failover");
/// Steady stream before the failover starts, so the worker is in its
/// stride.
const LEAD: Duration = Duration::from_secs(3);
/// Length of each steady stream, seconds at `--rate` (longer than an
/// unplanned failover with PG_FAILOVER_QUICK=1 takes, about 12 s).
const STREAM_SECONDS: usize = 20;
/// How often the new primary is asked whether a batch of its own landed.
const POLL: Duration = Duration::from_millis(10);
/// A failover, a drain or the relay taking longer has stalled.
const LIMIT: Duration = Duration::from_secs(240);

/// A formation of the bench's own, in a fresh `mktemp -d` directory;
/// stopped (its directory removed) when dropped.
struct Formation {
    dir: PathBuf,
    /// Its multi-host URL (read-write), database `postgres`.
    url: String,
    /// The ports of nodes 1 and 2.
    ports: [u16; 2],
}

impl Formation {
    async fn start() -> anyhow::Result<Formation> {
        let made = std::process::Command::new("mktemp")
            .args(["-d", "-t", "sg-bench-formation.XXXXXX"])
            .output()
            .context("cannot run mktemp")?;
        anyhow::ensure!(
            made.status.success(),
            "mktemp -d: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut formation = Formation {
            dir: PathBuf::from(String::from_utf8(made.stdout)?.trim()),
            url: String::new(),
            ports: [0; 2],
        };
        // From here on, dropping it stops whatever `start` got to.
        let printed = formation.script("start", &[]).await?;
        for word in printed.split_whitespace() {
            if let Some(url) = word.strip_prefix("URL=") {
                formation.url = url.to_owned();
            }
            for (i, port) in formation.ports.iter_mut().enumerate() {
                if let Some(p) = word.strip_prefix(&format!("NODE_{}_PORT=", i + 1)) {
                    *port = p.parse()?;
                }
            }
        }
        anyhow::ensure!(
            !formation.url.is_empty() && !formation.ports.contains(&0),
            "pg-failover start printed {printed:?}"
        );
        Ok(formation)
    }

    /// `scripts/pg-failover COMMAND DIR ARGS`, with PG_FAILOVER_QUICK=1
    /// (read by `start`: the monitor's short timeouts); its standard output.
    async fn script(&self, command: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(SCRIPT)
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .env("PG_FAILOVER_QUICK", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {SCRIPT}"))?;
        anyhow::ensure!(
            out.status.success(),
            "pg-failover {command}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The port of the primary, and how long the script took to say: what
    /// `failover` does before it runs `pg_autoctl perform failover`.
    async fn primary(&self) -> anyhow::Result<(u16, Duration)> {
        let asked = Instant::now();
        let port = self.script("primary", &[]).await?.trim().parse()?;
        Ok((port, asked.elapsed()))
    }

    /// Node 1 or 2, by its port.
    fn node(&self, port: u16) -> anyhow::Result<usize> {
        self.ports
            .iter()
            .position(|p| *p == port)
            .map(|i| i + 1)
            .ok_or_else(|| anyhow::anyhow!("no node on port {port}"))
    }

    /// The other node's port.
    fn other(&self, port: u16) -> u16 {
        if self.ports[0] == port {
            self.ports[1]
        } else {
            self.ports[0]
        }
    }

    /// The postmaster of node `n`, from its data directory.
    fn postmaster(&self, n: usize) -> anyhow::Result<i32> {
        let file = self.dir.join(format!("node{n}/postmaster.pid"));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        Ok(text.lines().next().unwrap_or_default().trim().parse()?)
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        println!("stopping the formation in {}", self.dir.display());
        let _ = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// Which failover a run measures.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// `pg-failover kill-primary`: the primary's node stopped and killed.
    Unplanned,
    /// `pg-failover failover`: `pg_autoctl perform failover`.
    Planned,
}

impl Kind {
    fn command(self) -> &'static str {
        match self {
            Kind::Unplanned => "kill-primary",
            Kind::Planned => "failover",
        }
    }
}

/// One failover run's times, from the kill (unplanned) or from
/// `pg_autoctl perform failover` started (planned).
#[derive(Debug, Clone, Copy)]
struct Times {
    /// Until the new primary was out of recovery (the bench's own poll).
    promoted: f64,
    /// Until it was also no longer read-only (`default_transaction_read_only`
    /// off, which pg_auto_failover keeps on while it stops the
    /// replication): it takes writes (the bench's own poll).
    writable: f64,
    /// Until the script returned: the monitor has the new primary as such
    /// and it takes writes.
    script: f64,
    /// Until the first batch committed on the new primary was seen there.
    first_batch: f64,
    /// The longest pause in the worker's processed events from the start.
    pause: f64,
}

/// The session log and the revokes after a stream was drained: what a
/// correct run leaves, compared with a drain of the same events on the
/// single server with nothing failing.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Outcome {
    /// Rows of the log.
    sessions: i64,
    /// Of them, ended by a logout.
    logged_out: i64,
    /// Of them, ended otherwise (revoked).
    revoked: i64,
    /// Revoke messages that reached the app's queue.
    messages: usize,
    /// Distinct event ids (AMQP message_id) among them.
    distinct_ids: usize,
    /// Distinct sessions among them.
    distinct_sessions: usize,
    /// Left in the outbox.
    outbox: i64,
    /// Left in the events queue and in the dead-letter queue.
    queued: u32,
    dead: u32,
}

impl Outcome {
    /// Whether this run logged what the reference did, every event taken
    /// off the queue (none dead-lettered), and every revoke published: one
    /// message per revoked row at least, each revoked session under one
    /// event id.
    fn matches(&self, reference: &Outcome) -> bool {
        self.sessions == reference.sessions
            && self.logged_out == reference.logged_out
            && self.revoked == reference.revoked
            && self.distinct_ids == self.distinct_sessions
            && self.distinct_sessions as i64 == self.revoked
            && self.outbox == 0
            && self.queued == 0
            && self.dead == 0
    }

    /// Revoke messages re-sent: more than one with the same event id (the
    /// relay publishes at least once; apps drop a repeated message_id).
    fn resent(&self) -> usize {
        self.messages - self.distinct_ids
    }
}

/// What the failover runs share.
struct Runs<'a> {
    formation: &'a Formation,
    /// The worker's settings on the formation.
    settings: &'a Settings,
    worker: &'a Path,
    /// The steady stream's events (a prefix of the drains').
    stream: &'a [Vec<u8>],
    /// Events per second of the stream.
    rate: usize,
    /// The bench's database's name.
    database: String,
}

/// The formation's rows: 1 worker on the configured server and on the
/// formation, back to back in each run; an unplanned and a planned
/// failover in each run; whether those runs logged every event and
/// published each revoke once. Also whether the configured server's
/// connection used TLS.
pub async fn rows(
    single: &Settings,
    args: &BenchArgs,
    worker: &Path,
    events: &[Vec<u8>],
) -> anyhow::Result<(Vec<Row>, bool)> {
    let pool = db::connect_and_migrate(&single.database).await?;
    let tls = uses_tls(&pool).await?;
    println!(
        "starting a pg_auto_failover formation (scripts/pg-failover, PG_FAILOVER_QUICK=1), load {}",
        load()
    );
    let formation = Formation::start().await?;
    let database = database_name(&single.database.url);
    let mut on_formation = single.clone();
    on_formation.database.url = with_database(&formation.url, &database);
    println!("formation: {}", on_formation.database.url);
    let formation_pool = db::connect_and_migrate(&on_formation.database).await?;
    let replication = replication(&formation_pool).await?;
    println!("formation's primary: {replication}");
    let differ = differing_settings(&pool, &formation_pool).await?;
    println!("settings of the formation's primary that differ from the single server's: {differ}");

    let stream = &events[..events.len().min(args.rate.max(1) * STREAM_SECONDS)];
    println!(
        "reference: the stream's {} events drained on the single server",
        stream.len()
    );
    let reference = reference(single, &pool, worker, stream).await?;
    println!("reference: {reference:?}");

    let runs = args.runs.max(1);
    let failover_runs = Runs {
        formation: &formation,
        settings: &on_formation,
        worker,
        stream,
        rate: args.rate.max(1),
        database,
    };
    let (mut rates, mut ratios) = ([Vec::new(), Vec::new()], Vec::new());
    let mut times = [Vec::new(), Vec::new()];
    let (mut loads, mut correct, mut wrong) = (Vec::new(), 0, Vec::new());
    let mut resent = Vec::new();
    for run in 1..=runs {
        let prefix = format!("run {run}/{runs}");
        loads.push(load_1min());
        println!("{prefix}: load {}", load());
        let run_rates = side_by_side(
            [
                ("the single server", single, &pool),
                ("the formation", &on_formation, &formation_pool),
            ],
            worker,
            events,
            &prefix,
        )
        .await?;
        for (i, rate) in run_rates.into_iter().enumerate() {
            rates[i].push(rate);
        }
        ratios.push(run_rates[1] / run_rates[0]);
        println!(
            "{prefix}: formation / single server {:.2}",
            run_rates[1] / run_rates[0]
        );

        for (i, kind) in [Kind::Unplanned, Kind::Planned].into_iter().enumerate() {
            println!("{prefix}: {kind:?} failover, load {}", load());
            let (t, outcome, exited) = failover_runs.run(kind, &prefix).await?;
            println!(
                "{prefix}: {kind:?}: out of recovery {:.2} s, takes writes {:.2} s, script \
                 returned {:.2} s, first batch on the new primary {:.2} s, worker's longest \
                 pause {:.2} s",
                t.promoted, t.writable, t.script, t.first_batch, t.pause
            );
            println!("{prefix}: {kind:?}: {outcome:?}");
            times[i].push(t);
            resent.push(outcome.resent());
            let ok = outcome.matches(&reference) && exited.is_none();
            if ok {
                correct += 1;
            } else {
                let why = format!(
                    "{prefix} {kind:?}: {outcome:?}{}",
                    exited.map_or(String::new(), |s| format!(", the worker exited: {s}"))
                );
                println!("NOT AS THE REFERENCE: {why}");
                wrong.push(why);
            }
        }
    }
    formation_pool.close().await;
    pool.close().await;
    drop(formation);

    let ratio_list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let loads = format!(
        "load average (1 min) at each run's start {:.1}-{:.1}",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        loads.iter().copied().fold(0.0, f64::max)
    );
    let mix = args.mix.name();
    let mut rows = vec![
        Row {
            what: format!("1 worker, single server ({mix} mix)"),
            figure: format!("{:.0} events/s", median(&rates[0])),
            note: format!(
                "the configured PostgreSQL, empty log before each drain; {}",
                spread(&rates[0])
            ),
        },
        Row {
            what: format!("1 worker, primary with a synchronous standby ({mix} mix)"),
            figure: format!("{:.0} events/s", median(&rates[1])),
            note: format!(
                "{:.2} of the single server (median of the runs' ratios: {}); pg_auto_failover \
                 formation on this machine, {replication}; settings that differ from the single \
                 server's: {differ}; {}; {loads}",
                median(&ratios),
                ratio_list.join(", "),
                spread(&rates[1])
            ),
        },
    ];
    for (i, kind) in [Kind::Unplanned, Kind::Planned].into_iter().enumerate() {
        let of = |f: fn(&Times) -> f64| -> Vec<f64> { times[i].iter().map(f).collect() };
        let (first, promoted, writable, script, pause) = (
            of(|t| t.first_batch),
            of(|t| t.promoted),
            of(|t| t.writable),
            of(|t| t.script),
            of(|t| t.pause),
        );
        let worker_share: Vec<f64> = times[i]
            .iter()
            .map(|t| t.first_batch - t.writable)
            .collect();
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (what, from) = match kind {
            Kind::Unplanned => (
                "unplanned failover: primary's node killed to the first batch on the new primary",
                "from the kill (the old primary's postmaster seen stopped, polled every ms; \
                 `pg-failover kill-primary`, PG_FAILOVER_QUICK=1)",
            ),
            Kind::Planned => (
                "planned failover: `pg_autoctl perform failover` to the first batch on the new primary",
                "from `pg_autoctl perform failover` started (`pg-failover failover` started, \
                 plus the time its look-up of the primary takes)",
            ),
        };
        rows.push(Row {
            what: what.into(),
            figure: format!("{:.2} s", median(&first)),
            note: format!(
                "{from}, {} runs: {}, while 1 worker drains {} events/s; seen on the new primary \
                 (polled every 10 ms: a log row created after its last replayed transaction, once \
                 out of recovery). Of it, pg_auto_failover's: the new primary out of recovery \
                 {:.2} s (runs {}), taking writes (also default_transaction_read_only off) {:.2} s \
                 (runs {}; the script returned at {:.2} s, runs {}); the worker's (first batch \
                 less taking writes) {:.2} s (runs {}); the worker's longest pause in processed \
                 events {:.2} s (runs {})",
                first.len(),
                list(&first),
                args.rate,
                median(&promoted),
                list(&promoted),
                median(&writable),
                list(&writable),
                median(&script),
                list(&script),
                median(&worker_share),
                list(&worker_share),
                median(&pause),
                list(&pause),
            ),
        });
    }
    let total = times[0].len() + times[1].len();
    rows.push(Row {
        what: "failover runs: every event logged, every revoke published".into(),
        figure: if wrong.is_empty() {
            format!("yes, {correct} of {total} runs")
        } else {
            format!("no: {} of {total} runs differ", wrong.len())
        },
        note: format!(
            "each run's log (rows, ended by logout, revoked), an empty outbox, events and \
             dead-letter queues, and the worker still running, against the same {} events \
             drained on the single server with nothing failing ({} rows, {} revoked); the \
             revokes in a queue bound like an app's: one event id per revoked session, one \
             session per event id{}",
            stream.len(),
            reference.sessions,
            reference.revoked,
            if wrong.is_empty() {
                String::new()
            } else {
                format!("; {}", wrong.join("; "))
            }
        ),
    });
    let resent_runs = resent.iter().filter(|r| **r > 0).count();
    rows.push(Row {
        what: "failover runs: each revoke published once".into(),
        figure: if resent_runs == 0 {
            format!("yes, {total} of {total} runs")
        } else {
            format!("no: re-sent in {resent_runs} of {total} runs (same event id)",)
        },
        note: format!(
            "messages beyond one per event id, unplanned then planned per run: {}; the relay \
             publishes at least once (a revoke whose outbox row was not deleted before the \
             failover is sent again with the same message_id, which apps drop); {} revokes per run",
            resent
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reference.revoked
        ),
    });
    Ok((rows, tls))
}

impl Runs<'_> {
    /// One failover of `kind` while a worker drains a steady stream: its
    /// times, the outcome, and how the worker ended if it exited meanwhile.
    async fn run(
        &self,
        kind: Kind,
        prefix: &str,
    ) -> anyhow::Result<(Times, Outcome, Option<std::process::ExitStatus>)> {
        let formation = self.formation;
        formation.script("wait-healthy", &[]).await?;
        let pool = db::connect(&self.settings.database).await?;
        reset_log(&pool).await?;
        let (old, look_up) = formation.primary().await?;
        let new = formation.other(old);
        let old_node = formation.node(old)?;
        let postmaster = formation.postmaster(old_node)?;
        let (connection, publisher) = side(self.settings).await?;
        let tap_channel = connection.create_channel().await?;
        let tap =
            broker::declare_revoke_tap(&tap_channel, &self.settings.amqp.revocations_exchange)
                .await?;

        let progress = Progress::new()?;
        let mut process = WorkerProcess::start(self.worker, self.settings)?;
        progress.wait_until_up(&process).await;
        let result = async {
            let n = self.stream.len() as u64;
            let stream = publish_steady(&publisher, self.settings, self.stream, self.rate);
            let failover = async {
                tokio::time::sleep(LEAD).await;
                let spawned = Instant::now();
                let (out, killed) = tokio::join!(
                    async {
                        let out = formation.script(kind.command(), &[]).await;
                        (out, Instant::now())
                    },
                    async {
                        match kind {
                            Kind::Unplanned => stopped(postmaster, spawned).await,
                            Kind::Planned => Ok(spawned + look_up),
                        }
                    }
                );
                let (out, returned) = out;
                out?;
                anyhow::Ok((killed?, returned))
            };
            let watch = first_batch(new, &self.database);
            let growth = progress.growth(&process, n, LIMIT);
            let (streamed, failover, watched, growth) =
                tokio::join!(stream, failover, watch, growth);
            streamed?;
            let (start, returned) = failover?;
            let (promoted, writable, first) = watched?;
            let (growth, processed) = growth;
            anyhow::ensure!(
                processed >= n,
                "the worker processed {processed} of {n} events"
            );
            let secs = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
            Ok(Times {
                promoted: secs(promoted),
                writable: secs(writable),
                script: secs(returned),
                first_batch: secs(first),
                pause: longest_pause(&growth, start).as_secs_f64(),
            })
        }
        .await;
        let exited = process.exited();
        pool.close().await;
        let outcome = match result {
            // On a pool of its own: the one before may hold connections to
            // the old primary.
            Ok(times) => match db::connect(&self.settings.database).await {
                Ok(after) => {
                    let outcome =
                        outcome(&after, &connection, &tap_channel, &tap, self.settings).await;
                    after.close().await;
                    outcome.map(|o| (times, o, exited))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        process.stop().await;
        let _ = tap_channel
            .queue_delete(tap.clone(), QueueDeleteOptions::default())
            .await;
        let _ = connection.close(200, "done".into()).await;
        let restarted = match kind {
            Kind::Unplanned => {
                println!("{prefix}: node {old_node} started again");
                formation
                    .script("start-node", &[&old_node.to_string()])
                    .await
                    .map(drop)
            }
            Kind::Planned => Ok(()),
        };
        let outcome = outcome?;
        restarted?;
        Ok(outcome)
    }
}

/// Publishes `events` with confirms at `rate` events/s, in ticks of 10 ms.
async fn publish_steady(
    publisher: &Channel,
    settings: &Settings,
    events: &[Vec<u8>],
    rate: usize,
) -> anyhow::Result<()> {
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let properties = event_properties();
    for chunk in events.chunks(per_tick) {
        interval.tick().await;
        drain::publish_confirmed(publisher, settings, chunk, &properties).await?;
    }
    Ok(())
}

/// Waits until the process `pid` is stopped or gone (polled every
/// millisecond): when `kill-primary` stops the old primary's node.
async fn stopped(pid: i32, since: Instant) -> anyhow::Result<Instant> {
    loop {
        let running = match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
            Ok(stat) => !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
            Err(_) => false,
        };
        if !running {
            return Ok(Instant::now());
        }
        anyhow::ensure!(since.elapsed() < LIMIT, "the primary was not killed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls the node on `port` (the standby that becomes the primary) every
/// [`POLL`]: when it was first seen out of recovery, when also no longer
/// read-only, and when a batch committed on it was first seen: a log row
/// created after the last transaction it replayed as a standby
/// (`created_at` is the inserting transaction's start; the standby replayed
/// every commit of the old primary up to that timestamp, so a later row is
/// the new primary's own).
async fn first_batch(port: u16, database: &str) -> anyhow::Result<(Instant, Instant, Instant)> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/{database}?sslmode=disable");
    let started = Instant::now();
    let mut connection: Option<PgConnection> = None;
    let (mut promoted, mut writable) = (None, None);
    loop {
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "no batch on the new primary within {LIMIT:?}"
        );
        if connection.is_none() {
            connection = PgConnection::connect(&url).await.ok();
        }
        if let Some(c) = connection.as_mut() {
            let seen: Result<(bool, bool, i64), _> = sqlx::query_as(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool, \
                 (SELECT count(*) FROM sessions WHERE created_at > \
                  COALESCE(pg_last_xact_replay_timestamp(), 'infinity'))",
            )
            .fetch_one(&mut *c)
            .await;
            match seen {
                Ok((false, read_only, rows)) => {
                    let now = Instant::now();
                    let out = *promoted.get_or_insert(now);
                    if !read_only || rows > 0 {
                        writable.get_or_insert(now);
                    }
                    if rows > 0 {
                        return Ok((out, writable.unwrap_or(now), now));
                    }
                }
                Ok((true, ..)) => {}
                Err(_) => connection = None,
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a drain left, once the relay has published every revoke: the log
/// (through `pool`), the revokes in the tap queue `tap` (taken out of it),
/// and the queues.
async fn outcome(
    pool: &PgPool,
    connection: &Connection,
    tap_channel: &Channel,
    tap: &lapin::types::ShortString,
    settings: &Settings,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut outbox: i64;
    loop {
        outbox = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?;
        if outbox == 0 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Published: give the broker a moment to route the last ones.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sessions, logged_out, revoked): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE end_reason = 'logout'),
                count(*) FILTER (WHERE end_reason <> 'logout') FROM sessions",
    )
    .fetch_one(pool)
    .await?;
    let (mut messages, mut ids, mut sessions_revoked) = (0, Vec::new(), Vec::new());
    while let Some(message) = tap_channel
        .basic_get(tap.clone(), BasicGetOptions { no_ack: true })
        .await?
    {
        messages += 1;
        let delivery = message.delivery;
        ids.push(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
        );
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
        sessions_revoked.push(format!("{}/{}", body["app"], body["session_id"]));
    }
    ids.sort();
    ids.dedup();
    sessions_revoked.sort();
    sessions_revoked.dedup();
    let count = connection.create_channel().await?;
    let queued = broker::ready_messages(&count, &settings.amqp.events_queue).await?;
    let dead = broker::ready_messages(&count, &settings.amqp.dead_letter_queue).await?;
    let _ = count.close(200, "done".into()).await;
    Ok(Outcome {
        sessions,
        logged_out,
        revoked,
        messages,
        distinct_ids: ids.len(),
        distinct_sessions: sessions_revoked.len(),
        outbox,
        queued,
        dead,
    })
}

/// The stream's events drained by one worker on the single server, pre-filled,
/// nothing failing: what every failover run must leave.
async fn reference(
    settings: &Settings,
    pool: &PgPool,
    worker: &Path,
    stream: &[Vec<u8>],
) -> anyhow::Result<Outcome> {
    let (connection, publisher) = side(settings).await?;
    let tap_channel = connection.create_channel().await?;
    let tap = broker::declare_revoke_tap(&tap_channel, &settings.amqp.revocations_exchange).await?;
    let drains = Drains::on(settings, pool, worker, stream, &connection, &publisher);
    reset_log(pool).await?;
    drains.fill().await?;
    drains.through_workers(1).await?;
    let outcome = outcome(pool, &connection, &tap_channel, &tap, settings).await;
    let _ = connection.close(200, "done".into()).await;
    outcome
}

/// `synchronous_commit` and `synchronous_standby_names` on the formation's
/// primary, as pg_auto_failover set them.
async fn replication(pool: &PgPool) -> anyhow::Result<String> {
    let (commit, names): (String, String) = sqlx::query_as(
        "SELECT current_setting('synchronous_commit'), current_setting('synchronous_standby_names')",
    )
    .fetch_one(pool)
    .await?;
    Ok(format!(
        "synchronous_commit = {commit}, synchronous_standby_names = '{names}'"
    ))
}

/// Settings that shape write throughput.
const SETTINGS: &[&str] = &[
    "shared_buffers",
    "wal_buffers",
    "wal_level",
    "max_wal_size",
    "min_wal_size",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "fsync",
    "full_page_writes",
    "wal_compression",
    "wal_sync_method",
    "wal_writer_delay",
    "commit_delay",
    "work_mem",
    "maintenance_work_mem",
    "effective_io_concurrency",
    "huge_pages",
    "track_io_timing",
    "autovacuum",
    "jit",
    "max_connections",
    "ssl",
];

/// Those of [`SETTINGS`] whose values differ between the two servers, as
/// "name single/formation", or "none".
async fn differing_settings(single: &PgPool, formation: &PgPool) -> anyhow::Result<String> {
    let query = "SELECT name, setting || COALESCE(unit, '') FROM pg_settings \
                 WHERE name = ANY($1) ORDER BY name";
    let names: Vec<String> = SETTINGS.iter().map(|s| (*s).to_owned()).collect();
    let a: Vec<(String, String)> = sqlx::query_as(query).bind(&names).fetch_all(single).await?;
    let b: Vec<(String, String)> = sqlx::query_as(query)
        .bind(&names)
        .fetch_all(formation)
        .await?;
    let differ: Vec<String> = a
        .iter()
        .filter_map(|(name, value)| {
            let other = b.iter().find(|(n, _)| n == name).map(|(_, v)| v)?;
            (other != value).then(|| format!("{name} {value}/{other}"))
        })
        .collect();
    Ok(if differ.is_empty() {
        "none".into()
    } else {
        differ.join(", ")
    })
}

/// The database a URL names (its path, without the query).
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The machine's load averages, as `uptime` prints them.
fn load() -> String {
    procfs::LoadAverage::current().map_or_else(
        |_| "?".into(),
        |l| format!("{:.2}, {:.2}, {:.2}", l.one, l.five, l.fifteen),
    )
}

/// The 1-minute load average.
fn load_1min() -> f64 {
    procfs::LoadAverage::current().map_or(0.0, |l| f64::from(l.one))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_multi_host_url() {
        assert_eq!(
            database_name(
                "postgres://postgres@127.0.0.1:1,127.0.0.1:2/sg_bench_x?target_session_attrs=read-write"
            ),
            "sg_bench_x"
        );
        assert_eq!(
            database_name("postgres://postgres@127.0.0.1:5432/session_guard"),
            "session_guard"
        );
    }

    #[test]
    fn an_outcome_matches_only_a_clean_run() {
        let reference = Outcome {
            sessions: 10,
            logged_out: 3,
            revoked: 2,
            messages: 2,
            distinct_ids: 2,
            distinct_sessions: 2,
            outbox: 0,
            queued: 0,
            dead: 0,
        };
        assert!(reference.matches(&reference));
        let twice = Outcome {
            messages: 3,
            ..reference
        };
        assert!(twice.matches(&reference), "a re-send of the same event id");
        assert_eq!(twice.resent(), 1);
        let unpublished = Outcome {
            messages: 1,
            distinct_ids: 1,
            distinct_sessions: 1,
            ..reference
        };
        assert!(!unpublished.matches(&reference), "a revoke not published");
        let two_ids = Outcome {
            messages: 3,
            distinct_ids: 3,
            ..reference
        };
        assert!(!two_ids.matches(&reference), "a session revoked twice");
        let lost = Outcome {
            sessions: 9,
            ..reference
        };
        assert!(!lost.matches(&reference), "a login not logged");
        let left = Outcome {
            outbox: 1,
            ..reference
        };
        assert!(!left.matches(&reference), "a revoke left in the outbox");
    }
}
