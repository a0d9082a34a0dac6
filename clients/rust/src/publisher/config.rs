//! [`PublisherConfig`]: where the publisher sends, and how much it holds
//! while the broker is away, with the defaults.

use std::fmt;
use std::time::Duration;

use session_guard_protocol::event::AppName;
use session_guard_protocol::names;

use session_guard_amqp::url::redact_url;

/// Default [`PublisherConfig::capacity`]: events buffered while the broker
/// is away.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default [`PublisherConfig::max_in_flight`]: unconfirmed publishes at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1_000;
/// Default [`PublisherConfig::max_backoff`]: the longest pause between two
/// connection attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Default [`PublisherConfig::request_interval`]: the worker's default
/// `worker.last_seen_resolution_ms`, 1 s. The worker stores a session's
/// last-seen time to that resolution and does not write a move smaller than
/// it, so requests of one session closer together than that add nothing it
/// would store; the first goes out at once, so a revoked session is still
/// noticed on its first use. If your worker runs with another resolution,
/// set the interval to it.
pub const DEFAULT_REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`PublisherConfig::recent_sessions`]: the sessions coalescing
/// remembers. Only the sessions that made a request within the last
/// [`PublisherConfig::request_interval`] need an entry (an older entry
/// would let the next request through anyway), and 10,000 sessions active
/// within one second is far beyond what one app process serves. Memory
/// grows with the sessions seen, up to about 1.2 MB at 10,000 with
/// 32-character session ids (measured: about 116 bytes each, 56 for the
/// list node holding the id's `String` and the time, the id's own bytes,
/// and 28 for its share of the hash table; 150 bytes with 64-character ids).
pub const DEFAULT_RECENT_SESSIONS: usize = 10_000;

/// How to reach the broker, and how much to hold while it is away.
#[derive(Clone)]
pub struct PublisherConfig {
    /// The broker's URL, e.g. `amqp://shop:secret@rabbitmq:5672/%2f`
    /// (`amqps://` for TLS; `?heartbeat=10` and the like in the query); or
    /// the URLs of a cluster's nodes, comma-separated
    /// ([`PublisherConfig::with_urls`] writes them so). The publisher
    /// connects to one, picked at random, and after a lost connection tries
    /// the others at once, the lost one last. Every URL of a list must
    /// log in as the same user.
    pub url: String,
    /// The app whose events this publisher sends; every event carries it.
    pub app: AppName,
    /// The exchange to publish to: session-guard's `amqp.events_exchange`
    /// (default [`names::EVENTS_EXCHANGE`]).
    pub exchange: String,
    /// Events held in memory while the broker is away or slower than the
    /// app; when full, the drop policy of [`EventBuilder::send`](crate::EventBuilder::send) applies.
    /// Default [`DEFAULT_CAPACITY`].
    pub capacity: usize,
    /// Events published and not yet confirmed, at most. Default
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// The longest pause between two connection attempts; pauses start near
    /// 100 ms and double, with jitter. Default [`DEFAULT_MAX_BACKOFF`].
    pub max_backoff: Duration,
    /// At most one `request` event per session per this interval, judged
    /// by the events' `occurred_at`: a session's first request is published
    /// at once, and its next ones less than this after the last published
    /// one (or older than it) are dropped and counted in
    /// [`PublisherStats::coalesced_requests`](crate::PublisherStats::coalesced_requests). Logins and logouts are never
    /// coalesced. [`Duration::ZERO`] turns coalescing off: every request is
    /// published. Default [`DEFAULT_REQUEST_INTERVAL`] (the worker's
    /// default last-seen resolution); see [`EventBuilder::send`](crate::EventBuilder::send) for what a
    /// coalesced request loses.
    pub request_interval: Duration,
    /// Sessions coalescing remembers, at most; the least recently used is
    /// forgotten first, and a forgotten session's next request is published
    /// at once (one event more, nothing lost). At least 1 while
    /// `request_interval` is not zero ([`EventPublisher::connect`](crate::EventPublisher::connect) refuses 0
    /// then); unused when it is. Default [`DEFAULT_RECENT_SESSIONS`], which
    /// says what it costs in memory.
    pub recent_sessions: usize,
}

impl PublisherConfig {
    /// A configuration with the defaults: session-guard's default events
    /// exchange, a 10,000-event buffer, 1,000 events in flight, pauses of at
    /// most 10 s between connection attempts, one request per session per
    /// second, remembering up to 10,000 sessions for that.
    pub fn new(url: impl Into<String>, app: AppName) -> Self {
        PublisherConfig {
            url: url.into(),
            app,
            exchange: names::EVENTS_EXCHANGE.to_owned(),
            capacity: DEFAULT_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_backoff: DEFAULT_MAX_BACKOFF,
            request_interval: DEFAULT_REQUEST_INTERVAL,
            recent_sessions: DEFAULT_RECENT_SESSIONS,
        }
    }
}

impl PublisherConfig {
    /// [`PublisherConfig::new`] for several brokers (a cluster's nodes).
    pub fn with_urls<I, S>(urls: I, app: AppName) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        PublisherConfig::new(urls.join(","), app)
    }
}

impl fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL usually carries a password: never print it.
        f.debug_struct("PublisherConfig")
            .field("url", &redact_url(&self.url))
            .field("app", &self.app)
            .field("exchange", &self.exchange)
            .field("capacity", &self.capacity)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_backoff", &self.max_backoff)
            .field("request_interval", &self.request_interval)
            .field("recent_sessions", &self.recent_sessions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("amqp://shop:s3cr@t@broker:5672/%2f?heartbeat=10"),
            "amqp://shop:***@broker:5672/%2f?heartbeat=10"
        );
        assert_eq!(redact_url("amqp://broker/%2f"), "amqp://broker/%2f");
        assert_eq!(redact_url("amqp://shop@broker"), "amqp://shop@broker");
        let config = PublisherConfig::new("amqps://shop:hunter2@broker", shop());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("amqps://shop:***@broker"), "{shown}");
        let config = PublisherConfig::with_urls(["amqp://shop:one@a", "amqp://shop:two@b"], shop());
        assert_eq!(config.url, "amqp://shop:one@a,amqp://shop:two@b");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("one@") && !shown.contains("two@"),
            "{shown}"
        );
    }
}
