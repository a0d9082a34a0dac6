//! Applying a batch of events: one transaction, a handful of set-based
//! statements whatever the batch size. The caller acks the batch only after
//! the commit, so a crash anywhere before it replays the batch, and
//! replaying changes nothing because every step is idempotent.
//!
//! Steps, each in its own module: [`plan`] (which users to lock, and when),
//! `load` (read the state), `decide` (pure: apply the events, check the
//! users), `write` and `touch` (write back); the statements themselves
//! are in [`crate::db`]. [`operator`] runs an operator's revocation through
//! the same steps. What the steps share lives in leaf modules they import,
//! never in this one: `enforcement` (what a batch is decided by) and
//! `outcome` (how it ended); this module only runs the passes.
//!
//! 1. read, without locks, the sessions the events name (log rows, and
//!    tombstones of pruned ones), the live sessions of the events' users
//!    and, when the hooks or the events need them, what each app claimed
//!    for those users (`user_attributes`, see [`crate::domain::claims`]);
//!    then the operators' overrides of the users known so far (operators
//!    take no user lock, so reading them before the locks keeps the rule
//!    that an override applies from the user's next event);
//! 2. lock the users whose sessions the batch may add, end or revoke (their
//!    `session_users` rows, in user order, one statement), and read their
//!    sessions and claims again, except for users whose row the statement
//!    created (they had no sessions: see `db::locks::lock_users`), and the
//!    overrides of users first met then; a request
//!    for a live or ended session of its own user, the common case, needs
//!    no lock (unless it claims attributes other than those remembered:
//!    they may change the user's limits);
//! 3. apply the events one by one, in arrival order, to that state in memory
//!    (the pure rules of [`crate::domain`]), collecting revocations and revoke
//!    messages: the result is exactly that of event-by-event processing. If
//!    the check of a user not locked finds something to revoke, the pass
//!    ends with `Pass::NeedsLocks` and runs again with that user locked
//!    (at most [`MAX_PASSES`] passes);
//! 4. write back what changed: one upsert for the claims, one statement
//!    for the sessions and the outbox (an UNNEST upsert of locked users'
//!    rows, an insert, `ON CONFLICT DO NOTHING`, of new rows of users not
//!    read again: a key taken meanwhile sends the batch round again; the
//!    revoke messages), one tombstone update, one shadow-flag update, one
//!    retention statement, and last one monotonic touch
//!    update for the rows (and renewed claims) of users not locked (see
//!    `touch` and `db::touch`). A row whose only change is a `last_seen_at`
//!    moved by less than the configured resolution is not written at all,
//!    nor is a claim renewed by less.

mod decide;
mod enforcement;
#[cfg(test)]
mod fixtures;
mod known;
mod load;
mod notices;
pub mod operator;
mod outcome;
pub mod plan;
mod touch;
mod write;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use self::load::{EventKey, HistoryWindow, Key, State, key_of};
use self::plan::LockPlan;
use crate::db::{self, locks, overrides, retention};
use crate::domain::event::{SessionEvent, UserId};
use crate::domain::notice::NoticeKind;

pub use self::enforcement::{Enforcement, Notices};
pub use self::known::KnownFacts;
pub use self::operator::{
    AdminRevokeError, AdminTarget, Revoker, admin_revoke, effective_limits, revoke,
};
pub use self::outcome::{BatchError, BatchOutcome};
pub use self::plan::{AheadHints, LockTurn, PipelinePlace};

/// How many passes a batch may take: a pass that finds a user it should
/// have locked is rolled back and run again with that user locked. Each pass
/// locks at least one user more than the one before, so a batch needs more
/// only under contention that retrying later resolves.
pub const MAX_PASSES: usize = 8;

/// Applies `events` in one transaction and commits. On error nothing is
/// written: the caller retries or nacks.
///
/// A pass locks only the users whose sessions the batch may add, end or
/// revoke. In the rare case where the check of another user finds
/// something to revoke, the pass is rolled back and run again with that
/// user locked too, so locks are always taken in one sorted go.
pub async fn process_batch(
    pool: &PgPool,
    enforcement: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
) -> Result<BatchOutcome, BatchError> {
    process_batch_in_turn(
        pool,
        enforcement,
        events,
        now,
        &mut PipelinePlace::default(),
    )
    .await
}

