//! Notices: what session-guard tells an app about a sign-in worth telling its
//! user about ("a new device signed in to your account").
//!
//! The worker publishes one notice per session at most: when a login (or the
//! first sighting of a session) comes from a device, or a network, that the
//! user's other sessions in the log have not used within the lookback. The
//! app sends the email; session-guard knows every app's sessions, so "new"
//! means new across all of them (or per app: the worker's
//! `notices.scope`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Device;
use crate::event::{APP_NAME_PATTERN, AppName, MAX_APP_CHARS, MAX_ID_CHARS, NO_CONTROL_PATTERN};

/// The body of a notice (wire contract v1).
///
/// Its JSON Schema (`schema/notice.schema.json`) is generated from this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(
    description = "A notice, as session-guard publishes it to the notices exchange with \
                   routing key `<type>.<app>` (wire protocol v1): a session of the user \
                   signed in from a device or a network their other sessions have not used \
                   lately. Fields may be added in later versions: ignore those you do not \
                   know. Delivery is at least once: a re-sent notice keeps its `event_id`, \
                   and a session gets at most one notice."
)]
pub struct Notice {
    /// `new_device` when the device (browser and OS) is new, whether or
    /// not the network is; `new_network` when only the network is. Kept
    /// as text, so that an app built against this version reads kinds
    /// added later ([`Notice::kind`] gives the typed value).
    #[serde(rename = "type")]
    #[schemars(
        schema_with = "kind_schema",
        description = "What is new: `new_device` (the browser and OS; the network may be new \
                       too, see `new_network`) or `new_network` (only the network). A kind \
                       added in a later version must not be refused."
    )]
    pub kind: String,
    /// Id of this notice, the same on every re-send: derived from the
    /// session ([`Notice::event_id_for`]), since a session gets one notice.
    /// Also the AMQP `message_id`.
    #[schemars(pattern(UUID_PATTERN))]
    pub event_id: Uuid,
    /// The app the session belongs to (the `app` of its events).
    #[schemars(length(min = 1, max = MAX_APP_CHARS), pattern(APP_NAME_PATTERN))]
    pub app: String,
    /// The user who signed in (the `user_id` of the session's events).
    #[schemars(length(min = 1, max = MAX_ID_CHARS), pattern(NO_CONTROL_PATTERN))]
    pub user_id: String,
    /// The session's handle, as the sessions API names it
    /// (`POST /v1/sessions/{handle}/revoke` ends it): never the session id,
    /// which is the user's credential in the app and would travel in emails.
    #[schemars(length(min = 1))]
    pub session: String,
    /// When the session signed in (its login's event time; the first event
    /// seen when no login was), RFC 3339, UTC, microseconds.
    #[schemars(extend("format" = "date-time"))]
    pub signed_in_at: String,
    /// The device, from the session's user agent (all unknown without one).
    pub device: Device,
    /// The session's IP address, if its events gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The device is new: no other session of the user within the lookback
    /// had the same browser and OS.
    pub new_device: bool,
    /// The network is new: no other session of the user within the lookback
    /// came from the same IPv4 /24 or IPv6 /48.
    pub new_network: bool,
    /// How many distinct devices the user's other sessions used within the
    /// lookback (at least 1: a user's first session gives no notice).
    pub known_devices: u32,
    /// How many distinct networks they came from.
    pub known_networks: u32,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A device (browser and OS) the user's other sessions have not used.
    NewDevice,
    /// A known device, from a network the user's other sessions have not
    /// come from.
    NewNetwork,
    /// A kind newer than this version of the protocol crate.
    #[schemars(skip)]
    Other,
}

impl NoticeKind {
    /// Every kind this version sends.
    pub const ALL: [NoticeKind; 2] = [NoticeKind::NewDevice, NoticeKind::NewNetwork];

    /// The name on the wire; `other` for [`NoticeKind::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::NewDevice => "new_device",
            NoticeKind::NewNetwork => "new_network",
            NoticeKind::Other => "other",
        }
    }

    /// The kind named `s`, or [`NoticeKind::Other`].
    pub fn parse(s: &str) -> NoticeKind {
        NoticeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(NoticeKind::Other)
    }
}

/// The namespace of notices' event ids (UUID v5): a fixed random UUID, so
/// that every worker derives the same id for the same session.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c0f_7d2e_8a41_4b6e_9f13_2d7a_c4e1_0b58);

/// A UUID in its hyphenated form, as the worker writes it.
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// A known kind, or one added after this version.
fn kind_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let known = generator.subschema_for::<NoticeKind>();
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "anyOf": [
            known,
            {
                "description": "A kind added after this version of the contract.",
                "type": "string"
            }
        ]
    })
}

