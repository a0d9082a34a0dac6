//! [`EventPublisher`]: hands session events to a background task that
//! publishes them to session-guard's events exchange with publisher confirms,
//! and keeps each one until the broker has confirmed it.
//!
//! The caller's side is a bounded in-memory buffer behind a mutex: an event
//! is checked with the worker's own rules, serialized, queued, and the task
//! is woken. Nothing on that path waits on the network, so an app can send
//! from its request handlers, async or not. Before all that, a `request` is
//! coalesced if its session published one less than
//! [`PublisherConfig::request_interval`] before (the decision is the
//! crate's `coalesce` module): a lookup, and nothing checked, serialized or
//! queued.
//!
//! The task takes events from the buffer in order, keeps up to
//! `max_in_flight` of them unconfirmed at once, and holds every one of them
//! until its ack. A connection loss, a nack or an unroutable return ends
//! the connection; after a jittered pause the task connects again and
//! publishes the unconfirmed events again, oldest first, before anything
//! newer. The worker is idempotent, so a copy the broker already had is
//! harmless.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::coalesce::{Coalescer, Verdict};
use crate::connection::{Backoff, CLOSE_TIMEOUT, CONNECT_TIMEOUT, redact_url};
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::protocol::event::{AppName, EventBody, EventError, EventKind, SessionEvent};
use crate::protocol::names;

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

/// Least time between two warnings about dropped or refused events: a full
/// buffer drops events on every send, and one line per event would flood
/// the app's log.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Most events the task takes from the buffer per lock, so senders never
/// wait long behind it.
const TAKE_BATCH: usize = 64;

/// How to reach the broker, and how much to hold while it is away.
#[derive(Clone)]
pub struct PublisherConfig {
    /// The broker's URL, e.g. `amqp://shop:secret@rabbitmq:5672/%2f`
    /// (`amqps://` for TLS; `?heartbeat=10` and the like in the query).
    pub url: String,
    /// The app whose events this publisher sends; every event carries it.
    pub app: AppName,
    /// The exchange to publish to: session-guard's `amqp.events_exchange`
    /// (default [`names::EVENTS_EXCHANGE`]).
    pub exchange: String,
    /// Events held in memory while the broker is away or slower than the
    /// app; when full, the drop policy of [`EventBuilder::send`] applies.
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
    /// [`PublisherStats::coalesced_requests`]. Logins and logouts are never
    /// coalesced. [`Duration::ZERO`] turns coalescing off: every request is
    /// published. Default [`DEFAULT_REQUEST_INTERVAL`] (the worker's
    /// default last-seen resolution); see [`EventBuilder::send`] for what a
    /// coalesced request loses.
    pub request_interval: Duration,
    /// Sessions coalescing remembers, at most; the least recently used is
    /// forgotten first, and a forgotten session's next request is published
    /// at once (one event more, nothing lost). At least 1 while
    /// `request_interval` is not zero ([`EventPublisher::connect`] refuses 0
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

/// Why [`EventPublisher::connect`], [`EventPublisher::flush`] or
/// [`EventPublisher::close`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// A setting is out of range or the URL does not parse; the text names
    /// which.
    #[error("invalid publisher configuration: {0}")]
    Config(String),
    /// The broker was unreachable or refused the connection (wrong
    /// credentials, unknown vhost...) when the publisher started. The URL is
    /// shown without its password.
    #[error("cannot connect to RabbitMQ at {url}: {error}")]
    Connect {
        /// The broker's URL, password removed.
        url: String,
        /// What lapin reported.
        error: lapin::Error,
    },
    /// The background task ended (its runtime shut down, or it panicked)
    /// before every event handed over was confirmed.
    #[error("the publisher's background task stopped before every event was confirmed")]
    Stopped,
}

/// Why [`EventBuilder::send`] did not take an event.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The worker would refuse the event (and dead-letter it); the text is
    /// the reason it would give, e.g. `session_id: must be 1-256 characters,
    /// got 0`.
    #[error("invalid event: {0}")]
    Invalid(EventError),
    /// The buffer is full of logins and logouts (the broker has been away
    /// for a while, or is slower than the app): the event is handed back, to
    /// send again later or to act on (e.g. refuse the login).
    #[error("the publisher's buffer is full of logins and logouts; the event was not taken")]
    BufferFull(Box<EventBody>),
    /// The publisher was closed.
    #[error("the publisher is closed")]
    Closed,
}

/// Counters since the publisher connected, and what it holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Events the broker confirmed (each counted once, however many times
    /// it was published).
    pub published: u64,
    /// Request events dropped because the buffer was full: new requests,
    /// and the oldest buffered requests, evicted to make room for logins
    /// and logouts.
    pub dropped_requests: u64,
    /// Logins and logouts handed back with [`SendError::BufferFull`].
    pub refused_full: u64,
    /// Request events not published because their session published one
    /// less than [`PublisherConfig::request_interval`] before (by
    /// `occurred_at`), or a newer one: taken care of, so `send` returned
    /// `Ok`. Not counted in `dropped_requests`, which is about a full
    /// buffer.
    pub coalesced_requests: u64,
    /// Publishes of events that had been published before and were not
    /// confirmed: after a connection loss, a nack or an unroutable return.
    pub republished: u64,
    /// Events in the buffer now, not yet taken by the background task.
    pub buffered: usize,
    /// Events the background task has taken from the buffer and the broker
    /// has not confirmed yet: published, being published, or waiting for
    /// the next connection to be published (again).
    pub in_flight: usize,
}

/// Publishes one app's session events to session-guard. Cheap to clone
/// (an [`Arc`] inside): clone it into every handler that needs it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use session_guard_client::{EventPublisher, PublisherConfig};
/// use session_guard_client::protocol::event::AppName;
///
/// let app = AppName::parse("shop")?;
/// let publisher =
///     EventPublisher::connect(PublisherConfig::new("amqp://shop:secret@localhost:5672/%2f", app))
///         .await?;
/// publisher
///     .login("8f2c1e", "42")
///     .ip("203.0.113.7".parse()?)
///     .user_agent("Firefox/130.0")
///     .send()?;
/// publisher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventPublisher {
    /// Shared by every clone; its drop tells the task that no handle is
    /// left.
    inner: Arc<Inner>,
}

