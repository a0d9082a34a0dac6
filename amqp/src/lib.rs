//! What the session-guard worker and `session-guard-client` share about
//! RabbitMQ, written once:
//!
//! - [`quorum`]: the arguments every queue they declare starts from, and the
//!   delivery count RabbitMQ puts on a quorum queue's redeliveries;
//! - [`backoff`]: the jittered, capped, doubling pause between retries;
//! - [`url`]: how a URL is shown, its password masked, and how a list of
//!   URLs is written in one string;
//! - [`brokers`]: several broker addresses (a cluster's nodes) and the one
//!   connect pass the worker and the client make over them.
//!
//! Why a crate of its own: both sides need these, the client crate's public
//! face is what apps program against (plumbing does not belong there), and
//! the wire contract (`session-guard-protocol`) stays free of lapin and of
//! any I/O.

pub mod backoff;
pub mod brokers;
pub mod quorum;
pub mod url;
