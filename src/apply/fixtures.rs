//! Batches, states and rules for the unit tests of the steps.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::enforcement::Enforcement;
use super::load::{Key, Origin, Slot, State};
use crate::domain::event::{AppName, EventKind, SessionEvent, SessionId, UserId};
use crate::domain::limits::{EvictionPolicy, HookChain, Limits};
use crate::domain::session::SessionRecord;

/// 10:`minute` on a fixed day.
pub(super) fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap()
}

/// An event of `user` on session `session` of app `shop`, at `minute`.
pub(super) fn event(
    kind: EventKind,
    session: &str,
    user: Option<&str>,
    minute: u32,
) -> SessionEvent {
    SessionEvent {
        kind,
        app: AppName::parse("shop").unwrap(),
        session_id: Some(SessionId::parse(session).unwrap()),
        user_id: user.map(|u| UserId::parse(u).unwrap()),
        occurred_at: at(minute),
        event_id: None,
        ip: None,
        user_agent: None,
        expires_at: None,
        attributes: None,
    }
}

/// An `attributes` event of app `shop`: `user`'s new claim, at `minute`.
pub(super) fn claims(user: &str, attributes: serde_json::Value, minute: u32) -> SessionEvent {
    SessionEvent {
        session_id: None,
        attributes: attributes.as_object().cloned(),
        ..event(EventKind::Attributes, "unused", Some(user), minute)
    }
}

/// Files `attributes` as what app `shop` claimed for `user` at
/// `minute`, as read from the store.
pub(super) fn claimed(state: &mut State, user: &str, attributes: serde_json::Value, minute: u32) {
    let claim = crate::domain::claims::Claim {
        attributes: attributes.as_object().cloned().unwrap(),
        occurred_at: at(minute),
    };
    let slot = super::load::ClaimSlot {
        claim: Some(claim.clone()),
        loaded: Some(claim),
    };
    let apps = state.claims.entry(user.to_owned()).or_default();
    apps.insert("shop".to_owned(), slot);
}

/// [`one_session_each`] with the `superuser_unlimited` hook.
pub(super) fn superusers_unlimited() -> Enforcement {
    let plain = one_session_each(true);
    let hook: std::sync::Arc<dyn crate::domain::limits::RuleHook> =
        std::sync::Arc::new(crate::domain::limits::SuperuserUnlimited);
    Enforcement {
        hooks: HookChain::new(plain.hooks.base(), vec![hook]),
        ..plain
    }
}

/// The key of session `session` of app `shop`.
pub(super) fn key(session: &str) -> Key {
    ("shop".to_owned(), session.to_owned())
}

/// A live session of `user` in app `shop`, logged in at `minute`, as
/// read from the log.
pub(super) fn stored(session: &str, user: &str, minute: u32) -> Slot {
    let record = SessionRecord {
        app: AppName::parse("shop").unwrap(),
        session_id: SessionId::parse(session).unwrap(),
        user_id: Some(UserId::parse(user).unwrap()),
        login_at: at(minute),
        login_seen: true,
        last_seen_at: at(minute),
        ip: None,
        user_agent: None,
        expires_at: None,
        ended_at: None,
        end_reason: None,
        max_sessions: None,
        last_revoke_at: None,
        attributes: None,
    };
    Slot {
        loaded: Some(record.clone()),
        record,
        origin: Origin::Log,
        ended_by: None,
        end_note: None,
        shadow_flagged: false,
        dirty: false,
        newly_flagged: false,
    }
}

/// A state holding `slots`, indexed by user.
pub(super) fn state_of(slots: Vec<Slot>) -> State {
    let mut state = State::default();
    for slot in slots {
        let key = (
            slot.record.app.to_string(),
            slot.record.session_id.to_string(),
        );
        state.slots.insert(key, slot);
    }
    state.index_all();
    state
}

/// One session per user in every app, no hooks; `enforce` or shadow mode.
pub(super) fn one_session_each(enforce: bool) -> Enforcement {
    let base = Limits {
        max_sessions: 1,
        max_sessions_global: 0,
        policy: EvictionPolicy::EvictOldest,
        idle_timeout: 0,
        log_limit: Some(10),
    };
    Enforcement {
        hooks: HookChain::new(base, Vec::new()),
        repeat_revoke_after: Duration::from_secs(60),
        enforce,
        last_seen_resolution: Duration::ZERO,
        notices: None,
    }
}
