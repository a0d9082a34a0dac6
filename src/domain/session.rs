//! A session's log record and how one event changes it. Pure: the store reads
//! the record, calls [`apply_event`], and writes the result back.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::event::{AppName, EventKind, SessionEvent, SessionId, UserId};
use super::revoke::RevokeReason;

/// Why a session ended. Stored as text in `sessions.end_reason`; the
/// revocation reasons are also the `reason` of revoke messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The app reported a logout.
    Logout,
    /// Revoked: the user held more sessions than the limit.
    SessionLimit,
    /// Revoked: the limit was reached and the policy is `deny_new`.
    SessionLimitDenied,
    /// Revoked: not seen for `idle_timeout` seconds (state "expired").
    IdleTimeout,
    /// Revoked by the user's "log out my other devices".
    LogoutOthers,
    /// Revoked by the user's "log out everywhere".
    LogoutAll,
    /// Revoked by the user from a sessions page, through the sessions API.
    User,
    /// Revoked by an operator (`session-guard revoke`).
    Admin,
    /// Only for sessions shown after they passed their `expires_at`.
    Expired,
}

/// The reason a revoke message carries for a session ended this way.
/// `logout` and `expired` are never revokes; they map to `Other`.
impl From<EndReason> for RevokeReason {
    fn from(reason: EndReason) -> RevokeReason {
        match reason {
            EndReason::SessionLimit => RevokeReason::SessionLimit,
            EndReason::SessionLimitDenied => RevokeReason::SessionLimitDenied,
            EndReason::IdleTimeout => RevokeReason::IdleTimeout,
            EndReason::LogoutOthers => RevokeReason::LogoutOthers,
            EndReason::LogoutAll => RevokeReason::LogoutAll,
            EndReason::User => RevokeReason::User,
            EndReason::Admin => RevokeReason::Admin,
            EndReason::Logout | EndReason::Expired => RevokeReason::Other,
        }
    }
}

