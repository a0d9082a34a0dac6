//! The sessions API under load: `GET /v1/users/{id}/sessions?state=all` at
//! a fixed rate against a worker that serves the API on the large log while
//! it drains the queue, next to `/health/live` of the same worker at the
//! same rate in the same run; and the drain's rate under each load next to
//! a drain without load.
//!
//! The load is open-loop: request `i` is due at `start + i / rate` and is
//! sent then whatever the earlier ones are doing, and its latency counts
//! from that due time, so a stall is measured in full instead of slowing
//! the sender down (coordinated omission).
//!
//! Each load runs for at least `--api-seconds` and until the queue is
//! drained, so its requests fall in two phases: due while the worker still
//! drains (the issue's condition: a consumer draining at the same time) and
//! due after (the API alone on an idle worker). Requests alternate between
//! a connection of their own and a kept-alive one (as the apps' HTTP
//! clients use), so both kinds meet the same conditions. Each of the four
//! has its own latencies.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::drain::Drains;
use crate::options::BenchArgs;
use crate::report::Row;
use crate::services::{forget_bench_sessions, history_user};
use crate::workers::{self, Progress, WorkerProcess};

/// The longest latency told apart, in microseconds: a minute.
const LATENCY_CEILING_US: u64 = 60_000_000;
/// A request without an answer by then counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Every this many requests, one asks about a user of the traffic being
/// drained (live sessions, rows being written); the others ask about users
/// of the history (ended sessions among millions of rows).
const LIVE_EVERY: u64 = 4;
/// The most users of the traffic asked about.
const LIVE_USERS: usize = 10_000;
/// How long the worker's endpoints may take to answer after its start.
const START_LIMIT: Duration = Duration::from_secs(20);
/// A drain that takes longer has stalled.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// Latencies of one load, in microseconds, and the requests that failed.
pub struct Latencies {
    /// Latency of each answered request, from its due time.
    histogram: Histogram<u64>,
    /// Requests answered with another status than 200, or not at all.
    failed: u64,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            histogram: Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
                .expect("valid histogram bounds"),
            failed: 0,
        }
    }

    /// One answered request's latency.
    fn record(&mut self, latency: Duration) {
        self.histogram
            .saturating_record(latency.as_micros().max(1) as u64);
    }

    /// The latency at quantile `q`, ms.
    fn ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// "p50 x ms, p99 y ms, max z ms".
    fn summary(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            self.ms(0.5),
            self.ms(0.99),
            self.histogram.max() as f64 / 1000.0
        )
    }

    /// "N requests, M failed".
    fn counts(&self) -> String {
        format!(
            "{} requests answered 200, {} failed",
            self.histogram.len(),
            self.failed
        )
    }
}

/// Latencies of one load, by phase and by kind of connection.
#[derive(Default)]
pub struct Load {
    /// Requests due while the worker drained: `[own connection, kept alive]`.
    draining: [Latencies; 2],
    /// Requests due after the drain: `[own connection, kept alive]`.
    idle: [Latencies; 2],
}

impl Load {
    /// The latencies of phase `p` of [`PHASES`].
    fn phase(&self, p: usize) -> &[Latencies; 2] {
        if p == 0 { &self.draining } else { &self.idle }
    }

    fn of(&mut self, draining: bool, kept_alive: bool) -> &mut Latencies {
        let phase = if draining {
            &mut self.draining
        } else {
            &mut self.idle
        };
        &mut phase[usize::from(kept_alive)]
    }
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}

/// What the sessions API run measured.
pub struct ApiFigures {
    /// Requests per second of each load.
    rate: u64,
    /// Rows of the history in the log.
    log_rows: u64,
    /// `GET /v1/users/{id}/sessions`.
    sessions: Load,
    /// `/health/live`, the baseline.
    health: Load,
    /// Drain rates, events/s: without load, with `/health/live` load and
    /// with sessions API load.
    drains: [f64; 3],
}

