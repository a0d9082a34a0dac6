//! URL helpers: masking a URL's password wherever it is shown, and
//! pointing a PostgreSQL URL at another database.

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

/// What `redact_url` shows for a URL that does not parse: where its
/// password would be cannot be told, so none of it is shown.
pub(super) const UNPARSEABLE_URL: &str = "(a URL that does not parse)";

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
