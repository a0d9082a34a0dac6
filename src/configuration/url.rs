//! Pointing a PostgreSQL URL at another database. (Masking a URL's password
//! is `session_guard_amqp::url::redact_url`, shared with the client crate.)

use url::Url;

/// `url` with its database name replaced by `db`, everything else kept: how
/// tests, the demo and the benchmark make databases of their own.
///
/// The URL is edited rather than rebuilt from `PgConnectOptions`, whose
/// `to_url_lossy` drops parameters it does not model. A URL that does not
/// parse is returned as it is: connecting with it fails the same way.
pub fn with_database(url: &str, db: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{db}"));
            parsed.into()
        }
        Err(_) => url.to_owned(),
    }
}
