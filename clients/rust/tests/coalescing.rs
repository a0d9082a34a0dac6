//! Request coalescing in `EventPublisher`, against the real broker: what
//! arrives on a queue bound to the test's own exchange is what the
//! publisher published.
//!
//! Each test declares an exchange and an exclusive queue of its own (unique
//! names), reads the queue after `flush()` (a confirmed event is in the
//! queue by then, so the count is exact) and deletes both; should a test
//! fail first, the queue goes with its connection and the exchange,
//! auto-deleted, with its last binding.
//!
//! The broker is `SESSION_GUARD__AMQP__URL`, as for the worker's tests,
//! else the local default `amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use session_guard_client::protocol::event::AppName;
use session_guard_client::{
    EventPublisher, PublisherConfig, PublisherError, PublisherStats, SendError,
};

/// The longest a test waits for the broker.
const PATIENCE: Duration = Duration::from_secs(20);

fn broker_url() -> String {
    std::env::var("SESSION_GUARD__AMQP__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `ms` milliseconds after a fixed instant: the events' own times, so the
/// tests do not depend on the clock.
fn t(ms: i64) -> DateTime<Utc> {
    "2026-11-27T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::milliseconds(ms)
}

/// An exchange of the test's own, with a queue bound to every routing key.
struct Tap {
    connection: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

/// A message that arrived on the tap's queue.
#[derive(Debug)]
struct Arrived {
    routing_key: String,
    body: Value,
}

impl Arrived {
    fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap()
    }

    fn session(&self) -> &str {
        self.body["session_id"].as_str().unwrap()
    }

    fn occurred_at(&self) -> DateTime<Utc> {
        self.body["occurred_at"].as_str().unwrap().parse().unwrap()
    }
}

impl Tap {
    async fn new() -> Tap {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("sg_client_test.{id}.events");
        let queue = format!("sg_client_test.{id}.tap");
        let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
            .await
            .expect("the broker is up");
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Tap {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    /// A publisher's configuration for the tap's exchange, with the
    /// defaults otherwise (coalescing on, 1 s).
    fn config(&self) -> PublisherConfig {
        let mut config =
            PublisherConfig::new(broker_url(), AppName::parse("coalescing-test").unwrap());
        config.exchange = self.exchange.clone();
        config.max_backoff = Duration::from_millis(200);
        config
    }

    /// Every message in the queue, in order, taken out of it.
    async fn take_all(&self) -> Vec<Arrived> {
        let mut arrived = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            arrived.push(Arrived {
                routing_key: message.delivery.routing_key.to_string(),
                body: serde_json::from_slice(&message.delivery.data).unwrap(),
            });
        }
        arrived
    }

    async fn delete(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Flushes within `PATIENCE`.
async fn flush(publisher: &EventPublisher) {
    tokio::time::timeout(PATIENCE, publisher.flush())
        .await
        .expect("flush in time")
        .unwrap();
}

/// The requests that arrived, as (session, occurred_at).
fn requests(arrived: &[Arrived]) -> Vec<(&str, DateTime<Utc>)> {
    arrived
        .iter()
        .filter(|a| a.kind() == "request")
        .map(|a| (a.session(), a.occurred_at()))
        .collect()
}

#[tokio::test]
async fn requests_of_a_session_within_the_interval_arrive_once() {
    let tap = Tap::new().await;
    let publisher = EventPublisher::connect(tap.config()).await.unwrap();
    // A page load: a page and five more requests within the second, of two
    // sessions interleaved.
    for ms in [0, 100, 250, 400, 700, 999] {
        publisher
            .request("laptop", "u1")
            .ip("203.0.113.7".parse().unwrap())
            .occurred_at(t(ms))
            .send()
            .unwrap();
        publisher
            .request("phone", "u2")
            .occurred_at(t(ms + 5))
            .send()
            .unwrap();
    }
    flush(&publisher).await;

    let arrived = tap.take_all().await;
    assert_eq!(
        requests(&arrived),
        [("laptop", t(0)), ("phone", t(5))],
        "{arrived:#?}"
    );
    assert_eq!(arrived[0].routing_key, "request.coalescing-test");
    // The published request is the first one, whole.
    assert_eq!(arrived[0].body["ip"], "203.0.113.7");
    assert_eq!(
        publisher.stats(),
        PublisherStats {
            published: 2,
            coalesced_requests: 10,
            ..PublisherStats::default()
        }
    );

    // After close, a request that would be coalesced is refused like any
    // other event, through any clone.
    let other = publisher.clone();
    publisher.close().await.unwrap();
    assert!(matches!(
        other.request("laptop", "u1").occurred_at(t(500)).send(),
        Err(SendError::Closed)
    ));
    tap.delete().await;
}

#[tokio::test]
async fn a_request_an_interval_after_the_last_published_one_arrives() {
    let tap = Tap::new().await;
    let publisher = EventPublisher::connect(tap.config()).await.unwrap();
    for ms in [
        0, 500,   // coalesced
        1_000, // an interval after the first: published
        1_500, 1_999, // coalesced
        900,   // older than the last published: coalesced
        2_200, // published
        5_000, // published
    ] {
        publisher
            .request("laptop", "u1")
            .occurred_at(t(ms))
            .send()
            .unwrap();
    }
    flush(&publisher).await;

    let arrived = tap.take_all().await;
    assert_eq!(
        requests(&arrived),
        [
            ("laptop", t(0)),
            ("laptop", t(1_000)),
            ("laptop", t(2_200)),
            ("laptop", t(5_000))
        ],
        "{arrived:#?}"
    );
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.coalesced_requests),
        (4, 4),
        "{stats:?}"
    );
    publisher.close().await.unwrap();
    tap.delete().await;
}

#[tokio::test]
async fn logins_and_logouts_all_arrive_and_a_logout_forgets_its_session() {
    let tap = Tap::new().await;
    let publisher = EventPublisher::connect(tap.config()).await.unwrap();
    // All within one interval, one session after the other.
    publisher.login("a", "u1").occurred_at(t(0)).send().unwrap();
    publisher.login("a", "u1").occurred_at(t(1)).send().unwrap();
    publisher
        .request("a", "u1")
        .occurred_at(t(2))
        .send()
        .unwrap();
    publisher
        .request("a", "u1")
        .occurred_at(t(3))
        .send()
        .unwrap(); // coalesced
    publisher
        .logout_others("a", "u1")
        .occurred_at(t(4))
        .send()
        .unwrap();
    publisher
        .logout_others("a", "u1")
        .occurred_at(t(5))
        .send()
        .unwrap();
    // logout_others keeps the session: still coalesced.
    publisher
        .request("a", "u1")
        .occurred_at(t(6))
        .send()
        .unwrap();
    publisher
        .logout("a")
        .user("u1")
        .occurred_at(t(7))
        .send()
        .unwrap();
    publisher.logout("a").occurred_at(t(8)).send().unwrap();
    // The logout forgot the session: its next request goes at once.
    publisher
        .request("a", "u1")
        .occurred_at(t(9))
        .send()
        .unwrap();
    publisher
        .request("b", "u2")
        .occurred_at(t(10))
        .send()
        .unwrap();
    publisher
        .logout_all("b", "u2")
        .occurred_at(t(11))
        .send()
        .unwrap();
    publisher
        .logout_all("b", "u2")
        .occurred_at(t(12))
        .send()
        .unwrap();
    publisher
        .request("b", "u2")
        .occurred_at(t(13))
        .send()
        .unwrap();
    flush(&publisher).await;

    let arrived = tap.take_all().await;
    let kinds: Vec<(&str, &str)> = arrived.iter().map(|a| (a.kind(), a.session())).collect();
    assert_eq!(
        kinds,
        [
            ("login", "a"),
            ("login", "a"),
            ("request", "a"),
            ("logout_others", "a"),
            ("logout_others", "a"),
            ("logout", "a"),
            ("logout", "a"),
            ("request", "a"),
            ("request", "b"),
            ("logout_all", "b"),
            ("logout_all", "b"),
            ("request", "b"),
        ],
        "{arrived:#?}"
    );
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.coalesced_requests),
        (12, 2),
        "{stats:?}"
    );
    publisher.close().await.unwrap();
    tap.delete().await;
}

#[tokio::test]
async fn with_a_zero_interval_every_request_arrives() {
    let tap = Tap::new().await;
    let mut config = tap.config();
    config.request_interval = Duration::ZERO;
    // Unused with coalescing off, so not refused.
    config.recent_sessions = 0;
    let publisher = EventPublisher::connect(config).await.unwrap();
    for ms in [0, 0, 100, 50] {
        publisher
            .request("laptop", "u1")
            .occurred_at(t(ms))
            .send()
            .unwrap();
    }
    flush(&publisher).await;

    let arrived = tap.take_all().await;
    assert_eq!(
        requests(&arrived),
        [
            ("laptop", t(0)),
            ("laptop", t(0)),
            ("laptop", t(100)),
            ("laptop", t(50))
        ],
        "{arrived:#?}"
    );
    assert_eq!(
        publisher.stats(),
        PublisherStats {
            published: 4,
            ..PublisherStats::default()
        }
    );
    publisher.close().await.unwrap();
    tap.delete().await;
}

#[tokio::test]
async fn a_session_the_bounded_memory_forgot_publishes_its_next_request() {
    let tap = Tap::new().await;
    let mut config = tap.config();
    config.recent_sessions = 2;
    let publisher = EventPublisher::connect(config).await.unwrap();
    for (session, ms) in [
        ("a", 0),
        ("b", 1),
        ("a", 2), // coalesced; a is now the most recently used
        ("c", 3), // evicts b
        ("a", 4), // coalesced
        ("b", 5), // forgotten: published (and evicts c)
        ("c", 6), // forgotten: published
    ] {
        publisher
            .request(session, "u1")
            .occurred_at(t(ms))
            .send()
            .unwrap();
    }
    flush(&publisher).await;

    let arrived = tap.take_all().await;
    assert_eq!(
        requests(&arrived),
        [
            ("a", t(0)),
            ("b", t(1)),
            ("c", t(3)),
            ("b", t(5)),
            ("c", t(6))
        ],
        "{arrived:#?}"
    );
    assert_eq!(publisher.stats().coalesced_requests, 2);
    publisher.close().await.unwrap();
    tap.delete().await;
}

#[tokio::test]
async fn an_invalid_request_is_refused_and_records_nothing() {
    let tap = Tap::new().await;
    let publisher = EventPublisher::connect(tap.config()).await.unwrap();
    let too_long = "x".repeat(513);
    let Err(SendError::Invalid(e)) = publisher
        .request("a", "u1")
        .user_agent(&too_long)
        .occurred_at(t(0))
        .send()
    else {
        panic!("expected Invalid");
    };
    assert!(e.to_string().starts_with("user_agent:"), "{e}");
    // Not recorded: the next valid request of the session is its first.
    publisher
        .request("a", "u1")
        .occurred_at(t(1))
        .send()
        .unwrap();
    flush(&publisher).await;
    assert_eq!(requests(&tap.take_all().await), [("a", t(1))]);
    assert_eq!(publisher.stats().coalesced_requests, 0);
    publisher.close().await.unwrap();
    tap.delete().await;
}

#[tokio::test]
async fn connect_refuses_an_empty_memory_while_coalescing() {
    let mut config = PublisherConfig::new(broker_url(), AppName::parse("shop").unwrap());
    config.recent_sessions = 0;
    let err = EventPublisher::connect(config).await.unwrap_err();
    assert!(matches!(err, PublisherError::Config(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid publisher configuration: recent_sessions must be at least 1 while \
         request_interval is not zero (a zero request_interval turns request coalescing off)"
    );
}
