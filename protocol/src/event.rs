//! The wire contract v1 for events from apps: decoding and validation.
//!
//! Everything an app sends is checked here, at the edge, and turned into typed
//! values; the rest of the program never sees an unchecked string. Errors say
//! which field is wrong and why: they end up in the `x-session-guard-error`
//! header of the dead-lettered message, where the app's developers read them.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Datelike as _, SecondsFormat, Utc};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::{Map, Value};

/// Largest message body accepted, in bytes (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest `app`, in characters.
pub const MAX_APP_CHARS: usize = 64;
/// Longest `session_id` and `user_id`, in characters.
pub const MAX_ID_CHARS: usize = 256;
/// Longest `event_id`, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 256;
/// Longest `user_agent`, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 512;
/// Largest `attributes` object, serialized, in bytes: hooks read it on every
/// check and the latest is stored with the session.
pub const MAX_ATTRIBUTES_BYTES: usize = 4096;
/// Deepest nesting inside `attributes` (the object itself is depth 1).
pub const MAX_ATTRIBUTE_DEPTH: usize = 4;
/// Most keys in `attributes`.
pub const MAX_ATTRIBUTE_KEYS: usize = 64;
/// Most entries in `attributes.roles`.
pub const MAX_ROLES: usize = 64;
/// Longest role name, in characters.
pub const MAX_ROLE_CHARS: usize = 128;
/// Earliest year of a time, in UTC: RFC 3339 has four-digit years, and a
/// time outside them cannot be written back in the format it came in.
pub const MIN_YEAR: i32 = 1;
/// Latest year of a time, in UTC (see [`MIN_YEAR`]).
pub const MAX_YEAR: i32 = 9999;

/// The refusal of text PostgreSQL cannot store (its `text` and `jsonb` have
/// no NUL character).
const NO_NUL: &str = "must not contain NUL (U+0000)";

/// Why a message was refused; the text is what the dead-letter header carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("message too large: {0} bytes (limit {MAX_MESSAGE_BYTES})")]
    TooLarge(usize),
    #[error("invalid JSON at line {line} column {column}: {detail}")]
    Json {
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("event must be a JSON object")]
    NotAnObject,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// Something inside `attributes`, at `path` (e.g. `attributes.plan.name`,
    /// `attributes.roles[2]`).
    #[error("{path}: {problem}")]
    InvalidAttribute {
        /// Where, from `attributes` down.
        path: String,
        /// What is wrong there.
        problem: String,
    },
}

impl EventError {
    fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        EventError::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

/// What happened to a session, as told by its app.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The user authenticated and the session began.
    Login,
    /// The user made an authenticated request with the session.
    Request,
    /// The user logged out: the session ended.
    Logout,
    /// "Log out my other devices": every other session of the user in the
    /// app is revoked; this one stays.
    LogoutOthers,
    /// "Log out everywhere": every session of the user in the app is
    /// revoked, this one too.
    LogoutAll,
    /// What the app claims about the user changed (a group joined, a flag
    /// set): the event carries the new `attributes` and no session. The
    /// user's sessions are checked against the limits the new claim gives.
    Attributes,
}

