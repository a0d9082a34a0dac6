//! Revoke events: what session-guard tells an app to end a session.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{APP_NAME_PATTERN, AppName, MAX_APP_CHARS, MAX_ID_CHARS, NO_CONTROL_PATTERN};

/// The body of a revoke event (wire contract v1).
///
/// Its JSON Schema (`schema/revoke.schema.json`) is generated from this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(
    description = "A revoke event, as session-guard publishes it to the revocations \
                          exchange with routing key `revoke.<app>` (wire protocol v1): end the \
                          session it names. Fields may be added in later versions: ignore \
                          those you do not know. Delivery is at least once: a re-sent revoke \
                          keeps its `event_id`."
)]
pub struct RevokeMessage {
    /// Always "revoke".
    #[serde(rename = "type")]
    #[schemars(extend("const" = "revoke"))]
    pub kind: String,
    /// Id of this message; re-sends after a crash keep it, repeats get a new one.
    /// Also the AMQP `message_id`.
    #[schemars(pattern(UUID_PATTERN))]
    pub event_id: Uuid,
    /// The app that owns the session (the `app` of its events).
    #[schemars(length(min = 1, max = MAX_APP_CHARS), pattern(APP_NAME_PATTERN))]
    pub app: String,
    /// The session to end (the `session_id` of its events).
    #[schemars(length(min = 1, max = MAX_ID_CHARS), pattern(NO_CONTROL_PATTERN))]
    pub session_id: String,
    /// The session's user.
    #[schemars(length(min = 1, max = MAX_ID_CHARS), pattern(NO_CONTROL_PATTERN))]
    pub user_id: String,
    /// Why, one of [`RevokeReason`]'s names (`session_limit`...); kept as
    /// text so that an app built against this version reads reasons added
    /// later ([`RevokeMessage::reason`] gives the typed value).
    #[schemars(
        schema_with = "reason_schema",
        description = "Why the session was revoked: one of the known reasons below, or one \
                       added in a later version, which an app must not refuse: end the \
                       session whatever the reason."
    )]
    pub reason: String,
    /// When the session was revoked (RFC 3339, UTC, microseconds).
    #[schemars(extend("format" = "date-time"))]
    pub revoked_at: String,
    /// The limit in force when it was revoked: the per-app limit, or the
    /// cross-app one when that is the one the session broke.
    pub max_sessions: u32,
    /// True when the app kept using a session revoked earlier.
    pub repeat: bool,
    /// An operator's explanation (`session-guard revoke --reason`); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The longest `note` a revoke may carry, in characters: what the sessions
/// API's revoke bodies and `session-guard revoke --reason` accept (one
/// constant, so the two cannot drift). A note is free text recorded in the
/// log and sent to the app; nothing needs more.
pub const MAX_NOTE_CHARS: usize = 500;

/// `Err` with why if `note` is longer than [`MAX_NOTE_CHARS`].
pub fn check_note(note: &str) -> Result<(), String> {
    let n = note.chars().count();
    if n > MAX_NOTE_CHARS {
        return Err(format!(
            "note must be at most {MAX_NOTE_CHARS} characters, got {n}"
        ));
    }
    Ok(())
}

/// A UUID in its hyphenated form, as the worker writes it (draft-07
/// validators do not know the `uuid` format).
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// A known reason, or one added after this version: an app validating
/// revokes with the schema must not refuse a newer worker's.
fn reason_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let known = generator.subschema_for::<RevokeReason>();
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "anyOf": [
            known,
            {
                "description": "A reason added after this version of the contract.",
                "type": "string"
            }
        ]
    })
}

impl RevokeMessage {
    pub fn new(
        app: &AppName,
        session_id: &str,
        user_id: &str,
        reason: RevokeReason,
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
        crate::names::revoke_routing_key(&self.app)
    }

    /// Why, typed; [`RevokeReason::Other`] for a reason this version does
    /// not know.
    pub fn reason(&self) -> RevokeReason {
        RevokeReason::parse(&self.reason)
    }
}

/// Why a session was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The user held more sessions than the limit (this one was the oldest,
    /// or the least recently seen, by the policy in force).
    SessionLimit,
    /// The limit was reached and the policy is `deny_new`: the newcomer goes.
    SessionLimitDenied,
    /// No event for the session within the idle timeout.
    IdleTimeout,
    /// The user asked to log out their other devices.
    LogoutOthers,
    /// The user asked to log out everywhere.
    LogoutAll,
    /// The user ended it from a sessions page, through the sessions API
    /// (`POST /v1/sessions/{handle}/revoke` or `/v1/users/{user_id}/revoke`).
    User,
    /// An operator revoked it (`session-guard revoke`); see `note`.
    Admin,
    /// A reason newer than this version of the protocol crate.
    #[schemars(skip)]
    Other,
}

impl RevokeReason {
    /// Every reason this version sends.
    pub const ALL: [RevokeReason; 7] = [
        RevokeReason::SessionLimit,
        RevokeReason::SessionLimitDenied,
        RevokeReason::IdleTimeout,
        RevokeReason::LogoutOthers,
        RevokeReason::LogoutAll,
        RevokeReason::User,
        RevokeReason::Admin,
    ];

    /// The name on the wire; `other` for [`RevokeReason::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::SessionLimit => "session_limit",
            RevokeReason::SessionLimitDenied => "session_limit_denied",
            RevokeReason::IdleTimeout => "idle_timeout",
            RevokeReason::LogoutOthers => "logout_others",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::User => "user",
            RevokeReason::Admin => "admin",
            RevokeReason::Other => "other",
        }
    }

    /// The reason named `s`, or [`RevokeReason::Other`].
    pub fn parse(s: &str) -> RevokeReason {
        RevokeReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(RevokeReason::Other)
    }
}

impl std::fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
            RevokeReason::SessionLimit,
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
