//! How a URL that may carry credentials is shown in messages, logs and
//! printed settings: its password masked, one rule wherever a URL is shown;
//! and how a list of broker URLs is written in one string.
//!
//! The broker's URLs are the reason it lives here (the worker and the client
//! crate both show them); the worker shows its database URL by the same
//! rule, so `password=` query parameters (a libpq form) are masked too.

use url::Url;

/// What `redact_url` shows for a URL that does not parse: where its
/// password would be cannot be told, so none of it is shown.
pub const UNPARSEABLE_URL: &str = "(a URL that does not parse)";

/// The URLs of a list written in one string, comma-separated
/// (`amqp://a:5672/%2f,amqp://b:5672/%2f`): the environment variable's and
/// Django's form of several brokers. A comma starts a new URL only where
/// what follows it is one (`scheme://`), so a comma in a password stays
/// where it is; spaces around the commas are dropped. One URL is a list of
/// one.
pub fn split_urls(list: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    let mut start = 0;
    for (at, _) in list.match_indices(',') {
        if starts_with_scheme(list[at + 1..].trim_start()) {
            urls.push(list[start..at].trim());
            start = at + 1;
        }
    }
    urls.push(list[start..].trim());
    urls
}

/// Whether `text` starts with `scheme://` (RFC 3986: a letter, then
/// letters, digits, `+`, `-` or `.`).
fn starts_with_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `url` with its password, and any `password=` query parameter, replaced
/// by `***`, so that it can be logged and printed. A comma-separated list
/// ([`split_urls`]) has each of its URLs masked.
pub fn redact_url(url: &str) -> String {
    let urls = split_urls(url);
    if urls.len() > 1 {
        return urls
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

/// [`redact_url`] for one URL. A host list in its authority (libpq's
/// `postgres://u:pw@h1:5432,h2:5433/db`, which the url crate rejects) is
/// replaced by one stand-in host while the URL is masked, then put back.
fn redact_one(url: &str) -> String {
    if let Some((start, end)) = host_list(url) {
        let single = format!("{}{HOST_STAND_IN}{}", &url[..start], &url[end..]);
        let masked = redact_host(&single);
        if masked == UNPARSEABLE_URL {
            return masked;
        }
        return masked.replacen(HOST_STAND_IN, &url[start..end], 1);
    }
    redact_host(url)
}

/// The host that stands for a host list while a URL is masked or edited
/// by a parser that takes one host (`url`, sqlx): a reserved name, never
/// a real host.
pub const HOST_STAND_IN: &str = "host-list.invalid";

/// Where a URL's authority lists several hosts (byte range), if it does
/// (libpq's `h1:p1,h2:p2`).
pub fn host_list(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| start + at);
    let hosts_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    url[hosts_start..end]
        .contains(',')
        .then_some((hosts_start, end))
}

/// [`redact_one`] for a URL with at most one host.
fn redact_host(url: &str) -> String {
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
    fn a_host_list_is_kept_and_its_password_hidden() {
        assert_eq!(
            redact_url("postgres://sg:s3cret@h1:5432,h2:5433/sg?target_session_attrs=read-write"),
            "postgres://sg:***@h1:5432,h2:5433/sg?target_session_attrs=read-write"
        );
        assert_eq!(
            redact_url("postgres://sg@[::1]:5432,h2/sg?password=s3cret"),
            "postgres://sg@[::1]:5432,h2/sg?password=***"
        );
        assert_eq!(redact_url("postgres://h1,h2"), "postgres://h1,h2");
        // The host list is not checked here, only kept; the password is hidden.
        assert!(!redact_url("postgres://u:s3cret@h1,h 2/x").contains("s3cret"));
    }

    #[test]
    fn an_at_sign_in_the_password_does_not_leak_its_start() {
        let shown = redact_url("amqp://a:b@c@mq");
        assert!(!shown.contains("b@c") && !shown.contains(":b"), "{shown}");
        assert!(shown.ends_with("@mq"), "{shown}");
    }

    #[test]
    fn a_list_is_split_at_commas_that_start_a_url() {
        assert_eq!(split_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
        assert_eq!(
            split_urls("amqp://u:p@a:5672/%2f, amqps://u:p@b/%2f,amqp://c"),
            ["amqp://u:p@a:5672/%2f", "amqps://u:p@b/%2f", "amqp://c"]
        );
        // A comma in a password (or anywhere not followed by a URL) stays.
        assert_eq!(
            split_urls("amqp://u:p,q@a/%2f,amqp://u:p,amqp@b"),
            ["amqp://u:p,q@a/%2f", "amqp://u:p,amqp@b"]
        );
        assert_eq!(split_urls(""), [""]);
    }

    #[test]
    fn every_password_of_a_list_is_hidden() {
        assert_eq!(
            redact_url("amqp://u:one@a/%2f, amqp://u:two,x@b/%2f,amqp://c"),
            "amqp://u:***@a/%2f,amqp://u:***@b/%2f,amqp://c"
        );
        // Without the split, the second password would sit in the first
        // URL's path.
        let shown = redact_url("amqp://u:one@a/%2f,amqp://u:two@b");
        assert!(!shown.contains("one") && !shown.contains("two"), "{shown}");
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_shown_at_all() {
        assert_eq!(redact_url("amqp://u:p@[::1"), UNPARSEABLE_URL);
    }
}
