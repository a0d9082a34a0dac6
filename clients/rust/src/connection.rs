//! What the publisher and the listener share about their broker
//! connections: how long an attempt may take. (How long to wait between
//! attempts is `session_guard_amqp::backoff::Backoff`, and how a URL is shown
//! `session_guard_amqp::url::redact_url`, both shared with the worker.)

use std::time::Duration;

/// How long one connection attempt may take (TCP, TLS and the AMQP
/// handshake) before it counts as failed: a broker behind a dropped route
/// would otherwise hold the attempt for the operating system's TCP timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a connection we are done with may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
