//! Request coalescing in the client crate's EventPublisher, measured: the
//! request events published per 1,000 requests of page-load traffic
//! ([`page_loads`]), with the publisher's defaults (one request per session
//! per second, 10,000 sessions remembered), and the caller's time per
//! `send()` of a request, coalesced or published.
//!
//! The events carry synthetic `occurred_at` times (coalescing judges by
//! them), so minutes of traffic are sent in seconds, and they really go to
//! the broker: to an exchange of the run's own, with a queue bound to the
//! requests' routing key and one to the logins', whose message counts are
//! what arrived. Both queues and the exchange are deleted at the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{TimeDelta, Utc};
use hdrhistogram::Histogram;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use session_guard::{Settings, broker};
use session_guard_client::protocol::event::{AppName, EventKind};
use session_guard_client::protocol::names;
use session_guard_client::{EventPublisher, PublisherConfig, PublisherStats, SendError};

use crate::report::Row;
use crate::traffic::{PAGE_FOLLOW_UPS, PageRequest, page_loads};

/// The app the events are published for.
const APP: &str = "bench-pages";
/// The traffic's seed: every run sends the same requests.
const SEED: u64 = 0xc0a1;
/// The longest send() told apart, in nanoseconds: ten seconds.
const SEND_CEILING_NS: u64 = 10_000_000_000;
/// The longest wait for the broker to confirm what was sent.
const FLUSH_WAIT: Duration = Duration::from_secs(120);

/// What was sent and what arrived.
struct Measured {
    /// Requests sent.
    requests: usize,
    /// Request events that arrived on the requests' queue.
    requests_arrived: u64,
    /// Logins that arrived on the logins' queue (all of them: one per
    /// session).
    logins_arrived: u64,
    /// The publisher's counters at the end.
    stats: PublisherStats,
    /// Caller's time of each coalesced request's send(), in nanoseconds.
    coalesced_ns: Histogram<u64>,
    /// Caller's time of each published request's send(), in nanoseconds.
    published_ns: Histogram<u64>,
    /// From the first send to the last confirm.
    elapsed: Duration,
}

/// The report's rows: request events published per 1,000 requests of
/// `sessions` sessions over `seconds` seconds of page-load traffic, and the
/// caller's time per request.
pub async fn rows(settings: &Settings, sessions: usize, seconds: u64) -> anyhow::Result<Vec<Row>> {
    let sessions = sessions.max(1);
    let traffic = page_loads(sessions, seconds.max(1), SEED);
    anyhow::ensure!(
        !traffic.is_empty(),
        "no page-load traffic in {seconds} s: give --coalescing-seconds 60 or more"
    );
    let connection = broker::connect(&settings.amqp, "bench coalescing").await?;
    let channel = connection.create_channel().await?;
    let tap = Tap {
        exchange: format!("{}.coalescing", settings.amqp.events_exchange),
        requests: format!("{}.coalescing.requests", settings.amqp.events_queue),
        logins: format!("{}.coalescing.logins", settings.amqp.events_queue),
    };
    let measured = match tap.declare(&channel).await {
        Ok(()) => measure(settings, &tap, &channel, traffic).await,
        Err(e) => Err(e),
    };
    tap.delete(&channel).await;
    // The channel first: one still open while its connection closes makes
    // lapin log an error.
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    let m = measured?;

    let per_1000 = m.requests_arrived as f64 * 1000.0 / m.requests as f64;
    let with_logins = (m.requests_arrived + m.logins_arrived) as f64 * 1000.0 / m.requests as f64;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "request coalescing: {} requests of {sessions} sessions over {seconds} s of event time: \
         {} request events published, {} coalesced: {per_1000:.0} events per 1,000 requests \
         ({with_logins:.0} with the {} logins); sent and confirmed in {:.1} s",
        m.requests,
        m.requests_arrived,
        m.stats.coalesced_requests,
        m.logins_arrived,
        m.elapsed.as_secs_f64()
    );
    Ok(vec![
        Row {
            what: "request events per 1,000 requests, page-load traffic (EventPublisher \
                   defaults: request_interval 1 s, recent_sessions 10,000)"
                .into(),
            figure: format!("{per_1000:.0} per 1,000"),
            note: format!(
                "{} requests of {sessions} sessions over {seconds} s of event time (a page and \
                 {PAGE_FOLLOW_UPS} more within 1 s per visit, visits 10-60 s apart): {} request \
                 events arrived, {} coalesced; with the {} logins (all arrived) {with_logins:.0} \
                 events per 1,000 requests; target at most 200, 1,000 without coalescing",
                m.requests, m.requests_arrived, m.stats.coalesced_requests, m.logins_arrived
            ),
        },
        Row {
            what: "caller's time per request send(), page-load traffic".into(),
            figure: format!(
                "coalesced p50 {:.2} µs, p99 {:.2} µs; published p50 {:.2} µs, p99 {:.2} µs",
                us(&m.coalesced_ns, 0.5),
                us(&m.coalesced_ns, 0.99),
                us(&m.published_ns, 0.5),
                us(&m.published_ns, 0.99),
            ),
            note: format!(
                "{} coalesced and {} published sends from one thread, building the event \
                 included; a published one is also checked and serialized",
                m.coalesced_ns.len(),
                m.published_ns.len()
            ),
        },
    ])
}

