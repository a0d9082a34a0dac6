//! The opaque cursor of a page of sessions: where the previous page ended,
//! as the last session's `login_at` and its handle (never a session id).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use super::handle::HandleKey;
use crate::domain::event::{AppName, SessionId};

/// Where a page starts: after this session in `login_at DESC, app,
/// session_id` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub login_at: DateTime<Utc>,
    pub app: AppName,
    pub session_id: SessionId,
}

/// The cursor after the session with this `login_at` and handle.
pub fn encode(login_at: DateTime<Utc>, handle: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{handle}", login_at.timestamp_micros()))
}

/// The position a cursor names; `None` for one this API did not make.
pub fn decode(key: &HandleKey, cursor: &str) -> Option<After> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, handle) = text.split_once('.')?;
    let login_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    let (app, session_id) = key.open(handle)?;
    Some(After {
        login_at,
        app,
        session_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let key = HandleKey::from_bytes(&HandleKey::random_bytes()).unwrap();
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let cursor = encode(at, &key.seal("shop", "secret-id"));
        let after = decode(&key, &cursor).unwrap();
        assert_eq!(after.login_at, at);
        assert_eq!(
            (after.app.as_str(), after.session_id.as_str()),
            ("shop", "secret-id")
        );
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(&cursor).unwrap()).unwrap();
        assert!(!text.contains("secret-id"));
        assert_eq!(decode(&key, "not a cursor"), None);
        let forged = URL_SAFE_NO_PAD.encode("1764000000123456.sgh_AAAA");
        assert_eq!(decode(&key, &forged), None);
        let other = HandleKey::from_bytes(&HandleKey::random_bytes()).unwrap();
        assert_eq!(decode(&other, &cursor), None);
    }
}