/// [`process_batch`] for one of a worker's pipelined batches, at `place`.
pub async fn process_batch_in_turn(
    pool: &PgPool,
    enforcement: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
    place: &mut PipelinePlace,
) -> Result<BatchOutcome, BatchError> {
    let PipelinePlace { turn, hints } = place;
    let mut must_lock = BTreeSet::new();
    let result = async {
        for relocks in 0..MAX_PASSES {
            let begin = if reads_history(enforcement) {
                pool.begin_with(BEGIN_READING_HISTORY).await
            } else {
                pool.begin().await
            };
            let mut tx = begin.map_err(BatchError::Connect)?;
            let pass = run_pass(&mut tx, enforcement, events, now, &must_lock, turn, hints);
            match pass.await? {
                Pass::Done(mut outcome, learned) => {
                    tx.commit().await?;
                    if let Some(notices) = &enforcement.notices {
                        // A poisoned lock only means a batch panicked while
                        // learning: the facts are whole entries still.
                        (notices.known.lock())
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .learn(learned);
                    }
                    outcome.relocks = relocks;
                    return Ok(outcome);
                }
                Pass::NeedsLocks(users) => {
                    tx.rollback().await?;
                    must_lock.extend(users);
                }
            }
        }
        Err(BatchError::TooManyPasses(MAX_PASSES))
    }
    .await;
    // Whatever happened, the next batch need not wait any longer.
    turn.pass();
    result
}

/// How a pass over a batch ended.
enum Pass {
    /// Applied: commit, then remember what the sessions it added brought
    /// (see `known::KnownFacts`).
    Done(BatchOutcome, Vec<known::Learned>),
    /// The check of a user this pass did not lock found something to change
    /// beyond a touch (rare: a lowered limit, an idle session, a concurrent
    /// login). Roll back and run the batch again with these users locked too.
    NeedsLocks(BTreeSet<String>),
}

