//! Arbitrary bytes into the event decoder and validator: it must never panic,
//! must be deterministic, and whatever it accepts must satisfy every bound
//! the wire contract documents (and so be storable: no NUL in any text or
//! attribute, times within years 0001-9999 in UTC, no leap-second instants).
#![no_main]

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use session_guard::domain::event::{
    AppName, EventKind, MAX_ATTRIBUTE_DEPTH, MAX_ATTRIBUTE_KEYS, MAX_ATTRIBUTES_BYTES, MAX_EVENT_ID_CHARS,
    MAX_MESSAGE_BYTES, MAX_ROLE_CHARS, MAX_ROLES, MAX_USER_AGENT_CHARS, MAX_YEAR, MIN_YEAR,
    SessionEvent, SessionId, UserId,
};

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// Whether any key or string under `v` holds a NUL.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// A time PostgreSQL stores and gives back unchanged.
fn storable(t: DateTime<Utc>) -> bool {
    (MIN_YEAR..=MAX_YEAR).contains(&t.year())
        && t.nanosecond() % 1000 == 0
        && t.nanosecond() < 1_000_000_000
}

fuzz_target!(|data: &[u8]| {
    let first = SessionEvent::decode(data);
    assert_eq!(first, SessionEvent::decode(data), "decoding is deterministic");
    match first {
        Ok(event) => {
            assert!(data.len() <= MAX_MESSAGE_BYTES);
            assert!(AppName::parse(event.app.as_str()).is_ok());
            match &event.session_id {
                Some(session) => assert!(SessionId::parse(session.as_str()).is_ok()),
                None => assert_eq!(event.kind, EventKind::Attributes, "only attributes names no session"),
            }
            if event.kind == EventKind::Attributes {
                assert!(event.attributes.is_some(), "an attributes event carries its claim");
            }
            if let Some(user) = &event.user_id {
                assert!(UserId::parse(user.as_str()).is_ok());
            } else {
                assert_eq!(event.kind.as_str(), "logout", "only a logout may omit user_id");
            }
            if let Some(agent) = &event.user_agent {
                assert!(agent.chars().count() <= MAX_USER_AGENT_CHARS && !agent.contains('\0'));
            }
            if let Some(id) = &event.event_id {
                assert!(!id.is_empty() && id.chars().count() <= MAX_EVENT_ID_CHARS);
                assert!(!id.contains('\0'));
            }
            assert!(storable(event.occurred_at), "occurred_at {}", event.occurred_at);
            assert!(event.expires_at.is_none_or(storable), "expires_at {:?}", event.expires_at);
            let claimed = event.attributes.unwrap_or_default();
            let nul = has_nul(&Value::Object(claimed.clone()));
            assert!(!nul, "NUL in attributes");
            let attributes = serde_json::to_vec(&claimed).unwrap();
            assert!(attributes.len() <= MAX_ATTRIBUTES_BYTES);
            assert!(claimed.len() <= MAX_ATTRIBUTE_KEYS);
            assert!(depth(&Value::Object(claimed.clone())) <= MAX_ATTRIBUTE_DEPTH);
            match claimed.get("superuser") {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(other) => panic!("superuser accepted as {other}"),
            }
            match claimed.get("roles") {
                None | Some(Value::Null) => {}
                Some(Value::Array(roles)) => {
                    assert!(roles.len() <= MAX_ROLES);
                    for role in roles {
                        let role = role.as_str().expect("roles are strings");
                        assert!(!role.is_empty() && role.chars().count() <= MAX_ROLE_CHARS);
                    }
                }
                Some(other) => panic!("roles accepted as {other}"),
            }
        }
        Err(error) => {
            // Every refusal has a reason to put in the dead-letter header.
            assert!(!error.to_string().is_empty());
        }
    }
});