/// The session a notice is about.
#[derive(Debug, Clone)]
pub struct SignIn<'a> {
    pub app: &'a AppName,
    /// Only to derive the event id: the notice carries `handle` instead.
    pub session_id: &'a str,
    /// The session's handle (the sessions API's sealed name for it).
    pub handle: String,
    pub user_id: &'a str,
    /// The login's event time (the first event's when no login was seen).
    pub at: DateTime<Utc>,
    pub device: Device,
    pub ip: Option<String>,
}

/// What the comparison with the user's other sessions found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeFacts {
    pub new_device: bool,
    pub new_network: bool,
    pub known_devices: u32,
    pub known_networks: u32,
}

impl Notice {
    /// The notice about `sign_in`; `None` when `facts` find nothing new.
    pub fn new(sign_in: SignIn<'_>, facts: &NoticeFacts) -> Option<Notice> {
        let kind = if facts.new_device {
            NoticeKind::NewDevice
        } else if facts.new_network {
            NoticeKind::NewNetwork
        } else {
            return None;
        };
        Some(Notice {
            kind: kind.as_str().to_owned(),
            event_id: Notice::event_id_for(sign_in.app.as_str(), sign_in.session_id),
            app: sign_in.app.to_string(),
            user_id: sign_in.user_id.to_owned(),
            session: sign_in.handle,
            signed_in_at: sign_in.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            device: sign_in.device,
            ip: sign_in.ip,
            new_device: facts.new_device,
            new_network: facts.new_network,
            known_devices: facts.known_devices,
            known_networks: facts.known_networks,
        })
    }

    /// The event id of session `session_id` of `app`'s notice: the same
    /// for every worker and every re-send (a session gets one notice).
    pub fn event_id_for(app: &str, session_id: &str) -> Uuid {
        let mut name = Vec::with_capacity(app.len() + 1 + session_id.len());
        name.extend_from_slice(app.as_bytes());
        // Neither an app name nor a session id holds a control character:
        // the split is unambiguous.
        name.push(0);
        name.extend_from_slice(session_id.as_bytes());
        Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
    }

    /// What is new, typed; [`NoticeKind::Other`] for a kind this version
    /// does not know.
    pub fn kind(&self) -> NoticeKind {
        NoticeKind::parse(&self.kind)
    }

    /// The routing key apps bind to: `<type>.<app>`.
    pub fn routing_key(&self) -> String {
        crate::names::notice_routing_key(&self.kind, &self.app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeviceKind;

    fn facts(new_device: bool, new_network: bool) -> NoticeFacts {
        NoticeFacts {
            new_device,
            new_network,
            known_devices: 1,
            known_networks: 1,
        }
    }

    fn notice(f: &NoticeFacts) -> Option<Notice> {
        let shop = AppName::parse("shop").unwrap();
        let device = Device {
            browser: Some("Chrome".into()),
            os: Some("Android".into()),
            kind: DeviceKind::Phone,
        };
        let sign_in = SignIn {
            app: &shop,
            session_id: "s1",
            handle: "sgh_x".into(),
            user_id: "42",
            at: Utc::now(),
            device,
            ip: None,
        };
        Notice::new(sign_in, f)
    }

    #[test]
    fn the_kind_says_what_is_new_and_nothing_new_gives_no_notice() {
        assert_eq!(
            notice(&facts(true, true)).unwrap().kind(),
            NoticeKind::NewDevice
        );
        assert_eq!(
            notice(&facts(true, false)).unwrap().kind(),
            NoticeKind::NewDevice
        );
        assert_eq!(
            notice(&facts(false, true)).unwrap().kind(),
            NoticeKind::NewNetwork
        );
        assert_eq!(notice(&facts(false, false)), None);
        assert_eq!(
            notice(&facts(false, true)).unwrap().routing_key(),
            "new_network.shop"
        );
        assert_eq!(NoticeKind::parse("new_gadget"), NoticeKind::Other);
    }

    #[test]
    fn a_session_keeps_one_event_id_and_sessions_differ() {
        assert_eq!(
            Notice::event_id_for("shop", "s1"),
            Notice::event_id_for("shop", "s1")
        );
        assert_ne!(
            Notice::event_id_for("shop", "s1"),
            Notice::event_id_for("shop", "s2")
        );
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            Notice::event_id_for("ab", "c"),
            Notice::event_id_for("a", "bc")
        );
        let n = notice(&facts(true, false)).unwrap();
        assert_eq!(n.event_id, Notice::event_id_for("shop", "s1"));
    }

    #[test]
    fn a_notice_reads_back_what_it_wrote() {
        let n = notice(&facts(true, true)).unwrap();
        let text = serde_json::to_string(&n).unwrap();
        assert!(
            !text.contains("\"ip\""),
            "no ip given, none written: {text}"
        );
        let back: Notice = serde_json::from_str(&text).unwrap();
        assert_eq!(back, n);
    }
}