impl EventKind {
    /// Every kind, in the order the protocol lists them.
    pub const ALL: [EventKind; 6] = [
        EventKind::Login,
        EventKind::Request,
        EventKind::Logout,
        EventKind::LogoutOthers,
        EventKind::LogoutAll,
        EventKind::Attributes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::Request => "request",
            EventKind::Logout => "logout",
            EventKind::LogoutOthers => "logout_others",
            EventKind::LogoutAll => "logout_all",
            EventKind::Attributes => "attributes",
        }
    }

    /// Whether the event names the user (all but logout must).
    pub fn requires_user(self) -> bool {
        self != EventKind::Logout
    }

    /// Whether the event is about one session, which it must name (all but
    /// `attributes`, which is about the user).
    pub fn names_session(self) -> bool {
        self != EventKind::Attributes
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_inner(self) -> String {
                self.0
            }
            /// Wraps a value validated before it was stored (the worker's
            /// own log), without checking it again. Anything from outside
            /// goes through `parse`.
            pub fn from_trusted(s: String) -> Self {
                $name(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// An app's name: 1-64 characters of `A-Z a-z 0-9 _ . -`, safe in a routing key.
    AppName
);
string_newtype!(
    /// An app's session key: 1-256 characters, no control characters.
    SessionId
);
string_newtype!(
    /// The authenticated user: 1-256 characters, no control characters.
    UserId
);

impl AppName {
    pub fn parse(s: &str) -> Result<AppName, String> {
        let n = s.chars().count();
        if n == 0 || n > MAX_APP_CHARS {
            return Err(format!("must be 1-{MAX_APP_CHARS} characters, got {n}"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "invalid character {c:?} (allowed: A-Z a-z 0-9 _ . -)"
            ));
        }
        Ok(AppName(s.to_owned()))
    }
}

fn parse_id(s: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n == 0 || n > MAX_ID_CHARS {
        return Err(format!("must be 1-{MAX_ID_CHARS} characters, got {n}"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_owned())
}

impl SessionId {
    pub fn parse(s: &str) -> Result<SessionId, String> {
        parse_id(s).map(SessionId)
    }
}

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, String> {
        parse_id(s).map(UserId)
    }
}

/// An event as an app publishes it: the JSON body, field for field, before
/// any check. Build one, then [`EventBody::to_json`] and publish it with
/// routing key [`EventBody::routing_key`]; [`EventBody::validate`] runs the
/// worker's own checks first, so a mistake shows in the app, not in the
/// dead-letter queue.
///
/// Its JSON Schema (`schema/event.schema.json`) is generated from this type:
/// the field docs are its descriptions, and the `schemars` attributes carry
/// the decoder's bounds, as far as a schema can express them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(
    rename = "SessionEvent",
    description = event_body_description(),
    transform = required_by_type
)]
pub struct EventBody {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The publishing app: 1-64 characters of `A-Z a-z 0-9 _ . -`; also the
    /// suffix of the routing keys of its events and of its revokes.
    #[schemars(length(min = 1, max = MAX_APP_CHARS), pattern(APP_NAME_PATTERN))]
    pub app: String,
    /// The app's session key: 1-256 characters, no control characters.
    /// Required for all types but `attributes`, which is about the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ID_CHARS), pattern(NO_CONTROL_PATTERN))]
    pub session_id: Option<String>,
    /// The authenticated user: 1-256 characters, no control characters.
    /// Required for all types but `logout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ID_CHARS), pattern(NO_CONTROL_PATTERN))]
    pub user_id: Option<String>,
    /// When the app saw it: an RFC 3339 time (UTC or with an offset), kept
    /// to the microsecond. The only clock used to rank sessions.
    pub occurred_at: DateTime<Utc>,
    /// The app's own id for the event (logged, never required): 1-256
    /// characters, no NUL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_EVENT_ID_CHARS), pattern(NO_NUL_PATTERN))]
    pub event_id: Option<String>,
    /// The client's address, IPv4 or IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_schema")]
    pub ip: Option<IpAddr>,
    /// The client's user agent: at most 512 characters, no NUL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_USER_AGENT_CHARS), pattern(NO_NUL_PATTERN))]
    pub user_agent: Option<String>,
    /// When the app's session expires by itself: an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// What the app claims about the user; `None` leaves the app's last
    /// claim standing, `Some` (even empty) replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "attributes_schema", description = attributes_description())]
    pub attributes: Option<Map<String, Value>>,
}

/// [`AppName`]'s rule as a regular expression (ECMA-262, as JSON Schema
/// uses), for the schemas.
pub const APP_NAME_PATTERN: &str = "^[A-Za-z0-9_.-]+$";
/// Text without control characters (Unicode category Cc, what
/// [`char::is_control`] tests), as `session_id` and `user_id` must be.
pub const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// Text without NUL (U+0000), which PostgreSQL cannot store.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// The schema's description of an event, with what only the worker checks.
fn event_body_description() -> String {
    format!(
        "A session event, as an app publishes it to the events exchange with routing key \
         `<type>.<app>` (session-guard wire protocol v1). Unknown fields are ignored; a field \
         set to null counts as absent. Checked by the worker but not expressible here: the \
         whole body is at most {} KiB; `attributes` is at most {MAX_ATTRIBUTES_BYTES} bytes \
         once serialized; times fall within years {MIN_YEAR:04}-{MAX_YEAR} once converted to \
         UTC; `occurred_at` is at most `limits.max_clock_skew` (300 s by default) ahead of the \
         worker's clock.",
        MAX_MESSAGE_BYTES / 1024
    )
}

/// What each type requires beyond the fields every event has, and which
/// may then not be null: `user_id` for every type but `logout`,
/// `session_id` for every type but `attributes`, and `attributes` (an
/// object) for `attributes`.
fn required_by_type(schema: &mut schemars::Schema) {
    let of_types = |types: Vec<&str>, field: &str, of_type: &str| {
        serde_json::json!({
            "if": {
                "properties": {"type": {"enum": types}},
                "required": ["type"]
            },
            "then": {
                "properties": {field: {"type": of_type}},
                "required": [field]
            }
        })
    };
    let kinds = |keep: fn(EventKind) -> bool| -> Vec<&str> {
        EventKind::ALL
            .into_iter()
            .filter(|k| keep(*k))
            .map(EventKind::as_str)
            .collect()
    };
    schema.insert(
        "allOf".into(),
        serde_json::json!([
            of_types(kinds(EventKind::requires_user), "user_id", "string"),
            of_types(kinds(EventKind::names_session), "session_id", "string"),
            of_types(kinds(|k| !k.names_session()), "attributes", "object"),
        ]),
    );
}

/// An IP address in either family (the standard formats have no "either").
fn ip_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "null"],
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]
    })
}

/// The schema's description of `attributes`, for apps.
fn attributes_description() -> String {
    format!(
        "What the app claims about the user, for rule hooks; remembered per user and app. \
         Absent or null: the app's latest claim stands; an object, even empty, replaces it. At \
         most {MAX_ATTRIBUTE_KEYS} keys, {MAX_ATTRIBUTE_DEPTH} levels deep (the object itself is \
         the first), {MAX_ATTRIBUTES_BYTES} bytes serialized, no NUL in any key or string."
    )
}

/// The bounds of `attributes`: keys, depth, NUL, and the conventional keys'
/// types; its size in bytes is out of a schema's reach (the description says
/// it).
fn attributes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let all = ["null", "boolean", "number", "string", "array", "object"];
    // A value nested `n` levels deep at most, with no NUL in any string or
    // key; type-specific keywords apply to their type only. One level deep:
    // a scalar, or an empty array or object.
    let mut value = serde_json::json!({
        "type": all,
        "pattern": NO_NUL_PATTERN,
        "maxItems": 0,
        "maxProperties": 0,
    });
    for _ in 1..MAX_ATTRIBUTE_DEPTH - 1 {
        value = serde_json::json!({
            "type": all,
            "pattern": NO_NUL_PATTERN,
            "items": value,
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": value,
        });
    }
    schemars::json_schema!({
        "type": ["object", "null"],
        "maxProperties": MAX_ATTRIBUTE_KEYS,
        "propertyNames": {"pattern": NO_NUL_PATTERN},
        "properties": {
            "superuser": {
                "description": "Conventional: the user is a superuser (the `superuser_unlimited` hook lifts the limits).",
                "type": ["boolean", "null"]
            },
            "roles": {
                "description": format!(
                    "Conventional: the user's roles (rules match them with `when.role`): at most \
                     {MAX_ROLES} names of 1-{MAX_ROLE_CHARS} characters."
                ),
                "type": ["array", "null"],
                "maxItems": MAX_ROLES,
                "items": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_ROLE_CHARS,
                    "pattern": NO_NUL_PATTERN
                }
            }
        },
        "additionalProperties": value,
    })
}

