//! Writing a batch back: which sessions and claims changed, and whether
//! each goes by the upsert (rows of locked users, new rows), the tombstone
//! update, or the touch that runs last.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::load::{EventKey, Key, Origin, Slot, State};
use super::outcome::BatchOutcome;
use super::touch::touches_of;
use crate::db::sessions::{self, SessionColumns};
use crate::db::touch::Touches;
use crate::db::{claims, outbox, sessions::flag_shadow};
use crate::domain::claims::Claim;
use crate::domain::event::SessionEvent;
use crate::domain::notice::Notice;
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::SessionRecord;

/// How writing a batch back ended.
pub(super) enum Written {
    /// Written: the rows and renewed claims of users not locked remain, for
    /// the touch to write last (boxed: the column arrays are large, and a
    /// batch makes one).
    Done(Box<Touches>),
    /// A new session of a user whose lock row the pass created was stored
    /// meanwhile by someone else: the pass must run again (with these users
    /// locked, as they were).
    Taken(BTreeSet<String>),
}

/// Writes back every changed session and claim of locked users, the
/// revoke `messages` and the `notices`: one upsert for the claims; one statement for the
/// sessions (an upsert of changed rows and new ones, an insert of new rows
/// of users whose lock row the pass created, [`State::created`]) and the
/// outbox; one update for tombstones and one for shadow flags. A row whose
/// only change is a `last_seen_at` moved by less than `resolution` is not
/// written at all (its next event that moves it further is), nor is a
/// claim renewed by less.
pub(super) async fn write(
    conn: &mut PgConnection,
    state: &State,
    locked: &BTreeSet<String>,
    (resolution, now): (Duration, DateTime<Utc>),
    batch: (&[SessionEvent], &[EventKey]),
    (messages, notices): (&[RevokeMessage], &[Notice]),
    outcome: &mut BatchOutcome,
) -> sqlx::Result<Written> {
    let changed = changed_rows(state, locked, resolution, outcome);
    outcome.touched += changed.touches.len();
    let mut touches = touches_of(&changed.touches, batch);
    let claimed = changed_claims(state, locked, resolution, &mut touches);
    claims::upsert_claims(&mut *conn, claimed).await?;
    // Users in `state.created` were not read again after their lock: their
    // new rows go in only if no one stored the same key meanwhile.
    let mut outbox_rows = outbox::Columns::of(messages);
    outbox_rows.add_notices(notices);
    let inserted = sessions::store(
        &mut *conn,
        &columns_of(&changed.fresh),
        &columns_of(&changed.upserts),
        &outbox_rows,
    )
    .await?;
    if inserted < changed.fresh.len() {
        let users = changed
            .fresh
            .iter()
            .filter_map(|s| s.record.user_id.as_ref().map(|u| u.to_string()))
            .collect();
        return Ok(Written::Taken(users));
    }
    sessions::update_tombstones(&mut *conn, &columns_of(&changed.tombstones)).await?;
    let (apps, ids): (Vec<&str>, Vec<&str>) = state
        .slots
        .iter()
        .filter(|(_, s)| s.newly_flagged)
        .map(|((app, id), _)| (app.as_str(), id.as_str()))
        .unzip();
    flag_shadow(&mut *conn, &apps, &ids, now).await?;
    Ok(Written::Done(Box::new(touches)))
}

/// The sessions a batch changed, by how they are written.
#[derive(Default)]
struct ChangedRows<'a> {
    /// Rows of locked users and new rows, for the upsert.
    upserts: Vec<&'a Slot>,
    /// New rows of users whose lock row the pass created, for the insert
    /// that fails if the key was stored meanwhile.
    fresh: Vec<&'a Slot>,
    /// Sessions pruned from the log, for the tombstone update.
    tombstones: Vec<&'a Slot>,
    /// Rows of users not locked (key, now, as read), for the touch.
    touches: Vec<(&'a Key, &'a Slot, &'a SessionRecord)>,
}

