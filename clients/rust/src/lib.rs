//! The app side of session-guard.
//!
//! - [`EventPublisher`]: tells session-guard that a user logged in, made a
//!   request or logged out. Handing an event over never waits on the network;
//!   a background task publishes with publisher confirms and retries.
//! - [`RevocationListener`]: receives the revokes session-guard publishes for
//!   your app, once per app however many instances run, and acks each after
//!   your handler ended the session.
//! - [`NoticeListener`]: receives the notices session-guard publishes for
//!   your app (a user signed in from a device or network new to them, in
//!   any app), to email the user about, once per app.
//! - [`api::SessionsApi`] (feature `api`): lists a user's sessions in every
//!   app and ends them, over the worker's sessions API (HTTP). Off by
//!   default, so the publisher and listener pull no HTTP stack.
//!
//! The wire types come from [`session_guard_protocol`], re-exported as
//! [`protocol`].

#![warn(missing_docs)]

pub use session_guard_protocol as protocol;

#[cfg(feature = "api")]
pub mod api;
mod coalesce;
mod connection;
pub mod listener;
pub use listener::{
    Delivered, ListenerConfig, ListenerError, NoticeListener, RevocationListener, Revoke,
    SignInNotice,
};
pub mod publisher;
pub use publisher::{
    EventBuilder, EventPublisher, PublisherConfig, PublisherError, PublisherStats, SendError,
};
