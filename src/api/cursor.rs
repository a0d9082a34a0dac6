//! The opaque cursor of a page of sessions: where the previous page ended
//! (the last session's `login_at`, app and session id), sealed with the
//! handle key (AES-SIV, so it never shows the session id) and bound to the
//! listing it was issued for: the user, and the apps the token read. A
//! cursor of one user's listing, or of another set of apps (another
//! token's, another `app=` filter), does not open on another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::domain::event::{AppName, SessionId};
use crate::domain::handle::HandleKey;

/// Sealed into every cursor's associated data, so that no other text
/// sealed with the handle key (a handle has none) opens as a cursor.
const PURPOSE: &[u8] = b"session-guard cursor v2";
/// Between the app and the session id: neither may hold a control character.
const SEPARATOR: u8 = 0;

/// Where a page starts: after this session in `login_at DESC, app,
/// session_id` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub login_at: DateTime<Utc>,
    pub app: AppName,
    pub session_id: SessionId,
}

/// The listing a cursor belongs to: whose sessions, in which apps (`None`:
/// every app, for a token of every app).
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    pub user: &'a str,
    pub apps: Option<&'a [String]>,
}

impl Listing<'_> {
    /// The associated data a cursor of this listing is sealed with: the
    /// user, and the apps sorted and deduplicated (the same set in another
    /// order is the same listing). App names hold no `,` and no `*`.
    fn context(&self) -> [Vec<u8>; 3] {
        let apps = match self.apps {
            None => "*".to_owned(),
            Some(apps) => {
                let mut apps: Vec<&str> = apps.iter().map(String::as_str).collect();
                apps.sort_unstable();
                apps.dedup();
                apps.join(",")
            }
        };
        [
            PURPOSE.to_vec(),
            self.user.as_bytes().to_vec(),
            apps.into_bytes(),
        ]
    }
}

/// The cursor after session `session_id` of `app`, logged in at
/// `login_at`, in `listing`.
pub fn encode(key: &HandleKey, listing: &Listing<'_>, after: &After) -> String {
    let mut plain =
        Vec::with_capacity(9 + after.app.as_str().len() + after.session_id.as_str().len());
    plain.extend_from_slice(&after.login_at.timestamp_micros().to_be_bytes());
    plain.extend_from_slice(after.app.as_str().as_bytes());
    plain.push(SEPARATOR);
    plain.extend_from_slice(after.session_id.as_str().as_bytes());
    let context = listing.context();
    let context: Vec<&[u8]> = context.iter().map(Vec::as_slice).collect();
    URL_SAFE_NO_PAD.encode(key.seal_bytes(&context, &plain))
}

/// The position a cursor names; `None` for one this API did not make, or
/// made for another listing (another user, other apps).
pub fn decode(key: &HandleKey, listing: &Listing<'_>, cursor: &str) -> Option<After> {
    let sealed = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let context = listing.context();
    let context: Vec<&[u8]> = context.iter().map(Vec::as_slice).collect();
    let plain = key.open_bytes(&context, &sealed)?;
    let (micros, rest) = plain.split_first_chunk::<8>()?;
    let login_at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))?;
    let at = rest.iter().position(|b| *b == SEPARATOR)?;
    let app = std::str::from_utf8(&rest[..at]).ok()?;
    let session_id = std::str::from_utf8(&rest[at + 1..]).ok()?;
    Some(After {
        login_at,
        app: AppName::parse(app).ok()?,
        session_id: SessionId::parse(session_id).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HandleKey {
        HandleKey::from_bytes(&crate::db::api_key::fresh_key()).unwrap()
    }

    fn after() -> After {
        After {
            login_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            app: AppName::parse("shop").unwrap(),
            session_id: SessionId::parse("secret-id").unwrap(),
        }
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let key = key();
        let listing = Listing {
            user: "u1",
            apps: None,
        };
        let cursor = encode(&key, &listing, &after());
        assert_eq!(decode(&key, &listing, &cursor), Some(after()));
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("secret-id"));
        assert!(!cursor.contains("secret-id"));
        assert_eq!(decode(&key, &listing, "not a cursor"), None);
        let forged = URL_SAFE_NO_PAD.encode("1764000000123456.sgh_AAAA");
        assert_eq!(decode(&key, &listing, &forged), None);
        assert_eq!(decode(&self::key(), &listing, &cursor), None, "another key");
        // A handle is sealed with the same key, but without the context.
        let handle = key.seal("shop", "secret-id");
        assert_eq!(decode(&key, &listing, &handle[4..]), None);
    }

    #[test]
    fn a_cursor_opens_only_on_the_listing_it_was_issued_for() {
        let key = key();
        let apps = ["shop".to_owned(), "blog".to_owned()];
        let listing = Listing {
            user: "u1",
            apps: Some(&apps),
        };
        let cursor = encode(&key, &listing, &after());
        let reordered = ["blog".to_owned(), "shop".to_owned(), "shop".to_owned()];
        let same = Listing {
            user: "u1",
            apps: Some(&reordered),
        };
        assert_eq!(decode(&key, &same, &cursor), Some(after()));
        let shop = ["shop".to_owned()];
        let others = [
            Listing {
                user: "u2",
                apps: Some(&apps),
            },
            Listing {
                user: "u1",
                apps: Some(&shop),
            },
            Listing {
                user: "u1",
                apps: None,
            },
            Listing {
                user: "u1,blog",
                apps: Some(&shop),
            },
        ];
        for other in others {
            assert_eq!(decode(&key, &other, &cursor), None, "{other:?}");
        }
    }
}