/// Which endpoint a load asks.
#[derive(Clone, Copy)]
enum Target {
    /// No load: the drain alone.
    None,
    /// `/health/live` on the worker's `http.listen`.
    Health,
    /// `GET /v1/users/{id}/sessions?state=all` on its `api.listen`.
    Sessions,
}

/// The three drains with their loads; the report's rows.
pub async fn measure(drains: &Drains<'_>, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let token =
        workers::create_token(drains.worker, drains.settings, "bench", "sessions:read").await?;
    let live = live_users(drains.events);
    let users = Users {
        log_rows: args.log_rows,
        live,
    };
    anyhow::ensure!(
        users.any(),
        "no user to ask the sessions API about: no history and no logins"
    );
    let mut rates = [0.0; 3];
    let mut loads = [Load::default(), Load::default()];
    for (i, target) in [Target::None, Target::Health, Target::Sessions]
        .into_iter()
        .enumerate()
    {
        let (rate, load) = drain_under(drains, args, &users, &token, target).await?;
        rates[i] = rate;
        let base = rates[0];
        let summary = match (target, load) {
            (Target::None, _) | (_, None) => "no load".to_owned(),
            (target, Some(load)) => {
                let summary = format!(
                    "{} while draining: {} (own connection), {} (kept alive)",
                    if matches!(target, Target::Health) {
                        "/health/live"
                    } else {
                        "sessions API"
                    },
                    load.draining[0].summary(),
                    load.draining[1].summary()
                );
                loads[i - 1] = load;
                summary
            }
        };
        println!(
            "API run: 1 worker, large log, {rate:.0} events/s ({:.2} of the drain without load), {summary}",
            rate / base
        );
    }
    let [health, sessions] = loads;
    Ok(ApiFigures {
        rate: args.api_rate,
        log_rows: args.log_rows,
        sessions,
        health,
        drains: rates,
    }
    .rows())
}

/// Who the requests ask about.
struct Users {
    /// Rows of the history: its users have ended sessions.
    log_rows: u64,
    /// Users of the traffic being drained.
    live: Vec<String>,
}

impl Users {
    fn any(&self) -> bool {
        self.log_rows > 0 || !self.live.is_empty()
    }

    /// The user request `i` asks about: every [`LIVE_EVERY`]th one of the
    /// traffic, the others of the history, spread over all of them.
    fn nth(&self, i: u64) -> String {
        let spread = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
        let history = history_user(self.log_rows, spread);
        match history {
            Some(user) if self.live.is_empty() || i % LIVE_EVERY != LIVE_EVERY - 1 => user,
            _ => self.live[(spread % self.live.len() as u64) as usize].clone(),
        }
    }
}

/// The users who log in in `events`, the first [`LIVE_USERS`] of them.
fn live_users(events: &[Vec<u8>]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    for event in events {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(event) else {
            continue;
        };
        if body["type"] == "login"
            && let Some(user) = body["user_id"].as_str()
        {
            seen.insert(user.to_owned());
            if seen.len() >= LIVE_USERS {
                break;
            }
        }
    }
    seen.into_iter().collect()
}