/// The run's exchange and the two queues that count what arrives.
struct Tap {
    /// The exchange the publisher publishes to.
    exchange: String,
    /// Bound to the requests' routing key.
    requests: String,
    /// Bound to the logins' routing key.
    logins: String,
}

impl Tap {
    async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                // Gone with its last binding should the run stop midway.
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot declare exchange {}", self.exchange))?;
        let app = AppName::parse(APP).expect("a valid app name");
        for (queue, kind) in [
            (&self.requests, EventKind::Request),
            (&self.logins, EventKind::Login),
        ] {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    // Gone with the bench's connection should it stop midway.
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot declare queue {queue}"))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    names::event_routing_key(kind, &app).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot bind queue {queue}"))?;
        }
        Ok(())
    }

    /// Messages in `queue` now.
    async fn count(channel: &Channel, queue: &str) -> anyhow::Result<u64> {
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot count the messages in {queue}"))?;
        Ok(u64::from(declared.message_count()))
    }

    async fn delete(&self, channel: &Channel) {
        for queue in [&self.requests, &self.logins] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Sends the traffic through an EventPublisher with the defaults, waits for
/// the broker's confirms, and counts what arrived.
async fn measure(
    settings: &Settings,
    tap: &Tap,
    channel: &Channel,
    traffic: Vec<PageRequest>,
) -> anyhow::Result<Measured> {
    let requests = traffic.len();
    let logins = traffic.iter().filter(|r| r.first).count();
    let mut config = PublisherConfig::new(
        settings.amqp.url.clone(),
        AppName::parse(APP).expect("a valid app name"),
    );
    config.exchange = tap.exchange.clone();
    // Room for every event, so the buffer's drop policy plays no part: what
    // is not published was coalesced. Coalescing keeps its defaults.
    config.capacity = requests + logins;
    let client = EventPublisher::connect(config).await?;
    let sender = client.clone();
    let started = Instant::now();
    let (coalesced_ns, published_ns) =
        tokio::task::spawn_blocking(move || send_all(&sender, &traffic)).await??;
    tokio::time::timeout(FLUSH_WAIT, client.flush())
        .await
        .context("the broker did not confirm every event in time")??;
    let elapsed = started.elapsed();
    let stats = client.stats();
    client.close().await?;
    let requests_arrived = Tap::count(channel, &tap.requests).await?;
    let logins_arrived = Tap::count(channel, &tap.logins).await?;
    anyhow::ensure!(
        stats.dropped_requests == 0 && stats.refused_full == 0,
        "the publisher's buffer dropped events: {stats:?}"
    );
    anyhow::ensure!(
        logins_arrived == logins as u64,
        "{logins_arrived} of {logins} logins arrived"
    );
    anyhow::ensure!(
        requests_arrived + stats.coalesced_requests == requests as u64,
        "{requests_arrived} requests arrived and {} were coalesced, of {requests} sent",
        stats.coalesced_requests
    );
    Ok(Measured {
        requests,
        requests_arrived,
        logins_arrived,
        stats,
        coalesced_ns,
        published_ns,
        elapsed,
    })
}

/// Sends the traffic from this thread, as an app's request thread would,
/// with a login before each session's first request; returns the caller's
/// time of each request's send(), coalesced and published apart.
fn send_all(
    sender: &EventPublisher,
    traffic: &[PageRequest],
) -> Result<(Histogram<u64>, Histogram<u64>), SendError> {
    let histogram =
        || Histogram::new_with_bounds(1, SEND_CEILING_NS, 3).expect("valid histogram bounds");
    let (mut coalesced_ns, mut published_ns) = (histogram(), histogram());
    // Event time ends now: the traffic happened over the last `seconds`.
    let span = traffic.last().map_or(0, |r| r.at_ms);
    let start = Utc::now() - TimeDelta::milliseconds(span);
    let mut coalesced = 0;
    for r in traffic {
        let session = format!("page-{}", r.session);
        let user = format!("user-{}", r.session);
        let at = start + TimeDelta::milliseconds(r.at_ms);
        if r.first {
            sender.login(&session, &user).occurred_at(at).send()?;
        }
        let before = Instant::now();
        sender.request(&session, &user).occurred_at(at).send()?;
        let ns = before.elapsed().as_nanos() as u64;
        // Read after the timing: whether this one was coalesced.
        let now_coalesced = sender.stats().coalesced_requests;
        if now_coalesced > coalesced {
            coalesced_ns.saturating_record(ns);
        } else {
            published_ns.saturating_record(ns);
        }
        coalesced = now_coalesced;
    }
    Ok((coalesced_ns, published_ns))
}
