//! Deciding a batch, in memory and without I/O: each event applied to its
//! session in arrival order (the pure rules of [`crate::domain`]), each
//! touched user checked against the limits, revocations and revoke
//! messages collected, and which users the batch must lock that it has not.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::enforcement::Enforcement;
use super::load::{Attributes, EventKey, Key, Origin, Slot, State};
use super::outcome::BatchOutcome;
use super::touch::is_touch;
use crate::domain::claims::ClaimChange;
use crate::domain::decision::{Candidate, Caps, Scope, idle_sessions, select_victims};
use crate::domain::event::{AppName, EventKind, SessionEvent, UserId};
use crate::domain::limits::{EffectiveLimits, EvictionPolicy, HookContext, SessionSummary};
use crate::domain::revocation::{self, Revocation};
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::{EndReason, apply_event};

/// What deciding a batch produced, for the write step.
#[derive(Default)]
pub(super) struct Decisions {
    /// Revoke messages for the outbox, new and repeated.
    pub outbox: Vec<RevokeMessage>,
    /// Counts for logs and metrics.
    pub outcome: BatchOutcome,
    /// Users whose log retention to apply: the log limit their check found
    /// (`Some`), or to find from the hooks (`None`: they only logged out).
    pub log_limits: BTreeMap<String, Option<Option<u32>>>,
    /// Users not locked whose events would do more than a touch: the pass
    /// must run again with them locked.
    pub needs_locks: BTreeSet<String>,
}

