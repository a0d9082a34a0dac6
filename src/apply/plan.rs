//! Planning a batch's locks: the order in which one worker's pipelined
//! batches take them ([`LockTurn`]), what the batches ahead tell of this
//! one's users ([`AheadHints`]), and which users a batch must lock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::load::{EventKey, State, replaces_claim};
use super::touch::is_touch;
use crate::domain::event::{EventKind, SessionEvent, UserId};

/// What a worker knows of the batches it still has in flight ahead of this
/// one (see [`AheadHints::of`]).
#[derive(Debug, Default, Clone)]
pub struct AheadHints {
    /// Users of sessions named by the batches ahead: `(app, session_id)` →
    /// `user_id`. A logout without `user_id` for a session whose login is
    /// one batch ahead learns its user here, so it waits for that user's
    /// lock instead of racing the login.
    pub owners: HashMap<(String, String), String>,
    /// Users whose sessions the batches ahead may add, end or revoke (the
    /// users of their logins, logouts and `attributes` events). A request
    /// of theirs is applied under their lock, after those batches commit: as
    /// a lock-free touch it would read their sessions before that commit,
    /// and often find its row locked by it at the end, which sends the whole
    /// batch round again.
    pub busy: HashSet<String>,
}

/// Orders the lock phases of one worker's pipelined batches: a batch takes
/// its user locks only after the batch before it took its own. Then a user's
/// events that one worker has in flight are applied in delivery order, as
/// without the pipeline, while the rest of each batch overlaps.
#[derive(Debug, Default)]
pub struct LockTurn {
    /// Fires when the previous batch holds its locks (or gave up).
    previous: Option<oneshot::Receiver<()>>,
    /// Fired once this batch holds its locks (dropped = gave up).
    mine: Option<oneshot::Sender<()>>,
}

impl LockTurn {
    /// The turn of a batch that follows the one whose turn gave `previous`,
    /// and the receiver the next batch waits on.
    pub fn after(previous: Option<oneshot::Receiver<()>>) -> (LockTurn, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            LockTurn {
                previous,
                mine: Some(tx),
            },
            rx,
        )
    }

    /// Waits until the previous batch holds its locks (once only).
    pub(crate) async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
    }

    /// Lets the next batch take its locks.
    pub(crate) fn pass(&mut self) {
        if let Some(mine) = self.mine.take() {
            let _ = mine.send(());
        }
    }
}

/// Where a batch stands among the worker's pipelined batches.
#[derive(Debug, Default)]
pub struct PipelinePlace {
    /// When it may take its user locks.
    pub turn: LockTurn,
    /// What the batches ahead of it tell of its users.
    pub hints: AheadHints,
}

impl AheadHints {
    /// What the batches ahead (oldest first) tell of this batch's users:
    /// - the owners of the sessions of this batch's logouts that carry no
    ///   `user_id`: the newest event ahead that names the same session with a
    ///   user wins;
    /// - the users of this batch's requests whose sessions a batch ahead may
    ///   add, end or revoke: a login, logout or `attributes` event of theirs
    ///   is ahead, or a logout without `user_id` of the very session
    ///   requested.
    pub fn of(events: &[SessionEvent], ahead: &VecDeque<Arc<[SessionEvent]>>) -> AheadHints {
        let mut hints = AheadHints::default();
        if ahead.is_empty() {
            return hints;
        }
        // One pass over the batches ahead, oldest first (so the newest owner of
        // a session wins).
        let mut owners = HashMap::new();
        let mut changing_users = HashSet::new();
        let mut ending_sessions = HashSet::new();
        for a in ahead.iter().flat_map(|batch| batch.iter()) {
            let session = a.session_id.as_ref().map(|s| (a.app.as_str(), s.as_str()));
            if let (Some(session), Some(user)) = (session, &a.user_id) {
                owners.insert(session, user);
            }
            if a.kind != EventKind::Request {
                // An `attributes` event ahead may revoke its user's sessions.
                match (&a.user_id, session) {
                    (Some(user), _) => changing_users.insert(user.as_str()),
                    (None, Some(session)) => ending_sessions.insert(session),
                    (None, None) => false,
                };
            }
        }
        for e in events {
            // An `attributes` event learns no owner and is no request.
            let Some(session) = e.session_id.as_ref().map(|s| (e.app.as_str(), s.as_str())) else {
                continue;
            };
            match &e.user_id {
                None => {
                    if let Some(user) = owners.get(&session) {
                        hints.owners.insert(
                            (session.0.to_owned(), session.1.to_owned()),
                            user.to_string(),
                        );
                    }
                }
                Some(user)
                    if e.kind == EventKind::Request
                        && (changing_users.contains(user.as_str())
                            || ending_sessions.contains(&session)) =>
                {
                    hints.busy.insert(user.to_string());
                }
                Some(_) => {}
            }
        }
        hints
    }
}

