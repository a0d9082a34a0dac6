//! Which writes of a batch are touches: a request for a row of its own user,
//! live or ended, only moves that row's activity forward, so it needs no
//! user lock and is written last, lock-free, by [`crate::db::touch`].

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::load::{EventKey, Key, Origin, Slot, State};
use crate::db::touch::{Skipped, Touches};
use crate::domain::event::SessionEvent;
use crate::domain::session::SessionRecord;

/// Whether an event of `user`, not locked, on the session in `slot` can
/// only touch it: a request (the caller checks the kind) for a row of the
/// log that belongs to the same user and is live, or ended.
///
/// An ended row never becomes live again, so a request on it cannot change
/// what the user holds: it only moves the row's activity. (One that repeats
/// the revoke of a revoked row does more: [`plan_locks`](super::plan) locks
/// its user.) A row that expired without ending is not a touch: a request
/// may extend its expiry and so bring it back among the user's live
/// sessions.
pub(super) fn is_touch(slot: Option<&Slot>, user: &str, now: DateTime<Utc>) -> bool {
    slot.is_some_and(|s| {
        s.origin == Origin::Log
            && s.record
                .user_id
                .as_ref()
                .is_some_and(|u| u.as_str() == user)
            && (s.record.end_reason.is_some() || s.record.is_active_at(now))
    })
}

/// The touch update's columns for `rows` (key, record now, record as read),
/// each with the batch's events on it, in arrival order.
pub(super) fn touches_of(
    rows: &[(&Key, &Slot, &SessionRecord)],
    (events, event_keys): (&[SessionEvent], &[EventKey]),
) -> Touches {
    let mut touches = Touches::default();
    if rows.is_empty() {
        return touches;
    }
    let mut by_key: HashMap<&Key, Vec<&SessionEvent>> = HashMap::new();
    for (e, key) in events.iter().zip(event_keys) {
        if let Some(key) = key {
            by_key.entry(key).or_default().push(e);
        }
    }
    for (key, slot, loaded) in rows {
        let events = by_key.get(*key).map_or(&[][..], Vec::as_slice);
        touches.push(key, &slot.record, loaded, events);
    }
    touches
}

/// The users whose rows or claims the touch skipped (another transaction
/// held them): the batch runs again with them locked. `None` if it wrote
/// everything.
pub(super) fn users_skipped(state: &State, skipped: Skipped) -> Option<BTreeSet<String>> {
    if skipped.sessions.is_empty() && skipped.claims_of.is_empty() {
        return None;
    }
    let mut users: BTreeSet<String> = skipped
        .sessions
        .iter()
        .filter_map(|k| state.slots.get(k))
        .filter_map(|s| s.record.user_id.as_ref().map(|u| u.to_string()))
        .collect();
    users.extend(skipped.claims_of);
    Some(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{at, stored};
    use crate::domain::session::EndReason;

    #[test]
    fn only_a_live_logged_row_of_the_same_user_is_a_touch() {
        let live = stored("s1", "ann", 0);
        assert!(is_touch(Some(&live), "ann", at(1)));
        assert!(!is_touch(Some(&live), "bob", at(1)));
        assert!(!is_touch(None, "ann", at(1)));

        // An ended row stays ended: a request of its own user only touches
        // it (another user's request does not).
        let mut ended = stored("s1", "ann", 0);
        ended.record.end_reason = Some(EndReason::Logout);
        assert!(is_touch(Some(&ended), "ann", at(1)));
        assert!(!is_touch(Some(&ended), "bob", at(1)));

        // Expired but not ended: a request may extend it, so not a touch.
        let mut expired = stored("s1", "ann", 0);
        expired.record.expires_at = Some(at(1));
        assert!(!is_touch(Some(&expired), "ann", at(1)));
        expired.record.end_reason = Some(EndReason::Expired);
        assert!(is_touch(Some(&expired), "ann", at(1)));

        let mut pruned = stored("s1", "ann", 0);
        pruned.origin = Origin::Tombstone;
        assert!(!is_touch(Some(&pruned), "ann", at(1)));
    }

    #[test]
    fn skipped_rows_and_claims_name_their_users() {
        let state = crate::apply::fixtures::state_of(vec![stored("s1", "ann", 0)]);
        assert!(users_skipped(&state, Skipped::default()).is_none());
        let skipped = Skipped {
            sessions: vec![crate::apply::fixtures::key("s1")],
            claims_of: vec!["bob".to_owned()],
        };
        let users = users_skipped(&state, skipped).unwrap();
        assert_eq!(users.into_iter().collect::<Vec<_>>(), ["ann", "bob"]);
    }
}
