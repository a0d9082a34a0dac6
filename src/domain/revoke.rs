//! Revoke events: what session-guard tells an app to end a session.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::AppName;
use super::session::EndReason;

/// The body of a revoke event (wire contract v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeMessage {
    /// Always "revoke".
    #[serde(rename = "type")]
    pub kind: String,
    /// Id of this message; re-sends after a crash keep it, repeats get a new one.
    pub event_id: Uuid,
    pub app: String,
    pub session_id: String,
    pub user_id: String,
    /// Why: "session_limit".
    pub reason: String,
    /// When the session was revoked (RFC 3339, UTC).
    pub revoked_at: String,
    /// The limit in force when it was revoked.
    pub max_sessions: u32,
    /// True when the app kept using a session revoked earlier.
    pub repeat: bool,
    /// An operator's explanation (`session-guard revoke --reason`); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RevokeMessage {
    pub fn new(
        app: &AppName,
        session_id: &str,
        user_id: &str,
        reason: EndReason,
        revoked_at: DateTime<Utc>,
        max_sessions: u32,
        repeat: bool,
    ) -> RevokeMessage {
        RevokeMessage {
            kind: "revoke".to_owned(),
            event_id: Uuid::new_v4(),
            app: app.to_string(),
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            reason: reason.as_str().to_owned(),
            revoked_at: revoked_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            max_sessions,
            repeat,
            note: None,
        }
    }

    /// Adds an operator's explanation.
    pub fn with_note(mut self, note: Option<String>) -> RevokeMessage {
        self.note = note;
        self
    }

    /// The routing key apps bind to: `revoke.<app>`.
    pub fn routing_key(&self) -> String {
        routing_key_for(&self.app)
    }
}

/// `revoke.<app>`: app names are restricted to characters that are safe here.
pub fn routing_key_for(app: &str) -> String {
    format!("revoke.{app}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn serializes_the_v1_fields() {
        let m = RevokeMessage::new(
            &AppName::parse("shop").unwrap(),
            "s1",
            "u1",
            EndReason::SessionLimit,
            Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap(),
            1,
            false,
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "revoke");
        assert_eq!(v["reason"], "session_limit");
        assert_eq!(v["revoked_at"], "2026-11-27T10:00:00.000000Z");
        assert_eq!(v["max_sessions"], 1);
        assert_eq!(v["repeat"], false);
        assert_eq!(v["event_id"], m.event_id.to_string());
        assert_eq!(m.routing_key(), "revoke.shop");
        assert!(
            v.get("note").is_none(),
            "absent unless an operator gave one"
        );
    }
}