/// Sorts the changed sessions by how they are written, in key order (so
/// that concurrent batches lock rows in the same order), and counts those
/// left unwritten because only their `last_seen_at` moved, by less than
/// `resolution`.
fn changed_rows<'a>(
    state: &'a State,
    locked: &BTreeSet<String>,
    resolution: Duration,
    outcome: &mut BatchOutcome,
) -> ChangedRows<'a> {
    let mut dirty: Vec<(&Key, &Slot)> = Vec::new();
    for (key, slot) in &state.slots {
        if !slot.dirty {
            continue;
        }
        // Ended rows are always written: their last_seen_at decides whether
        // a later request repeats the revoke.
        let within = slot.loaded.as_ref().is_some_and(|loaded| {
            !slot.newly_flagged
                && slot.record.end_reason.is_none()
                && loaded.only_seen_later_within(&slot.record, resolution)
        });
        if within {
            outcome.coalesced += 1;
        } else {
            dirty.push((key, slot));
        }
    }
    dirty.sort_by(|a, b| a.0.cmp(b.0));
    let mut changed = ChangedRows::default();
    for (key, slot) in dirty {
        let user_locked = slot
            .record
            .user_id
            .as_ref()
            .is_none_or(|u| locked.contains(u.as_str()));
        let user_created = slot
            .record
            .user_id
            .as_ref()
            .is_some_and(|u| state.created.contains(u.as_str()));
        match (slot.origin, &slot.loaded) {
            (Origin::Tombstone, _) => changed.tombstones.push(slot),
            (Origin::New, _) if user_created => changed.fresh.push(slot),
            (Origin::Log, Some(loaded)) if !user_locked => {
                changed.touches.push((key, slot, loaded));
            }
            _ => changed.upserts.push(slot),
        }
    }
    changed
}

/// The changed claims of locked users, for the upsert: `(user_id, app,
/// claim)`. A claim of a user not locked can only have been renewed (a
/// replacement needs the lock): it goes to `touches`.
fn changed_claims<'a>(
    state: &'a State,
    locked: &BTreeSet<String>,
    resolution: Duration,
    touches: &mut Touches,
) -> Vec<(&'a str, &'a str, &'a Claim)> {
    let mut claimed = Vec::new();
    for (user, apps) in &state.claims {
        for (app, slot) in apps {
            let Some(claim) = &slot.claim else { continue };
            let unchanged = slot
                .loaded
                .as_ref()
                .is_some_and(|l| l == claim || l.only_renewed_within(claim, resolution));
            if unchanged {
                continue;
            }
            if locked.contains(user) {
                claimed.push((user.as_str(), app.as_str(), claim));
            } else {
                touches.push_claim(user, app, claim);
            }
        }
    }
    claimed
}

/// The column arrays of `slots`, for the UNNEST statements.
fn columns_of(slots: &[&Slot]) -> SessionColumns {
    let mut columns = SessionColumns::default();
    for slot in slots {
        columns.push(
            &slot.record,
            slot.ended_by.as_deref(),
            slot.end_note.as_deref(),
        );
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{at, key, state_of, stored};
    use crate::domain::session::EndReason;

    #[test]
    fn changed_rows_go_to_the_upsert_the_insert_the_touch_or_nowhere() {
        let mut ann = stored("s1", "ann", 0);
        ann.record.last_seen_at = at(1);
        ann.dirty = true;
        let mut bob = stored("s2", "bob", 0);
        bob.record.last_seen_at = at(1);
        bob.dirty = true;
        let mut cat = stored("s3", "cat", 0);
        cat.record.last_seen_at = at(1);
        cat.record.end_reason = Some(EndReason::Logout);
        cat.dirty = true;
        let untouched = stored("s4", "dan", 0);
        let mut pruned = stored("s5", "ann", 0);
        pruned.origin = Origin::Tombstone;
        pruned.loaded = None;
        pruned.dirty = true;
        // New rows: of eve, whose lock row the pass created, and of ann.
        let mut eve = stored("s6", "eve", 0);
        eve.origin = Origin::New;
        eve.loaded = None;
        eve.dirty = true;
        let mut ann_new = stored("s7", "ann", 0);
        ann_new.origin = Origin::New;
        ann_new.loaded = None;
        ann_new.dirty = true;
        let mut state = state_of(vec![ann, bob, cat, untouched, pruned, eve, ann_new]);
        state.created = BTreeSet::from(["eve".to_owned()]);
        let locked = BTreeSet::from(["ann".to_owned(), "cat".to_owned(), "eve".to_owned()]);

        let mut outcome = BatchOutcome::default();
        let changed = changed_rows(&state, &locked, Duration::ZERO, &mut outcome);
        let ids = |slots: &[&Slot]| -> Vec<String> {
            slots
                .iter()
                .map(|s| s.record.session_id.to_string())
                .collect()
        };
        assert_eq!(ids(&changed.upserts), ["s1", "s3", "s7"]);
        assert_eq!(ids(&changed.fresh), ["s6"]);
        assert_eq!(ids(&changed.tombstones), ["s5"]);
        assert_eq!(changed.touches.len(), 1);
        assert_eq!(changed.touches[0].0, &key("s2"));
        assert_eq!(outcome.coalesced, 0);

        // Within the resolution, only the ended row is still written.
        let mut outcome = BatchOutcome::default();
        let changed = changed_rows(&state, &locked, Duration::from_secs(120), &mut outcome);
        assert_eq!(ids(&changed.upserts), ["s3", "s7"]);
        assert!(changed.touches.is_empty());
        assert_eq!(outcome.coalesced, 2);
    }
}
