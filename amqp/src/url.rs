//! How a URL that may carry credentials is shown in messages, logs and
//! printed settings: its password masked, one rule wherever a URL is shown.
//!
//! The broker's URLs are the reason it lives here (the worker and the client
//! crate both show them); the worker shows its database URL by the same
//! rule, so `password=` query parameters (a libpq form) are masked too.

use url::Url;

/// What `redact_url` shows for a URL that does not parse: where its
/// password would be cannot be told, so none of it is shown.
pub const UNPARSEABLE_URL: &str = "(a URL that does not parse)";

/// `url` with its password, and any `password=` query parameter, replaced
/// by `***`, so that it can be logged and printed.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return UNPARSEABLE_URL.to_owned();
    };
    if parsed.password().is_some() {
        // Fails only for URLs without a host, which cannot carry a password.
        let _ = parsed.set_password(Some("***"));
    }
    let is_password = |key: &str| key.eq_ignore_ascii_case("password");
    if parsed.query_pairs().any(|(key, _)| is_password(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_password(&key) {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
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
        assert_eq!(
            redact_url("amqp://u:p@mq?heartbeat=10"),
            "amqp://u:***@mq?heartbeat=10"
        );
        assert_eq!(redact_url("amqp://guest@mq"), "amqp://guest@mq");
    }

    #[test]
    fn an_at_sign_in_the_password_does_not_leak_its_start() {
        let shown = redact_url("amqp://a:b@c@mq");
        assert!(!shown.contains("b@c") && !shown.contains(":b"), "{shown}");
        assert!(shown.ends_with("@mq"), "{shown}");
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_shown_at_all() {
        assert_eq!(redact_url("amqp://u:p@[::1"), UNPARSEABLE_URL);
    }
}