/// What the clones of one publisher share.
struct Inner {
    /// State shared with the background task.
    shared: Arc<Shared>,
    /// The background task, taken by the first [`EventPublisher::close`].
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The task delivers what it still holds, then ends.
        self.shared.handles_gone.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisher")
            .field("app", &self.inner.shared.app)
            .field("stats", &self.stats())
            .finish()
    }
}

impl EventPublisher {
    /// Connects once (an unreachable or refusing broker is an error here),
    /// then a background task keeps the connection and publishes. Must be
    /// called within a tokio runtime; the task runs on it.
    pub async fn connect(config: PublisherConfig) -> Result<EventPublisher, PublisherError> {
        if config.capacity == 0 {
            return Err(PublisherError::Config("capacity must be at least 1".into()));
        }
        if config.max_in_flight == 0 {
            return Err(PublisherError::Config(
                "max_in_flight must be at least 1".into(),
            ));
        }
        let coalescer = if config.request_interval.is_zero() {
            None
        } else {
            let capacity = NonZeroUsize::new(config.recent_sessions).ok_or_else(|| {
                PublisherError::Config(
                    "recent_sessions must be at least 1 while request_interval is not zero \
                     (a zero request_interval turns request coalescing off)"
                        .into(),
                )
            })?;
            Some(Mutex::new(Coalescer::new(
                config.request_interval,
                capacity,
            )))
        };
        if config.exchange.len() > 255 {
            return Err(PublisherError::Config(format!(
                "exchange: longer than 255 bytes ({})",
                config.exchange.len()
            )));
        }
        let uri: AMQPUri = config.url.parse().map_err(|e: String| {
            let shown = redact_url(&config.url);
            PublisherError::Config(format!(
                "url: cannot parse {shown}: {}",
                e.replace(&config.url, &shown)
            ))
        })?;
        let target = Target::new(&config, uri);
        let link = Link::open(&target)
            .await
            .map_err(|error| PublisherError::Connect {
                url: redact_url(&config.url),
                error,
            })?;
        let (progress, _) = watch::channel(Progress {
            resolved: 0,
            running: true,
        });
        let shared = Arc::new(Shared {
            app: config.app.clone(),
            buffer: Mutex::new(Buffer::new(config.capacity)),
            closed: AtomicBool::new(false),
            coalescer,
            wake: Notify::new(),
            wants_events: AtomicBool::new(false),
            published: AtomicU64::new(0),
            republished: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            handles_gone: AtomicBool::new(false),
            progress,
            drop_warning: DropWarning::new(),
        });
        let task = Task::new(shared.clone(), target, &config);
        let handle = tokio::spawn(task.run(link));
        Ok(EventPublisher {
            inner: Arc::new(Inner {
                shared,
                task: Mutex::new(Some(handle)),
            }),
        })
    }

