//! [`EventBuilder`]: one event being built, with the optional fields an
//! app may set, handed over by [`EventBuilder::send`].

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use session_guard_protocol::event::EventBody;

use super::error::SendError;
use super::shared::Shared;

/// One event being built; [`EventBuilder::send`] hands it over. Built by
/// [`EventPublisher::login`](crate::EventPublisher::login) and its siblings; `occurred_at` is the time the
/// builder was made unless set.
#[must_use = "an event is only handed over by send()"]
pub struct EventBuilder<'a> {
    /// Where `send` hands it to: the publisher's state.
    shared: &'a Shared,
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

impl<'a> EventBuilder<'a> {
    /// An event to hand over to `shared`.
    pub(super) fn new(shared: &'a Shared, body: EventBody) -> Self {
        EventBuilder { shared, body }
    }

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
    /// [`PublisherConfig::request_interval`](crate::PublisherConfig::request_interval) is zero): if its session
    /// published a request less than the interval before it, by
    /// `occurred_at`, or a newer one, it is dropped, counted in
    /// [`PublisherStats::coalesced_requests`](crate::PublisherStats::coalesced_requests), and `send` returns `Ok`. It
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
    ///   [`PublisherStats::dropped_requests`](crate::PublisherStats::dropped_requests), and `send` returns `Ok`: the
    ///   session's next request says the same;
    /// - a login, logout, logout_others or logout_all evicts the oldest
    ///   buffered request (counted the same way), or, when the buffer holds
    ///   none, is handed back with [`SendError::BufferFull`] (counted in
    ///   [`PublisherStats::refused_full`](crate::PublisherStats::refused_full)).
    ///
    /// Drops and refusals are also logged, one warning per 10 s at most.
    pub fn send(self) -> Result<(), SendError> {
        self.shared.send(self.body)
    }
}
