//! Pointing a PostgreSQL URL at another database. (Masking a URL's password
//! is `session_guard_amqp::url::redact_url`, shared with the client crate.)

use session_guard_amqp::url::{HOST_STAND_IN, host_list};
use url::Url;

/// `url` with its database name replaced by `db`, everything else kept: how
/// tests, the demo and the benchmark make databases of their own.
///
/// The URL is edited rather than rebuilt from `PgConnectOptions`, whose
/// `to_url_lossy` drops parameters it does not model. A URL that does not
/// parse is returned as it is: connecting with it fails the same way.
pub fn with_database(url: &str, db: &str) -> String {
    // A host list (`h1:p1,h2:p2`, libpq's form) does not parse as a URL: the
    // path is edited on a one-host stand-in and the list put back.
    let (url, hosts) = match host_list(url) {
        Some((start, end)) => (
            format!("{}{HOST_STAND_IN}{}", &url[..start], &url[end..]),
            Some(&url[start..end]),
        ),
        None => (url.to_owned(), None),
    };
    let edited = match Url::parse(&url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{db}"));
            parsed.into()
        }
        Err(_) => url,
    };
    match hosts {
        Some(hosts) => edited.replacen(HOST_STAND_IN, hosts, 1),
        None => edited,
    }
}
