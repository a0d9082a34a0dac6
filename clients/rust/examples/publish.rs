//! Publishes a few session events as an app would, then flushes and closes.
//!
//! ```sh
//! cargo run -p session-guard-client --example publish
//! ```
//!
//! `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) and
//! `EVENTS_EXCHANGE` (default `session_guard.events`) say where to publish;
//! run session-guard against the same broker to see the events in its log.

use std::time::Duration;

use session_guard_client::protocol::event::AppName;
use session_guard_client::{EventPublisher, PublisherConfig, SendError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mut config = PublisherConfig::new(url, AppName::parse("example-shop")?);
    if let Ok(exchange) = std::env::var("EVENTS_EXCHANGE") {
        config.exchange = exchange;
    }
    // Fails here if the broker is unreachable or refuses the login.
    let publisher = EventPublisher::connect(config).await?;

    // In a web app these calls sit in the login, request and logout handlers;
    // none of them waits on the network.
    for user in ["alice", "bob"] {
        let session = format!("{user}-laptop");
        publisher
            .login(&session, user)
            .ip("203.0.113.7".parse()?)
            .user_agent("Firefox/130.0")
            .expires_at(chrono::Utc::now() + chrono::Duration::hours(12))
            .send()?;
        // Three requests within a second: the first is published, the
        // other two are coalesced (counted in `coalesced_requests`), as the
        // worker would not store what they say.
        for _ in 0..3 {
            publisher.request(&session, user).send()?;
        }
    }
    // A second device for alice: with the default limit of one session,
    // session-guard revokes alice-laptop.
    match publisher.login("alice-phone", "alice").send() {
        Ok(()) => {}
        // The broker has been away long enough to fill the buffer with
        // logins: a real app would retry later or refuse the login.
        Err(SendError::BufferFull(event)) => eprintln!("not sent: {event:?}"),
        Err(e) => return Err(e.into()),
    }
    publisher.logout("bob-laptop").user("bob").send()?;

    // Waits until the broker has confirmed every event above.
    tokio::time::timeout(Duration::from_secs(30), publisher.flush())
        .await
        .map_err(|_| "the broker did not confirm every event within 30 s")??;
    println!("{:?}", publisher.stats());
    publisher.close().await?;
    Ok(())
}
