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
//!
//! The parts, along those seams:
//!
//! - here, the public face: [`EventPublisher`] (connect, the event
//!   constructors, stats, flush, close);
//! - `config`: [`PublisherConfig`] and its defaults;
//! - `builder`: [`EventBuilder`], one event being built;
//! - `error`: [`PublisherError`] and [`SendError`]; `stats`:
//!   [`PublisherStats`];
//! - `shared`: the state the handles and the task share, and the handing
//!   over on the caller's side (coalesce, check, buffer, wake);
//! - `buffer`: the bounded buffer and its drop policy (pure);
//! - `warning`: the rate-limited warning about dropped events;
//! - `task`: the background task (publish, confirm, reconnect, republish);
//! - `link`: the broker side of it (target, connection, confirms).

mod buffer;
mod builder;
mod config;
mod error;
mod link;
mod shared;
mod stats;
mod task;
mod warning;

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::{Map, Value};
use session_guard_amqp::brokers::Brokers;
use session_guard_protocol::event::{EventBody, EventKind};
use tokio::task::JoinHandle;

pub use builder::EventBuilder;
pub use config::{
    DEFAULT_CAPACITY, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_IN_FLIGHT, DEFAULT_RECENT_SESSIONS,
    DEFAULT_REQUEST_INTERVAL, PublisherConfig,
};
pub use error::{PublisherError, SendError};
pub use stats::PublisherStats;

use crate::coalesce::Coalescer;
use link::{Link, OpenError, Target};
use session_guard_amqp::url::redact_url;
use shared::{Shared, lock};
use task::Task;

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
            Some(Coalescer::new(config.request_interval, capacity))
        };
        if config.exchange.len() > 255 {
            return Err(PublisherError::Config(format!(
                "exchange: longer than 255 bytes ({})",
                config.exchange.len()
            )));
        }
        // One URL or several (comma-separated); the message masks passwords.
        let brokers =
            Brokers::parse(&config.url).map_err(|e| PublisherError::Config(format!("url: {e}")))?;
        let target = Target::new(&config, brokers).map_err(PublisherError::Config)?;
        let link = Link::open(&target).await.map_err(|e| match e {
            OpenError::Connect(e) => PublisherError::Connect {
                url: redact_url(&config.url),
                error: e.into_cause(),
            },
            OpenError::Channel(url, error) => PublisherError::Connect { url, error },
        })?;
        let shared = Arc::new(Shared::new(config.app.clone(), config.capacity, coalescer));
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
        let shared = &self.inner.shared;
        EventBuilder::new(
            shared,
            EventBody::claims(&shared.app, user_id, attributes, Utc::now()),
        )
    }

    /// An event of `kind` with nothing but the session and the time.
    fn event(&self, kind: EventKind, session_id: &str) -> EventBuilder<'_> {
        let shared = &self.inner.shared;
        EventBuilder::new(
            shared,
            EventBody::new(kind, &shared.app, session_id, Utc::now()),
        )
    }

    /// Hands over an event built elsewhere, e.g. one a
    /// [`SendError::BufferFull`] handed back. Same checks and policy as
    /// [`EventBuilder::send`]; its `app` must be this publisher's.
    pub fn send_body(&self, body: EventBody) -> Result<(), SendError> {
        self.inner.shared.send(body)
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
