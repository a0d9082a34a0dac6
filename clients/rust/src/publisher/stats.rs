//! [`PublisherStats`]: what a publisher has done, and holds now.

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
    /// Logins and logouts handed back with [`SendError::BufferFull`](crate::SendError::BufferFull).
    pub refused_full: u64,
    /// Request events not published because their session published one
    /// less than [`PublisherConfig::request_interval`](crate::PublisherConfig::request_interval) before (by
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