impl EventBody {
    /// An event of `kind` for `session_id` of `app` at `occurred_at`, with
    /// nothing else set.
    pub fn new(
        kind: EventKind,
        app: &AppName,
        session_id: impl Into<String>,
        occurred_at: DateTime<Utc>,
    ) -> EventBody {
        EventBody {
            kind,
            app: app.as_str().to_owned(),
            session_id: Some(session_id.into()),
            user_id: None,
            occurred_at,
            event_id: None,
            ip: None,
            user_agent: None,
            expires_at: None,
            attributes: None,
        }
    }

    /// An `attributes` event: what `app` claims about `user_id` now, at
    /// `occurred_at`; it names no session.
    pub fn claims(
        app: &AppName,
        user_id: impl Into<String>,
        attributes: Map<String, Value>,
        occurred_at: DateTime<Utc>,
    ) -> EventBody {
        EventBody {
            kind: EventKind::Attributes,
            app: app.as_str().to_owned(),
            session_id: None,
            user_id: Some(user_id.into()),
            occurred_at,
            event_id: None,
            ip: None,
            user_agent: None,
            expires_at: None,
            attributes: Some(attributes),
        }
    }

    /// The message body: compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event body always serializes")
    }

    /// `<type>.<app>`, the routing key to publish it with.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.kind.as_str(), self.app)
    }

    /// The worker's checks (all but the clock, which is the worker's):
    /// `Ok` means the worker accepts it.
    pub fn validate(&self) -> Result<SessionEvent, EventError> {
        SessionEvent::decode(&self.to_json())
    }
}

/// A validated event from an app.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub kind: EventKind,
    pub app: AppName,
    /// The session the event is about: present for every kind but
    /// `attributes`, which is about the user ([`EventKind::names_session`]).
    pub session_id: Option<SessionId>,
    /// Present for every kind but `logout`, which may omit it.
    pub user_id: Option<UserId>,
    /// When the app saw it: the only clock used to rank sessions.
    pub occurred_at: DateTime<Utc>,
    pub event_id: Option<String>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// When the app's session expires by itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// Free-form facts the app claims about the user, for rule hooks.
    /// `None` (no `attributes` key, or `null`): the app's latest claim for
    /// the user stands; `Some`, even empty, replaces it.
    pub attributes: Option<Map<String, Value>>,
}

impl SessionEvent {
    /// Decodes and validates one message body.
    ///
    /// The body is read straight into its fields ([`RawEvent`]), without a
    /// `serde_json::Value` of the whole: a string field is borrowed from
    /// the body unless it holds an escape, and each field is copied once,
    /// when its check makes it a typed value. What is refused, and why, is
    /// what a `Value` read first would give: the whole body is parsed (a
    /// syntax error anywhere is one), a repeated key keeps its last value,
    /// and the fields are checked in the order below, whatever their order
    /// in the body.
    pub fn decode(body: &[u8]) -> Result<SessionEvent, EventError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(EventError::TooLarge(body.len()));
        }
        let raw = match serde_json::from_slice::<Body>(body) {
            Ok(Body::Object(raw)) => raw,
            Ok(Body::NotAnObject) => return Err(EventError::NotAnObject),
            Err(e) => {
                return Err(EventError::Json {
                    line: e.line(),
                    column: e.column(),
                    detail: json_error_detail(&e),
                });
            }
        };

        let kind = parse_kind(required_str(&raw.kind, "type")?)?;
        let app = AppName::parse(required_str(&raw.app, "app")?)
            .map_err(|p| EventError::invalid("app", p))?;
        // An `attributes` event is about the user: a session it names is
        // checked like any other field, and not used.
        let session_id = if kind.names_session() {
            Some(required_str(&raw.session_id, "session_id")?)
        } else {
            optional_str(&raw.session_id, "session_id")?
        }
        .map(SessionId::parse)
        .transpose()
        .map_err(|p| EventError::invalid("session_id", p))?
        .filter(|_| kind.names_session());
        let user_id = if kind.requires_user() {
            Some(required_str(&raw.user_id, "user_id")?)
        } else {
            optional_str(&raw.user_id, "user_id")?
        }
        .map(UserId::parse)
        .transpose()
        .map_err(|p| EventError::invalid("user_id", p))?;
        let occurred_at = parse_time(
            "occurred_at",
            required_str(&raw.occurred_at, "occurred_at")?,
        )?;
        let event_id = optional_str(&raw.event_id, "event_id")?
            .map(parse_event_id)
            .transpose()?;
        let ip = optional_str(&raw.ip, "ip")?
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| EventError::invalid("ip", "invalid IP address"))
            })
            .transpose()?;
        let user_agent = optional_str(&raw.user_agent, "user_agent")?
            .map(parse_user_agent)
            .transpose()?;
        let expires_at = optional_str(&raw.expires_at, "expires_at")?
            .map(|s| parse_time("expires_at", s))
            .transpose()?;
        let attributes = take_attributes(raw.attributes)?;
        if kind == EventKind::Attributes && attributes.is_none() {
            // The claim is the whole event: `null` would claim nothing new.
            return Err(EventError::Missing("attributes"));
        }

        Ok(SessionEvent {
            kind,
            app,
            session_id,
            user_id,
            occurred_at,
            event_id,
            ip,
            user_agent,
            expires_at,
            attributes,
        })
    }
}

/// A message body as read, before any check: an object's fields, or
/// anything else (refused as [`EventError::NotAnObject`] once the whole
/// body has parsed).
#[expect(
    clippy::large_enum_variant,
    reason = "one per decode, on the stack: a Box would be an allocation per event"
)]
enum Body<'a> {
    Object(RawEvent<'a>),
    NotAnObject,
}

