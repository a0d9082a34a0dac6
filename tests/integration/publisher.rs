//! The client crate's EventPublisher against the real broker and worker:
//! events reach the log, a connection lost mid-burst loses nothing,
//! unconfirmed events are published again, the buffer policy while the
//! broker is away, flush and close.
//!
//! Broker faults go through a TCP proxy the test controls (stall, cut, away),
//! or through `rabbitmqctl close_connection`, as an operator or a network
//! fault would.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::uri::AMQPUri;
use session_guard_client::protocol::event::AppName;
use session_guard_client::{EventPublisher, PublisherConfig, PublisherStats, SendError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::*;

/// A publisher's configuration for this test's exchange, through `url`.
fn config(app: &TestApp, url: &str, shop: &str) -> PublisherConfig {
    let mut config = PublisherConfig::new(url, AppName::parse(shop).unwrap());
    config.exchange = app.settings.amqp.events_exchange.clone();
    config.max_backoff = Duration::from_millis(200);
    config
}

/// An app name of its own, so the publisher's connection name is unique.
fn unique_app(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Session ids of an app's sessions in the log.
async fn sessions(app: &TestApp, shop: &str) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT session_id FROM sessions WHERE app = $1")
        .bind(shop)
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn wait_logged(app: &TestApp, shop: &str, n: i64) {
    app.wait_for(
        &format!("{n} sessions of {shop} in the log"),
        || async move { app.logged(shop).await == n },
    )
    .await;
}

async fn wait_stats(
    publisher: &EventPublisher,
    what: &str,
    condition: impl Fn(&PublisherStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = publisher.stats();
        if condition(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of the broker, for faults the test controls.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    /// Bytes flow both ways while true; held in the proxy while false.
    flowing: watch::Sender<bool>,
    /// New connections are closed at once while true: the broker is away.
    away: AtomicBool,
    /// Connections closed at once because the broker was away.
    refused: AtomicUsize,
    /// Bytes from clients held while stalled, until the next cut.
    held: AtomicUsize,
    /// Forwarding tasks of the open connections (two per connection).
    links: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            flowing: watch::channel(true).0,
            away: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            links: Default::default(),
        });
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if state.away.load(Ordering::SeqCst) {
                        state.refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(forward(client_read, server_write, state.clone(), true));
                    let down =
                        tokio::spawn(forward(server_read, client_write, state.clone(), false));
                    let mut links = state.links.lock().unwrap();
                    links.retain(|l| !l.is_finished());
                    links.extend([up, down]);
                }
            }
        });
        Proxy {
            port,
            state,
            accept,
        }
    }

    /// The broker's URL with the proxy in place of the broker's address.
    fn url(&self, broker_url: &str) -> String {
        let uri: AMQPUri = broker_url.parse().unwrap();
        let address = format!("{}:{}", uri.authority.host, uri.authority.port);
        assert!(
            broker_url.contains(&address),
            "the test needs a broker URL with an explicit port: {broker_url}"
        );
        broker_url.replace(&address, &format!("127.0.0.1:{}", self.port))
    }

    /// Holds every byte in the proxy, both ways: sent, but not arrived.
    fn stall(&self) {
        self.state.flowing.send_replace(false);
    }

    /// Drops every open connection, with the bytes held in the proxy; new
    /// connections flow.
    fn cut(&self) {
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
        self.state.held.store(0, Ordering::SeqCst);
        self.state.flowing.send_replace(true);
    }

    /// The broker is away: open connections are cut, new ones closed at once.
    fn go_away(&self) {
        self.state.away.store(true, Ordering::SeqCst);
        self.cut();
    }

    fn come_back(&self) {
        self.state.away.store(false, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Bytes from clients held since the stall.
    fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    fn open_links(&self) -> usize {
        let mut links = self.state.links.lock().unwrap();
        links.retain(|l| !l.is_finished());
        links.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

/// Copies bytes one way; while the proxy is stalled, what was read is held
/// (and lost if the connection is cut).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<ProxyState>,
    from_client: bool,
) {
    let mut flowing = state.flowing.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if from_client && !*flowing.borrow() {
            state.held.fetch_add(n, Ordering::SeqCst);
        }
        if flowing.wait_for(|f| *f).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test]
async fn logins_through_the_publisher_reach_the_worker_and_the_first_session_is_revoked() {
    let mut app = spawn_app().await;
    let shop = "pub-shop";
    let url = app.settings.amqp.url.clone();
    let publisher = EventPublisher::connect(config(&app, &url, shop))
        .await
        .unwrap();
    let expires = t(3600);
    publisher
        .login("laptop", "u1")
        .ip("203.0.113.7".parse().unwrap())
        .user_agent("Firefox/130.0")
        .expires_at(expires)
        .event_id("e-1")
        .occurred_at(t(0))
        .send()
        .unwrap();
    publisher
        .login("phone", "u1")
        .occurred_at(t(1))
        .send()
        .unwrap();
    publisher.flush().await.unwrap();
    assert_eq!(
        publisher.stats(),
        PublisherStats {
            published: 2,
            ..PublisherStats::default()
        }
    );

    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "laptop");
    assert_eq!(revokes[0].body.user_id, "u1");
    assert_eq!(revokes[0].body.reason, "session_limit");
    assert_eq!(revokes[0].routing_key, format!("revoke.{shop}"));
    let states = app.states("u1", shop).await;
    assert_eq!(states["laptop"], SessionState::Revoked);
    assert_eq!(states["phone"], SessionState::Active);
    // What the builder set is what the worker logged.
    let (ip, agent, expires_at): (String, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT host(ip), user_agent, expires_at FROM sessions WHERE app = $1 AND session_id = 'laptop'",
    )
    .bind(shop)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (ip.as_str(), agent.as_str(), expires_at),
        ("203.0.113.7", "Firefox/130.0", expires)
    );
    app.assert_no_dead_letters(QUIET).await;
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_mid_burst_loses_no_login() {
    let app = spawn_app().await;
    let shop = unique_app("burst");
    let url = app.settings.amqp.url.clone();
    let publisher = EventPublisher::connect(config(&app, &url, &shop))
        .await
        .unwrap();
    let connections = connections_named(&format!("session-guard publisher ({shop})")).await;
    assert_eq!(connections.len(), 1, "{connections:?}");
    // About 5 s of logins, 10 every 10 ms: the fault lands in the middle.
    const N: usize = 5_000;
    let sent = Arc::new(AtomicUsize::new(0));
    let burst = tokio::spawn({
        let publisher = publisher.clone();
        let sent = sent.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            for i in 0..N {
                if i % 10 == 0 {
                    interval.tick().await;
                }
                publisher
                    .login(&format!("s{i}"), &format!("u{i}"))
                    .send()
                    .unwrap();
                sent.store(i + 1, Ordering::SeqCst);
            }
        }
    });
    app.wait_for("the burst to start", || {
        let sent = sent.clone();
        async move { sent.load(Ordering::SeqCst) >= 200 }
    })
    .await;
    assert!(close_connection(&connections[0]).await);
    let at_fault = sent.load(Ordering::SeqCst);
    assert!(
        at_fault < N,
        "the burst ended before the fault ({at_fault} logins): nothing was tested"
    );
    burst.await.unwrap();
    tokio::time::timeout(PATIENCE, publisher.flush())
        .await
        .expect("flush in time")
        .unwrap();
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.dropped_requests, stats.refused_full),
        (N as u64, 0, 0),
        "{stats:?}"
    );
    wait_logged(&app, &shop, N as i64).await;
    let expected: BTreeSet<String> = (0..N).map(|i| format!("s{i}")).collect();
    assert_eq!(sessions(&app, &shop).await, expected);
    println!(
        "fault after {at_fault} of {N} logins; {} published again",
        stats.republished
    );
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn events_sent_but_never_confirmed_are_published_again_after_a_reconnect() {
    let app = spawn_app().await;
    let shop = "pub-resend";
    let proxy = Proxy::start(broker_address(&app)).await;
    let publisher = EventPublisher::connect(config(&app, &proxy.url(&app.settings.amqp.url), shop))
        .await
        .unwrap();
    for i in 0..100 {
        publisher
            .login(&format!("a{i}"), &format!("u{i}"))
            .send()
            .unwrap();
    }
    publisher.flush().await.unwrap();

    // Sent on the wire, never arrived: only a re-send saves them.
    proxy.stall();
    for i in 0..200 {
        publisher
            .login(&format!("b{i}"), &format!("v{i}"))
            .send()
            .unwrap();
    }
    wait_stats(&publisher, "200 events taken, unconfirmed", |s| {
        s.in_flight == 200 && s.buffered == 0
    })
    .await;
    app.wait_for("publishes held in the proxy", || async { proxy.held() > 0 })
        .await;
    assert_eq!(publisher.stats().published, 100);
    proxy.cut();

    tokio::time::timeout(PATIENCE, publisher.flush())
        .await
        .expect("flush in time")
        .unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.published, 300, "{stats:?}");
    // Those that reached the wire were lost with the connection.
    assert!(stats.republished >= 1, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
    wait_logged(&app, shop, 300).await;
    let expected: BTreeSet<String> = (0..100)
        .map(|i| format!("a{i}"))
        .chain((0..200).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(sessions(&app, shop).await, expected);
    publisher.close().await.unwrap();
}

/// `host:port` of the test's broker.
fn broker_address(app: &TestApp) -> String {
    let uri: AMQPUri = app.settings.amqp.url.parse().unwrap();
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

#[tokio::test]
async fn while_the_broker_is_away_requests_go_first_and_logins_are_kept_or_handed_back() {
    let mut app = spawn_app().await;
    let shop = "pub-away";
    let proxy = Proxy::start(broker_address(&app)).await;
    let mut config = config(&app, &proxy.url(&app.settings.amqp.url), shop);
    config.capacity = 10;
    let publisher = EventPublisher::connect(config).await.unwrap();
    publisher.login("warm", "w").send().unwrap();
    publisher.flush().await.unwrap();

    proxy.go_away();
    // The first event after the loss finds the connection gone; once the
    // publisher tries to reconnect, nothing more leaves the buffer.
    publisher.login("l0", "u0").send().unwrap();
    app.wait_for("a refused reconnection", || async { proxy.refused() >= 1 })
        .await;
    wait_stats(&publisher, "the first event held", |s| {
        s.in_flight == 1 && s.buffered == 0
    })
    .await;

    for i in 1..=6 {
        publisher
            .request(&format!("r{i}"), &format!("u{i}"))
            .send()
            .unwrap();
    }
    for i in 1..=4 {
        publisher
            .login(&format!("l{i}"), &format!("u{i}"))
            .send()
            .unwrap();
    }
    assert_eq!(publisher.stats().buffered, 10);
    // Full: a new request is dropped (and send says Ok: the next repeats it).
    publisher.request("r7", "u7").send().unwrap();
    assert_eq!(publisher.stats().dropped_requests, 1);
    // Logins take the place of the oldest requests, r1 to r6.
    for i in 5..=10 {
        publisher
            .login(&format!("l{i}"), &format!("u{i}"))
            .send()
            .unwrap();
    }
    assert_eq!(publisher.stats().dropped_requests, 7);
    // Only logins left: the next one is handed back.
    let Err(SendError::BufferFull(refused)) = publisher.login("l11", "u11").send() else {
        panic!("expected BufferFull");
    };
    assert_eq!(refused.session_id.as_deref(), Some("l11"));
    publisher.request("r8", "u8").send().unwrap();
    assert_eq!(
        publisher.stats(),
        PublisherStats {
            published: 1,
            dropped_requests: 8,
            refused_full: 1,
            republished: 0,
            buffered: 10,
            in_flight: 1,
            coalesced_requests: 0,
        }
    );

    proxy.come_back();
    tokio::time::timeout(PATIENCE, publisher.flush())
        .await
        .expect("flush in time")
        .unwrap();
    // The app sends the refused login again.
    publisher.send_body(*refused).unwrap();
    publisher.flush().await.unwrap();
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.buffered, stats.in_flight),
        (13, 0, 0),
        "{stats:?}"
    );
    app.settle().await;
    let expected: BTreeSet<String> = ["warm", "l0"]
        .into_iter()
        .map(String::from)
        .chain((1..=11).map(|i| format!("l{i}")))
        .collect();
    assert_eq!(sessions(&app, shop).await, expected);
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn flush_waits_for_the_broker_and_close_refuses_what_comes_after() {
    let mut app = spawn_app().await;
    let shop = "pub-close";
    let proxy = Proxy::start(broker_address(&app)).await;
    let publisher = EventPublisher::connect(config(&app, &proxy.url(&app.settings.amqp.url), shop))
        .await
        .unwrap();

    // Checked before buffering: the worker's own reason, nothing taken.
    let Err(SendError::Invalid(e)) = publisher.login("", "u1").send() else {
        panic!("expected Invalid");
    };
    assert_eq!(e.to_string(), "session_id: must be 1-256 characters, got 0");
    assert_eq!(publisher.stats(), PublisherStats::default());

    proxy.go_away();
    publisher.login("a", "u1").send().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), publisher.flush())
            .await
            .is_err(),
        "flush returned while the broker was away"
    );
    assert_eq!(publisher.stats().published, 0);
    proxy.come_back();
    tokio::time::timeout(PATIENCE, publisher.flush())
        .await
        .expect("flush in time")
        .unwrap();
    assert_eq!(publisher.stats().published, 1);

    let other = publisher.clone();
    other.login("b", "u2").send().unwrap();
    tokio::time::timeout(PATIENCE, publisher.close())
        .await
        .expect("close in time")
        .unwrap();
    // Close flushed what was handed over before it, through any clone.
    assert_eq!(other.stats().published, 2);
    assert!(matches!(
        other.login("c", "u3").send(),
        Err(SendError::Closed)
    ));
    other.flush().await.unwrap();
    app.wait_for("the publisher's connection to close", || async {
        proxy.open_links() == 0
    })
    .await;

    app.settle().await;
    assert_eq!(
        sessions(&app, shop).await,
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
}
