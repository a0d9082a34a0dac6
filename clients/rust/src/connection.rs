//! What the publisher and the listener share about their broker
//! connections: how long closing one may take. (Connecting, to one broker
//! or one of several, within a time limit, is
//! `session_guard_amqp::brokers::Brokers::connect`; how long to wait between
//! attempts `session_guard_amqp::backoff::Backoff`, and how a URL is shown
//! `session_guard_amqp::url::redact_url`, all shared with the worker.)

use std::time::Duration;
/// How long closing a connection we are done with may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
