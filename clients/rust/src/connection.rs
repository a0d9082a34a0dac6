//! What the publisher and the listener share about their broker
//! connections: how long an attempt may take, and how a URL is shown. (How
//! long to wait between attempts is `session_guard_amqp::backoff::Backoff`, shared
//! with the worker.)

use std::time::Duration;

/// How long one connection attempt may take (TCP, TLS and the AMQP
/// handshake) before it counts as failed: a broker behind a dropped route
/// would otherwise hold the attempt for the operating system's TCP timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a connection we are done with may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `url` with its password replaced by `***`, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact_url("amqp://shop:s3cret@mq:5672/%2f"),
            "amqp://shop:***@mq:5672/%2f"
        );
        assert_eq!(redact_url("amqp://mq/%2f"), "amqp://mq/%2f");
        assert_eq!(redact_url("amqp://a:b@c@mq"), "amqp://a:***@mq");
        assert_eq!(
            redact_url("amqp://u:p@mq?heartbeat=10"),
            "amqp://u:***@mq?heartbeat=10"
        );
        assert_eq!(redact_url("amqp://guest@mq"), "amqp://guest@mq");
    }
}