    /// A login: the user authenticated and the session began.
    pub fn login(&self, session_id: &str, user_id: &str) -> EventBuilder<'_> {
        self.event(EventKind::Login, session_id).user(user_id)
    }

    /// An authenticated request made with the session. At most one per
    /// session per [`PublisherConfig::request_interval`] is published, the
    /// first at once; the others are coalesced (see [`EventBuilder::send`]).
    /// Requests are also the first events dropped when the buffer is full
    /// (the next request says the same).
    pub fn request(&self, session_id: &str, user_id: &str) -> EventBuilder<'_> {
        self.event(EventKind::Request, session_id).user(user_id)
    }

    /// A logout: the session ended. The user is optional
    /// ([`EventBuilder::user`]).
    pub fn logout(&self, session_id: &str) -> EventBuilder<'_> {
        self.event(EventKind::Logout, session_id)
    }

    /// "Log out my other devices": session-guard revokes every other active
    /// session of the user in this app; this one stays.
    pub fn logout_others(&self, session_id: &str, user_id: &str) -> EventBuilder<'_> {
        self.event(EventKind::LogoutOthers, session_id)
            .user(user_id)
    }

    /// "Log out everywhere": session-guard revokes every session of the
    /// user in this app, this one too.
    pub fn logout_all(&self, session_id: &str, user_id: &str) -> EventBuilder<'_> {
        self.event(EventKind::LogoutAll, session_id).user(user_id)
    }

    /// What the app claims about the user changed (a group joined or left,
    /// a flag set): `attributes` replaces the app's claim for the user, and
    /// session-guard checks the user's sessions against the limits it gives
    /// at once, without waiting for a request. The event names no session.
    /// Send the claims with each login, and this event when they change;
    /// requests then need carry none.
    pub fn attributes(&self, user_id: &str, attributes: Map<String, Value>) -> EventBuilder<'_> {
        EventBuilder {
            publisher: self,
            body: EventBody::claims(&self.inner.shared.app, user_id, attributes, Utc::now()),
        }
    }

    /// An event of `kind` with nothing but the session and the time.
    fn event(&self, kind: EventKind, session_id: &str) -> EventBuilder<'_> {
        EventBuilder {
            publisher: self,
            body: EventBody::new(kind, &self.inner.shared.app, session_id, Utc::now()),
        }
    }

    /// Hands over an event built elsewhere, e.g. one a
    /// [`SendError::BufferFull`] handed back. Same checks and policy as
    /// [`EventBuilder::send`]; its `app` must be this publisher's.
    pub fn send_body(&self, body: EventBody) -> Result<(), SendError> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let coalescer = shared.coalescer.as_ref();
        // The cheap path first: a request its session made less than an
        // interval after its last published one costs a lookup, and is
        // neither checked nor serialized. An event of another app is left
        // to `prepare` to refuse.
        if body.kind == EventKind::Request
            && body.app == shared.app.as_str()
            && let Some(coalescer) = coalescer
            && let Some(session) = body.session_id.as_deref()
            && lock(coalescer).check(session, body.occurred_at) == Verdict::Coalesce
        {
            return Ok(());
        }
        let json = match prepare(&shared.app, &body) {
            Ok(json) => json,
            Err(e) => return Err(SendError::Invalid(e)),
        };
        // `prepare` refused every event of these kinds that names no session.
        if let Some(coalescer) = coalescer
            && let Some(session) = body.session_id.as_deref()
        {
            let mut coalescer = lock(coalescer);
            match body.kind {
                // Decided again, and recorded if it goes out, now that the
                // request is valid: another thread may have published one
                // of the same session since the check.
                EventKind::Request
                    if coalescer.admit(session, body.occurred_at) == Verdict::Coalesce =>
                {
                    return Ok(());
                }
                // The session ended: its id will not be used again.
                EventKind::Logout | EventKind::LogoutAll => coalescer.forget(session),
                // A request admitted above goes out; logins record nothing
                // (the session's first request goes at once), and the
                // session of a logout_others stays.
                _ => {}
            }
        }
        let kind = body.kind;
        let pushed = shared.lock_buffer().push(kind, json);
        match pushed {
            Pushed::Queued => {
                shared.event_added();
                Ok(())
            }
            Pushed::Evicted(counts) => {
                shared.event_added();
                shared.drop_warning.note(&shared.app, counts);
                Ok(())
            }
            Pushed::Dropped(counts) => {
                shared.drop_warning.note(&shared.app, counts);
                Ok(())
            }
            Pushed::Full(counts) => {
                shared.drop_warning.note(&shared.app, counts);
                Err(SendError::BufferFull(Box::new(body)))
            }
            Pushed::Closed => Err(SendError::Closed),
        }
    }

    /// Counters since the publisher connected, and what it holds now.
    pub fn stats(&self) -> PublisherStats {
        let shared = &self.inner.shared;
        let (dropped_requests, refused_full, buffered) = {
            let buffer = shared.lock_buffer();
            (buffer.dropped_requests, buffer.refused_full, buffer.len())
        };
        let coalesced_requests = shared
            .coalescer
            .as_ref()
            .map_or(0, |coalescer| lock(coalescer).coalesced());
        PublisherStats {
            published: shared.published.load(Ordering::Relaxed),
            dropped_requests,
            refused_full,
            coalesced_requests,
            republished: shared.republished.load(Ordering::Relaxed),
            buffered,
            in_flight: shared.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Waits until every event handed over so far is confirmed by the
    /// broker (or was dropped by the buffer policy, and counted). While the
    /// broker is away this waits for it to come back: wrap it in
    /// `tokio::time::timeout` to bound the wait. Events handed over while it
    /// waits are not waited for.
    pub async fn flush(&self) -> Result<(), PublisherError> {
        let shared = &self.inner.shared;
        let target = shared.lock_buffer().next_seq;
        let mut progress = shared.progress.subscribe();
        // The task reports progress when it is woken: make sure it is.
        shared.wake.notify_one();
        let reached = progress
            .wait_for(|p| p.resolved >= target || !p.running)
            .await
            .map(|p| p.resolved >= target)
            .unwrap_or(false);
        if reached {
            Ok(())
        } else {
            Err(PublisherError::Stopped)
        }
    }

    /// Flushes, then stops the background task and closes the connection.
    /// Events sent afterwards, through any clone, get [`SendError::Closed`].
    /// Like [`EventPublisher::flush`], waits for the broker if it is away.
    pub async fn close(self) -> Result<(), PublisherError> {
        let shared = self.inner.shared.clone();
        shared.lock_buffer().closed = true;
        shared.closed.store(true, Ordering::Release);
        let flushed = self.flush().await;
        shared.stop.store(true, Ordering::Release);
        shared.wake.notify_one();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match task {
            Some(task) => {
                let _ = task.await;
            }
            None => {
                // Another clone is closing: wait for the task to end.
                let mut progress = shared.progress.subscribe();
                let _ = progress.wait_for(|p| !p.running).await;
            }
        }
        flushed
    }
}

/// One event being built; [`EventBuilder::send`] hands it over. Built by
/// [`EventPublisher::login`] and its siblings; `occurred_at` is the time the
/// builder was made unless set.
#[must_use = "an event is only handed over by send()"]
pub struct EventBuilder<'a> {
    /// Where `send` hands it to.
    publisher: &'a EventPublisher,
    /// The event, as it will be published.
    body: EventBody,
}

impl fmt::Debug for EventBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBuilder")
            .field("body", &self.body)
            .finish()
    }
}

impl EventBuilder<'_> {
    /// The authenticated user (required for all but a logout).
    pub fn user(mut self, user_id: &str) -> Self {
        self.body.user_id = Some(user_id.to_owned());
        self
    }

    /// The client's address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.body.ip = Some(ip);
        self
    }

    /// The client's user agent (at most 512 characters).
    pub fn user_agent(mut self, ua: &str) -> Self {
        self.body.user_agent = Some(ua.to_owned());
        self
    }

    /// When the app's session expires by itself.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.body.expires_at = Some(at);
        self
    }

    /// What the app claims about the user, for session-guard's rule hooks
    /// (`superuser`, `roles`...). Replaces the app's previous claim for the
    /// user, even when empty; without it the previous claim stands.
    pub fn attributes(mut self, a: Map<String, Value>) -> Self {
        self.body.attributes = Some(a);
        self
    }

    /// When it happened, if not when the builder was made.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.body.occurred_at = at;
        self
    }

    /// The app's own id for the event (shown in session-guard's log).
    pub fn event_id(mut self, id: &str) -> Self {
        self.body.event_id = Some(id.to_owned());
        self
    }

    /// The event as built so far.
    pub fn body(&self) -> &EventBody {
        &self.body
    }

    /// Hands the event over: never waits on the network (no `.await`, no
    /// network I/O; the rate-limited warning below is the only log line it
    /// may write), and may be called from any thread.
    ///
    /// A `request` is coalesced first (unless
    /// [`PublisherConfig::request_interval`] is zero): if its session
    /// published a request less than the interval before it, by
    /// `occurred_at`, or a newer one, it is dropped, counted in
    /// [`PublisherStats::coalesced_requests`], and `send` returns `Ok`. It
    /// is dropped whole, whatever it carries: its `ip`, `user_agent`,
    /// `expires_at` and `attributes` never reach the worker, and it is not
    /// checked either. So send claims (`attributes`) with a login, and a
    /// claim that changes during a session with an event of its own, never
    /// with a request only. A login never coalesces and records nothing (the
    /// session's first request goes at once); a logout or logout_all makes
    /// the publisher forget the session.
    ///
    /// Then the event is checked with the worker's own rules
    /// ([`SendError::Invalid`]). When the buffer is full (the broker is
    /// away, or slower than the app):
    /// - a new `request` is dropped, counted in
    ///   [`PublisherStats::dropped_requests`], and `send` returns `Ok`: the
    ///   session's next request says the same;
    /// - a login, logout, logout_others or logout_all evicts the oldest
    ///   buffered request (counted the same way), or, when the buffer holds
    ///   none, is handed back with [`SendError::BufferFull`] (counted in
    ///   [`PublisherStats::refused_full`]).
    ///
    /// Drops and refusals are also logged, one warning per 10 s at most.
    pub fn send(self) -> Result<(), SendError> {
        self.publisher.send_body(self.body)
    }
}

