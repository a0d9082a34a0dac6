//! The sessions API's bodies (`/v1/...`, served by the worker): what it
//! answers and what it accepts. Defined here, beside the events, so that
//! clients read them with the same types the worker writes them with.
//!
//! With the `openapi` feature each type also describes itself for the
//! OpenAPI document (`docs/openapi.json`), which is the contract for apps in
//! other languages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The request header of `GET /v1/users/{user_id}/sessions` that carries
/// the caller's own session id (percent-encoded UTF-8), so that session
/// comes back `current`. A header, not a query parameter: a session id is
/// a credential, and query strings end up in access logs, proxies and
/// traces.
pub const CURRENT_SESSION_HEADER: &str = "Session-Guard-Current-Session";
/// The request header naming the app of [`CURRENT_SESSION_HEADER`]'s
/// session, when session ids may repeat across apps.
pub const CURRENT_APP_HEADER: &str = "Session-Guard-Current-App";
/// The most apps a listing (`app=`, repeated) or a revoke body (`apps`)
/// may name.
pub const MAX_APPS: usize = 64;

/// One session as the API shows it. Never holds the app's session id: a
/// session id is a credential; the `handle` names the session instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Opaque name of the session for this API (`sgh_...`): always the same
    /// for the same session, accepted only by the API that issued it.
    pub handle: String,
    /// The app the session belongs to.
    pub app: String,
    /// Whether it is still active.
    pub state: SessionState,
    /// When the user logged in (the login event's time).
    pub login_at: DateTime<Utc>,
    /// The time of the session's latest event.
    pub last_seen_at: DateTime<Utc>,
    /// When it ended (its end, or its expiry); absent while active.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended: `logout`, `expired`, or a revoke reason
    /// (`session_limit`, `user`, `admin`...); absent while active.
    pub end_reason: Option<String>,
    /// Who ended it: the rule or hook, `operator:<name>`, or
    /// `token:<name>` for a revoke through this API; absent for logouts.
    pub ended_by: Option<String>,
    /// The client address of the latest event that had one.
    pub ip: Option<String>,
    /// The user agent of the latest event that had one.
    pub user_agent: Option<String>,
    /// Browser, OS and kind of device, read from the user agent.
    pub device: Device,
    /// True for the caller's own session (named by the
    /// `Session-Guard-Current-Session` request header).
    pub current: bool,
}

/// Active or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Not ended and not past its expiry.
    Active,
    /// Logged out, revoked or expired.
    Ended,
}

/// What the user agent says about the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    /// The browser's name ("Chrome", "Firefox"...), if known.
    pub browser: Option<String>,
    /// The operating system ("Windows 10", "iOS"...), if known.
    pub os: Option<String>,
    /// The kind of device.
    pub kind: DeviceKind,
}

/// The kind of device a session is used from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Desktop,
    Phone,
    Tablet,
    Bot,
    Unknown,
}

/// A page of a user's sessions, newest login first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    /// The sessions of this page.
    pub sessions: Vec<Session>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/sessions/{handle}/revoke` (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeSession {
    /// Recorded in the log and sent to the app with the revoke; at most
    /// 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub note: Option<String>,
}

/// The body of `POST /v1/users/{user_id}/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeUser {
    /// The handle of a session to keep ("sign out everywhere else").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    /// Only sessions of these apps (default: every app the token may see);
    /// at most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub apps: Option<Vec<String>>,
    /// Recorded in the log and sent to the apps with the revokes; at most
    /// 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub note: Option<String>,
}

/// What a revoke did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    /// The sessions this call ended (their apps receive a revoke each).
    /// Empty when they had ended already: nothing is sent twice.
    pub revoked: Vec<String>,
    /// The session as it stands now (`POST /v1/sessions/{handle}/revoke`
    /// only): for one that had ended before, how and when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

/// A user's limits in one app, and who set each (as `limits get --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitsView {
    /// The user.
    pub user_id: String,
    /// The app they apply in.
    pub app: String,
    /// The attributes the rule hooks saw (what the app last claimed).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The limits in force.
    pub limits: LimitValues,
    /// Which hook (or "config") set each value.
    pub set_by: LimitSources,
    /// False in shadow mode: limits are computed, nothing is revoked.
    pub enforce: bool,
    /// The rule hooks, in the order they run.
    pub hooks: Vec<String>,
}

