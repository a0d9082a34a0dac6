//! Login-to-revoke latency: events published at a steady rate with one
//! worker running; every login over the limit is timed from its publish to
//! the arrival of the revoke it causes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use session_guard::Settings;
use session_guard::broker;

use crate::drain::event_properties;
use crate::options::BenchArgs;
use crate::report::Row;
use crate::traffic::Traffic;
use crate::workers::{Progress, WorkerProcess};

/// Publish ticks per second.
const TICKS_PER_SECOND: u64 = 100;
/// Every this many events, a login over the limit that is timed.
const TIMED_EVERY: usize = 50;
/// The revokes have all arrived once none came for this long.
const QUIET: Duration = Duration::from_secs(3);

/// The longest latency told apart, in microseconds: a minute.
const LATENCY_CEILING_US: u64 = 60_000_000;

/// When each timed revoke's login was published, by the session it ends.
type Published = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the latency measure; the report's row.
pub async fn measure(
    connection: &Connection,
    publisher: &Channel,
    settings: &Settings,
    worker_binary: &Path,
    args: &BenchArgs,
) -> anyhow::Result<Row> {
    let listen_channel = connection.create_channel().await?;
    let queue =
        broker::declare_revoke_tap(&listen_channel, &settings.amqp.revocations_exchange).await?;
    let revokes = listen_channel
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
    let worker = WorkerProcess::start(worker_binary, settings)?;
    Progress::new()?.wait_until_up(&worker).await;

    let published = Published::default();
    let receiver = tokio::spawn(receive(revokes, published.clone()));
    let sent = publish_steadily(publisher, settings, args, &published).await;
    let latencies = receiver.await?;
    worker.stop().await;
    let _ = listen_channel.close(200, "done".into()).await;
    sent?;
    anyhow::ensure!(
        !latencies.is_empty(),
        "no revoke arrived during the latency run"
    );
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(Row {
        what: format!(
            "login-to-revoke latency at {} events/s for {} s",
            args.rate, args.seconds
        ),
        figure: format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(latencies.value_at_quantile(0.5)),
            ms(latencies.value_at_quantile(0.99)),
            ms(latencies.max())
        ),
        note: format!("{} revokes measured, 1 worker", latencies.len()),
    })
}

/// `args.rate` events per second for `args.seconds`, in ticks of 10 ms.
async fn publish_steadily(
    publisher: &Channel,
    settings: &Settings,
    args: &BenchArgs,
    published: &Published,
) -> anyhow::Result<()> {
    let mut traffic = Traffic::new(args.users, 0xfeed);
    let per_tick = (args.rate / TICKS_PER_SECOND as usize).max(1);
    let mut interval = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND as u32);
    let properties = event_properties();
    for tick in 0..args.seconds * TICKS_PER_SECOND {
        interval.tick().await;
        let mut pending = Vec::with_capacity(per_tick);
        for i in 0..per_tick {
            let timed = (tick as usize * per_tick + i) % TIMED_EVERY == TIMED_EVERY - 1;
            let (event, victim) = timed
                .then(|| traffic.login_over_the_limit())
                .flatten()
                .unwrap_or_else(|| (traffic.next_event(), None));
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
    Ok(())
}

/// Times each revoke of a timed login, in microseconds, until none came
/// for [`QUIET`].
async fn receive(mut revokes: Consumer, published: Published) -> Histogram<u64> {
    let mut latencies =
        Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3).expect("valid histogram bounds");
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(QUIET, revokes.next()).await {
        let now = Instant::now();
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&delivery.data) else {
            continue;
        };
        let Some(session) = body["session_id"].as_str() else {
            continue;
        };
        if let Some(sent) = published.lock().unwrap().remove(session) {
            latencies.saturating_record(now.duration_since(sent).as_micros() as u64);
        }
    }
    latencies
}