/// Checks an event as the worker will (all but its clock) and returns the
/// message body: the exact bytes checked are the bytes published.
fn prepare(app: &AppName, body: &EventBody) -> Result<Vec<u8>, EventError> {
    if body.app != app.as_str() {
        return Err(EventError::Invalid {
            field: "app",
            problem: format!(
                "this publisher sends events of app {:?}, not {:?}",
                app.as_str(),
                body.app
            ),
        });
    }
    let json = body.to_json();
    SessionEvent::decode(&json)?;
    Ok(json)
}

/// The events waiting to be taken by the background task, oldest first,
/// with the drop policy for when it is full. Pure: no I/O, no time.
struct Buffer {
    /// Events in the order they were handed over; an evicted request leaves
    /// an empty slot until it reaches the front.
    slots: VecDeque<Slot>,
    /// Sequence numbers of the buffered requests, oldest first: the
    /// eviction order.
    requests: VecDeque<u64>,
    /// Events in `slots` that are not evicted.
    live: usize,
    /// Most live events.
    capacity: usize,
    /// The sequence number the next event gets.
    next_seq: u64,
    /// Set by close: nothing more is taken.
    closed: bool,
    /// Requests dropped, new or evicted.
    dropped_requests: u64,
    /// Logins and logouts handed back because the buffer was full.
    refused_full: u64,
}

/// A place in the buffer.
struct Slot {
    /// The event's sequence number: its place in the order of handing over.
    seq: u64,
    /// `None` once evicted.
    entry: Option<Entry>,
}

/// An event handed over: what the background task publishes.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// Its place in the order of handing over.
    seq: u64,
    /// What happened: the routing key's first part.
    kind: EventKind,
    /// The message body.
    body: Vec<u8>,
}

/// The drop counters after a push that dropped or refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DropCounts {
    /// Requests dropped so far.
    dropped_requests: u64,
    /// Logins and logouts refused so far.
    refused_full: u64,
    /// The buffer's capacity.
    capacity: usize,
}

/// What became of an event pushed into the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    /// Buffered.
    Queued,
    /// Buffered in place of the oldest buffered request.
    Evicted(DropCounts),
    /// A request, dropped: the buffer is full.
    Dropped(DropCounts),
    /// A login or logout refused: the buffer is full of them.
    Full(DropCounts),
    /// The publisher is closed.
    Closed,
}

impl Buffer {
    fn new(capacity: usize) -> Buffer {
        Buffer {
            slots: VecDeque::new(),
            requests: VecDeque::new(),
            live: 0,
            capacity,
            next_seq: 0,
            closed: false,
            dropped_requests: 0,
            refused_full: 0,
        }
    }

    /// Events buffered.
    fn len(&self) -> usize {
        self.live
    }

    fn counts(&self) -> DropCounts {
        DropCounts {
            dropped_requests: self.dropped_requests,
            refused_full: self.refused_full,
            capacity: self.capacity,
        }
    }

    /// Adds an event, applying the drop policy when full.
    fn push(&mut self, kind: EventKind, body: Vec<u8>) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        let mut evicted = false;
        if self.live >= self.capacity {
            if kind == EventKind::Request {
                self.dropped_requests += 1;
                return Pushed::Dropped(self.counts());
            }
            let Some(oldest) = self.requests.pop_front() else {
                self.refused_full += 1;
                return Pushed::Full(self.counts());
            };
            // Slots are in sequence order: binary search finds it.
            if let Ok(i) = self.slots.binary_search_by_key(&oldest, |s| s.seq) {
                self.slots[i].entry = None;
            }
            self.live -= 1;
            self.dropped_requests += 1;
            self.trim_front();
            evicted = true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if kind == EventKind::Request {
            self.requests.push_back(seq);
        }
        self.slots.push_back(Slot {
            seq,
            entry: Some(Entry { seq, kind, body }),
        });
        self.live += 1;
        if evicted {
            Pushed::Evicted(self.counts())
        } else {
            Pushed::Queued
        }
    }

    /// Moves the oldest buffered events, at most `max`, to `taken`, in
    /// order.
    fn take_into(&mut self, max: usize, taken: &mut Vec<Entry>) {
        let start = taken.len();
        while taken.len() - start < max {
            match self.slots.pop_front() {
                Some(Slot {
                    entry: Some(entry), ..
                }) => taken.push(entry),
                Some(_) => {}
                None => break,
            }
        }
        if let Some(last) = taken.last() {
            // Requests up to the last one taken have all left.
            while self.requests.front().is_some_and(|seq| *seq <= last.seq) {
                self.requests.pop_front();
            }
        }
        self.live -= taken.len() - start;
        self.trim_front();
    }

    /// Drops the evicted slots at the front.
    fn trim_front(&mut self) {
        while self.slots.front().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop_front();
        }
    }

    /// The sequence number of the oldest buffered event, or of the next one
    /// if none is: every event before it has left the buffer.
    fn first_seq(&self) -> u64 {
        self.slots.front().map_or(self.next_seq, |s| s.seq)
    }
}