/// The users a batch's events involve, as far as the rows read so far tell.
pub(super) struct LockPlan {
    /// Every user of the batch.
    pub users: BTreeSet<String>,
    /// Those to lock: users whose events can add, end or revoke a session.
    pub lock: BTreeSet<String>,
    /// Some event has no known user (a logout without `user_id` of a
    /// session stored under no user and named by no batch ahead): a read
    /// after the locks may find one.
    pub unresolved: bool,
}

/// Who the events involve, and who to lock. A request for a live or ended
/// session of its own user, the common case, only touches its row and
/// needs no lock, unless a batch ahead on this worker may change that
/// user's sessions (see [`AheadHints::busy`]), the request claims
/// attributes other than its app's claim read so far (they may change the
/// limits), or it repeats the revoke of a revoked session: that decision is
/// taken under the lock, so that the pause between repeats
/// (`repeat_after`) holds whichever batch or worker sees the requests. An
/// `attributes` event needs the lock only when its claim replaces the one
/// read so far; renewed, it is a touch, and older, it changes nothing.
pub(super) fn plan_locks(
    events: &[SessionEvent],
    event_keys: &[EventKey],
    state: &State,
    hints: &AheadHints,
    (now, repeat_after): (DateTime<Utc>, Duration),
) -> LockPlan {
    let slots = &state.slots;
    let mut involved = LockPlan {
        users: BTreeSet::new(),
        lock: BTreeSet::new(),
        unresolved: false,
    };
    for (e, key) in events.iter().zip(event_keys) {
        let slot = key.as_ref().and_then(|k| slots.get(k));
        let stored = slot
            .and_then(|s| s.record.user_id.as_ref())
            .map(UserId::as_str);
        let Some(user) = e
            .user_id
            .as_ref()
            .map(UserId::as_str)
            .or(stored)
            .or_else(|| {
                let key = key.as_ref()?;
                hints.owners.get(key).map(String::as_str)
            })
        else {
            involved.unresolved = true;
            continue;
        };
        if !involved.users.contains(user) {
            involved.users.insert(user.to_owned());
        }
        let touch = match e.kind {
            EventKind::Request => {
                is_touch(slot, user, now)
                    && !slot.is_some_and(|s| s.record.repeats_revoke(e, now, repeat_after))
                    && !hints.busy.contains(user)
                    && !replaces_claim(&state.claims, user, e)
            }
            // A renewal, like a request, waits for a batch ahead that may
            // change the user's rows: as a touch it would find them locked.
            EventKind::Attributes => {
                !replaces_claim(&state.claims, user, e) && !hints.busy.contains(user)
            }
            _ => false,
        };
        if !touch {
            involved.lock.insert(user.to_owned());
            involved.lock.extend(stored.map(str::to_owned));
        }
    }
    involved
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn event(kind: &str, session: &str, user: Option<&str>) -> SessionEvent {
        let mut json = serde_json::json!({
            "type": kind, "app": "shop", "session_id": session,
            "occurred_at": "2026-11-27T10:00:00Z",
        });
        if let Some(user) = user {
            json["user_id"] = user.into();
        }
        SessionEvent::decode(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn hints_name_owners_of_anonymous_logouts_and_users_changed_ahead() {
        let ahead: VecDeque<Arc<[SessionEvent]>> = VecDeque::from([Arc::from(vec![
            event("login", "a1", Some("ann")),
            event("request", "b1", Some("bob")),
            event("logout", "c1", None),
            crate::apply::fixtures::claims("dan", serde_json::json!({}), 0),
        ])]);
        let batch = [
            event("logout", "a1", None),          // owner known from the login ahead
            event("logout", "z9", None),          // nobody ahead names it
            event("request", "a2", Some("ann")),  // ann's login is ahead: busy
            event("request", "b1", Some("bob")),  // only a request ahead: not busy
            event("request", "c1", Some("carl")), // its session's logout is ahead
            event("request", "d1", Some("dan")),  // a claim of dan's is ahead
            crate::apply::fixtures::claims("eve", serde_json::json!({}), 0),
        ];
        let hints = AheadHints::of(&batch, &ahead);
        let owners: Vec<_> = hints.owners.iter().collect();
        assert_eq!(
            owners,
            [(&("shop".to_owned(), "a1".to_owned()), &"ann".to_owned())]
        );
        let mut busy: Vec<_> = hints.busy.iter().map(String::as_str).collect();
        busy.sort();
        assert_eq!(busy, ["ann", "carl", "dan"]);

        let nothing_ahead = AheadHints::of(&batch, &VecDeque::new());
        assert!(nothing_ahead.owners.is_empty() && nothing_ahead.busy.is_empty());
    }

    mod locks {
        use super::super::*;
        use crate::apply::fixtures::{at, event, key, state_of, stored};

        fn plan(events: &[SessionEvent], state: &State, hints: &AheadHints) -> LockPlan {
            let keys: Vec<EventKey> = events.iter().map(crate::apply::load::key_of).collect();
            plan_locks(
                events,
                &keys,
                state,
                hints,
                (at(10), Duration::from_secs(60)),
            )
        }

        fn names(users: &BTreeSet<String>) -> Vec<&str> {
            users.iter().map(String::as_str).collect()
        }

        #[test]
        fn requests_for_own_live_sessions_need_no_lock() {
            let state = state_of(vec![stored("s1", "ann", 0), stored("s2", "bob", 0)]);
            let events = [
                event(EventKind::Request, "s1", Some("ann"), 5),
                event(EventKind::Login, "s3", Some("cat"), 5),
                event(EventKind::Logout, "s2", None, 5),
                event(EventKind::Request, "s4", Some("dan"), 5),
            ];
            let plan = plan(&events, &state, &AheadHints::default());
            assert_eq!(names(&plan.users), ["ann", "bob", "cat", "dan"]);
            // A login, a logout (its user from the row) and a request for a
            // session not stored yet all need the lock.
            assert_eq!(names(&plan.lock), ["bob", "cat", "dan"]);
            assert!(!plan.unresolved);
        }

        #[test]
        fn requests_on_ended_sessions_need_no_lock_unless_they_repeat_a_revoke() {
            use crate::domain::session::EndReason;
            let mut logged_out = stored("s1", "ann", 0);
            logged_out.record.end_reason = Some(EndReason::Logout);
            logged_out.record.ended_at = Some(at(1));
            let mut revoked = stored("s2", "bob", 0);
            revoked.record.end_reason = Some(EndReason::SessionLimit);
            revoked.record.ended_at = Some(at(1));
            revoked.record.last_revoke_at = Some(at(1));
            let state = state_of(vec![logged_out, revoked]);
            let events = [
                event(EventKind::Request, "s1", Some("ann"), 5),
                event(EventKind::Request, "s2", Some("bob"), 5),
            ];
            let keys = [Some(key("s1")), Some(key("s2"))];
            let hints = AheadHints::default();
            let with_pause = |secs| {
                let clock = (at(10), Duration::from_secs(secs));
                super::super::plan_locks(&events, &keys, &state, &hints, clock)
            };
            // Nine minutes after the revoke, a one-minute pause is over: the
            // repeat is decided under bob's lock.
            let plan = with_pause(60);
            assert_eq!(names(&plan.lock), ["bob"]);
            // Within an hour's pause nothing repeats: both are touches.
            let plan = with_pause(3600);
            assert!(plan.lock.is_empty());
            assert_eq!(names(&plan.users), ["ann", "bob"]);
        }

        #[test]
        fn attributes_events_lock_their_user_only_for_a_new_claim() {
            use crate::apply::fixtures::{claimed, claims};
            use serde_json::json;
            let mut state = state_of(vec![stored("s1", "ann", 0)]);
            claimed(&mut state, "ann", json!({"roles": ["staff"]}), 2);
            let plan_of = |event: SessionEvent| {
                let clock = (at(10), Duration::from_secs(60));
                super::super::plan_locks(&[event], &[None], &state, &AheadHints::default(), clock)
            };
            // Another claim may change ann's limits: under her lock.
            let plan = plan_of(claims("ann", json!({"roles": []}), 5));
            assert_eq!(names(&plan.lock), ["ann"]);
            assert_eq!(names(&plan.users), ["ann"]);
            // The same claim later only renews it; an older one is kept out.
            assert!(
                plan_of(claims("ann", json!({"roles": ["staff"]}), 5))
                    .lock
                    .is_empty()
            );
            assert!(
                plan_of(claims("ann", json!({"roles": []}), 1))
                    .lock
                    .is_empty()
            );
            // A user never claimed for: the first claim.
            assert_eq!(names(&plan_of(claims("bob", json!({}), 5)).lock), ["bob"]);
        }

        #[test]
        fn hints_and_unknown_owners_change_the_plan() {
            let state = state_of(vec![stored("s1", "ann", 0)]);
            let events = [
                event(EventKind::Request, "s1", Some("ann"), 5),
                event(EventKind::Logout, "s9", None, 5),
            ];
            let mut hints = AheadHints::default();
            hints.busy.insert("ann".to_owned());
            let plan = plan(&events, &state, &hints);
            assert_eq!(names(&plan.lock), ["ann"]);
            assert!(plan.unresolved);

            hints.owners.insert(key("s9"), "zoe".to_owned());
            let clock = (at(10), Duration::from_secs(60));
            let plan = super::super::plan_locks(
                &events,
                &[Some(key("s1")), Some(key("s9"))],
                &state,
                &hints,
                clock,
            );
            assert_eq!(names(&plan.lock), ["ann", "zoe"]);
            assert!(!plan.unresolved);
        }
    }
}