/// One pass over `events` inside the caller's transaction (see the module
/// docs), locking the users that need it plus `must_lock`.
async fn run_pass(
    conn: &mut PgConnection,
    enforcement: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
    must_lock: &BTreeSet<String>,
    turn: &mut LockTurn,
    hints: &AheadHints,
) -> sqlx::Result<Pass> {
    // Each event's session key, built once and reused by every step below.
    let event_keys: Vec<EventKey> = events.iter().map(key_of).collect();
    let batch = (events, &event_keys[..]);
    let named: Vec<&Key> = event_keys
        .iter()
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The apps' claims are needed if a hook reads them, or to know whether
    // an event's claim changes them; else the reads skip them.
    let claims =
        enforcement.hooks.reads_attributes() || events.iter().any(|e| e.attributes.is_some());
    // The users the events name, in order.
    let event_users: Vec<&str> = events
        .iter()
        .filter_map(|e| e.user_id.as_ref().map(UserId::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut state = read_before_locks(&mut *conn, &named, &event_users, claims).await?;
    // The users of the batch known now besides those the events name: the
    // owners of sessions named by logouts without a user, from the rows
    // read or from the batches ahead (few: owned here, as the state changes
    // below).
    let owners: BTreeSet<String> = state
        .slots
        .values()
        .filter_map(|s| s.record.user_id.as_ref().map(UserId::as_str))
        .chain(hints.owners.values().map(String::as_str))
        .filter(|u| event_users.binary_search(u).is_err())
        .map(str::to_owned)
        .collect();
    let known = |u: &str| event_users.binary_search(&u).is_ok() || owners.contains(u);
    // Operators set overrides without taking the user's lock, and an
    // override applies from the user's next event (delivered after `limits
    // set` returned, so in a batch whose reads come later): reading them
    // now keeps a round trip out of the time the locks are held.
    let known_list: Vec<&str> = (event_users.iter().copied())
        .chain(owners.iter().map(String::as_str))
        .collect();
    state.overrides = overrides::overrides_of_users(&mut *conn, &known_list).await?;
    let lock = LockRequest {
        must_lock,
        claims,
        clock: (now, enforcement.repeat_revoke_after),
        history: history_window(enforcement, events),
    };
    let (locked, users) =
        match take_locks(&mut *conn, &mut state, batch, &named, lock, turn, hints).await? {
            Locks::Held { locked, users } => (locked, users),
            Locks::Busy(users) => return Ok(Pass::NeedsLocks(users)),
        };
    state.index_all();
    // Users first met while taking the locks (the owner of a session whose
    // login committed meanwhile, named by a logout without user) or locked
    // by an earlier pass's finding are rare.
    let met_after_locks: Vec<&str> = users
        .iter()
        .map(String::as_str)
        .filter(|u| !known(u))
        .collect();
    if !met_after_locks.is_empty() {
        let more = overrides::overrides_of_users(&mut *conn, &met_after_locks).await?;
        state.overrides.extend(more);
    }
    let decided = decide::decide(&mut state, enforcement, batch, &locked, now);
    if !decided.needs_locks.is_empty() {
        return Ok(Pass::NeedsLocks(decided.needs_locks));
    }
    write_pass(conn, &state, enforcement, batch, &locked, decided, now).await
}

/// Reads, before any lock, the named sessions and the live sessions of the
/// events' users: who the sessions belong to tells which users the batch
/// may change beyond a touch. Those users' rows are read again once they
/// are locked.
async fn read_before_locks(
    conn: &mut PgConnection,
    named: &[&Key],
    event_users: &[&str],
    claims: bool,
) -> sqlx::Result<State> {
    let (apps, ids): (Vec<&str>, Vec<&str>) =
        named.iter().map(|(a, s)| (a.as_str(), s.as_str())).unzip();
    let mut state = State::with_capacity(named.len() * 2);
    load::load(conn, &mut state, (&apps, &ids), event_users, claims, None).await?;
    Ok(state)
}

/// How a batch that reads its users' history begins: in the same round
/// trip as its `BEGIN`, bitmap scans off for the transaction. The history
/// read takes a user's latest sessions in the order of an index and stops
/// early (`LIMIT`, `EXISTS`). PostgreSQL estimates a user's sessions by the
/// average, blind to the few very active users, and then prefers a bitmap
/// scan, which reads every session of the user and sorts them: with the
/// bench's production mix, twice PostgreSQL's CPU per event (BENCHMARKS.md,
/// "Issue 25, round two"). No statement of a batch gains from a bitmap scan
/// (each reads by key or by user).
const BEGIN_READING_HISTORY: &str = "BEGIN; SET LOCAL enable_bitmapscan = off";

/// Whether batches read the history of their users (notices are on, and
/// published: not in shadow mode).
fn reads_history(enforcement: &Enforcement) -> bool {
    enforcement.notices.is_some() && enforcement.enforce
}

/// How the history of the users the batch may add a session for is read:
/// `None` without notices (or in shadow mode, which publishes none).
fn history_window<'e>(
    enforcement: &'e Enforcement,
    events: &[SessionEvent],
) -> Option<HistoryWindow<'e>> {
    let notices = enforcement
        .notices
        .as_ref()
        .filter(|_| reads_history(enforcement))?;
    let earliest = events.iter().map(|e| e.occurred_at).min()?;
    let latest = events.iter().map(|e| e.occurred_at).max()?;
    let lookback = chrono::Duration::from_std(notices.policy.lookback).ok()?;
    let before = |t: DateTime<Utc>| {
        t.checked_sub_signed(lookback)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let kinds = &notices.policy.kinds;
    Some(HistoryWindow {
        since: before(earliest),
        known_since: before(latest),
        scope: notices.policy.scope,
        devices: kinds.contains(&NoticeKind::NewDevice),
        networks: kinds.contains(&NoticeKind::NewNetwork),
        known: (&notices.known, lookback.min(known::KNOWN_FOR)),
    })
}

/// What [`take_locks`] needs besides the state.
#[derive(Clone, Copy)]
struct LockRequest<'a> {
    /// Users an earlier pass found it must lock.
    must_lock: &'a BTreeSet<String>,
    /// Whether to read the apps' claims with the users' sessions.
    claims: bool,
    /// With notices on: how to read the history of the users the batch may
    /// add a session for.
    history: Option<HistoryWindow<'a>>,
    /// The worker's clock, for what counts as live, and the pause between
    /// two revoke messages for one session (a request that repeats one
    /// locks its user).
    clock: (DateTime<Utc>, Duration),
}

/// How taking a pass's locks ended.
enum Locks {
    /// These users are locked; `users` are all the batch involves.
    Held {
        /// Users whose locks this pass holds.
        locked: BTreeSet<String>,
        /// Every user of the batch, locked or not.
        users: BTreeSet<String>,
    },
    /// Users found after the locks were taken are busy: run the pass again
    /// with them locked in the sorted go.
    Busy(BTreeSet<String>),
}