/// How far the background task has got, for flush and close.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every event with a lower sequence number is confirmed or dropped.
    resolved: u64,
    /// The task has not ended.
    running: bool,
}

/// State shared by the handles and the background task.
struct Shared {
    /// The app every event is for.
    app: AppName,
    /// Events not yet taken by the task.
    buffer: Mutex<Buffer>,
    /// Set by close, like the buffer's own flag: a request that would be
    /// coalesced never reaches the buffer, and must still get
    /// [`SendError::Closed`].
    closed: AtomicBool,
    /// The sessions that published a request lately; `None` when
    /// coalescing is off (a zero [`PublisherConfig::request_interval`]).
    coalescer: Option<Mutex<Coalescer>>,
    /// Wakes the task: new events it waits for, a flush, a close, the last
    /// handle gone.
    wake: Notify,
    /// The task waits for new events: the next sender wakes it. Waking a
    /// parked task costs the sender a system call, so senders only do it
    /// when the task asked (not while it is busy, or waits for confirms
    /// with a full window).
    wants_events: AtomicBool,
    /// Events confirmed by the broker.
    published: AtomicU64,
    /// Publishes of events published before.
    republished: AtomicU64,
    /// Events the task holds unconfirmed.
    in_flight: AtomicUsize,
    /// Set by close once flushed: the task ends.
    stop: AtomicBool,
    /// Every handle is gone: the task ends once it holds nothing.
    handles_gone: AtomicBool,
    /// The task's progress, for flush and close.
    progress: watch::Sender<Progress>,
    /// Rate limit of the warnings about dropped events.
    drop_warning: DropWarning,
}

impl Shared {
    /// After an event was buffered: wakes the task if it waits for one.
    fn event_added(&self) {
        // The task sets the flag before it checks the buffer under the
        // lock, and the sender pushed under the lock before reading it:
        // either the task sees the event or the sender sees the flag.
        if self.wants_events.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Before the task waits with room for events: `true` if one is
    /// already buffered (do not wait), else the next sender wakes it.
    fn want_events(&self) -> bool {
        self.wants_events.store(true, Ordering::Release);
        if self.lock_buffer().len() > 0 {
            self.wants_events.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn lock_buffer(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.buffer)
    }
}

/// Locks a mutex of the shared state. The buffer and the coalescer are
/// consistent after every statement that can panic (none should): a
/// poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Warns about dropped and refused events at most once per
/// [`DROP_WARNING_INTERVAL`], from whichever sender drops one when it is
/// due: a lock-free check on the caller's path.
struct DropWarning {
    /// When the publisher started: the clock's origin.
    origin: Instant,
    /// Milliseconds after `origin` before which no warning is due.
    next_ms: AtomicU64,
}

impl DropWarning {
    fn new() -> DropWarning {
        DropWarning {
            origin: Instant::now(),
            next_ms: AtomicU64::new(0),
        }
    }

    fn note(&self, app: &AppName, counts: DropCounts) {
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let after = now + DROP_WARNING_INTERVAL.as_millis() as u64;
        if self
            .next_ms
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        tracing::warn!(
            app = app.as_str(),
            dropped_requests = counts.dropped_requests,
            refused_full = counts.refused_full,
            capacity = counts.capacity,
            "session-guard publisher: buffer full (the broker is away or slower than the app): \
             {} request events dropped and {} logins/logouts refused so far",
            counts.dropped_requests,
            counts.refused_full,
        );
    }
}

/// Where and how the task publishes.
struct Target {
    /// The broker.
    uri: AMQPUri,
    /// The broker's URL without its password, for logs.
    shown_url: String,
    /// Shown next to the connection in RabbitMQ's management UI and
    /// `rabbitmqctl list_connections`.
    connection_name: String,
    /// The events exchange.
    exchange: ShortString,
    /// The routing key of each kind of event, by [`kind_index`].
    routing_keys: [ShortString; 6],
    /// Every message's properties.
    properties: BasicProperties,
}

impl Target {
    fn new(config: &PublisherConfig, uri: AMQPUri) -> Target {
        let app = &config.app;
        let key = |kind| ShortString::from(names::event_routing_key(kind, app));
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id(app.as_str().into());
        // With a password login the broker knows the user and checks the
        // property against it; session-guard's amqp.require_user_id needs
        // it. Other mechanisms take the user from elsewhere (a client
        // certificate), so the property is left out.
        let mechanism = uri.query.auth_mechanism.unwrap_or_default();
        if matches!(mechanism, SASLMechanism::Plain | SASLMechanism::AMQPlain) {
            properties = properties.with_user_id(uri.authority.userinfo.username.as_str().into());
        }
        Target {
            shown_url: redact_url(&config.url),
            connection_name: format!("session-guard publisher ({})", app.as_str()),
            exchange: config.exchange.as_str().into(),
            routing_keys: [
                key(EventKind::Login),
                key(EventKind::Request),
                key(EventKind::Logout),
                key(EventKind::LogoutOthers),
                key(EventKind::LogoutAll),
                key(EventKind::Attributes),
            ],
            properties,
            uri,
        }
    }
}

/// Index of a kind in [`Target::routing_keys`].
fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::Login => 0,
        EventKind::Request => 1,
        EventKind::Logout => 2,
        EventKind::LogoutOthers => 3,
        EventKind::LogoutAll => 4,
        EventKind::Attributes => 5,
    }
}

/// A live connection and its confirm-mode channel.
struct Link {
    /// The connection, closed when the link is dropped by the task.
    connection: Connection,
    /// The channel in confirm mode.
    channel: Channel,
    /// The confirms of the publishes on this channel, tagged with the event.
    confirms: FuturesUnordered<Tagged>,
}

impl Link {
    async fn open(target: &Target) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(target.connection_name.as_str().into());
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri(target.uri.clone(), properties),
        )
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })??;
        let channel = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await;
        match channel {
            Ok(channel) => Ok(Link {
                connection,
                channel,
                confirms: FuturesUnordered::new(),
            }),
            Err(e) => {
                close_in_background(connection, None);
                Err(e)
            }
        }
    }
}

