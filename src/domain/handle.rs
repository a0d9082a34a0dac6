//! Session handles: the API's name for a session, never its id (a session
//! id is the user's credential in the app). A handle is the app and the
//! session id sealed with AES-SIV under a key every API server and worker
//! shares (`db::api_key`, which also makes it): deterministic, so one
//! session always has the same handle, and authenticated, so a tampered or
//! foreign handle does not open. In the domain because both the sessions
//! API and the worker's notices name sessions by it.

use aes_siv::aead::KeyInit as _;
use aes_siv::siv::Aes256Siv;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::event::{AppName, SessionId};

/// What every handle starts with.
pub const PREFIX: &str = "sgh_";
/// AES-256-SIV takes two 256-bit keys: one for the MAC, one for CTR.
pub const KEY_BYTES: usize = 64;
/// Between the app and the session id in the sealed text: neither may hold
/// a control character, so the split is unambiguous.
const SEPARATOR: u8 = 0;

/// The key handles are sealed with.
#[derive(Clone)]
pub struct HandleKey([u8; KEY_BYTES]);

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    /// The key from its stored bytes; `None` unless there are 64.
    pub fn from_bytes(bytes: &[u8]) -> Option<HandleKey> {
        Some(HandleKey(bytes.try_into().ok()?))
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new_from_slice(&self.0).expect("64 bytes is AES-256-SIV's key size")
    }

    /// The handle of session `session_id` of `app`.
    pub fn seal(&self, app: &str, session_id: &str) -> String {
        let mut plain = Vec::with_capacity(app.len() + 1 + session_id.len());
        plain.extend_from_slice(app.as_bytes());
        plain.push(SEPARATOR);
        plain.extend_from_slice(session_id.as_bytes());
        let sealed = self
            .cipher()
            .encrypt(std::iter::empty::<&[u8]>(), &plain)
            .expect("AES-SIV seals any length");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed))
    }

    /// `plain` sealed with `context` as associated data: it opens only
    /// with the same `context` (see [`HandleKey::open_bytes`]). Handles
    /// have no context, so neither opens as the other.
    pub fn seal_bytes(&self, context: &[&[u8]], plain: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt(context, plain)
            .expect("AES-SIV seals any length")
    }

    /// What [`HandleKey::seal_bytes`] sealed, if this key sealed it with
    /// this `context`.
    pub fn open_bytes(&self, context: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
        self.cipher().decrypt(context, sealed).ok()
    }

    /// The app and session a handle names; `None` for anything this key
    /// did not seal (tampered, made up, from another installation).
    pub fn open(&self, handle: &str) -> Option<(AppName, SessionId)> {
        let sealed = URL_SAFE_NO_PAD.decode(handle.strip_prefix(PREFIX)?).ok()?;
        let plain = self
            .cipher()
            .decrypt(std::iter::empty::<&[u8]>(), &sealed)
            .ok()?;
        let at = plain.iter().position(|b| *b == SEPARATOR)?;
        let app = std::str::from_utf8(&plain[..at]).ok()?;
        let session_id = std::str::from_utf8(&plain[at + 1..]).ok()?;
        Some((
            AppName::parse(app).ok()?,
            SessionId::parse(session_id).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HandleKey {
        // Random, so that two keys differ (the tests of a pure module make
        // their own bytes rather than ask the database layer).
        HandleKey::from_bytes(&std::array::from_fn::<u8, KEY_BYTES, _>(|_| rand::random())).unwrap()
    }

    #[test]
    fn a_handle_opens_to_its_session_and_is_the_same_every_time() {
        let key = key();
        let handle = key.seal("shop", "abc123-secret");
        assert!(handle.starts_with("sgh_"), "{handle}");
        assert!(!handle.contains("abc123"), "{handle}");
        assert_eq!(handle, key.seal("shop", "abc123-secret"));
        assert_ne!(handle, key.seal("blog", "abc123-secret"));
        let (app, id) = key.open(&handle).unwrap();
        assert_eq!((app.as_str(), id.as_str()), ("shop", "abc123-secret"));
    }

    #[test]
    fn tampered_foreign_and_made_up_handles_do_not_open() {
        let key = key();
        let handle = key.seal("shop", "s1");
        let mut bytes = handle.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(key.open(&tampered), None);
        assert_eq!(self::key().open(&handle), None, "another key's handle");
        for made_up in ["", "sgh_", "sgh_AAAA", "s1", "sgt_abc", &handle[4..]] {
            assert_eq!(key.open(made_up), None, "{made_up:?}");
        }
        assert!(HandleKey::from_bytes(&[0; 32]).is_none());
    }
}
