//! What can go wrong: [`PublisherError`] for connecting, flushing and
//! closing, [`SendError`] for handing an event over.

use session_guard_protocol::event::{EventBody, EventError};

/// Why [`EventPublisher::connect`](crate::EventPublisher::connect), [`EventPublisher::flush`](crate::EventPublisher::flush) or
/// [`EventPublisher::close`](crate::EventPublisher::close) failed.
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

/// Why [`EventBuilder::send`](crate::EventBuilder::send) did not take an event.
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