/// One drain of the pre-filled queue by 1 worker serving the API, with
/// `target` under load meanwhile: the drain's rate from the moment its
/// endpoints answer (when the load starts), and the load's latencies.
async fn drain_under(
    drains: &Drains<'_>,
    args: &BenchArgs,
    users: &Users,
    token: &str,
    target: Target,
) -> anyhow::Result<(f64, Option<Load>)> {
    forget_bench_sessions(drains.pool).await?;
    drains.fill().await?;
    let n = drains.events.len() as u64;
    let progress = Progress::new()?;
    let worker = WorkerProcess::start_with_api(drains.worker, drains.settings)?;
    let result = async {
        let client = http_client()?;
        let clients = Clients {
            own: client.clone(),
            kept_alive: kept_alive_client()?,
        };
        wait_until_up(&client, &progress, &worker, users, token).await?;
        let first = progress.processed(&worker).await.unwrap_or(0);
        let started = Instant::now();
        let drained = Arc::new(OnceLock::new());
        let load = match target {
            Target::None => None,
            Target::Health => {
                let url = format!("http://{}/health/live", worker.listen());
                Some(tokio::spawn(send_steadily(
                    clients.clone(),
                    move |_| url.clone(),
                    None,
                    args.api_rate,
                    Duration::from_secs(args.api_seconds),
                    drained.clone(),
                )))
            }
            Target::Sessions => {
                let api = worker.api_listen().to_owned();
                let users = Users {
                    log_rows: users.log_rows,
                    live: users.live.clone(),
                };
                Some(tokio::spawn(send_steadily(
                    clients.clone(),
                    move |i| sessions_url(&api, &users.nth(i)),
                    Some(token.to_owned()),
                    args.api_rate,
                    Duration::from_secs(args.api_seconds),
                    drained.clone(),
                )))
            }
        };
        let rate = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done = progress.processed(&worker).await.unwrap_or(0);
            if done >= n {
                break n.saturating_sub(first) as f64 / started.elapsed().as_secs_f64();
            }
            anyhow::ensure!(
                started.elapsed() < DRAIN_LIMIT,
                "the worker did not finish within an hour ({done} of {n})"
            );
        };
        // Seen by a poll every 100 ms: the drain ended at most that much
        // earlier.
        let _ = drained.set(tokio::time::Instant::now());
        let latencies = match load {
            Some(task) => Some(task.await?),
            None => None,
        };
        anyhow::Ok((rate, latencies))
    }
    .await;
    worker.stop().await;
    result
}

/// Plain HTTP, a connection per request.
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Plain HTTP/1.1 on kept-alive connections, as the apps' clients use:
/// reqwest's pool opens a connection when none is idle and keeps it.
fn kept_alive_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// The two clients a load alternates between.
#[derive(Clone)]
struct Clients {
    /// A connection per request.
    own: reqwest::Client,
    /// Kept-alive connections.
    kept_alive: reqwest::Client,
}

fn sessions_url(api: &str, user: &str) -> String {
    format!("http://{api}/v1/users/{user}/sessions?state=all")
}