/// Closes a connection without waiting for it; a dead one fails at once.
fn close_in_background(connection: Connection, channel: Option<Channel>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            connection.close(200, "session-guard publisher reconnecting".into()),
        )
        .await;
        // Dropped once the connection is closed: a channel dropped while
        // its connection closes makes lapin log an error.
        drop(channel);
    });
}

/// A publish's confirm, tagged with the event's sequence number.
struct Tagged {
    /// The event.
    seq: u64,
    /// The broker's answer to come.
    confirm: lapin::PublisherConfirm,
}

impl Future for Tagged {
    type Output = (u64, lapin::Result<Confirmation>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let seq = self.seq;
        Pin::new(&mut self.confirm).poll(cx).map(|r| (seq, r))
    }
}

/// An event the task took from the buffer and the broker has not confirmed.
struct Unconfirmed {
    /// What happened: picks the routing key.
    kind: EventKind,
    /// The message body.
    body: Vec<u8>,
    /// Times it was published.
    attempts: u32,
}

/// Why the task gave a connection up.
#[derive(Debug)]
enum Fault {
    /// The connection or channel failed (or the broker closed it).
    Broker(lapin::Error),
    /// The broker refused a message.
    Nack,
    /// No queue is bound for the routing key: the message was returned.
    Unroutable {
        /// The exchange it was published to.
        exchange: ShortString,
        /// Its routing key.
        routing_key: ShortString,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Broker(e) => write!(f, "connection lost: {e}"),
            Fault::Nack => f.write_str("the broker refused an event (nack)"),
            Fault::Unroutable {
                exchange,
                routing_key,
            } => write!(
                f,
                "the broker returned an event: no queue is bound to exchange {exchange} for \
                 routing key {routing_key} (is it session-guard's events exchange, and has \
                 session-guard declared its queue?)"
            ),
        }
    }
}

/// The background task: takes events from the buffer, publishes them, keeps
/// them until confirmed, reconnects.
struct Task {
    /// State shared with the handles.
    shared: Arc<Shared>,
    /// Where to publish.
    target: Target,
    /// Most events held unconfirmed.
    max_in_flight: usize,
    /// Events taken from the buffer and not confirmed, by sequence number.
    unconfirmed: BTreeMap<u64, Unconfirmed>,
    /// Those of `unconfirmed` to publish (again) on the current connection,
    /// oldest first.
    unsent: BTreeSet<u64>,
    /// Pauses between connection attempts.
    backoff: Backoff,
    /// Events just taken from the buffer (kept for its allocation).
    taken: Vec<Entry>,
    /// After a reconnect, until every event held then is confirmed: the
    /// newest of them (`None` if there were none). The backoff starts over
    /// only then, so a broker that accepts connections but refuses or
    /// cannot route an event is not retried at full speed.
    recovering: Option<Option<u64>>,
}

/// Marks the task as ended when it returns, panics or is dropped with its
/// runtime, so flush and close do not wait for it forever.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.progress.send_modify(|p| p.running = false);
    }
}

impl Task {
    fn new(shared: Arc<Shared>, target: Target, config: &PublisherConfig) -> Task {
        Task {
            shared,
            target,
            max_in_flight: config.max_in_flight,
            unconfirmed: BTreeMap::new(),
            unsent: BTreeSet::new(),
            backoff: Backoff::new(config.max_backoff),
            taken: Vec::with_capacity(TAKE_BATCH),
            recovering: Some(None),
        }
    }

    async fn run(mut self, link: Link) {
        let _running = RunningGuard(self.shared.clone());
        let mut link = Some(link);
        loop {
            if let Some(current) = link.as_mut() {
                match self.pump(current).await {
                    Ok(()) => {
                        if let Some(done) = link.take() {
                            // Close returns once the connection is closed.
                            let _ = tokio::time::timeout(
                                CLOSE_TIMEOUT,
                                done.connection
                                    .close(200, "session-guard publisher closed".into()),
                            )
                            .await;
                        }
                        self.report_progress();
                        return;
                    }
                    Err(fault) => {
                        if let Some(lost) = link.take() {
                            close_in_background(lost.connection, Some(lost.channel));
                        }
                        self.requeue();
                        tracing::warn!(
                            app = self.shared.app.as_str(),
                            unconfirmed = self.unconfirmed.len(),
                            "session-guard publisher: {fault}; reconnecting; the {} unconfirmed \
                             events it holds go first on the next connection",
                            self.unconfirmed.len()
                        );
                        if !self.pause().await {
                            return;
                        }
                    }
                }
                continue;
            }
            if self.finished() {
                return;
            }
            if self.unconfirmed.is_empty() && !self.shared.want_events() {
                // Nothing to publish: connect when there is.
                self.report_progress();
                self.shared.wake.notified().await;
                continue;
            }
            match Link::open(&self.target).await {
                Ok(opened) => {
                    tracing::info!(
                        app = self.shared.app.as_str(),
                        "session-guard publisher: connected to {}",
                        self.target.shown_url
                    );
                    self.recovering = Some(self.unconfirmed.keys().next_back().copied());
                    link = Some(opened);
                }
                Err(e) => {
                    tracing::warn!(
                        app = self.shared.app.as_str(),
                        "session-guard publisher: cannot connect to {}: {e}; {} events held",
                        self.target.shown_url,
                        self.unconfirmed.len() + self.shared.lock_buffer().len()
                    );
                    if !self.pause().await {
                        return;
                    }
                }
            }
        }
    }

    /// Close was called and everything is flushed, or every handle is gone
    /// and nothing is left to publish.
    fn finished(&self) -> bool {
        if self.shared.stop.load(Ordering::Acquire) {
            return true;
        }
        self.shared.handles_gone.load(Ordering::Acquire)
            && self.unconfirmed.is_empty()
            && self.shared.lock_buffer().len() == 0
    }

