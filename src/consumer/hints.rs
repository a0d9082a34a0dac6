//! Where a batch stands among the pipelined batches: when it may take its
//! user locks, and what the batches ahead of it may do to its users.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::domain::event::{EventKind, SessionEvent};
use crate::store::{LockTurn, UserHints};

/// Where a batch stands among the worker's pipelined batches.
#[derive(Debug, Default)]
pub(super) struct Order {
    /// When it may take its user locks.
    pub turn: LockTurn,
    /// What the batches ahead of it tell of its users.
    pub hints: UserHints,
}

/// What the batches ahead (oldest first) tell of this batch's users:
/// - the owners of the sessions of this batch's logouts that carry no
///   `user_id`: the newest event ahead that names the same session with a
///   user wins;
/// - the users of this batch's requests whose sessions a batch ahead may
///   add, end or revoke: a login or logout of theirs is ahead, or a logout
///   without `user_id` of the very session requested.
pub(super) fn hints_for(
    events: &[SessionEvent],
    ahead: &VecDeque<Arc<[SessionEvent]>>,
) -> UserHints {
    let mut hints = UserHints::default();
    if ahead.is_empty() {
        return hints;
    }
    // One pass over the batches ahead, oldest first (so the newest owner of
    // a session wins).
    let mut owners = HashMap::new();
    let mut changing_users = HashSet::new();
    let mut ending_sessions = HashSet::new();
    for a in ahead.iter().flat_map(|batch| batch.iter()) {
        let session = (a.app.as_str(), a.session_id.as_str());
        if let Some(user) = &a.user_id {
            owners.insert(session, user);
        }
        if a.kind != EventKind::Request {
            match &a.user_id {
                Some(user) => changing_users.insert(user.as_str()),
                None => ending_sessions.insert(session),
            };
        }
    }
    for e in events {
        let session = (e.app.as_str(), e.session_id.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

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
        ])]);
        let batch = [
            event("logout", "a1", None),          // owner known from the login ahead
            event("logout", "z9", None),          // nobody ahead names it
            event("request", "a2", Some("ann")),  // ann's login is ahead: busy
            event("request", "b1", Some("bob")),  // only a request ahead: not busy
            event("request", "c1", Some("carl")), // its session's logout is ahead
        ];
        let hints = hints_for(&batch, &ahead);
        let owners: Vec<_> = hints.owners.iter().collect();
        assert_eq!(
            owners,
            [(&("shop".to_owned(), "a1".to_owned()), &"ann".to_owned())]
        );
        let mut busy: Vec<_> = hints.busy.iter().map(String::as_str).collect();
        busy.sort();
        assert_eq!(busy, ["ann", "carl"]);

        let nothing_ahead = hints_for(&batch, &VecDeque::new());
        assert!(nothing_ahead.owners.is_empty() && nothing_ahead.busy.is_empty());
    }
}