impl EndReason {
    const ALL: [EndReason; 9] = [
        EndReason::Logout,
        EndReason::SessionLimit,
        EndReason::SessionLimitDenied,
        EndReason::IdleTimeout,
        EndReason::LogoutOthers,
        EndReason::LogoutAll,
        EndReason::User,
        EndReason::Admin,
        EndReason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::SessionLimit => "session_limit",
            EndReason::SessionLimitDenied => "session_limit_denied",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::LogoutOthers => "logout_others",
            EndReason::LogoutAll => "logout_all",
            EndReason::User => "user",
            EndReason::Admin => "admin",
            EndReason::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        EndReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// True for the reasons that come with a revoke message.
    pub fn is_revocation(self) -> bool {
        !matches!(self, EndReason::Logout | EndReason::Expired)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's state as users of `session-guard sessions` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Revoked,
    LoggedOut,
    Expired,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Revoked => "revoked",
            SessionState::LoggedOut => "logged_out",
            SessionState::Expired => "expired",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the session log.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub app: AppName,
    pub session_id: SessionId,
    /// Unknown only while all we heard of the session is a logout without one.
    pub user_id: Option<UserId>,
    /// Event time of the login; until a login event arrives, the earliest
    /// time the session was seen.
    pub login_at: DateTime<Utc>,
    /// Whether `login_at` comes from a login event (true) or was inferred.
    pub login_seen: bool,
    /// Event time of the latest event for this session.
    pub last_seen_at: DateTime<Utc>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the session ended (logout: event time; revocation: decision time).
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<EndReason>,
    /// For revoked sessions: the limit in force when it was revoked.
    pub max_sessions: Option<u32>,
    /// Wall-clock time the latest revoke message for it was written.
    pub last_revoke_at: Option<DateTime<Utc>>,
    /// The non-empty `attributes` of this session's latest event that had
    /// any. Limits use what the app claims for the user (`user_attributes`,
    /// see [`crate::domain::claims`]), not this; it is still written for
    /// workers of the previous version during a rolling upgrade.
    pub attributes: Option<serde_json::Value>,
}

impl SessionRecord {
    /// Counts against the limit at `at`: not ended and not expired.
    pub fn is_active_at(&self, at: DateTime<Utc>) -> bool {
        self.end_reason.is_none() && self.expires_at.is_none_or(|e| e > at)
    }

    /// Whether `later` differs from this record only by a `last_seen_at`
    /// moved forward by less than `resolution`: a write the log can skip.
    pub fn only_seen_later_within(&self, later: &SessionRecord, resolution: Duration) -> bool {
        let moved = later.last_seen_at.signed_duration_since(self.last_seen_at);
        // A negative move has no std Duration: it fails here.
        moved.to_std().is_ok_and(|m| m < resolution)
            && self.only_activity_moved(later)
            && later.login_at == self.login_at
            && later.ip == self.ip
            && later.user_agent == self.user_agent
            && later.expires_at == self.expires_at
            && later.attributes == self.attributes
    }

    /// Whether `later` differs from this record only in what a request on a
    /// live session changes: the activity columns (`last_seen_at`, `ip`,
    /// `user_agent`, `expires_at`, `attributes`) and an inferred `login_at`
    /// moved earlier. Such a change needs no user lock.
    pub fn only_activity_moved(&self, later: &SessionRecord) -> bool {
        // Destructured, so that a new field cannot be forgotten here (nor
        // in `only_seen_later_within`, which builds on this).
        let SessionRecord {
            app,
            session_id,
            user_id,
            login_at,
            login_seen,
            last_seen_at,
            ip: _,
            user_agent: _,
            expires_at: _,
            ended_at,
            end_reason,
            max_sessions,
            last_revoke_at,
            attributes: _,
        } = later;
        let login_ok = *login_at == self.login_at
            || (!self.login_seen && !*login_seen && *login_at < self.login_at);
        *last_seen_at >= self.last_seen_at
            && login_ok
            && *app == self.app
            && *session_id == self.session_id
            && *user_id == self.user_id
            && *login_seen == self.login_seen
            && *ended_at == self.ended_at
            && *end_reason == self.end_reason
            && *max_sessions == self.max_sessions
            && *last_revoke_at == self.last_revoke_at
    }

    /// Whether `event` on this session, as it stands, shows that the app
    /// missed its revoke, so that [`apply_event`] repeats the revoke message.
    /// Only a `request`, `logout_others` or `logout_all` on a revoked
    /// session can, newer than the revocation and than anything seen before
    /// (a redelivered or late one says nothing new), and not within
    /// `repeat_revoke_after` of the previous revoke message.
    pub fn repeats_revoke(
        &self,
        event: &SessionEvent,
        now: DateTime<Utc>,
        repeat_revoke_after: Duration,
    ) -> bool {
        let uses = matches!(
            event.kind,
            EventKind::Request | EventKind::LogoutOthers | EventKind::LogoutAll
        );
        let revoked_at = match (self.end_reason, self.ended_at) {
            (Some(reason), Some(at)) if uses && reason.is_revocation() => at,
            _ => return false,
        };
        let t = event.occurred_at;
        let newer = t > revoked_at && t > self.last_seen_at;
        let paused = self.last_revoke_at.is_some_and(|last| {
            now.signed_duration_since(last)
                .to_std()
                .unwrap_or(Duration::ZERO)
                < repeat_revoke_after
        });
        newer && !paused
    }

    /// The state shown to operators at `now`.
    pub fn state_at(&self, now: DateTime<Utc>) -> SessionState {
        state_of(self.end_reason, self.expires_at, now)
    }
}

/// How a stored session stands at `now`, as listings show it (`sessions`,
/// the sessions API): its state, and when and why it ended. A session past
/// its expiry has no end row of its own: it ended at `expires_at`, with
/// reason `expired`.
pub fn shown_end(
    end_reason: Option<String>,
    ended_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (SessionState, Option<DateTime<Utc>>, Option<String>) {
    let state = state_of(
        end_reason.as_deref().and_then(EndReason::parse),
        expires_at,
        now,
    );
    match (state, ended_at) {
        (SessionState::Expired, None) => (state, expires_at, Some("expired".to_owned())),
        _ => (state, ended_at, end_reason),
    }
}

/// The state of a session from its stored end reason and expiry.
pub fn state_of(
    end_reason: Option<EndReason>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> SessionState {
    match end_reason {
        Some(EndReason::Logout) => SessionState::LoggedOut,
        Some(EndReason::Expired | EndReason::IdleTimeout) => SessionState::Expired,
        Some(_) => SessionState::Revoked,
        None if expires_at.is_some_and(|e| e <= now) => SessionState::Expired,
        None => SessionState::Active,
    }
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The record after the event.
    pub record: SessionRecord,
    /// Whether anything must be written back.
    pub changed: bool,
    /// The session was revoked, and this request shows the app still uses it:
    /// publish its revoke again (`repeat: true`).
    pub repeat_revoke: bool,
}

/// Applies one event to the session's current record (`None` if unknown);
/// `None` for an event that names no session (`attributes`, which is about
/// its user: the caller applies its claim).
///
/// `now` is the worker's clock, used only for the repeat-revoke pause;
/// everything else follows event time. Rules:
/// - an ended session stays ended, whatever arrives later;
/// - the latest event (by `occurred_at`) sets last_seen_at, ip, user_agent
///   and expires_at; an older one arriving late changes none of them;
/// - a login sets login_at (the earliest login wins on duplicates);
/// - a logout ends the session at its event time, even one never seen before,
///   so that its login arriving late cannot make it active.
pub fn apply_event(
    current: Option<&SessionRecord>,
    event: &SessionEvent,
    now: DateTime<Utc>,
    repeat_revoke_after: Duration,
) -> Option<Applied> {
    let session_id = event.session_id.as_ref()?;
    let Some(before) = current else {
        return Some(Applied {
            record: first_sighting(event, session_id),
            changed: true,
            repeat_revoke: false,
        });
    };
    let mut r = before.clone();
    if r.user_id.is_none() {
        r.user_id = event.user_id.clone();
    }
    take_latest(&mut r, event);
    let t = event.occurred_at;
    let mut repeat_revoke = false;
    match event.kind {
        EventKind::Login => {
            if !r.login_seen || t < r.login_at {
                r.login_at = t;
            }
            r.login_seen = true;
        }
        EventKind::Request | EventKind::LogoutOthers | EventKind::LogoutAll => {
            if !r.login_seen && t < r.login_at {
                r.login_at = t;
            }
            repeat_revoke = before.repeats_revoke(event, now, repeat_revoke_after);
            if repeat_revoke {
                r.last_revoke_at = Some(now);
            }
        }
        EventKind::Logout => {
            if r.end_reason.is_none() {
                r.ended_at = Some(t);
                r.end_reason = Some(EndReason::Logout);
            }
        }
        // Names no session: returned above.
        EventKind::Attributes => return None,
    }
    Some(Applied {
        changed: r != *before,
        record: r,
        repeat_revoke,
    })
}

/// The record of session `session_id` first seen in `event`: a logout of
/// it ends it at once, so that its login arriving late cannot make it
/// active.
fn first_sighting(event: &SessionEvent, session_id: &SessionId) -> SessionRecord {
    let t = event.occurred_at;
    let ended = event.kind == EventKind::Logout;
    SessionRecord {
        app: event.app.clone(),
        session_id: session_id.clone(),
        user_id: event.user_id.clone(),
        login_at: t,
        login_seen: event.kind == EventKind::Login,
        last_seen_at: t,
        ip: event.ip,
        user_agent: event.user_agent.clone(),
        expires_at: event.expires_at,
        ended_at: ended.then_some(t),
        end_reason: ended.then_some(EndReason::Logout),
        max_sessions: None,
        last_revoke_at: None,
        attributes: event.attributes.as_ref().and_then(non_empty),
    }
}

/// The latest event (by `occurred_at`) sets last_seen_at, ip, user_agent,
/// expires_at and attributes; an older one arriving late changes none.
fn take_latest(r: &mut SessionRecord, event: &SessionEvent) {
    if event.occurred_at <= r.last_seen_at {
        return;
    }
    r.last_seen_at = event.occurred_at;
    if event.ip.is_some() {
        r.ip = event.ip;
    }
    if event.user_agent.is_some() {
        r.user_agent = event.user_agent.clone();
    }
    if event.expires_at.is_some() {
        r.expires_at = event.expires_at;
    }
    if let Some(attributes) = event.attributes.as_ref().and_then(non_empty) {
        r.attributes = Some(attributes);
    }
}

fn non_empty(attributes: &serde_json::Map<String, serde_json::Value>) -> Option<serde_json::Value> {
    (!attributes.is_empty()).then(|| serde_json::Value::Object(attributes.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const PAUSE: Duration = Duration::from_secs(30);

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap()
    }

    fn event(kind: EventKind, minute: u32) -> SessionEvent {
        SessionEvent {
            kind,
            app: AppName::parse("shop").unwrap(),
            session_id: Some(SessionId::parse("s1").unwrap()),
            user_id: Some(UserId::parse("u1").unwrap()),
            occurred_at: at(minute),
            event_id: None,
            ip: None,
            user_agent: None,
            expires_at: None,
            attributes: None,
        }
    }

    fn revoked(minute: u32) -> SessionRecord {
        let mut r = apply_event(None, &event(EventKind::Login, 0), at(0), PAUSE)
            .unwrap()
            .record;
        r.ended_at = Some(at(minute));
        r.end_reason = Some(EndReason::SessionLimit);
        r.max_sessions = Some(1);
        r.last_revoke_at = Some(at(minute));
        r
    }

    #[test]
    fn a_login_creates_an_active_session() {
        let a = apply_event(None, &event(EventKind::Login, 1), at(1), PAUSE).unwrap();
        assert!(a.changed && a.record.login_seen && a.record.is_active_at(at(2)));
        assert_eq!(a.record.login_at, at(1));
    }

    #[test]
    fn a_first_request_creates_a_session_and_a_late_login_fixes_login_at() {
        let a = apply_event(None, &event(EventKind::Request, 5), at(5), PAUSE).unwrap();
        assert!(!a.record.login_seen);
        let b = apply_event(Some(&a.record), &event(EventKind::Login, 2), at(6), PAUSE).unwrap();
        assert_eq!(b.record.login_at, at(2));
        assert_eq!(b.record.last_seen_at, at(5), "the login is older");
    }

    #[test]
    fn the_latest_request_wins() {
        let mut newer = event(EventKind::Request, 9);
        newer.ip = Some("10.0.0.9".parse().unwrap());
        let mut older = event(EventKind::Request, 8);
        older.ip = Some("10.0.0.8".parse().unwrap());
        let login = apply_event(None, &event(EventKind::Login, 1), at(1), PAUSE)
            .unwrap()
            .record;
        let r = apply_event(Some(&login), &newer, at(10), PAUSE)
            .unwrap()
            .record;
        let r2 = apply_event(Some(&r), &older, at(10), PAUSE).unwrap();
        assert!(!r2.changed);
        assert_eq!(r2.record.ip, newer.ip);
        assert_eq!(r2.record.last_seen_at, at(9));
    }

    #[test]
    fn redelivery_changes_nothing() {
        let login = event(EventKind::Login, 1);
        let r = apply_event(None, &login, at(1), PAUSE).unwrap().record;
        let again = apply_event(Some(&r), &login, at(2), PAUSE).unwrap();
        assert!(!again.changed);
        assert_eq!(again.record, r);
    }

    #[test]
    fn logout_ends_and_a_late_login_does_not_revive() {
        let out = apply_event(None, &event(EventKind::Logout, 5), at(5), PAUSE)
            .unwrap()
            .record;
        assert_eq!(out.state_at(at(6)), SessionState::LoggedOut);
        let late = apply_event(Some(&out), &event(EventKind::Login, 1), at(6), PAUSE)
            .unwrap()
            .record;
        assert_eq!(late.state_at(at(6)), SessionState::LoggedOut);
        assert_eq!(late.login_at, at(1));
        assert!(late.login_seen);
    }

    #[test]
    fn a_revoked_session_stays_revoked() {
        let r = revoked(3);
        for kind in [EventKind::Login, EventKind::Request, EventKind::Logout] {
            let a = apply_event(Some(&r), &event(kind, 4), at(4), PAUSE).unwrap();
            assert_eq!(a.record.state_at(at(5)), SessionState::Revoked, "{kind}");
        }
    }

    #[test]
    fn a_newer_request_on_a_revoked_session_repeats_the_revoke_once_per_pause() {
        let r = revoked(3);
        let now = at(10);
        let a = apply_event(Some(&r), &event(EventKind::Request, 9), now, PAUSE).unwrap();
        assert!(a.repeat_revoke);
        assert_eq!(a.record.last_revoke_at, Some(now));
        // another request a second later: paused
        let mut next = event(EventKind::Request, 9);
        next.occurred_at += chrono::Duration::seconds(1);
        let now2 = now + chrono::Duration::seconds(1);
        let b = apply_event(Some(&a.record), &next, now2, PAUSE).unwrap();
        assert!(!b.repeat_revoke);
        // without a pause it repeats
        let c = apply_event(Some(&a.record), &next, now2, Duration::ZERO).unwrap();
        assert!(c.repeat_revoke);
    }

    #[test]
    fn what_a_request_changes_is_activity_only() {
        let login = event(EventKind::Login, 1);
        let live = apply_event(None, &login, at(2), Duration::ZERO)
            .unwrap()
            .record;
        let mut request = event(EventKind::Request, 5);
        request.ip = Some("192.0.2.9".parse().unwrap());
        let touched = apply_event(Some(&live), &request, at(6), Duration::ZERO)
            .unwrap()
            .record;
        assert!(live.only_activity_moved(&touched));
        assert!(
            !live.only_seen_later_within(&touched, Duration::from_secs(600)),
            "the ip changed"
        );
        let logout = apply_event(
            Some(&live),
            &event(EventKind::Logout, 5),
            at(6),
            Duration::ZERO,
        )
        .unwrap();
        assert!(
            !live.only_activity_moved(&logout.record),
            "an end is more than activity"
        );
    }

    #[test]
    fn a_small_move_of_last_seen_alone_can_be_skipped() {
        let live = apply_event(None, &event(EventKind::Login, 1), at(2), Duration::ZERO)
            .unwrap()
            .record;
        let later = apply_event(
            Some(&live),
            &event(EventKind::Request, 3),
            at(4),
            Duration::ZERO,
        )
        .unwrap()
        .record;
        assert!(live.only_seen_later_within(&later, Duration::from_secs(300)));
        assert!(!live.only_seen_later_within(&later, Duration::from_secs(120)));
        assert!(!live.only_seen_later_within(&later, Duration::ZERO));
    }

    #[test]
    fn old_or_redelivered_requests_do_not_repeat() {
        let r = revoked(3);
        let before = apply_event(Some(&r), &event(EventKind::Request, 2), at(10), PAUSE).unwrap();
        assert!(!before.repeat_revoke, "occurred before the revocation");
        let first = apply_event(
            Some(&r),
            &event(EventKind::Request, 9),
            at(10),
            Duration::ZERO,
        )
        .unwrap();
        let again = apply_event(
            Some(&first.record),
            &event(EventKind::Request, 9),
            at(11),
            Duration::ZERO,
        )
        .unwrap();
        assert!(!again.repeat_revoke, "same event delivered twice");
    }

    #[test]
    fn expiry_stops_a_session_counting() {
        let mut e = event(EventKind::Login, 1);
        e.expires_at = Some(at(5));
        let r = apply_event(None, &e, at(1), PAUSE).unwrap().record;
        assert!(r.is_active_at(at(4)));
        assert!(!r.is_active_at(at(5)));
        assert_eq!(r.state_at(at(6)), SessionState::Expired);
    }
}