/// Locks the users the batch needs (in its turn among the worker's
/// batches) and reads their rows again.
async fn take_locks(
    conn: &mut PgConnection,
    state: &mut State,
    batch: (&[SessionEvent], &[EventKey]),
    named: &[&Key],
    request: LockRequest<'_>,
    turn: &mut LockTurn,
    hints: &AheadHints,
) -> sqlx::Result<Locks> {
    let LockRequest {
        must_lock,
        claims,
        clock,
        history,
    } = request;
    // Every user of the batch, and those to lock: a user whose events can
    // add, end or revoke a session.
    let LockPlan {
        mut users,
        lock: mut locked,
        unresolved,
    } = plan::plan_locks(batch.0, batch.1, state, hints, clock);
    locked.extend(must_lock.iter().cloned());
    users.extend(locked.iter().cloned());
    turn.wait().await;
    state.created = locks::lock_users(&mut *conn, &locked).await?;
    // Only an event of no known user can name, once read again, a user not
    // locked yet (see below). Without one, the next batch of this worker may
    // take its locks now.
    if !unresolved {
        turn.pass();
    }
    // No writer that adds, ends or revokes sessions ever held the lock of a
    // user whose lock row was just created, and none can until this
    // commits: the read before the lock holds for them. Their new rows are
    // inserted only if still absent (see `write_pass`).
    let reread: BTreeSet<String> = locked.difference(&state.created).cloned().collect();
    let reread_users = (&reread, claims);
    load::reload(
        &mut *conn,
        state,
        named,
        batch,
        reread_users,
        (true, history),
    )
    .await?;

    // The rows read again may name a user not locked: a logout without
    // user_id whose session's login committed meanwhile, on another worker.
    // Lock such users now without waiting (so without deadlocks, whatever
    // the order) and read their rows; if one is busy, the batch runs again
    // with it locked in the sorted go. When this can happen, the next batch
    // of this worker takes its locks only after this step (or after the
    // rerun's locks), so it cannot get ahead of this one on such a user.
    let after_locks = plan::plan_locks(batch.0, batch.1, state, hints, clock);
    let found: BTreeSet<String> = after_locks.lock.difference(&locked).cloned().collect();
    if !found.is_empty() {
        if !locks::try_lock_users(&mut *conn, &found).await? {
            return Ok(Locks::Busy(found));
        }
        load::reload(
            &mut *conn,
            state,
            named,
            batch,
            (&found, claims),
            (false, None),
        )
        .await?;
        locked.extend(found);
    }
    turn.pass();
    users.extend(after_locks.users);
    users.extend(locked.iter().cloned());
    Ok(Locks::Held { locked, users })
}

/// Writes what the pass decided: the sessions and claims, the outbox, the
/// retention of the locked users' logs, and last the touch.
async fn write_pass(
    conn: &mut PgConnection,
    state: &State,
    enforcement: &Enforcement,
    batch: (&[SessionEvent], &[EventKey]),
    locked: &BTreeSet<String>,
    decided: decide::Decisions,
    now: DateTime<Utc>,
) -> sqlx::Result<Pass> {
    let decide::Decisions {
        outbox: messages,
        mut outcome,
        log_limits,
        ..
    } = decided;
    let resolution = enforcement.last_seen_resolution;
    // Shadow mode changes nothing the apps see: no notices either.
    let (notices, learned) = match &enforcement.notices {
        Some(n) if reads_history(enforcement) => {
            (notices::notices(state, n), notices::learned(state, n))
        }
        _ => (Vec::new(), Vec::new()),
    };
    let written = write::write(
        &mut *conn,
        state,
        locked,
        (resolution, now),
        batch,
        (&messages, &notices),
        &mut outcome,
    );
    let touches = match written.await? {
        write::Written::Done(touches) => *touches,
        // A session a created user's event named was stored meanwhile (by
        // a logout that did not name its user, or under another user):
        // run again, and the next pass's read finds it.
        write::Written::Taken(users) => return Ok(Pass::NeedsLocks(users)),
    };
    let keep = decide::retention_limits(state, enforcement, batch, log_limits, now);
    outcome.pruned += retention::prune_logs(&mut *conn, &keep, now).await?;
    // Last, so that nothing this transaction does after it can wait.
    let skipped = db::touch::touch(&mut *conn, &touches).await?;
    if let Some(users) = touch::users_skipped(state, skipped) {
        return Ok(Pass::NeedsLocks(users));
    }
    Ok(Pass::Done(outcome, learned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_permanent() {
        assert!(db::is_transient(&sqlx::Error::PoolTimedOut));
        assert!(db::is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!db::is_transient(&sqlx::Error::RowNotFound));
        assert!(BatchError::Connect(sqlx::Error::RowNotFound).is_transient());
        assert!(BatchError::TooManyPasses(MAX_PASSES).is_transient());
    }
}