/// Waits until the worker's metrics and sessions API answer, and checks
/// that the token lists a user's sessions.
async fn wait_until_up(
    client: &reqwest::Client,
    progress: &Progress,
    worker: &WorkerProcess,
    users: &Users,
    token: &str,
) -> anyhow::Result<()> {
    let since = Instant::now();
    let url = sessions_url(worker.api_listen(), &users.nth(0));
    loop {
        if progress.processed(worker).await.is_some()
            && let Ok(response) = client.get(&url).bearer_auth(token).send().await
        {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            anyhow::ensure!(
                status == reqwest::StatusCode::OK,
                "the sessions API answered {status}: {body}"
            );
            return Ok(());
        }
        anyhow::ensure!(
            since.elapsed() < START_LIMIT,
            "the worker's endpoints did not answer within {START_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When request `i` of a load at `rate` per second is due, after its start.
fn due(rate: u64, i: u64) -> Duration {
    Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate.max(1))
}

/// Sends `rate` requests per second to `url(i)`, open-loop, for at least
/// `least` and until the drain's end is set in `drained`, odd ones on
/// kept-alive connections; each one's latency from its due time, by phase
/// (whether it was due before the drain's end) and kind of connection.
async fn send_steadily(
    clients: Clients,
    url: impl Fn(u64) -> String,
    token: Option<String>,
    rate: u64,
    least: Duration,
    drained: Arc<OnceLock<tokio::time::Instant>>,
) -> Load {
    let mut answers = Vec::new();
    let mut pending = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0.. {
        let offset = due(rate, i);
        if offset >= least && drained.get().is_some() {
            break;
        }
        let at = start + offset;
        tokio::time::sleep_until(at).await;
        let kept_alive = i % 2 == 1;
        let client = if kept_alive {
            &clients.kept_alive
        } else {
            &clients.own
        };
        let mut request = client.get(url(i));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        pending.spawn(async move {
            let answered = match request.send().await {
                Ok(response) => {
                    let ok = response.status() == reqwest::StatusCode::OK;
                    // The whole body: the rows are read and sent.
                    response.bytes().await.is_ok() && ok
                }
                Err(_) => false,
            };
            (at, kept_alive, answered.then(|| at.elapsed()))
        });
        while let Some(done) = pending.try_join_next() {
            answers.push(done);
        }
    }
    while let Some(done) = pending.join_next().await {
        answers.push(done);
    }
    let end = drained.get().copied();
    let mut load = Load::default();
    for answer in answers {
        match answer {
            Ok((at, kept_alive, latency)) => {
                let draining = end.is_none_or(|end| at < end);
                let latencies = load.of(draining, kept_alive);
                match latency {
                    Some(latency) => latencies.record(latency),
                    None => latencies.failed += 1,
                }
            }
            // A request task that panicked: a bug of the bench, not an
            // answer of the server.
            Err(e) => panic!("a request task failed: {e}"),
        }
    }
    load
}

/// The names of a load's phases and kinds of connection, in `Load`'s order.
const PHASES: [&str; 2] = ["while the worker drains", "alone (the worker idle)"];
const KINDS: [&str; 2] = ["a connection per request", "kept-alive connections"];

impl ApiFigures {
    /// The report's rows: the sessions API and its baseline, by phase and
    /// kind of connection, then the drain.
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (p, phase) in PHASES.iter().enumerate() {
            for (k, kind) in KINDS.iter().enumerate() {
                let sessions = &self.sessions.phase(p)[k];
                let health = &self.health.phase(p)[k];
                let ratio = |q: f64| {
                    let base = health.ms(q);
                    if base > 0.0 && !sessions.histogram.is_empty() {
                        format!("{:.1}x", sessions.ms(q) / base)
                    } else {
                        "-".to_owned()
                    }
                };
                rows.push(Row {
                    what: format!(
                        "sessions API {phase}, {kind}: GET /v1/users/{{id}}/sessions?state=all, \
                         {} rows in the log",
                        self.log_rows
                    ),
                    figure: sessions.summary(),
                    note: format!(
                        "{}; p50 {} and p99 {} those of /health/live in the same phase and kind; \
                         {} requests/s in all, alternating the two kinds, open-loop, latency \
                         from each request's due time",
                        sessions.counts(),
                        ratio(0.5),
                        ratio(0.99),
                        self.rate
                    ),
                });
            }
        }
        for (p, phase) in PHASES.iter().enumerate() {
            for (k, kind) in KINDS.iter().enumerate() {
                let health = &self.health.phase(p)[k];
                rows.push(Row {
                    what: format!("baseline: /health/live of the same worker {phase}, {kind}"),
                    figure: health.summary(),
                    note: format!(
                        "{}; the same load generator and rate, back to back with the sessions \
                         API's load",
                        health.counts()
                    ),
                });
            }
        }
        let [quiet, health, sessions] = self.drains;
        let of_quiet = |rate: f64| if quiet > 0.0 { rate / quiet } else { 0.0 };
        rows.push(Row {
            what: format!(
                "1 worker draining while the sessions API serves {} requests/s",
                self.rate
            ),
            figure: format!("{sessions:.0} events/s"),
            note: format!(
                "{:.2} of its drain without API load in the same run ({quiet:.0} events/s); \
                 {:.2} with the /health/live load",
                of_quiet(sessions),
                of_quiet(health)
            ),
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(ms: &[u64], failed: u64) -> Latencies {
        let mut l = Latencies::new();
        for m in ms {
            l.record(Duration::from_millis(*m));
        }
        l.failed = failed;
        l
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        // 98 fast answers, then a slow one and a stall.
        let mut ms = vec![1; 98];
        ms.extend([40, 1000]);
        let l = latencies(&ms, 2);
        assert_eq!(
            l.summary(),
            "p50 1.00 ms, p99 40.03 ms, max 1000.4 ms",
            "hdrhistogram's 3 significant digits round up within a bucket"
        );
        assert_eq!(l.counts(), "100 requests answered 200, 2 failed");
    }

    #[test]
    fn requests_are_due_on_a_fixed_schedule() {
        assert_eq!(due(1000, 0), Duration::ZERO);
        assert_eq!(due(1000, 1500), Duration::from_millis(1500));
        assert_eq!(due(3, 1), Duration::from_nanos(333_333_333));
        assert_eq!(due(0, 1), Duration::from_secs(1), "a rate of 0 is 1/s");
    }

    #[test]
    fn requests_ask_about_history_and_live_users() {
        let users = Users {
            log_rows: 5_000_000,
            live: vec!["user7".into()],
        };
        let asked: Vec<String> = (0..400).map(|i| users.nth(i)).collect();
        let live = asked.iter().filter(|u| *u == "user7").count();
        assert_eq!(live, 100, "every 4th");
        let distinct: std::collections::BTreeSet<_> = asked.iter().collect();
        assert!(
            distinct.len() > 290,
            "spread over the history: {distinct:?}"
        );
        assert!(asked.iter().all(|u| u == "user7" || u.starts_with("old")));
        let only_live = Users {
            log_rows: 0,
            live: vec!["a".into(), "b".into()],
        };
        assert!((0..10).all(|i| ["a", "b"].contains(&only_live.nth(i).as_str())));
        let only_history = Users {
            log_rows: 10,
            live: Vec::new(),
        };
        assert!((0..10).all(|i| only_history.nth(i).starts_with("old")));
    }

    #[test]
    fn live_users_are_the_logins_of_the_traffic() {
        let events: Vec<Vec<u8>> = [
            r#"{"type":"login","user_id":"u2"}"#,
            r#"{"type":"request","user_id":"u3"}"#,
            r#"{"type":"login","user_id":"u1"}"#,
            r#"{"type":"login","user_id":"u2"}"#,
        ]
        .iter()
        .map(|e| e.as_bytes().to_vec())
        .collect();
        assert_eq!(live_users(&events), ["u1", "u2"]);
    }

    #[test]
    fn rows_give_each_phase_and_kind_its_ratio_and_the_drain_ratio() {
        let load = |ms: &[u64], failed: u64| Load {
            draining: [latencies(ms, failed), latencies(&[9], 0)],
            idle: [latencies(&[1], 0), Latencies::new()],
        };
        let figures = ApiFigures {
            rate: 1000,
            log_rows: 5_000_000,
            sessions: load(&[2, 2, 4], 0),
            health: load(&[1, 1, 1], 1),
            drains: [10_000.0, 9_500.0, 8_000.0],
        };
        let rows = figures.rows();
        assert_eq!(rows.len(), 9);
        assert_eq!(
            rows[0].what,
            "sessions API while the worker drains, a connection per request: GET \
             /v1/users/{id}/sessions?state=all, 5000000 rows in the log"
        );
        assert_eq!(rows[0].figure, "p50 2.00 ms, p99 4.00 ms, max 4.0 ms");
        assert!(
            rows[0]
                .note
                .starts_with("3 requests answered 200, 0 failed; p50 2.0x and p99 4.0x"),
            "{}",
            rows[0].note
        );
        assert!(rows[1].what.contains("kept-alive"), "{}", rows[1].what);
        assert!(rows[1].note.contains("p50 1.0x"), "{}", rows[1].note);
        assert!(
            rows[3].note.contains("p50 - and p99 -"),
            "nothing measured: {}",
            rows[3].note
        );
        assert!(
            rows[4].what.starts_with("baseline: /health/live") && rows[4].what.contains("drains"),
            "{}",
            rows[4].what
        );
        assert!(
            rows[4]
                .note
                .starts_with("3 requests answered 200, 1 failed")
        );
        assert_eq!(rows[8].figure, "8000 events/s");
        assert!(
            rows[8].note.starts_with(
                "0.80 of its drain without API load in the same run (10000 events/s); 0.95 with"
            ),
            "{}",
            rows[8].note
        );
    }
}
