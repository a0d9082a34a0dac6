//! API tokens, pure: making one, its stored hash, its shape, and the
//! scopes a token may hold. The SQL is in `db::tokens`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use sha2::{Digest as _, Sha256};

/// What every token starts with, so that secret scanners can find leaked
/// ones and a token is never mistaken for a handle (`sgh_`).
pub const PREFIX: &str = "sgt_";
/// Random bytes in a token: 256 bits, beyond guessing, so a fast hash is
/// enough to store it.
const RANDOM_BYTES: usize = 32;
/// Characters after the prefix: 32 bytes in unpadded base64url.
const ENCODED_CHARS: usize = 43;
/// The name `apps` holds for "every app".
pub const EVERY_APP: &str = "*";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// List a user's sessions.
    SessionsRead,
    /// End sessions (reason `user`).
    SessionsRevoke,
    /// Read a user's effective limits.
    LimitsRead,
    /// Set and clear a user's limits.
    LimitsWrite,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::SessionsRead,
        Scope::SessionsRevoke,
        Scope::LimitsRead,
        Scope::LimitsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SessionsRead => "sessions:read",
            Scope::SessionsRevoke => "sessions:revoke",
            Scope::LimitsRead => "limits:read",
            Scope::LimitsWrite => "limits:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new random token (from the OS's generator).
pub fn generate() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator");
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What the database stores of a token: its SHA-256.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` has the shape [`generate`] gives: anything else is
/// refused before the database is asked.
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.len() == ENCODED_CHARS
            && URL_SAFE_NO_PAD
                .decode(rest)
                .is_ok_and(|b| b.len() == RANDOM_BYTES)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_distinct_and_hash_to_32_bytes() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with("sgt_"), "{a}");
        assert!(well_formed(&a) && well_formed(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
        assert_ne!(hash(&a), hash(&b));
        // SHA-256 of "abc" (FIPS 180-2's example).
        assert_eq!(
            hash("abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "the stored hash is plain SHA-256"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = generate();
        for bad in [
            "",
            "sgt_",
            &good[..good.len() - 1],
            &format!("{good}A"),
            &good.replacen("sgt_", "sgh_", 1),
            &good.replace(&good[4..6], "!!"),
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn scopes_round_trip_by_name() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("sessions:write"), None);
    }
}
