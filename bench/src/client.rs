//! The app side: publishing through the client crate's EventPublisher next
//! to raw publisher confirms with the same events, back to back, and the
//! caller's time per `send()`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use lapin::Channel;
use lapin::options::QueuePurgeOptions;
use session_guard::Settings;
use session_guard_client::protocol::event::{AppName, EventBody, EventKind};
use session_guard_client::{EventPublisher, PublisherConfig, SendError};

use crate::drain::publish_all;
use crate::report::Row;
use crate::traffic::Traffic;

/// The longest send() told apart, in nanoseconds: ten seconds.
const SEND_CEILING_NS: u64 = 10_000_000_000;

/// Publisher confirms outstanding at once, as the raw publishing has.
const MAX_IN_FLIGHT: usize = 1_000;

/// The rows of the app side; the events queue is emptied after each part.
pub async fn rows(
    setup: &Channel,
    publisher: &Channel,
    settings: &Settings,
    n: usize,
) -> anyhow::Result<Vec<Row>> {
    let n = n.max(1);
    let mut traffic = Traffic::new(n.clamp(1, 50_000), 0xc11e);
    let values: Vec<serde_json::Value> = (0..n).map(|_| traffic.next_event()).collect();
    let raw: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
    let bodies = values
        .into_iter()
        .map(serde_json::from_value::<EventBody>)
        .collect::<Result<Vec<_>, _>>()?;

    let raw_rate = publish_all(publisher, settings, &raw).await?;
    purge(setup, settings).await?;
    println!("raw publisher confirms: {raw_rate:.0} events/s");

    let (client_rate, times) = through_event_publisher(settings, bodies).await?;
    purge(setup, settings).await?;
    // Nanoseconds, shown in microseconds.
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p99, max) = (
        us(times.value_at_quantile(0.5)),
        us(times.value_at_quantile(0.99)),
        us(times.max()),
    );
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

async fn purge(setup: &Channel, settings: &Settings) -> anyhow::Result<()> {
    setup
        .queue_purge(
            settings.amqp.events_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await
        .context("cannot purge the events queue")?;
    Ok(())
}

/// Publishes the events as an app does; returns events/s from the first
/// send to the last confirm, and each send's time in nanoseconds.
async fn through_event_publisher(
    settings: &Settings,
    bodies: Vec<EventBody>,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let n = bodies.len();
    let mut config = PublisherConfig::new(
        settings.amqp.url.clone(),
        AppName::parse("bench").expect("a valid app name"),
    );
    config.exchange = settings.amqp.events_exchange.clone();
    // Room for every event: the rate measured is the publisher's, not the
    // drop policy's.
    config.capacity = n;
    config.max_in_flight = MAX_IN_FLIGHT;
    // Every event published, as with raw confirms: the rate compares the
    // same events. Coalescing is measured on its own (coalescing.rs).
    config.request_interval = Duration::ZERO;
    let client = EventPublisher::connect(config).await?;
    // An app's request thread: sends one event after another, timed one by
    // one, building included.
    let sender = client.clone();
    let (started, times) = tokio::task::spawn_blocking(move || send_all(&sender, bodies)).await??;
    client.flush().await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let stats = client.stats();
    client.close().await?;
    anyhow::ensure!(
        stats.published == n as u64,
        "EventPublisher confirmed {} of {n} events",
        stats.published
    );
    Ok((rate, times))
}

/// Sends every event from this thread; returns when sending started and
/// each send's time.
fn send_all(
    sender: &EventPublisher,
    bodies: Vec<EventBody>,
) -> Result<(Instant, Histogram<u64>), SendError> {
    let mut times =
        Histogram::new_with_bounds(1, SEND_CEILING_NS, 3).expect("valid histogram bounds");
    let started = Instant::now();
    for body in bodies {
        let before = Instant::now();
        let session = body.session_id.as_deref().unwrap_or_default();
        let user = body.user_id.as_deref().unwrap_or_default();
        let mut event = match body.kind {
            EventKind::Login => sender.login(session, user),
            EventKind::Request => sender.request(session, user),
            EventKind::Logout => sender.logout(session),
            EventKind::LogoutOthers => sender.logout_others(session, user),
            EventKind::LogoutAll => sender.logout_all(session, user),
            EventKind::Attributes => {
                sender.attributes(user, body.attributes.clone().unwrap_or_default())
            }
        }
        .occurred_at(body.occurred_at);
        if let Some(ip) = body.ip {
            event = event.ip(ip);
        }
        if let Some(agent) = &body.user_agent {
            event = event.user_agent(agent);
        }
        let sent = event.send();
        times.saturating_record(before.elapsed().as_nanos() as u64);
        sent?;
    }
    Ok((started, times))
}