    /// Publishes until the task is finished (`Ok`) or the connection fails.
    async fn pump(&mut self, link: &mut Link) -> Result<(), Fault> {
        loop {
            // Confirms that are in: no waiting.
            while let Some(Some((seq, result))) = link.confirms.next().now_or_never() {
                self.confirmed(seq, result)?;
            }
            if self.unsent.is_empty() && self.unconfirmed.len() < self.max_in_flight {
                self.take();
            }
            if let Some(seq) = self.unsent.pop_first() {
                self.publish(link, seq).await?;
                continue;
            }
            self.report_progress();
            if self.finished() {
                return Ok(());
            }
            if self.unconfirmed.len() < self.max_in_flight && self.shared.want_events() {
                continue;
            }
            tokio::select! {
                Some((seq, result)) = link.confirms.next(), if !link.confirms.is_empty() => {
                    self.confirmed(seq, result)?;
                }
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Moves events from the buffer to `unconfirmed`, as many as the window
    /// allows, a batch per lock.
    fn take(&mut self) {
        let room = self.max_in_flight.saturating_sub(self.unconfirmed.len());
        if room == 0 {
            return;
        }
        // The maps are filled after the lock is released, and the vector is
        // reused: senders wait for the moves out of the buffer only.
        let mut taken = std::mem::take(&mut self.taken);
        self.shared
            .lock_buffer()
            .take_into(room.min(TAKE_BATCH), &mut taken);
        for entry in taken.drain(..) {
            self.unsent.insert(entry.seq);
            self.unconfirmed.insert(
                entry.seq,
                Unconfirmed {
                    kind: entry.kind,
                    body: entry.body,
                    attempts: 0,
                },
            );
        }
        self.taken = taken;
        self.shared
            .in_flight
            .store(self.unconfirmed.len(), Ordering::Relaxed);
    }

    async fn publish(&mut self, link: &mut Link, seq: u64) -> Result<(), Fault> {
        let Some(event) = self.unconfirmed.get_mut(&seq) else {
            return Ok(());
        };
        let confirm = link
            .channel
            .basic_publish(
                self.target.exchange.clone(),
                self.target.routing_keys[kind_index(event.kind)].clone(),
                BasicPublishOptions {
                    // Unroutable events come back instead of vanishing.
                    mandatory: true,
                    immediate: false,
                },
                &event.body,
                self.target.properties.clone(),
            )
            .await
            .map_err(Fault::Broker)?;
        if event.attempts > 0 {
            self.shared.republished.fetch_add(1, Ordering::Relaxed);
        }
        event.attempts += 1;
        link.confirms.push(Tagged { seq, confirm });
        Ok(())
    }

    /// Handles the broker's answer about one event.
    fn confirmed(&mut self, seq: u64, result: lapin::Result<Confirmation>) -> Result<(), Fault> {
        match result {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                if self.unconfirmed.remove(&seq).is_some() {
                    self.shared.published.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .in_flight
                        .store(self.unconfirmed.len(), Ordering::Relaxed);
                }
                if let Some(newest) = self.recovering {
                    let held =
                        newest.is_some_and(|n| self.unconfirmed.range(..=n).next().is_some());
                    if !held {
                        self.recovering = None;
                        self.backoff.reset();
                    }
                }
                if self.shared.progress.receiver_count() > 0 {
                    self.report_progress();
                }
                Ok(())
            }
            Ok(Confirmation::Ack(Some(returned))) => Err(Fault::Unroutable {
                exchange: returned.delivery.exchange.clone(),
                routing_key: returned.delivery.routing_key.clone(),
            }),
            Ok(Confirmation::Nack(_)) => Err(Fault::Nack),
            Err(e) => Err(Fault::Broker(e)),
        }
    }

    /// After a fault: everything unconfirmed is published again on the next
    /// connection, oldest first.
    fn requeue(&mut self) {
        self.unsent = self.unconfirmed.keys().copied().collect();
    }

    /// Sleeps before the next connection attempt, still answering flushes
    /// and handles going away. `false` if the task should end.
    async fn pause(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + self.backoff.next_delay();
        loop {
            self.report_progress();
            if self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Tells flush and close how far the task has got.
    fn report_progress(&self) {
        let buffered = self.shared.lock_buffer().first_seq();
        let resolved = self
            .unconfirmed
            .keys()
            .next()
            .map_or(buffered, |first| (*first).min(buffered));
        self.shared.progress.send_if_modified(|p| {
            let changed = p.resolved != resolved;
            p.resolved = resolved;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: EventKind, n: u32) -> Vec<u8> {
        format!("{}-{n}", kind.as_str()).into_bytes()
    }

    fn push(b: &mut Buffer, kind: EventKind, n: u32) -> Pushed {
        b.push(kind, body(kind, n))
    }

    fn take(b: &mut Buffer, max: usize) -> Vec<Entry> {
        let mut taken = Vec::new();
        b.take_into(max, &mut taken);
        taken
    }

    fn drain(b: &mut Buffer) -> Vec<String> {
        take(b, usize::MAX)
            .into_iter()
            .map(|e| String::from_utf8(e.body).unwrap())
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_new_requests_and_keeps_what_it_holds() {
        let mut b = Buffer::new(3);
        assert_eq!(push(&mut b, EventKind::Login, 1), Pushed::Queued);
        assert_eq!(push(&mut b, EventKind::Request, 1), Pushed::Queued);
        assert_eq!(push(&mut b, EventKind::Request, 2), Pushed::Queued);
        assert_eq!(
            push(&mut b, EventKind::Request, 3),
            Pushed::Dropped(DropCounts {
                dropped_requests: 1,
                refused_full: 0,
                capacity: 3
            })
        );
        assert_eq!(b.len(), 3);
        assert_eq!(drain(&mut b), ["login-1", "request-1", "request-2"]);
    }

    #[test]
    fn a_login_or_logout_evicts_the_oldest_request_and_the_order_stays() {
        let mut b = Buffer::new(4);
        push(&mut b, EventKind::Request, 1);
        push(&mut b, EventKind::Login, 1);
        push(&mut b, EventKind::Request, 2);
        push(&mut b, EventKind::Request, 3);
        assert!(matches!(
            push(&mut b, EventKind::Logout, 1),
            Pushed::Evicted(DropCounts {
                dropped_requests: 1,
                ..
            })
        ));
        assert!(matches!(
            push(&mut b, EventKind::LogoutOthers, 1),
            Pushed::Evicted(DropCounts {
                dropped_requests: 2,
                ..
            })
        ));
        assert_eq!(b.len(), 4);
        assert_eq!(b.dropped_requests, 2);
        assert_eq!(
            drain(&mut b),
            ["login-1", "request-3", "logout-1", "logout_others-1"]
        );
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn with_no_request_left_a_login_is_refused_and_counted() {
        let mut b = Buffer::new(2);
        push(&mut b, EventKind::Login, 1);
        push(&mut b, EventKind::Request, 1);
        assert!(matches!(
            push(&mut b, EventKind::LogoutAll, 1),
            Pushed::Evicted(_)
        ));
        assert_eq!(
            push(&mut b, EventKind::Login, 2),
            Pushed::Full(DropCounts {
                dropped_requests: 1,
                refused_full: 1,
                capacity: 2
            })
        );
        // A request is still dropped, not refused.
        assert!(matches!(
            push(&mut b, EventKind::Request, 2),
            Pushed::Dropped(_)
        ));
        assert_eq!((b.dropped_requests, b.refused_full), (2, 1));
        assert_eq!(drain(&mut b), ["login-1", "logout_all-1"]);
        // Room again once the task took them.
        assert_eq!(push(&mut b, EventKind::Login, 3), Pushed::Queued);
    }

    #[test]
    fn taking_requests_keeps_the_eviction_order_right() {
        let mut b = Buffer::new(3);
        push(&mut b, EventKind::Request, 1);
        push(&mut b, EventKind::Request, 2);
        push(&mut b, EventKind::Login, 1);
        assert_eq!(
            take(&mut b, 1).pop().map(|e| e.body),
            Some(b"request-1".to_vec()),
            "the task takes the oldest"
        );
        push(&mut b, EventKind::Request, 3);
        // Full: the oldest request still buffered is request-2.
        assert!(matches!(
            push(&mut b, EventKind::Login, 2),
            Pushed::Evicted(_)
        ));
        assert_eq!(drain(&mut b), ["login-1", "request-3", "login-2"]);
    }

    #[test]
    fn sequence_numbers_follow_the_handing_over_and_evictions_leave_bounded_gaps() {
        let mut b = Buffer::new(100);
        for n in 0..100 {
            push(&mut b, EventKind::Request, n);
        }
        assert_eq!(b.first_seq(), 0);
        // Every request evicted, one by one, by logins.
        for n in 0..100 {
            assert!(matches!(
                push(&mut b, EventKind::Login, n),
                Pushed::Evicted(_)
            ));
            assert!(b.slots.len() <= 2 * b.capacity);
        }
        // The evicted requests have left the front.
        assert_eq!(b.first_seq(), 100);
        assert_eq!(b.slots.len(), 100);
        let first = take(&mut b, 1).pop().unwrap();
        assert_eq!((first.seq, first.kind), (100, EventKind::Login));
        assert_eq!(b.first_seq(), 101);
        let next: Vec<u64> = take(&mut b, 3).iter().map(|e| e.seq).collect();
        assert_eq!(next, [101, 102, 103]);
        drain(&mut b);
        assert_eq!(b.first_seq(), b.next_seq);
        assert_eq!(b.next_seq, 200);
    }

    #[test]
    fn a_closed_buffer_takes_nothing() {
        let mut b = Buffer::new(2);
        b.closed = true;
        assert_eq!(push(&mut b, EventKind::Login, 1), Pushed::Closed);
        assert_eq!(b.len(), 0);
    }

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    #[test]
    fn a_claim_names_its_user_and_no_session() {
        let at = "2026-11-27T10:00:00Z".parse().unwrap();
        let claim = serde_json::json!({"roles": ["staff"]});
        let body = EventBody::claims(&shop(), "42", claim.as_object().unwrap().clone(), at);
        let json = prepare(&shop(), &body).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("session_id"));
        let event = SessionEvent::decode(&json).unwrap();
        assert_eq!(event.kind, EventKind::Attributes);
        assert_eq!(event.session_id, None);
        assert_eq!(event.user_id.unwrap().as_str(), "42");
        assert_eq!(event.attributes.unwrap()["roles"], claim["roles"]);
    }

    #[test]
    fn events_are_checked_with_the_workers_rules_before_buffering() {
        let at = "2026-11-27T10:00:00Z".parse().unwrap();
        let mut login = EventBody::new(EventKind::Login, &shop(), "s1", at);
        assert_eq!(
            prepare(&shop(), &login).unwrap_err().to_string(),
            "missing field user_id"
        );
        login.user_id = Some("42".into());
        let json = prepare(&shop(), &login).unwrap();
        let event = SessionEvent::decode(&json).unwrap();
        assert_eq!(event.session_id.unwrap().as_str(), "s1");
        login.session_id = Some(String::new());
        assert_eq!(
            prepare(&shop(), &login).unwrap_err().to_string(),
            "session_id: must be 1-256 characters, got 0"
        );
        let blog = EventBody::new(
            EventKind::Logout,
            &AppName::parse("blog").unwrap(),
            "s1",
            at,
        );
        assert_eq!(
            prepare(&shop(), &blog).unwrap_err().to_string(),
            "app: this publisher sends events of app \"shop\", not \"blog\""
        );
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
    }

    #[test]
    fn routing_keys_are_type_dot_app() {
        let uri: AMQPUri = "amqp://shop:secret@localhost".parse().unwrap();
        let target = Target::new(&PublisherConfig::new("amqp://x", shop()), uri);
        for kind in [
            EventKind::Login,
            EventKind::Request,
            EventKind::Logout,
            EventKind::LogoutOthers,
            EventKind::LogoutAll,
        ] {
            assert_eq!(
                target.routing_keys[kind_index(kind)].as_str(),
                format!("{}.shop", kind.as_str())
            );
        }
        assert_eq!(
            target.properties.user_id().as_ref().map(|u| u.as_str()),
            Some("shop")
        );
        assert_eq!(*target.properties.delivery_mode(), Some(2));
        let external: AMQPUri = "amqps://localhost?auth_mechanism=external".parse().unwrap();
        let target = Target::new(&PublisherConfig::new("amqp://x", shop()), external);
        assert_eq!(*target.properties.user_id(), None);
    }
}
