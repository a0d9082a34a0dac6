//! What the publisher and the listener share about their broker
//! connections: how long an attempt may take, how long to wait between
//! attempts, and how a URL is shown.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How long one connection attempt may take (TCP, TLS and the AMQP
/// handshake) before it counts as failed: a broker behind a dropped route
/// would otherwise hold the attempt for the operating system's TCP timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a connection we are done with may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failure, before jitter.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Pauses that double from about 100 ms, with jitter so that instances that
/// lost the broker together do not come back at the same instants, and never
/// exceed the cap.
pub(crate) struct Backoff {
    /// The policy, kept to start over on `reset`.
    builder: ExponentialBuilder,
    /// Where the current run of failures stands.
    delays: ExponentialBackoff,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        // backon's jitter adds up to 100% of each step: steps capped at half
        // of `max` keep every pause within `max`.
        let cap = (max / 2).max(Duration::from_millis(1));
        let builder = ExponentialBuilder::new()
            .with_min_delay(INITIAL_BACKOFF.min(cap))
            .with_max_delay(cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts the iterator never ends.
        self.delays.next().unwrap_or(INITIAL_BACKOFF)
    }

    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

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
    fn pauses_grow_with_jitter_within_the_cap_and_start_over() {
        let max = Duration::from_millis(800);
        let mut b = Backoff::new(max);
        let first = b.next_delay();
        assert!(
            first >= INITIAL_BACKOFF && first < INITIAL_BACKOFF * 2,
            "{first:?}"
        );
        assert!((0..20).all(|_| b.next_delay() <= max));
        b.reset();
        assert!(b.next_delay() < INITIAL_BACKOFF * 2);

        let max = Duration::from_millis(1000);
        let runs: Vec<Vec<Duration>> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(max);
                (0..12).map(|_| b.next_delay()).collect()
            })
            .collect();
        assert!(runs.iter().flatten().all(|d| *d <= max));
        assert!(runs.iter().any(|r| r[3] != runs[0][3]), "jittered");
    }

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