/// The fields of an event object as read; `None` when absent. Unknown
/// fields are parsed (a syntax error in one is still an error) and
/// dropped.
#[derive(Default)]
struct RawEvent<'a> {
    kind: Option<Raw<'a>>,
    app: Option<Raw<'a>>,
    session_id: Option<Raw<'a>>,
    user_id: Option<Raw<'a>>,
    occurred_at: Option<Raw<'a>>,
    event_id: Option<Raw<'a>>,
    ip: Option<Raw<'a>>,
    user_agent: Option<Raw<'a>>,
    expires_at: Option<Raw<'a>>,
    attributes: Option<Value>,
}

/// A field that should hold a string, as read: the string (borrowed from
/// the body unless it holds an escape), `null`, or the JSON type it has
/// instead, for the refusal.
enum Raw<'a> {
    Null,
    Str(Cow<'a, str>),
    Other(&'static str),
}

/// The event fields a body's key may name.
enum Key {
    Kind,
    App,
    SessionId,
    UserId,
    OccurredAt,
    EventId,
    Ip,
    UserAgent,
    ExpiresAt,
    Attributes,
    Unknown,
}

impl Key {
    fn of(name: &str) -> Key {
        match name {
            "type" => Key::Kind,
            "app" => Key::App,
            "session_id" => Key::SessionId,
            "user_id" => Key::UserId,
            "occurred_at" => Key::OccurredAt,
            "event_id" => Key::EventId,
            "ip" => Key::Ip,
            "user_agent" => Key::UserAgent,
            "expires_at" => Key::ExpiresAt,
            "attributes" => Key::Attributes,
            _ => Key::Unknown,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::of(name))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, parsed as a `Value` would be (numbers included, which
/// `IgnoredAny` would not range-check) and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skipper).map(|_| Skip)
    }
}

/// Reads any value and says which JSON type it was, draining arrays and
/// objects (see [`json_type`]).
struct Skipper;

impl<'de> Visitor<'de> for Skipper {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<&'static str, E> {
        Ok("null")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<&'static str, E> {
        Ok("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<&'static str, E> {
        Ok("a string")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<&'static str, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok("an array")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<&'static str, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok("an object")
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'de>, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Raw<'de>, E> {
                Ok(Raw::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Raw<'de>, E> {
                Ok(Raw::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Raw<'de>, E> {
                Ok(Raw::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Raw<'de>, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Raw<'de>, E> {
                Skipper.visit_bool(b).map(Raw::Other)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Raw<'de>, E> {
                Skipper.visit_i64(n).map(Raw::Other)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Raw<'de>, E> {
                Skipper.visit_u64(n).map(Raw::Other)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Raw<'de>, E> {
                Skipper.visit_f64(n).map(Raw::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Raw<'de>, A::Error> {
                Skipper.visit_seq(seq).map(Raw::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Raw<'de>, A::Error> {
                Skipper.visit_map(map).map(Raw::Other)
            }
        }
        d.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body<'de>, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
                let mut raw = RawEvent::default();
                // A repeated key overwrites: the last one counts.
                while let Some(key) = map.next_key::<Key>()? {
                    let field = match key {
                        Key::Kind => &mut raw.kind,
                        Key::App => &mut raw.app,
                        Key::SessionId => &mut raw.session_id,
                        Key::UserId => &mut raw.user_id,
                        Key::OccurredAt => &mut raw.occurred_at,
                        Key::EventId => &mut raw.event_id,
                        Key::Ip => &mut raw.ip,
                        Key::UserAgent => &mut raw.user_agent,
                        Key::ExpiresAt => &mut raw.expires_at,
                        Key::Attributes => {
                            raw.attributes = Some(map.next_value()?);
                            continue;
                        }
                        Key::Unknown => {
                            map.next_value::<Skip>()?;
                            continue;
                        }
                    };
                    *field = Some(map.next_value()?);
                }
                Ok(Body::Object(raw))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Body<'de>, A::Error> {
                Skipper.visit_seq(seq).map(|_| Body::NotAnObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Body<'de>, E> {
                Ok(Body::NotAnObject)
            }
        }
        d.deserialize_any(BodyVisitor)
    }
}

fn parse_kind(kind: &str) -> Result<EventKind, EventError> {
    match kind {
        "login" => Ok(EventKind::Login),
        "request" => Ok(EventKind::Request),
        "logout" => Ok(EventKind::Logout),
        "logout_others" => Ok(EventKind::LogoutOthers),
        "logout_all" => Ok(EventKind::LogoutAll),
        "attributes" => Ok(EventKind::Attributes),
        other => Err(EventError::invalid(
            "type",
            format!(
                "unknown event type {other:?} (expected login, request, logout, \
                 logout_others, logout_all or attributes)"
            ),
        )),
    }
}

fn parse_event_id(s: &str) -> Result<String, EventError> {
    let n = s.chars().count();
    if n == 0 || n > MAX_EVENT_ID_CHARS {
        Err(EventError::invalid(
            "event_id",
            format!("must be 1-{MAX_EVENT_ID_CHARS} characters, got {n}"),
        ))
    } else if s.contains('\0') {
        Err(EventError::invalid("event_id", NO_NUL))
    } else {
        Ok(s.to_owned())
    }
}

fn parse_user_agent(s: &str) -> Result<String, EventError> {
    let n = s.chars().count();
    if n > MAX_USER_AGENT_CHARS {
        Err(EventError::invalid(
            "user_agent",
            format!("longer than {MAX_USER_AGENT_CHARS} characters ({n})"),
        ))
    } else if s.contains('\0') {
        Err(EventError::invalid("user_agent", NO_NUL))
    } else {
        Ok(s.to_owned())
    }
}

/// The `attributes` object, checked; `None` when absent or `null` (the
/// app's latest claim stands).
fn take_attributes(attributes: Option<Value>) -> Result<Option<Map<String, Value>>, EventError> {
    match attributes {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            check_attributes(&map)?;
            Ok(Some(map))
        }
        Some(other) => Err(EventError::invalid(
            "attributes",
            format!("expected a JSON object, got {}", json_type(&other)),
        )),
    }
}

/// An event that claims to have happened further ahead of the worker's clock
/// than `limits.max_clock_skew` allows. Sessions are ranked by event time,
/// so one such event would hold its user's slot, or freeze its session's
/// last-seen time, until that date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ClockSkewError {
    /// The event's `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// The worker's clock when it checked the event.
    pub now: DateTime<Utc>,
    /// The most an event may be ahead of `now`.
    pub allowed: Duration,
}

impl fmt::Display for ClockSkewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ahead = self.occurred_at.signed_duration_since(self.now);
        // Rounded up, so an event refused for a fraction of a second over
        // the limit does not read as being within it.
        let ahead = ahead.num_seconds() + i64::from(ahead.subsec_nanos() > 0);
        write!(
            f,
            "occurred_at: {} is {} s ahead of this worker's clock ({}); \
             limits.max_clock_skew allows {} s",
            self.occurred_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            thousands(ahead.unsigned_abs()),
            self.now.to_rfc3339_opts(SecondsFormat::Secs, true),
            thousands(self.allowed.as_secs()),
        )
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

impl SessionEvent {
    /// Refuses the event if it occurred more than `max_skew` after `now`
    /// (the worker's clock). Kept apart from [`SessionEvent::decode`], which
    /// depends on the message alone.
    pub fn check_clock(
        &self,
        now: DateTime<Utc>,
        max_skew: Duration,
    ) -> Result<(), ClockSkewError> {
        let allowed = chrono::TimeDelta::from_std(max_skew).unwrap_or(chrono::TimeDelta::MAX);
        if self.occurred_at.signed_duration_since(now) <= allowed {
            return Ok(());
        }
        Err(ClockSkewError {
            occurred_at: self.occurred_at,
            now,
            allowed: max_skew,
        })
    }
}

/// Bounds on `attributes`, and the types of its conventional keys.
fn check_attributes(map: &Map<String, Value>) -> Result<(), EventError> {
    if map.len() > MAX_ATTRIBUTE_KEYS {
        return Err(EventError::invalid(
            "attributes",
            format!("more than {MAX_ATTRIBUTE_KEYS} keys ({})", map.len()),
        ));
    }
    let depth = 1 + map.values().map(depth_of).max().unwrap_or(0);
    if depth > MAX_ATTRIBUTE_DEPTH {
        return Err(EventError::invalid(
            "attributes",
            format!("nested deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
        ));
    }
    let size = serde_json::to_vec(map).map_or(usize::MAX, |v| v.len());
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(EventError::invalid(
            "attributes",
            format!("larger than {MAX_ATTRIBUTES_BYTES} bytes ({size})"),
        ));
    }
    let mut path = String::from("attributes");
    check_no_nul(&mut path, map)?;
    match map.get("superuser") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(other) => {
            return Err(EventError::invalid(
                "attributes.superuser",
                format!("expected a boolean, got {}", json_type(other)),
            ));
        }
    }
    match map.get("roles") {
        None | Some(Value::Null) => {}
        Some(Value::Array(roles)) => {
            if roles.len() > MAX_ROLES {
                return Err(EventError::invalid(
                    "attributes.roles",
                    format!("more than {MAX_ROLES} roles ({})", roles.len()),
                ));
            }
            for role in roles {
                match role {
                    Value::String(r) if !r.is_empty() && r.chars().count() <= MAX_ROLE_CHARS => {}
                    Value::String(_) => {
                        return Err(EventError::invalid(
                            "attributes.roles",
                            format!("each role must be 1-{MAX_ROLE_CHARS} characters"),
                        ));
                    }
                    other => {
                        return Err(EventError::invalid(
                            "attributes.roles",
                            format!("expected strings, got {}", json_type(other)),
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(EventError::invalid(
                "attributes.roles",
                format!("expected an array of strings, got {}", json_type(other)),
            ));
        }
    }
    Ok(())
}

/// Refuses a NUL in any key or string under `map`, naming where it is:
/// PostgreSQL's jsonb refuses `\u0000`, and the event would only fail at
/// commit time, after a batch and every redelivery were spent on it.
/// `path` names `map` and is left as it was.
fn check_no_nul(path: &mut String, map: &Map<String, Value>) -> Result<(), EventError> {
    for (key, value) in map {
        let len = path.len();
        push_key(path, key);
        if key.contains('\0') {
            return Err(EventError::InvalidAttribute {
                path: path.clone(),
                problem: format!("key {}", NO_NUL),
            });
        }
        check_value_no_nul(path, value)?;
        path.truncate(len);
    }
    Ok(())
}

fn check_value_no_nul(path: &mut String, value: &Value) -> Result<(), EventError> {
    match value {
        Value::String(s) if s.contains('\0') => Err(EventError::InvalidAttribute {
            path: path.clone(),
            problem: NO_NUL.to_owned(),
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_value_no_nul(path, item)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => check_no_nul(path, map),
        _ => Ok(()),
    }
}

/// Appends `.key`, or `["key"]` (JSON-quoted, so a NUL or a dot in the key
/// is shown escaped and unambiguous) unless the key is a plain name.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_owned()).to_string());
        path.push(']');
    }
}

/// Nesting depth of a JSON value: scalars are 1.
fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 1,
    }
}

/// serde_json's message without its trailing " at line L column C", which we
/// already put first.
fn json_error_detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field that must be present and a string. `null` counts as missing.
fn required_str<'a>(field: &'a Option<Raw<'_>>, name: &'static str) -> Result<&'a str, EventError> {
    optional_str(field, name)?.ok_or(EventError::Missing(name))
}

/// A field that may be absent or null, and is a string otherwise.
fn optional_str<'a>(
    field: &'a Option<Raw<'_>>,
    name: &'static str,
) -> Result<Option<&'a str>, EventError> {
    match field {
        None | Some(Raw::Null) => Ok(None),
        Some(Raw::Str(s)) => Ok(Some(s)),
        Some(Raw::Other(json_type)) => Err(EventError::invalid(
            name,
            format!("expected a string, got {json_type}"),
        )),
    }
}

/// Parses an RFC 3339 time, cut to microseconds: PostgreSQL stores no more,
/// and a time must compare equal to itself after a round trip through the log
/// (or a redelivered event would look newer than the one stored). A leap
/// second (`23:59:60.5`) becomes the instant PostgreSQL stores for it
/// (`00:00:00.5` of the next minute) for the same reason.
///
/// The time must fall within years [`MIN_YEAR`]-[`MAX_YEAR`] once converted
/// to UTC: an offset can carry `9999-12-31T23:59:00-23:59` into year 10000,
/// which no RFC 3339 text can show again.
fn parse_time(field: &'static str, s: &str) -> Result<DateTime<Utc>, EventError> {
    let parsed = DateTime::parse_from_rfc3339(s)
        .map_err(|e| EventError::invalid(field, format!("invalid RFC 3339 time {s:?} ({e})")))?;
    let t = DateTime::from_timestamp_micros(parsed.timestamp_micros())
        .filter(|t| (MIN_YEAR..=MAX_YEAR).contains(&t.year()))
        .ok_or_else(|| {
            EventError::invalid(
                field,
                format!("{s:?} is outside years {MIN_YEAR:04}-{MAX_YEAR} once converted to UTC"),
            )
        })?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> Result<SessionEvent, EventError> {
        SessionEvent::decode(v.to_string().as_bytes())
    }

    fn login() -> Value {
        json!({
            "type": "login", "app": "shop", "session_id": "s1", "user_id": "u1",
            "occurred_at": "2026-11-27T10:00:00Z"
        })
    }

    fn error_of(v: Value) -> String {
        decode(v).unwrap_err().to_string()
    }

    #[test]
    fn decodes_a_full_event() {
        let e = decode(json!({
            "type": "request", "app": "shop-2.eu_west", "session_id": "abc",
            "user_id": "42", "occurred_at": "2026-11-27T11:00:00+01:00",
            "event_id": "e-1", "ip": "2001:db8::1", "user_agent": "Firefox",
            "expires_at": "2026-11-28T10:00:00Z", "attributes": {"superuser": true},
            "future_field": [1, 2]
        }))
        .unwrap();
        assert_eq!(e.kind, EventKind::Request);
        assert_eq!(e.app.as_str(), "shop-2.eu_west");
        assert_eq!(e.user_id.unwrap().as_str(), "42");
        assert_eq!(e.occurred_at.to_rfc3339(), "2026-11-27T10:00:00+00:00");
        assert_eq!(e.ip.unwrap().to_string(), "2001:db8::1");
        assert_eq!(e.attributes.unwrap()["superuser"], json!(true));
    }

    #[test]
    fn no_attributes_or_null_claim_nothing_new_and_an_empty_object_is_a_claim() {
        assert_eq!(decode(login()).unwrap().attributes, None);
        let mut v = login();
        v["attributes"] = Value::Null;
        assert_eq!(decode(v.clone()).unwrap().attributes, None);
        v["attributes"] = json!({});
        assert_eq!(decode(v).unwrap().attributes, Some(Map::new()));
    }

    #[test]
    fn logout_others_and_logout_all_need_the_user() {
        for kind in ["logout_others", "logout_all"] {
            let mut v = login();
            v["type"] = json!(kind);
            assert_eq!(decode(v.clone()).unwrap().kind.as_str(), kind);
            v.as_object_mut().unwrap().remove("user_id");
            assert_eq!(error_of(v), "missing field user_id");
        }
    }

    #[test]
    fn an_attributes_event_names_its_user_and_claim_and_no_session() {
        let claim = json!({
            "type": "attributes", "app": "shop", "user_id": "u1",
            "occurred_at": "2026-11-27T10:00:00Z", "attributes": {"roles": ["staff"]}
        });
        let e = decode(claim.clone()).unwrap();
        assert_eq!(e.kind, EventKind::Attributes);
        assert_eq!(e.session_id, None);
        assert_eq!(e.user_id.unwrap().as_str(), "u1");
        assert_eq!(e.attributes.unwrap()["roles"], json!(["staff"]));
        // An empty claim is a claim: the app now claims nothing.
        let mut empty = claim.clone();
        empty["attributes"] = json!({});
        assert_eq!(decode(empty).unwrap().attributes, Some(Map::new()));
        // A session it names is checked, and not kept.
        let mut named = claim.clone();
        named["session_id"] = json!("s1");
        assert_eq!(decode(named.clone()).unwrap().session_id, None);
        named["session_id"] = json!("");
        assert_eq!(
            error_of(named),
            "session_id: must be 1-256 characters, got 0"
        );
        for missing in ["user_id", "attributes"] {
            let mut v = claim.clone();
            v.as_object_mut().unwrap().remove(missing);
            assert_eq!(error_of(v), format!("missing field {missing}"));
        }
        let mut null = claim;
        null["attributes"] = Value::Null;
        assert_eq!(error_of(null), "missing field attributes");
        // Every other kind still needs its session.
        let mut v = login();
        v.as_object_mut().unwrap().remove("session_id");
        assert_eq!(error_of(v), "missing field session_id");
    }

    #[test]
    fn logout_may_omit_the_user() {
        let mut v = login();
        v["type"] = json!("logout");
        v.as_object_mut().unwrap().remove("user_id");
        assert_eq!(decode(v).unwrap().user_id, None);
    }

    #[test]
    fn reports_what_is_wrong() {
        assert!(
            SessionEvent::decode(b"{\"type\": ")
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON at line 1 column 9"),
        );
        assert_eq!(
            SessionEvent::decode(b"[1]").unwrap_err(),
            EventError::NotAnObject
        );
        let mut v = login();
        v.as_object_mut().unwrap().remove("user_id");
        assert_eq!(error_of(v), "missing field user_id");
        let mut v = login();
        v["ip"] = json!("10.0.0.300");
        assert_eq!(error_of(v), "ip: invalid IP address");
        let mut v = login();
        v["type"] = json!("logon");
        assert!(error_of(v).starts_with("type: unknown event type \"logon\""));
        let mut v = login();
        v["app"] = json!("my shop");
        assert!(error_of(v).starts_with("app: invalid character ' '"));
        let mut v = login();
        v["app"] = json!("a".repeat(65));
        assert_eq!(error_of(v), "app: must be 1-64 characters, got 65");
        let mut v = login();
        v["session_id"] = json!("");
        assert_eq!(error_of(v), "session_id: must be 1-256 characters, got 0");
        let mut v = login();
        v["user_id"] = json!(42);
        assert_eq!(error_of(v), "user_id: expected a string, got a number");
        let mut v = login();
        v["occurred_at"] = json!("yesterday");
        assert!(error_of(v).starts_with("occurred_at: invalid RFC 3339 time \"yesterday\""));
        let mut v = login();
        v["user_agent"] = json!("x".repeat(513));
        assert!(error_of(v).starts_with("user_agent: longer than 512"));
        let mut v = login();
        v["attributes"] = json!([1]);
        assert_eq!(
            error_of(v),
            "attributes: expected a JSON object, got an array"
        );
        let mut v = login();
        v["session_id"] = json!("a\u{0}b");
        assert_eq!(
            error_of(v),
            "session_id: must not contain control characters"
        );
    }

    #[test]
    fn the_body_is_read_as_a_parsed_json_value_would_be() {
        let login = r#""type": "login", "app": "shop", "session_id": "s1", "user_id": "u1",
            "occurred_at": "2026-11-27T10:00:00Z""#;
        let with = |more: &str| SessionEvent::decode(format!("{{{login}{more}}}").as_bytes());
        // A repeated key keeps its last value, whatever the first was.
        assert_eq!(
            with(r#", "type": "request""#).unwrap().kind,
            EventKind::Request
        );
        let e = with(r#", "user_id": 42, "user_id": "u2""#).unwrap();
        assert_eq!(e.user_id.unwrap().as_str(), "u2");
        assert_eq!(
            with(r#", "attributes": {"a": 1}, "attributes": null"#)
                .unwrap()
                .attributes,
            None
        );
        // Escapes in keys and values are read as the text they stand for.
        let e = SessionEvent::decode(
            br#"{"ty\u0070e": "login", "app": "sh\u006fp", "session_id": "s\u0031",
                "user_id": "u\"1", "occurred_at": "2026-11-27T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(e.app.as_str(), "shop");
        assert_eq!(e.session_id.unwrap().as_str(), "s1");
        assert_eq!(e.user_id.unwrap().as_str(), "u\"1");
        // Unknown fields are parsed, not skipped over: a number out of range or
        // a lone surrogate in one is invalid JSON.
        assert!(
            with(r#", "extra": [1, {"a": 1e999}]"#)
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON at line 2")
        );
        assert!(
            with(r#", "extra": "\ud800""#)
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON at line 2")
        );
        assert!(with(r#", "extra": {"deep": [true, null, -1.5e3, "x"]}"#).is_ok());
        // A field of another type names the type it has.
        assert_eq!(
            with(r#", "ip": {"v": 4}"#).unwrap_err().to_string(),
            "ip: expected a string, got an object"
        );
        assert_eq!(
            with(r#", "event_id": [true]"#).unwrap_err().to_string(),
            "event_id: expected a string, got an array"
        );
        assert_eq!(
            with(r#", "user_agent": false"#).unwrap_err().to_string(),
            "user_agent: expected a string, got a boolean"
        );
        // Not an object: once the whole body has parsed.
        for body in ["[1]", "\"login\"", "null", "1", "-2.5", "true", "[[], {}]"] {
            assert_eq!(
                SessionEvent::decode(body.as_bytes()).unwrap_err(),
                EventError::NotAnObject,
                "{body}"
            );
        }
        for body in ["[1, 2", "[1,]", "\"a", "{\"type\": \"login\"} x", "[1] [2]"] {
            assert!(
                matches!(
                    SessionEvent::decode(body.as_bytes()),
                    Err(EventError::Json { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_large_messages_before_parsing() {
        let body = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            SessionEvent::decode(&body).unwrap_err(),
            EventError::TooLarge(MAX_MESSAGE_BYTES + 1)
        );
    }

    #[test]
    fn attributes_are_bounded() {
        let with = |a: Value| {
            let mut v = login();
            v["attributes"] = a;
            decode(v).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(
            with(json!({"superuser": true, "roles": ["staff"], "plan": {"seats": [1, 2]}})).is_ok()
        );
        assert_eq!(
            with(json!({"a": {"b": {"c": {"d": 1}}}})).unwrap_err(),
            "attributes: nested deeper than 4 levels"
        );
        let many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(
            with(Value::Object(many))
                .unwrap_err()
                .starts_with("attributes: more than 64 keys")
        );
        assert!(
            with(json!({"blob": "x".repeat(5000)}))
                .unwrap_err()
                .starts_with("attributes: larger than 4096 bytes")
        );
        assert_eq!(
            with(json!({"superuser": "yes"})).unwrap_err(),
            "attributes.superuser: expected a boolean, got a string"
        );
        assert_eq!(
            with(json!({"roles": "staff"})).unwrap_err(),
            "attributes.roles: expected an array of strings, got a string"
        );
        assert_eq!(
            with(json!({"roles": [1]})).unwrap_err(),
            "attributes.roles: expected strings, got a number"
        );
        let roles: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        assert!(
            with(json!({"roles": roles}))
                .unwrap_err()
                .starts_with("attributes.roles: more than 64 roles")
        );
        assert!(
            with(json!({"roles": [""]}))
                .unwrap_err()
                .starts_with("attributes.roles: each role")
        );
    }

    #[test]
    fn times_are_cut_to_microseconds() {
        let mut v = login();
        v["occurred_at"] = json!("2026-11-27T10:00:00.123456789+02:00");
        let e = decode(v).unwrap();
        assert_eq!(
            e.occurred_at.to_rfc3339(),
            "2026-11-27T08:00:00.123456+00:00"
        );
    }

    #[test]
    fn nul_is_refused_wherever_it_is_and_the_reason_says_where() {
        let with = |a: Value| {
            let mut v = login();
            v["attributes"] = a;
            error_of(v)
        };
        assert_eq!(
            with(json!({"plan": {"name": "team\u{0}"}})),
            "attributes.plan.name: must not contain NUL (U+0000)"
        );
        assert_eq!(
            with(json!({"plan": {"seats": [1, "x\u{0}"]}})),
            "attributes.plan.seats[1]: must not contain NUL (U+0000)"
        );
        assert_eq!(
            with(json!({"roles": ["staff", "ad\u{0}min"]})),
            "attributes.roles[1]: must not contain NUL (U+0000)"
        );
        assert_eq!(
            with(json!({"plan": {"na\u{0}me": "team"}})),
            r#"attributes.plan["na\u0000me"]: key must not contain NUL (U+0000)"#
        );
        assert_eq!(
            with(json!({"\u{0}": true})),
            r#"attributes["\u0000"]: key must not contain NUL (U+0000)"#
        );
        assert_eq!(
            with(json!({"a.b": {"c": "\u{0}"}})),
            r#"attributes["a.b"].c: must not contain NUL (U+0000)"#
        );
        // The same text in the JSON escape apps actually send.
        let body = br#"{"type": "login", "app": "shop", "session_id": "s1", "user_id": "u1",
            "occurred_at": "2026-11-27T10:00:00Z", "attributes": {"plan": {"name": "a\u0000"}}}"#;
        assert_eq!(
            SessionEvent::decode(body).unwrap_err().to_string(),
            "attributes.plan.name: must not contain NUL (U+0000)"
        );
        // Other control characters are text PostgreSQL stores.
        assert!(
            decode({
                let mut v = login();
                v["attributes"] = json!({"note": "tab\there\u{1b}[31m", "k\u{7}": 1});
                v
            })
            .is_ok()
        );
        for field in ["user_agent", "event_id"] {
            let mut v = login();
            v[field] = json!("a\u{0}b");
            assert_eq!(
                error_of(v),
                format!("{field}: must not contain NUL (U+0000)")
            );
        }
    }

    #[test]
    fn times_must_fall_within_years_1_to_9999_in_utc() {
        for field in ["occurred_at", "expires_at"] {
            let with = |t: &str| {
                let mut v = login();
                v[field] = json!(t);
                decode(v).map_err(|e| e.to_string())
            };
            for ok in [
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59.999999Z",
                "9999-12-31T23:59:00+23:59",
                "0001-01-01T00:00:00-23:59",
            ] {
                assert!(with(ok).is_ok(), "{field} {ok}");
            }
            for bad in [
                "9999-12-31T23:59:00-23:59",
                "0001-01-01T00:00:00+00:01",
                "0000-06-01T00:00:00Z",
            ] {
                assert_eq!(
                    with(bad).unwrap_err(),
                    format!("{field}: \"{bad}\" is outside years 0001-9999 once converted to UTC")
                );
            }
        }
    }

    #[test]
    fn a_leap_second_is_the_instant_postgresql_stores() {
        let mut v = login();
        v["occurred_at"] = json!("2016-12-31T23:59:60.5Z");
        assert_eq!(
            decode(v).unwrap().occurred_at.to_rfc3339(),
            "2017-01-01T00:00:00.500+00:00"
        );
    }

    #[test]
    fn events_too_far_ahead_of_the_clock_are_refused_with_both_times() {
        let now: DateTime<Utc> = "2026-11-29T19:30:00Z".parse().unwrap();
        let at = |t: &str| {
            let mut v = login();
            v["occurred_at"] = json!(t);
            decode(v).unwrap()
        };
        let skew = Duration::from_secs(300);
        assert_eq!(
            at("9999-12-31T00:00:00Z")
                .check_clock(now, skew)
                .unwrap_err()
                .to_string(),
            "occurred_at: 9999-12-31T00:00:00Z is 251,606,233,800 s ahead of this worker's clock \
             (2026-11-29T19:30:00Z); limits.max_clock_skew allows 300 s"
        );
        // A fraction over the limit is not shown as within it.
        assert_eq!(
            at("2026-11-29T19:35:00.25+00:00")
                .check_clock(now, skew)
                .unwrap_err()
                .to_string(),
            "occurred_at: 2026-11-29T19:35:00.250Z is 301 s ahead of this worker's clock \
             (2026-11-29T19:30:00Z); limits.max_clock_skew allows 300 s"
        );
        // Up to the limit ahead, and any time in the past, are fine.
        for ok in [
            "2026-11-29T19:35:00Z",
            "2026-11-29T19:30:07Z",
            "0001-01-01T00:00:00Z",
        ] {
            assert_eq!(at(ok).check_clock(now, skew), Ok(()), "{ok}");
        }
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let mut v = login();
        v["session_id"] = json!("é".repeat(256));
        assert!(decode(v).is_ok());
    }

    #[test]
    fn an_event_body_is_what_the_decoder_reads() {
        let shop = AppName::parse("shop").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-27T10:15:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut body = EventBody::new(EventKind::LogoutOthers, &shop, "s1", at);
        body.user_id = Some("42".into());
        body.ip = Some("203.0.113.7".parse().unwrap());
        body.attributes = Some(Map::new());
        let json: Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(
            json,
            json!({
                "type": "logout_others", "app": "shop", "session_id": "s1", "user_id": "42",
                "occurred_at": "2026-11-27T10:15:00.123456Z", "ip": "203.0.113.7",
                "attributes": {}
            })
        );
        assert_eq!(body.routing_key(), "logout_others.shop");
        let event = body.validate().unwrap();
        assert_eq!(event.kind, EventKind::LogoutOthers);
        assert_eq!(event.occurred_at, at);
        assert_eq!(event.attributes, Some(Map::new()));
        let back: EventBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);

        body.user_id = None;
        assert_eq!(
            body.validate().unwrap_err().to_string(),
            "missing field user_id"
        );
    }
}