/// Applies `events` to `state` in arrival order, with `locked` the users
/// this pass holds. Events of a user not locked must stay touches; any that
/// would do more lands in [`Decisions::needs_locks`].
pub(super) fn decide(
    state: &mut State,
    enforcement: &Enforcement,
    (events, event_keys): (&[SessionEvent], &[EventKey]),
    locked: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Decisions {
    let mut decided = Decisions {
        outcome: BatchOutcome {
            locked_users: locked.len(),
            ..BatchOutcome::default()
        },
        ..Decisions::default()
    };
    for (event, key) in events.iter().zip(event_keys) {
        let unlocked = event
            .user_id
            .as_ref()
            .filter(|u| !locked.contains(u.as_str()));
        let Some(key) = key else {
            // An `attributes` event: about its user, no session.
            decided.apply_claim(state, enforcement, event, unlocked.is_some(), now);
            continue;
        };
        if let Some(user) = unlocked
            && !is_touch(state.slots.get(key), user.as_str(), now)
        {
            decided.needs_locks.insert(user.to_string());
            continue;
        }
        let Some(user) = decided.apply_to_session(state, enforcement, event, key, locked, now)
        else {
            continue;
        };
        // Other attributes may change the user's limits: only under the
        // user's lock. A claim merely renewed is written by the touch.
        if state.claim(&user, event) == ClaimChange::Replaced && unlocked.is_some() {
            decided.needs_locks.insert(user.to_string());
            continue;
        }
        match event.kind {
            EventKind::Login | EventKind::Request => {
                decided.check_user(state, enforcement, &user, event, unlocked.is_some(), now);
            }
            EventKind::LogoutOthers | EventKind::LogoutAll => {
                decided.end_others(state, enforcement, &user, event, now);
            }
            EventKind::Logout => {
                decided.log_limits.entry(user.to_string()).or_insert(None);
            }
            // Names no session: handled above.
            EventKind::Attributes => {}
        }
    }
    decided
}

impl Decisions {
    /// An `attributes` event: the app's new claim for its user. A claim
    /// that replaces the remembered one may change the user's limits, so
    /// the user is checked as after a request in that app (under the
    /// user's lock); a claim merely renewed only has its time written (by
    /// the touch for a user not locked), and an older one changes nothing.
    fn apply_claim(
        &mut self,
        state: &mut State,
        enforcement: &Enforcement,
        event: &SessionEvent,
        unlocked: bool,
        now: DateTime<Utc>,
    ) {
        let Some(user) = &event.user_id else {
            return; // the decoder requires one
        };
        if state.claim(user, event) != ClaimChange::Replaced {
            return;
        }
        if unlocked {
            self.needs_locks.insert(user.to_string());
            return;
        }
        self.check_user(state, enforcement, user, event, false, now);
    }

    /// Applies one event to its session (`key`), and returns the user to
    /// check after it: the event's, or for a logout without one, the owner
    /// of the row if this pass locked it. `None`: nothing to check (or the
    /// row's owner must be locked first).
    fn apply_to_session(
        &mut self,
        state: &mut State,
        enforcement: &Enforcement,
        event: &SessionEvent,
        key: &Key,
        locked: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Option<UserId> {
        // The record is cloned once, inside apply_event, and moved into
        // its slot after the repeat and the user are read from it.
        let applied = apply_event(
            state.slots.get(key).map(|s| &s.record),
            event,
            now,
            enforcement.repeat_revoke_after,
        )?;
        if applied.repeat_revoke {
            let note = state.slots.get(key).and_then(|s| s.end_note.clone());
            let default_max = enforcement.hooks.base().max_sessions;
            if let Some(message) = revocation::repeated(&applied.record, note, default_max) {
                self.outbox.push(message);
                self.outcome.repeated += 1;
            }
        }
        let record_user = applied.record.user_id.clone();
        // A row of a user this pass did not lock may only have its activity
        // moved forward (a logout that did not name its user can land on
        // such a row when the login committed meanwhile; a request on a
        // revoked row may repeat the revoke): anything more needs the lock.
        if applied.changed
            && let Some(owner) = &record_user
            && !locked.contains(owner.as_str())
        {
            let before = state.slots.get(key).filter(|s| s.origin == Origin::Log);
            if !before.is_some_and(|s| s.record.only_activity_moved(&applied.record)) {
                self.needs_locks.insert(owner.to_string());
                return None;
            }
        }
        if applied.changed {
            store(state, key, applied.record);
        }
        match &event.user_id {
            Some(u) => Some(u.clone()),
            // A logout's user counts only if this batch locked it (it was
            // known before the lock); one that appeared meanwhile, written
            // by another worker, is that worker's to check.
            None => record_user.filter(|u| locked.contains(u.as_str())),
        }
    }

    /// The check of `user` after a login, a request or a new claim: revokes
    /// (or, in shadow mode, flags) what the limits and idle timeouts say. For a user not
    /// locked (`unlocked`) it only notes whether the user must be locked.
    fn check_user(
        &mut self,
        state: &mut State,
        enforcement: &Enforcement,
        user: &UserId,
        event: &SessionEvent,
        unlocked: bool,
        now: DateTime<Utc>,
    ) {
        let (revocations, effective) = check(state, enforcement, user, event, now);
        if unlocked {
            // A touch: nothing to revoke, nothing new in the log to
            // prune; any revocation needs the user's lock first (in
            // shadow mode, any session not flagged yet).
            let act = revocations.iter().any(|(c, _)| {
                enforcement.enforce
                    || state
                        .slots
                        .get(&(c.app.to_string(), c.session_id.to_string()))
                        .is_some_and(|s| !s.shadow_flagged)
            });
            if act {
                self.needs_locks.insert(user.to_string());
            }
            return;
        }
        let limit = effective.limits.log_limit;
        self.log_limits.insert(user.to_string(), Some(limit));
        if enforcement.enforce {
            let messages = revoke(state, user, revocations, now, &mut self.outcome);
            self.outbox.extend(messages);
        } else {
            flag_in_shadow(state, user, revocations, &mut self.outcome);
        }
    }

    /// A logout of the user's other sessions in the app, or of all of them:
    /// revokes those that had logged in by the event's time.
    fn end_others(
        &mut self,
        state: &mut State,
        enforcement: &Enforcement,
        user: &UserId,
        event: &SessionEvent,
        now: DateTime<Utc>,
    ) {
        let effective = evaluate(state, enforcement, user, &event.app, now);
        self.log_limits
            .insert(user.to_string(), Some(effective.limits.log_limit));
        let (keep, reason) = if event.kind == EventKind::LogoutOthers {
            (event.session_id.as_ref(), EndReason::LogoutOthers)
        } else {
            (None, EndReason::LogoutAll)
        };
        let revocation = Revocation {
            reason,
            ended_by: "user".to_owned(),
            note: None,
            max_sessions: effective.limits.max_sessions,
        };
        let victims: Vec<(Candidate, Revocation)> = state
            .live(user, now)
            .into_iter()
            .filter(|c| c.app == event.app)
            .filter(|c| Some(&c.session_id) != keep)
            .filter(|c| c.login_at <= event.occurred_at || !c.login_seen)
            .map(|c| (c, revocation.clone()))
            .collect();
        let messages = revoke(state, user, victims, now, &mut self.outcome);
        self.outbox.extend(messages);
    }
}

/// Puts a changed record in its slot (a new one if the session is new).
fn store(state: &mut State, key: &Key, record: crate::domain::session::SessionRecord) {
    match state.slots.get_mut(key) {
        Some(slot) => {
            slot.record = record;
            slot.dirty = true;
        }
        None => {
            state.slots.insert(
                key.clone(),
                Slot {
                    record,
                    origin: Origin::New,
                    loaded: None,
                    ended_by: None,
                    end_note: None,
                    shadow_flagged: false,
                    dirty: true,
                    newly_flagged: false,
                },
            );
        }
    }
    state.index(key);
}

/// Shadow mode: flags the sessions the check would revoke (once each), and
/// logs what it would have done.
fn flag_in_shadow(
    state: &mut State,
    user: &UserId,
    revocations: Vec<(Candidate, Revocation)>,
    outcome: &mut BatchOutcome,
) {
    for (candidate, revocation) in revocations {
        let key = (candidate.app.to_string(), candidate.session_id.to_string());
        if let Some(slot) = state.slots.get_mut(&key)
            && !slot.shadow_flagged
        {
            slot.shadow_flagged = true;
            slot.newly_flagged = true;
            outcome.shadow_revoked += 1;
            tracing::info!(
                user = %user,
                app = %candidate.app,
                session_id = %candidate.session_id,
                reason = %revocation.reason,
                set_by = %revocation.ended_by,
                max_sessions = revocation.max_sessions,
                "shadow mode: would revoke"
            );
        }
    }
}

/// Ends the given sessions of `user` in memory (those not ended yet) and
/// returns their revoke messages: the one way every revocation, a batch's
/// or an operator's, changes the log and the outbox.
pub(super) fn revoke(
    state: &mut State,
    user: &UserId,
    revocations: Vec<(Candidate, Revocation)>,
    now: DateTime<Utc>,
    outcome: &mut BatchOutcome,
) -> Vec<RevokeMessage> {
    let mut messages = Vec::new();
    for (candidate, r) in revocations {
        let key = (candidate.app.to_string(), candidate.session_id.to_string());
        let Some(slot) = state.slots.get_mut(&key) else {
            continue;
        };
        let Some(message) = revocation::revoke(&mut slot.record, user, &r, now) else {
            continue;
        };
        slot.ended_by = Some(r.ended_by);
        slot.end_note = r.note;
        slot.dirty = true;
        *outcome.revoked_by.entry(r.reason.as_str()).or_default() += 1;
        messages.push(message);
    }
    messages
}

/// What hooks see of the sessions.
pub(super) fn summaries(sessions: &[Candidate]) -> Vec<SessionSummary> {
    sessions
        .iter()
        .map(|c| SessionSummary {
            app: c.app.clone(),
            session_id: c.session_id.to_string(),
            login_at: c.login_at,
            last_seen_at: c.last_seen_at,
        })
        .collect()
}

/// How many ended sessions to keep for each user whose log the batch may
/// have grown, `(user_id, keep)`: the limit the user's check found or, for
/// users who only logged out, the hooks' limit with the claims of the app
/// of one of their events (read with the users' sessions when a hook reads
/// them). Users without a limit are left out.
pub(super) fn retention_limits(
    state: &State,
    enforcement: &Enforcement,
    (events, event_keys): (&[SessionEvent], &[EventKey]),
    log_limits: BTreeMap<String, Option<Option<u32>>>,
    now: DateTime<Utc>,
) -> Vec<(String, u32)> {
    let mut keep: Vec<(String, u32)> = Vec::new();
    for (user, limit) in log_limits {
        let limit = match limit {
            Some(limit) => limit,
            None => match app_of_logout(state, enforcement, (events, event_keys), &user) {
                Some(app) => {
                    let user_id = UserId::from_trusted(user.clone());
                    evaluate(state, enforcement, &user_id, app, now)
                        .limits
                        .log_limit
                }
                None => enforcement.hooks.base().log_limit,
            },
        };
        if let Some(limit) = limit {
            keep.push((user, limit));
        }
    }
    keep
}

/// For a user who only logged out, and whose overrides let a hook set the
/// log limit: the app of the user's first event in the batch (named by the
/// event or by its session's row).
fn app_of_logout<'a>(
    state: &State,
    enforcement: &Enforcement,
    (events, event_keys): (&'a [SessionEvent], &[EventKey]),
    user: &str,
) -> Option<&'a AppName> {
    if !enforcement
        .hooks
        .may_set_log_limit(state.overrides_of(user))
    {
        return None;
    }
    events
        .iter()
        .zip(event_keys)
        .find(|(e, key)| {
            e.user_id.as_ref().is_some_and(|u| u.as_str() == user)
                || key
                    .as_ref()
                    .and_then(|k| state.slots.get(k))
                    .and_then(|s| s.record.user_id.as_ref())
                    .is_some_and(|u| u.as_str() == user)
        })
        .map(|(e, _)| &e.app)
}

/// The hooks' limits for a user in an app, from the batch's state (with
/// what that app claims for the user).
pub(super) fn evaluate(
    state: &State,
    enforcement: &Enforcement,
    user: &UserId,
    app: &AppName,
    now: DateTime<Utc>,
) -> EffectiveLimits {
    let sessions = summaries(&state.live(user, now));
    let overrides = state.overrides_of(user.as_str());
    let none = Attributes::new();
    enforcement.hooks.evaluate(&HookContext {
        app,
        user_id: user,
        attributes: state
            .attributes(user.as_str(), app.as_str())
            .unwrap_or(&none),
        sessions: &sessions,
        overrides,
    })
}

/// The check of one user after an event in `event.app`: idle expiry, then
/// every app's cap and the global cap with the checked app's policy. Each
/// app's limits come from that app's claims for the user, never from
/// another app's. Returns the revocations and the limits of `event.app`.
fn check(
    state: &State,
    enforcement: &Enforcement,
    user: &UserId,
    event: &SessionEvent,
    now: DateTime<Utc>,
) -> (Vec<(Candidate, Revocation)>, EffectiveLimits) {
    let app = &event.app;
    let sessions = state.live(user, now);
    let per_app = limits_per_app(state, enforcement, user, app, &sessions);
    let effective = per_app[app].clone();
    let mut revocations = idle_revocations(&sessions, &per_app, event);
    let live: Vec<Candidate> = sessions
        .iter()
        .filter(|c| !revocations.iter().any(|(idle, _)| idle == *c))
        .cloned()
        .collect();
    revocations.extend(limit_revocations(&live, &per_app, &effective));
    (revocations, effective)
}

/// The hooks' limits for `user` in `app` and in every app of `sessions`,
/// each with that app's claims.
fn limits_per_app(
    state: &State,
    enforcement: &Enforcement,
    user: &UserId,
    app: &AppName,
    sessions: &[Candidate],
) -> BTreeMap<AppName, EffectiveLimits> {
    let summaries = summaries(sessions);
    let overrides = state.overrides_of(user.as_str());
    let none = Attributes::new();
    let evaluate = |a: &AppName| {
        enforcement.hooks.evaluate(&HookContext {
            app: a,
            user_id: user,
            attributes: state.attributes(user.as_str(), a.as_str()).unwrap_or(&none),
            sessions: &summaries,
            overrides,
        })
    };
    let mut per_app: BTreeMap<AppName, EffectiveLimits> = BTreeMap::new();
    per_app.insert(app.clone(), evaluate(app));
    for c in sessions {
        if !per_app.contains_key(&c.app) {
            per_app.insert(c.app.clone(), evaluate(&c.app));
        }
    }
    per_app
}

/// Idle sessions count as expired, judged at event time, never the session
/// of this event: each app's by its own idle timeout.
fn idle_revocations(
    sessions: &[Candidate],
    per_app: &BTreeMap<AppName, EffectiveLimits>,
    event: &SessionEvent,
) -> Vec<(Candidate, Revocation)> {
    let mut revocations: Vec<(Candidate, Revocation)> = Vec::new();
    for (a, limits) in per_app {
        let except = event.session_id.as_ref().filter(|_| *a == event.app);
        for idle in idle_sessions(
            sessions,
            a,
            limits.limits.idle_timeout,
            event.occurred_at,
            except,
        ) {
            revocations.push((
                idle.clone(),
                Revocation {
                    reason: EndReason::IdleTimeout,
                    ended_by: limits.set_by.idle_timeout.clone(),
                    note: None,
                    max_sessions: limits.limits.max_sessions,
                },
            ));
        }
    }
    revocations
}

/// The sessions over a cap among `live`: every app's own cap, and the
/// global cap with the checked app's (`effective`) policy.
fn limit_revocations(
    live: &[Candidate],
    per_app: &BTreeMap<AppName, EffectiveLimits>,
    effective: &EffectiveLimits,
) -> Vec<(Candidate, Revocation)> {
    let caps = Caps {
        per_app: per_app
            .iter()
            .map(|(a, l)| (a.clone(), l.limits.max_sessions))
            .collect(),
        global: effective.limits.max_sessions_global,
        policy: effective.limits.policy,
    };
    let reason = if effective.limits.policy == EvictionPolicy::DenyNew {
        EndReason::SessionLimitDenied
    } else {
        EndReason::SessionLimit
    };
    select_victims(live, &caps)
        .into_iter()
        .map(|victim| {
            let (ended_by, max_sessions) = match victim.scope {
                Scope::App => {
                    let own = &per_app[&victim.session.app];
                    (own.set_by.max_sessions.clone(), own.limits.max_sessions)
                }
                Scope::Global => (
                    effective.set_by.max_sessions_global.clone(),
                    effective.limits.max_sessions_global,
                ),
            };
            let revocation = Revocation {
                reason,
                ended_by,
                note: None,
                max_sessions,
            };
            (victim.session, revocation)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::apply::fixtures::{at, event, key, one_session_each, state_of, stored};

    fn locked(users: &[&str]) -> BTreeSet<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn a_second_login_over_the_limit_revokes_the_older_session() {
        let mut state = state_of(vec![stored("s1", "ann", 0)]);
        let events = [event(EventKind::Login, "s2", Some("ann"), 5)];
        let keys = [Some(key("s2"))];
        let decided = decide(
            &mut state,
            &one_session_each(true),
            (&events, &keys),
            &locked(&["ann"]),
            at(6),
        );
        assert!(decided.needs_locks.is_empty());
        assert_eq!(decided.outcome.revoked(), 1);
        assert_eq!(decided.outbox.len(), 1);
        assert_eq!(decided.outbox[0].session_id, "s1");
        let old = &state.slots[&key("s1")];
        assert_eq!(old.record.end_reason, Some(EndReason::SessionLimit));
        assert_eq!(old.ended_by.as_deref(), Some("config"));
        assert!(old.dirty);
        let new = &state.slots[&key("s2")];
        assert_eq!(new.origin, Origin::New);
        assert!(new.dirty && new.record.is_active_at(at(6)));
        assert_eq!(decided.log_limits.get("ann"), Some(&Some(Some(10))));
    }

    #[test]
    fn shadow_mode_flags_once_and_revokes_nothing() {
        let mut state = state_of(vec![stored("s1", "ann", 0)]);
        let events = [event(EventKind::Login, "s2", Some("ann"), 5)];
        let keys = [Some(key("s2"))];
        let decided = decide(
            &mut state,
            &one_session_each(false),
            (&events, &keys),
            &locked(&["ann"]),
            at(6),
        );
        assert!(decided.outbox.is_empty());
        assert_eq!(decided.outcome.shadow_revoked, 1);
        let old = &state.slots[&key("s1")];
        assert!(old.shadow_flagged && old.newly_flagged);
        assert_eq!(old.record.end_reason, None);
    }

    #[test]
    fn an_event_of_a_user_not_locked_that_does_more_than_touch_asks_for_the_lock() {
        // A login needs the lock.
        let mut state = state_of(vec![stored("s1", "ann", 0)]);
        let events = [event(EventKind::Login, "s2", Some("ann"), 5)];
        let keys = [Some(key("s2"))];
        let decided = decide(
            &mut state,
            &one_session_each(true),
            (&events, &keys),
            &locked(&[]),
            at(6),
        );
        assert_eq!(decided.needs_locks, locked(&["ann"]));
        assert!(decided.outbox.is_empty());

        // A request on a live row of its own user is a touch, unless the
        // check finds something to revoke: here the user holds two sessions.
        let mut state = state_of(vec![stored("s1", "bob", 0), stored("s2", "bob", 1)]);
        let events = [event(EventKind::Request, "s2", Some("bob"), 5)];
        let keys = [Some(key("s2"))];
        let decided = decide(
            &mut state,
            &one_session_each(true),
            (&events, &keys),
            &locked(&[]),
            at(6),
        );
        assert_eq!(decided.needs_locks, locked(&["bob"]));

        // With one session, the request only moves its activity.
        let mut state = state_of(vec![stored("s1", "cat", 0)]);
        let events = [event(EventKind::Request, "s1", Some("cat"), 5)];
        let keys = [Some(key("s1"))];
        let decided = decide(
            &mut state,
            &one_session_each(true),
            (&events, &keys),
            &locked(&[]),
            at(6),
        );
        assert!(decided.needs_locks.is_empty());
        assert!(decided.log_limits.is_empty());
        let slot = &state.slots[&key("s1")];
        assert!(slot.dirty);
        assert_eq!(slot.record.last_seen_at, at(5));
    }

    #[test]
    fn an_attributes_event_that_lowers_the_limit_revokes_at_once() {
        use crate::apply::fixtures::{claimed, claims, superusers_unlimited};
        use serde_json::json;
        // A superuser (no limit) holds two sessions; the app says they no
        // longer are one.
        let two = || {
            let mut state = state_of(vec![stored("s1", "ann", 0), stored("s2", "ann", 1)]);
            claimed(&mut state, "ann", json!({"superuser": true}), 0);
            state
        };
        let demoted = [claims("ann", json!({"superuser": false}), 5)];
        let mut state = two();
        let decided = decide(
            &mut state,
            &superusers_unlimited(),
            (&demoted, &[None]),
            &locked(&["ann"]),
            at(6),
        );
        assert!(decided.needs_locks.is_empty());
        let revoked: Vec<&str> = decided
            .outbox
            .iter()
            .map(|m| m.session_id.as_str())
            .collect();
        assert_eq!(revoked, ["s1"], "the older login goes");
        assert_eq!(decided.outcome.revoked_by.get("session_limit"), Some(&1));
        assert!(state.slots[&key("s2")].record.end_reason.is_none());
        assert_eq!(
            state.attributes("ann", "shop"),
            json!({"superuser": false}).as_object()
        );
        assert_eq!(decided.log_limits.get("ann"), Some(&Some(Some(10))));

        // Without ann's lock it only asks for it.
        let mut state = two();
        let decided = decide(
            &mut state,
            &superusers_unlimited(),
            (&demoted, &[None]),
            &locked(&[]),
            at(6),
        );
        assert_eq!(decided.needs_locks, locked(&["ann"]));
        assert!(decided.outbox.is_empty());

        // A claim older than the one remembered changes nothing, nor does
        // the same claim again (it only renews its time: a touch).
        for (attributes, minute) in [
            (json!({"superuser": false}), 0),
            (json!({"superuser": true}), 5),
        ] {
            let mut state = two();
            claimed(&mut state, "ann", json!({"superuser": true}), 3);
            let late = [claims("ann", attributes, minute)];
            let decided = decide(
                &mut state,
                &superusers_unlimited(),
                (&late, &[None]),
                &locked(&[]),
                at(6),
            );
            assert!(decided.needs_locks.is_empty() && decided.outbox.is_empty());
            assert_eq!(
                state.attributes("ann", "shop"),
                json!({"superuser": true}).as_object()
            );
        }
    }

    #[test]
    fn an_attributes_event_in_shadow_mode_flags_and_revokes_nothing() {
        use crate::apply::fixtures::{claimed, claims, superusers_unlimited};
        use serde_json::json;
        let mut state = state_of(vec![stored("s1", "ann", 0), stored("s2", "ann", 1)]);
        claimed(&mut state, "ann", json!({"superuser": true}), 0);
        let shadow = Enforcement {
            enforce: false,
            ..superusers_unlimited()
        };
        let demoted = [claims("ann", json!({"superuser": false}), 5)];
        let decided = decide(
            &mut state,
            &shadow,
            (&demoted, &[None]),
            &locked(&["ann"]),
            at(6),
        );
        assert!(decided.outbox.is_empty());
        assert_eq!(decided.outcome.shadow_revoked, 1);
        let older = &state.slots[&key("s1")];
        assert!(older.shadow_flagged && older.record.end_reason.is_none());
        // The claim itself is stored: the next check works with it.
        assert_eq!(
            state.attributes("ann", "shop"),
            json!({"superuser": false}).as_object()
        );
    }

    #[test]
    fn logout_others_keeps_the_events_session() {
        let mut state = state_of(vec![stored("s1", "ann", 0), stored("s2", "ann", 1)]);
        let events = [event(EventKind::LogoutOthers, "s2", Some("ann"), 5)];
        let keys = [Some(key("s2"))];
        let enforcement = Enforcement {
            hooks: crate::domain::limits::HookChain::new(
                crate::domain::limits::Limits {
                    max_sessions: 0,
                    ..one_session_each(true).hooks.base()
                },
                Vec::new(),
            ),
            ..one_session_each(true)
        };
        let decided = decide(
            &mut state,
            &enforcement,
            (&events, &keys),
            &locked(&["ann"]),
            at(6),
        );
        assert_eq!(decided.outbox.len(), 1);
        assert_eq!(decided.outbox[0].session_id, "s1");
        assert_eq!(decided.outcome.revoked_by.get("logout_others"), Some(&1));
        assert!(state.slots[&key("s2")].record.end_reason.is_none());
        assert_eq!(state.slots[&key("s1")].ended_by.as_deref(), Some("user"));
    }

    #[test]
    fn retention_uses_the_checked_limit_or_the_base_one_for_logouts() {
        let state = state_of(vec![stored("s1", "ann", 0)]);
        let events = [event(EventKind::Logout, "s1", None, 5)];
        let keys = [Some(key("s1"))];
        let limits = BTreeMap::from([
            ("ann".to_owned(), None),
            ("bob".to_owned(), Some(Some(3))),
            ("cat".to_owned(), Some(None)),
        ]);
        let keep = retention_limits(
            &state,
            &one_session_each(true),
            (&events, &keys),
            limits,
            at(6),
        );
        assert_eq!(keep, [("ann".to_owned(), 10), ("bob".to_owned(), 3)]);
    }
}