/// The values of a user's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitValues {
    /// Active sessions allowed in the app; 0 = unlimited.
    pub max_sessions: u32,
    /// Active sessions allowed across all apps; 0 = no such limit.
    pub max_sessions_global: u32,
    /// `evict_oldest`, `evict_idle` or `deny_new`.
    pub policy: String,
    /// Seconds without an event after which a session expires; 0 = off.
    pub idle_timeout: u64,
    /// Ended sessions kept in the log for the user; null = all.
    pub log_limit: Option<u32>,
}

/// Who set each limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitSources {
    pub max_sessions: String,
    pub max_sessions_global: String,
    pub policy: String,
    pub idle_timeout: String,
    pub log_limit: String,
}

/// The body of `PUT /v1/users/{user_id}/limits`: an operator override;
/// fields left out stay as they were (as `limits set`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// Active sessions allowed in the app (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Active sessions allowed across all apps (0 = no such limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_global: Option<u32>,
    /// `evict_oldest`, `evict_idle` or `deny_new`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Seconds without an event after which a session expires (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Ended sessions kept in the user's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit: Option<u32>,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// Stable per kind of error: `urn:session-guard:problem:<slug>`
    /// (`not-found`, `unauthorized`, `forbidden-scope`, `invalid-input`,
    /// `payload-too-large`, `unavailable`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of error.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
}

/// What every problem's `type` starts with.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:session-guard:problem:";

/// The stable kinds of problem, one per `type`: what a client matches on.
/// The worker writes each `type` from these, so the two cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// `not-found` (404): no such session, handle or override, or one of
    /// an app the token may not see.
    NotFound,
    /// `unauthorized` (401): no token, or an unknown or revoked one.
    Unauthorized,
    /// `forbidden-scope` (403): the token lacks the route's scope.
    ForbiddenScope,
    /// `invalid-input` (400): a parameter or the body is not what the route
    /// takes.
    InvalidInput,
    /// `payload-too-large` (413): the body is over `api.max_body_bytes`.
    PayloadTooLarge,
    /// `unavailable` (503): the session log did not answer in time.
    Unavailable,
    /// `method-not-allowed` (405).
    MethodNotAllowed,
    /// A `type` this version does not know (a newer worker's).
    Other,
}

impl ProblemKind {
    /// Every kind with a slug of its own.
    pub const KNOWN: [ProblemKind; 7] = [
        ProblemKind::NotFound,
        ProblemKind::Unauthorized,
        ProblemKind::ForbiddenScope,
        ProblemKind::InvalidInput,
        ProblemKind::PayloadTooLarge,
        ProblemKind::Unavailable,
        ProblemKind::MethodNotAllowed,
    ];

    /// The `type`'s last part (`None` for [`ProblemKind::Other`]).
    pub fn slug(self) -> Option<&'static str> {
        Some(match self {
            ProblemKind::NotFound => "not-found",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::ForbiddenScope => "forbidden-scope",
            ProblemKind::InvalidInput => "invalid-input",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::Unavailable => "unavailable",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::Other => return None,
        })
    }

    /// The kind a problem's `type` names.
    pub fn from_type(problem_type: &str) -> ProblemKind {
        problem_type
            .strip_prefix(PROBLEM_TYPE_PREFIX)
            .and_then(|slug| {
                ProblemKind::KNOWN
                    .into_iter()
                    .find(|k| k.slug() == Some(slug))
            })
            .unwrap_or(ProblemKind::Other)
    }
}

impl Problem {
    /// The stable kind of this problem, read from its `type` (the field
    /// `kind` holds the `type` as written).
    pub fn kind(&self) -> ProblemKind {
        ProblemKind::from_type(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_types_map_to_their_kinds_and_back() {
        for kind in ProblemKind::KNOWN {
            let t = format!("{PROBLEM_TYPE_PREFIX}{}", kind.slug().unwrap());
            assert_eq!(ProblemKind::from_type(&t), kind);
        }
        assert_eq!(ProblemKind::from_type("not-found"), ProblemKind::Other);
        assert_eq!(
            ProblemKind::from_type("urn:session-guard:problem:teapot"),
            ProblemKind::Other
        );
    }
}
