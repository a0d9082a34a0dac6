//! Applying a batch of events: one transaction, a handful of set-based
//! statements whatever the batch size. The caller acks the batch only after
//! the commit, so a crash anywhere before it replays the batch, and
//! replaying changes nothing because every step is idempotent.
//!
//! Steps, each in its own module: [`plan`] (which users to lock, and when),
//! `load` (read the state), `decide` (pure: apply the events, check the
//! users), `write` and `touch` (write back); the statements themselves
//! are in [`crate::db`]. [`operator`] runs an operator's revocation through
//! the same steps.
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
mod load;
pub mod operator;
pub mod plan;
mod touch;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use self::load::{EventKey, Key, State, key_of};
use self::plan::LockPlan;
use crate::db::{self, locks, overrides, retention};
use crate::domain::event::{SessionEvent, UserId};
use crate::domain::limits::HookChain;

pub use self::operator::{AdminRevokeError, AdminTarget, admin_revoke, effective_limits};
pub use self::plan::{AheadHints, LockTurn, PipelinePlace};

/// How many passes a batch may take: a pass that finds a user it should
/// have locked is rolled back and run again with that user locked. Each pass
/// locks at least one user more than the one before, so a batch needs more
/// only under contention that retrying later resolves.
pub const MAX_PASSES: usize = 8;

/// How limits are enforced: the rule hooks and the base limits they start
/// from, the repeat pause, shadow mode and the `last_seen_at` write
/// resolution. What a batch, an operator's revocation and `limits get`
/// decide by.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// The configured rule hooks and the base limits they start from.
    pub hooks: HookChain,
    /// Least time between two revoke messages for one session.
    pub repeat_revoke_after: Duration,
    /// `false` = shadow mode: decide, log and count, revoke nothing.
    pub enforce: bool,
    /// A `last_seen_at` that moved by less than this is not written back:
    /// requests in a burst cost one write, not one each.
    pub last_seen_resolution: Duration,
}

impl Enforcement {
    /// From the settings, with hooks of an embedding program's own.
    pub fn from_settings(
        settings: &crate::configuration::Settings,
        custom: &[std::sync::Arc<dyn crate::domain::limits::RuleHook>],
    ) -> anyhow::Result<Enforcement> {
        Ok(Enforcement {
            hooks: settings.hook_chain(custom)?,
            repeat_revoke_after: Duration::from_secs(settings.limits.repeat_revoke_after),
            enforce: settings.limits.enforce,
            last_seen_resolution: settings.worker.last_seen_resolution(),
        })
    }
}

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Sessions revoked (limits, idle timeout, logout_others, logout_all),
    /// by reason (`EndReason::as_str`); [`BatchOutcome::revoked`] adds them up.
    pub revoked_by: BTreeMap<&'static str, usize>,
    /// Sessions shadow mode would have revoked.
    pub shadow_revoked: usize,
    /// Revoke messages repeated for sessions an app kept using.
    pub repeated: usize,
    /// Rows moved out of the log by retention.
    pub pruned: u64,
    /// Users locked (those whose sessions the batch could add, end or revoke).
    pub locked_users: usize,
    /// Rows of users not locked, updated by the monotonic touch statement.
    pub touched: usize,
    /// Rows whose only change, a `last_seen_at` moved by less than the
    /// resolution, was not written.
    pub coalesced: usize,
    /// Passes run again with more users locked (at most [`MAX_PASSES`] - 1).
    pub relocks: usize,
}

impl BatchOutcome {
    /// Whether the outbox received messages the relay should publish now.
    pub fn wrote_outbox(&self) -> bool {
        self.revoked() + self.repeated > 0
    }

    /// Sessions revoked, whatever the reason.
    pub fn revoked(&self) -> usize {
        self.revoked_by.values().sum()
    }
}

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
            let mut tx = pool.begin().await.map_err(BatchError::Connect)?;
            let pass = run_pass(&mut tx, enforcement, events, now, &must_lock, turn, hints);
            match pass.await? {
                Pass::Done(mut outcome) => {
                    tx.commit().await?;
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

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// No connection or transaction could be had: never the events' fault.
    #[error("cannot start a transaction: {0}")]
    Connect(#[source] sqlx::Error),
    /// A statement (or the commit) failed.
    #[error(transparent)]
    Statement(#[from] sqlx::Error),
    /// Every pass found more users to lock, up to [`MAX_PASSES`]: heavy
    /// contention on the batch's users. Retrying later starts over.
    #[error("the batch still needed more user locks after {0} passes")]
    TooManyPasses(usize),
}

impl BatchError {
    /// Whether retrying the same events later can succeed: everything but
    /// errors that point at the events' own data.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Connect(_) | BatchError::TooManyPasses(_) => true,
            BatchError::Statement(e) => db::is_transient(e),
        }
    }
}

/// How a pass over a batch ended.
enum Pass {
    /// Applied: commit.
    Done(BatchOutcome),
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
    load::load(conn, &mut state, &apps, &ids, event_users, claims).await?;
    Ok(state)
}

/// What [`take_locks`] needs besides the state.
#[derive(Clone, Copy)]
struct LockRequest<'a> {
    /// Users an earlier pass found it must lock.
    must_lock: &'a BTreeSet<String>,
    /// Whether to read the apps' claims with the users' sessions.
    claims: bool,
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
    load::reload(&mut *conn, state, named, batch, (&reread, claims), true).await?;

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
        load::reload(&mut *conn, state, named, batch, (&found, claims), false).await?;
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
    let written = write::write(
        &mut *conn,
        state,
        locked,
        (resolution, now),
        batch,
        &messages,
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
    Ok(Pass::Done(outcome))
}

/// Batches, states and rules for the unit tests of the steps.
#[cfg(test)]
mod fixtures {
    use std::time::Duration;

    use chrono::{DateTime, TimeZone, Utc};

    use super::Enforcement;
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
    pub(super) fn claimed(
        state: &mut State,
        user: &str,
        attributes: serde_json::Value,
        minute: u32,
    ) {
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
        }
    }
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
