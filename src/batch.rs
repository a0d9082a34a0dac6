//! The batch engine: applies a batch of events in one transaction with a
//! handful of set-based statements, whatever the batch size.
//!
//! 1. read, without locks, the sessions the events name (log rows, and
//!    tombstones of pruned ones), the live sessions of the events' users
//!    and, when the hooks or the events need them, what each app claimed
//!    for those users (`user_attributes`, see [`crate::domain::claims`]);
//! 2. lock the users whose sessions the batch may add, end or revoke (their
//!    `session_users` rows, in user order, one statement), and read their
//!    sessions and claims again; a request for a live session of its own
//!    user, the common case, needs no lock (unless it claims attributes
//!    other than those remembered: they may change the user's limits);
//! 3. apply the events one by one, in arrival order, to that state in memory
//!    (the pure rules of `domain`), collecting revocations and revoke
//!    messages: the result is exactly that of event-by-event processing. If
//!    the check of a user not locked finds something to revoke, the pass
//!    ends with [`Pass::NeedsLocks`] and the caller runs it again with that
//!    user locked;
//! 4. write back what changed: one UNNEST upsert for locked users' rows, one
//!    for their claims, one tombstone update, one shadow-flag update, one
//!    outbox insert, one retention statement, and last one monotonic touch
//!    update for the rows (and renewed claims) of users not locked (see
//!    [`touch`]). A row whose only change is a `last_seen_at` moved by less
//!    than the configured resolution is not written at all, nor is a claim
//!    renewed by less.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::claims::{Claim, ClaimChange};
use crate::domain::decision::{Candidate, Caps, Scope, idle_sessions, select_victims};
use crate::domain::event::{AppName, EventKind, SessionEvent, SessionId, UserId};
use crate::domain::limits::{EffectiveLimits, EvictionPolicy, HookContext, UserOverride};
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::{EndReason, SessionRecord, apply_event};
use crate::store::summaries;
use crate::store::{
    BatchOutcome, Enforcement, LockTurn, Revocation, UserHints, load_overrides_of, lock_users,
    try_lock_users, write_outbox,
};

/// A session's key: (app, session_id).
type Key = (String, String);

/// The session key an event names.
fn key_of(event: &SessionEvent) -> Key {
    (event.app.to_string(), event.session_id.to_string())
}

/// Where a session's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A row of `sessions`.
    Log,
    /// A row of `session_tombstones` (pruned from the log).
    Tombstone,
    /// Not stored yet: created by this batch.
    New,
}

/// One session, in memory for the batch.
#[derive(Debug, Clone)]
struct Slot {
    record: SessionRecord,
    origin: Origin,
    /// The record as read from the log, to tell what the batch changed.
    loaded: Option<SessionRecord>,
    ended_by: Option<String>,
    end_note: Option<String>,
    shadow_flagged: bool,
    /// Must be written back.
    dirty: bool,
    /// Newly flagged by shadow mode in this batch.
    flag: bool,
}

/// Attributes as JSON objects.
type Attributes = serde_json::Map<String, serde_json::Value>;

/// What one app claims for one user, in memory for the batch.
#[derive(Debug, Clone, Default)]
struct ClaimSlot {
    /// The claim now (`None`: the app never claimed anything for the user).
    claim: Option<Claim>,
    /// As read from `user_attributes`, to tell what the batch changed.
    loaded: Option<Claim>,
}

/// Claims by user, then app.
type Claims = HashMap<String, BTreeMap<String, ClaimSlot>>;

/// The batch's view of the database.
struct State {
    slots: HashMap<Key, Slot>,
    /// Keys of each user's sessions (live ones, and those the events named).
    by_user: HashMap<String, BTreeSet<Key>>,
    overrides: HashMap<String, Vec<UserOverride>>,
    /// What the apps claim for the batch's users (read only when needed).
    claims: Claims,
}

impl State {
    fn index(&mut self, key: &Key) {
        if let Some(user) = self.slots.get(key).and_then(|s| s.record.user_id.clone()) {
            self.by_user
                .entry(user.into_inner())
                .or_default()
                .insert(key.clone());
        }
    }

    /// The user's sessions that count at `now`: not ended, not expired.
    fn live(&self, user: &UserId, now: DateTime<Utc>) -> Vec<Candidate> {
        let Some(keys) = self.by_user.get(user.as_str()) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| self.slots.get(k))
            .filter(|s| s.origin != Origin::Tombstone)
            .filter(|s| s.record.user_id.as_ref() == Some(user) && s.record.is_active_at(now))
            .map(|s| Candidate {
                app: s.record.app.clone(),
                session_id: s.record.session_id.clone(),
                login_at: s.record.login_at,
                login_seen: s.record.login_seen,
                last_seen_at: s.record.last_seen_at,
            })
            .collect()
    }

    /// What `app` claims for `user` now: the attributes its hooks see.
    fn attributes(&self, user: &str, app: &str) -> Option<&Attributes> {
        self.claims
            .get(user)
            .and_then(|apps| apps.get(app))
            .and_then(|slot| slot.claim.as_ref())
            .map(|c| &c.attributes)
    }

    /// Applies the claim of `event` (if it carries attributes) to what its
    /// app claims for `user`.
    fn claim(&mut self, user: &UserId, event: &SessionEvent) -> ClaimChange {
        let Some(claimed) = &event.attributes else {
            return ClaimChange::Kept;
        };
        let slot = self
            .claims
            .entry(user.to_string())
            .or_default()
            .entry(event.app.to_string())
            .or_default();
        Claim::update(&mut slot.claim, Some(claimed), event.occurred_at)
    }
}

/// Whether `event` of `user` claims other attributes than `claims` hold for
/// it (or the first ones): such a claim may change the user's limits.
fn replaces_claim(claims: &Claims, user: &str, event: &SessionEvent) -> bool {
    let current = claims
        .get(user)
        .and_then(|apps| apps.get(event.app.as_str()))
        .and_then(|slot| slot.claim.as_ref());
    Claim::change_of(current, event.attributes.as_ref(), event.occurred_at) == ClaimChange::Replaced
}

/// A stored row, as loaded.
#[derive(sqlx::FromRow)]
struct Row {
    app: String,
    session_id: String,
    user_id: Option<String>,
    login_at: DateTime<Utc>,
    login_seen: bool,
    last_seen_at: DateTime<Utc>,
    ip: Option<IpAddr>,
    user_agent: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    max_sessions: Option<i32>,
    last_revoke_at: Option<DateTime<Utc>>,
    attributes: Option<serde_json::Value>,
    ended_by: Option<String>,
    end_note: Option<String>,
    shadow_flagged: bool,
}

impl Row {
    fn into_slot(self, origin: Origin) -> (Key, Slot) {
        let key = (self.app.clone(), self.session_id.clone());
        let record = SessionRecord {
            app: AppName::from_trusted(self.app),
            session_id: SessionId::from_trusted(self.session_id),
            user_id: self.user_id.map(UserId::from_trusted),
            login_at: self.login_at,
            login_seen: self.login_seen,
            last_seen_at: self.last_seen_at,
            ip: self.ip,
            user_agent: self.user_agent,
            expires_at: self.expires_at,
            ended_at: self.ended_at,
            end_reason: self.end_reason.as_deref().and_then(EndReason::parse),
            max_sessions: self.max_sessions.map(|n| n.max(0) as u32),
            last_revoke_at: self.last_revoke_at,
            attributes: self.attributes,
        };
        let slot = Slot {
            loaded: (origin == Origin::Log).then(|| record.clone()),
            record,
            origin,
            ended_by: self.ended_by,
            end_note: self.end_note,
            shadow_flagged: self.shadow_flagged,
            dirty: false,
            flag: false,
        };
        (key, slot)
    }
}

const LOG_COLUMNS: &str = "app, session_id, user_id, login_at, login_seen, last_seen_at, ip,
    user_agent, expires_at, ended_at, end_reason, max_sessions, last_revoke_at, attributes,
    ended_by, end_note, shadow_flagged_at IS NOT NULL AS shadow_flagged";

/// Reads, in one statement, every live session of `users` and the sessions
/// named by `(apps, ids)`: rows of the log and, for keys pruned from it,
/// their tombstones. Each part is an index probe per user or key, and a key
/// is probed only if it is not among the users' live sessions (most events
/// are requests for a live session of their own user), and among the
/// tombstones only if it is not in the log: about a third of the probes of
/// probing every key in both tables.
///
/// With `claims`, the same statement reads what each app claimed for
/// `users` (an index probe per user), as rows of their own: `claim` set,
/// `app`, `user_id` and `attributes` from `user_attributes`, `last_seen_at`
/// the claim's event time, and an empty (never valid) `session_id`. One
/// statement rather than two: a round trip costs more than the probes.
///
/// `OFFSET 0` keeps the planner from flattening a LATERAL subquery into a
/// hash join over a seq scan of the log, which it does on stale statistics
/// and which cost 16 ms instead of 5 for 450 keys on a 100,000-row log.
async fn load(
    conn: &mut PgConnection,
    apps: &[&str],
    ids: &[&str],
    users: &[&str],
    claims: bool,
) -> sqlx::Result<Loaded> {
    let query = format!(
        "WITH live AS MATERIALIZED (
             SELECT s.* FROM unnest($3::text[]) AS u(user_id)
             CROSS JOIN LATERAL (
                 SELECT {LOG_COLUMNS}, false AS tombstone, false AS claim FROM sessions
                 WHERE user_id = u.user_id AND end_reason IS NULL OFFSET 0
             ) s
         ), named AS MATERIALIZED (
             SELECT k.app, k.session_id FROM unnest($1::text[], $2::text[]) AS k(app, session_id)
             WHERE NOT EXISTS (
                 SELECT FROM live l WHERE l.app = k.app AND l.session_id = k.session_id
             )
         )
         SELECT * FROM live
         UNION ALL
         SELECT k.app, k.session_id, coalesce(s.user_id, t.user_id),
                coalesce(s.login_at, t.login_at), coalesce(s.login_seen, true),
                coalesce(s.last_seen_at, t.last_seen_at), s.ip, s.user_agent,
                coalesce(s.expires_at, t.expires_at), coalesce(s.ended_at, t.ended_at),
                coalesce(s.end_reason, t.end_reason), coalesce(s.max_sessions, t.max_sessions),
                coalesce(s.last_revoke_at, t.last_revoke_at), s.attributes, s.ended_by,
                s.end_note, coalesce(s.shadow_flagged, false), s.app IS NULL, false
         FROM named k
         LEFT JOIN LATERAL (
             SELECT {LOG_COLUMNS} FROM sessions
             WHERE app = k.app AND session_id = k.session_id OFFSET 0
         ) s ON true
         LEFT JOIN LATERAL (
             SELECT user_id, login_at, last_seen_at, expires_at, ended_at, end_reason,
                    max_sessions, last_revoke_at
             FROM session_tombstones
             WHERE s.app IS NULL AND app = k.app AND session_id = k.session_id OFFSET 0
         ) t ON true
         WHERE s.app IS NOT NULL OR t.login_at IS NOT NULL
         UNION ALL
         SELECT c.app, '', c.user_id, c.occurred_at, true, c.occurred_at, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, c.attributes, NULL, NULL, false, false, true
         FROM unnest($3::text[]) AS u(user_id)
         CROSS JOIN LATERAL (
             SELECT app, user_id, attributes, occurred_at FROM user_attributes
             WHERE $4 AND user_id = u.user_id OFFSET 0
         ) c"
    );
    let rows: Vec<TaggedRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(apps)
        .bind(ids)
        .bind(users)
        .bind(claims)
        .fetch_all(conn)
        .await?;
    let mut slots: HashMap<Key, Slot> = HashMap::with_capacity(rows.len());
    let mut claimed: Vec<(String, String, Claim)> = Vec::new();
    for TaggedRow {
        row,
        tombstone,
        claim,
    } in rows
    {
        if claim {
            if let (Some(user), Some(serde_json::Value::Object(attributes))) =
                (row.user_id, row.attributes)
            {
                let claim = Claim {
                    attributes,
                    occurred_at: row.last_seen_at,
                };
                claimed.push((user, row.app, claim));
            }
            continue;
        }
        let origin = if tombstone {
            Origin::Tombstone
        } else {
            Origin::Log
        };
        let (key, slot) = row.into_slot(origin);
        // A key both in the log and among tombstones should not exist; if
        // it does, the log row wins.
        if origin == Origin::Log || !slots.contains_key(&key) {
            slots.insert(key, slot);
        }
    }
    Ok(Loaded {
        slots: slots.into_iter().collect(),
        claims: claimed,
    })
}

/// What [`load`] read.
struct Loaded {
    /// Sessions, by key.
    slots: Vec<(Key, Slot)>,
    /// Claims: (user_id, app, claim).
    claims: Vec<(String, String, Claim)>,
}

impl State {
    /// Adds what [`load`] read.
    fn add(&mut self, loaded: Loaded) {
        for (key, slot) in loaded.slots {
            self.slots.insert(key, slot);
        }
        for (user, app, claim) in loaded.claims {
            self.claims.entry(user).or_default().insert(
                app,
                ClaimSlot {
                    claim: Some(claim.clone()),
                    loaded: Some(claim),
                },
            );
        }
    }
}

/// A [`Row`], whether it came from `session_tombstones`, and whether it is
/// a claim (see [`load`]).
#[derive(sqlx::FromRow)]
struct TaggedRow {
    #[sqlx(flatten)]
    row: Row,
    tombstone: bool,
    claim: bool,
}

/// How a pass over a batch ended.
pub(crate) enum Pass {
    /// Applied: commit.
    Done(BatchOutcome),
    /// The check of a user this pass did not lock found something to change
    /// beyond a touch (rare: a lowered limit, an idle session, a concurrent
    /// login). Roll back and run the batch again with these users locked too.
    NeedsLocks(BTreeSet<String>),
}

/// Applies `events` inside the caller's transaction (see the module docs),
/// locking the users that need it plus `also_lock`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    rules: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
    also_lock: &BTreeSet<String>,
    turn: &mut LockTurn,
    hints: &UserHints,
) -> sqlx::Result<Pass> {
    // Each event's session key, built once and reused by every step below.
    let event_keys: Vec<Key> = events.iter().map(key_of).collect();
    let keys: Vec<&Key> = event_keys
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (apps, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(a, s)| (a.as_str(), s.as_str())).unzip();

    // The named sessions and the live sessions of the events' users, read
    // before any lock: who the sessions belong to tells which users the
    // batch may change beyond a touch. Those users' rows are read again once
    // they are locked.
    let event_users: Vec<&str> = events
        .iter()
        .filter_map(|e| e.user_id.as_ref().map(UserId::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The apps' claims are needed if a hook reads them, or to know whether
    // an event's claim changes them; else the read skips them.
    let claims = rules.hooks.reads_attributes() || events.iter().any(|e| e.attributes.is_some());
    let mut state = State {
        slots: HashMap::with_capacity(keys.len() * 2),
        by_user: HashMap::new(),
        overrides: HashMap::new(),
        claims: HashMap::new(),
    };
    state.add(load(&mut *conn, &apps, &ids, &event_users, claims).await?);
    // Every user of the batch, and those to lock: a user whose events can
    // add, end or revoke a session.
    let Involved {
        mut users,
        lock: mut locked,
        unresolved,
    } = involved_users(events, &event_keys, &state, hints, now);
    locked.extend(also_lock.iter().cloned());
    users.extend(locked.iter().cloned());
    turn.wait().await;
    lock_users(&mut *conn, &locked).await?;
    // Only an event of no known user can name, once read again, a user not
    // locked yet (see below). Without one, the next batch of this worker may
    // take its locks now.
    if !unresolved {
        turn.pass();
    }
    reload(
        &mut *conn,
        &mut state,
        &keys,
        (events, &event_keys),
        (&locked, claims),
        true,
    )
    .await?;

    // The rows read again may name a user not locked: a logout without
    // user_id whose session's login committed meanwhile, on another worker.
    // Lock such users now without waiting (so without deadlocks, whatever
    // the order) and read their rows; if one is busy, the batch runs again
    // with it locked in the sorted go. When this can happen, the next batch
    // of this worker takes its locks only after this step (or after the
    // rerun's locks), so it cannot get ahead of this one on such a user.
    let again = involved_users(events, &event_keys, &state, hints, now);
    let extra: BTreeSet<String> = again.lock.difference(&locked).cloned().collect();
    if !extra.is_empty() {
        if !try_lock_users(&mut *conn, &extra).await? {
            return Ok(Pass::NeedsLocks(extra));
        }
        reload(
            &mut *conn,
            &mut state,
            &keys,
            (events, &event_keys),
            (&extra, claims),
            false,
        )
        .await?;
        locked.extend(extra);
    }
    turn.pass();
    users.extend(again.users);
    users.extend(locked.iter().cloned());
    let user_list: Vec<&str> = users.iter().map(String::as_str).collect();

    for (key, slot) in &state.slots {
        if let Some(user) = &slot.record.user_id {
            state
                .by_user
                .entry(user.to_string())
                .or_default()
                .insert(key.clone());
        }
    }
    state.overrides = load_overrides_of(&mut *conn, &user_list).await?;

    // Apply, in arrival order. Events of a user not locked must stay
    // touches; any that would do more sends the batch round again.
    let mut late: BTreeSet<String> = BTreeSet::new();
    let mut outcome = BatchOutcome {
        locked_users: locked.len(),
        ..BatchOutcome::default()
    };
    let mut outbox: Vec<RevokeMessage> = Vec::new();
    let mut log_limits: BTreeMap<String, Option<Option<u32>>> = BTreeMap::new();
    for (event, key) in events.iter().zip(&event_keys) {
        let unlocked = event
            .user_id
            .as_ref()
            .filter(|u| !locked.contains(u.as_str()));
        if let Some(user) = unlocked
            && !is_touch(state.slots.get(key), user.as_str(), now)
        {
            late.insert(user.to_string());
            continue;
        }
        // The record is cloned once, inside apply_event, and moved into
        // its slot after the repeat and the user are read from it.
        let applied = apply_event(
            state.slots.get(key).map(|s| &s.record),
            event,
            now,
            rules.repeat_revoke_after,
        );
        if applied.repeat_revoke {
            let r = &applied.record;
            if let (Some(user_id), Some(reason), Some(revoked_at)) =
                (&r.user_id, r.end_reason, r.ended_at)
            {
                let note = state.slots.get(key).and_then(|s| s.end_note.clone());
                outbox.push(
                    RevokeMessage::new(
                        &r.app,
                        r.session_id.as_str(),
                        user_id.as_str(),
                        reason.into(),
                        revoked_at,
                        r.max_sessions.unwrap_or(rules.hooks.base().max_sessions),
                        true,
                    )
                    .with_note(note),
                );
                outcome.repeated += 1;
            }
        }
        let record_user = applied.record.user_id.clone();
        // A row of a user this pass did not lock may only have its activity
        // moved forward (a logout that did not name its user can land on
        // such a row when the login committed meanwhile): anything more
        // needs the lock.
        if applied.changed
            && let Some(owner) = &record_user
            && !locked.contains(owner.as_str())
        {
            let before = state.slots.get(key).filter(|s| s.origin == Origin::Log);
            if !before.is_some_and(|s| s.record.only_activity_moved(&applied.record)) {
                late.insert(owner.to_string());
                continue;
            }
        }
        if applied.changed {
            match state.slots.get_mut(key) {
                Some(slot) => {
                    slot.record = applied.record;
                    slot.dirty = true;
                }
                None => {
                    state.slots.insert(
                        key.clone(),
                        Slot {
                            record: applied.record,
                            origin: Origin::New,
                            loaded: None,
                            ended_by: None,
                            end_note: None,
                            shadow_flagged: false,
                            dirty: true,
                            flag: false,
                        },
                    );
                }
            }
            state.index(key);
        }
        let user = match &event.user_id {
            Some(u) => u.clone(),
            // A logout's user counts only if this batch locked it (it was
            // known before the lock); one that appeared meanwhile, written
            // by another worker, is that worker's to check.
            None => match record_user {
                Some(u) if locked.contains(u.as_str()) => u,
                _ => continue,
            },
        };
        // Other attributes may change the user's limits: only under the
        // user's lock. A claim merely renewed is written by the touch.
        if state.claim(&user, event) == ClaimChange::Replaced && unlocked.is_some() {
            late.insert(user.to_string());
            continue;
        }
        match event.kind {
            EventKind::Login | EventKind::Request => {
                let (revocations, effective) = check(&state, rules, &user, event, now);
                if unlocked.is_some() {
                    // A touch: nothing to revoke, nothing new in the log to
                    // prune; any revocation needs the user's lock first (in
                    // shadow mode, any session not flagged yet).
                    let act = revocations.iter().any(|(c, _)| {
                        rules.enforce
                            || state
                                .slots
                                .get(&(c.app.to_string(), c.session_id.to_string()))
                                .is_some_and(|s| !s.shadow_flagged)
                    });
                    if act {
                        late.insert(user.to_string());
                    }
                    continue;
                }
                let limit = effective.limits.log_limit;
                log_limits.insert(user.to_string(), Some(limit));
                if rules.enforce {
                    outbox.extend(revoke(&mut state, &user, revocations, now, &mut outcome));
                } else {
                    for (candidate, revocation) in revocations {
                        let key = (candidate.app.to_string(), candidate.session_id.to_string());
                        if let Some(slot) = state.slots.get_mut(&key)
                            && !slot.shadow_flagged
                        {
                            slot.shadow_flagged = true;
                            slot.flag = true;
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
            }
            EventKind::LogoutOthers | EventKind::LogoutAll => {
                let effective = evaluate(&state, rules, &user, &event.app, now);
                log_limits.insert(user.to_string(), Some(effective.limits.log_limit));
                let (keep, reason) = if event.kind == EventKind::LogoutOthers {
                    (Some(&event.session_id), EndReason::LogoutOthers)
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
                    .live(&user, now)
                    .into_iter()
                    .filter(|c| c.app == event.app)
                    .filter(|c| Some(&c.session_id) != keep)
                    .filter(|c| c.login_at <= event.occurred_at || !c.login_seen)
                    .map(|c| (c, revocation.clone()))
                    .collect();
                outbox.extend(revoke(&mut state, &user, victims, now, &mut outcome));
            }
            EventKind::Logout => {
                log_limits.entry(user.to_string()).or_insert(None);
            }
        }
    }
    if !late.is_empty() {
        return Ok(Pass::NeedsLocks(late));
    }

    let touches = write(
        &mut *conn,
        &state,
        &locked,
        rules.last_seen_resolution,
        now,
        (events, &event_keys),
        &mut outcome,
    )
    .await?;
    write_outbox(&mut *conn, &outbox).await?;
    // Retention, for the users the batch locked. Those who only logged out
    // get their limit from the hooks, with the claims of the app of one of
    // their events (read with the users' sessions when a hook reads them).
    let logged_out: Vec<(String, AppName)> = log_limits
        .iter()
        .filter(|(_, limit)| limit.is_none())
        .filter(|(user, _)| {
            let overrides = state
                .overrides
                .get(user.as_str())
                .map_or(&[][..], Vec::as_slice);
            rules.hooks.may_set_log_limit(overrides)
        })
        .filter_map(|(user, _)| {
            events
                .iter()
                .zip(&event_keys)
                .find(|(e, key)| {
                    e.user_id.as_ref().is_some_and(|u| u.as_str() == user)
                        || state
                            .slots
                            .get(*key)
                            .and_then(|s| s.record.user_id.as_ref())
                            .is_some_and(|u| u.as_str() == user)
                })
                .map(|(e, _)| (user.clone(), e.app.clone()))
        })
        .collect();
    let mut keep: Vec<(String, u32)> = Vec::new();
    for (user, limit) in log_limits {
        let limit = match limit {
            Some(limit) => limit,
            None => match logged_out.iter().find(|(u, _)| *u == user) {
                Some((_, app)) => {
                    let user_id = UserId::from_trusted(user.clone());
                    evaluate(&state, rules, &user_id, app, now).limits.log_limit
                }
                None => rules.hooks.base().log_limit,
            },
        };
        if let Some(limit) = limit {
            keep.push((user, limit));
        }
    }
    outcome.pruned += crate::store::prune_logs(&mut *conn, &keep, now).await?;
    // Last, so that nothing this transaction does after it can wait.
    let skipped = touch(&mut *conn, &touches).await?;
    if !skipped.sessions.is_empty() || !skipped.claims_of.is_empty() {
        let mut users: BTreeSet<String> = skipped
            .sessions
            .iter()
            .filter_map(|k| state.slots.get(k))
            .filter_map(|s| s.record.user_id.as_ref().map(|u| u.to_string()))
            .collect();
        users.extend(skipped.claims_of);
        return Ok(Pass::NeedsLocks(users));
    }
    Ok(Pass::Done(outcome))
}

/// The users a batch's events involve, as far as the rows read so far tell.
struct Involved {
    /// Every user of the batch.
    users: BTreeSet<String>,
    /// Those to lock: users whose events can add, end or revoke a session.
    lock: BTreeSet<String>,
    /// Some event has no known user (a logout without `user_id` of a
    /// session stored under no user and named by no batch ahead): a read
    /// after the locks may find one.
    unresolved: bool,
}

/// Who the events involve, and who to lock. A request for a live session
/// of its own user, the common case, only touches its row and needs no
/// lock, unless a batch ahead on this worker may change that user's
/// sessions (see [`UserHints::busy`]) or the request claims attributes
/// other than its app's claim read so far (they may change the limits).
fn involved_users(
    events: &[SessionEvent],
    event_keys: &[Key],
    state: &State,
    hints: &UserHints,
    now: DateTime<Utc>,
) -> Involved {
    let slots = &state.slots;
    let mut involved = Involved {
        users: BTreeSet::new(),
        lock: BTreeSet::new(),
        unresolved: false,
    };
    for (e, key) in events.iter().zip(event_keys) {
        let stored = slots
            .get(key)
            .and_then(|s| s.record.user_id.as_ref())
            .map(UserId::as_str);
        let Some(user) = e
            .user_id
            .as_ref()
            .map(UserId::as_str)
            .or(stored)
            .or_else(|| hints.owners.get(key).map(String::as_str))
        else {
            involved.unresolved = true;
            continue;
        };
        if !involved.users.contains(user) {
            involved.users.insert(user.to_owned());
        }
        let touch = e.kind == EventKind::Request
            && is_touch(slots.get(key), user, now)
            && !hints.busy.contains(user)
            && !replaces_claim(&state.claims, user, e);
        if !touch {
            involved.lock.insert(user.to_owned());
            involved.lock.extend(stored.map(str::to_owned));
        }
    }
    involved
}

/// Reads again, once `users` are locked, their rows: every live one and
/// those of the named sessions (`keys`) stored under them or, with
/// `unowned`, under no user at the first read; and, with `claims`, what the
/// apps claim for them. No row locks: every writer that can end or add a
/// user's session, or change a claim, holds that user's lock, and the rows
/// of users not locked are only touched (a claim only renewed).
async fn reload(
    conn: &mut PgConnection,
    state: &mut State,
    keys: &[&Key],
    (events, event_keys): (&[SessionEvent], &[Key]),
    (users, claims): (&BTreeSet<String>, bool),
    unowned: bool,
) -> sqlx::Result<()> {
    let mut again: BTreeSet<&Key> = keys
        .iter()
        .copied()
        .filter(
            |k| match state.slots.get(*k).and_then(|s| s.record.user_id.as_ref()) {
                Some(u) => users.contains(u.as_str()),
                None => unowned,
            },
        )
        .collect();
    again.extend(
        events
            .iter()
            .zip(event_keys)
            .filter(|(e, _)| {
                e.user_id
                    .as_ref()
                    .is_some_and(|u| users.contains(u.as_str()))
            })
            .map(|(_, k)| k),
    );
    if again.is_empty() && users.is_empty() {
        return Ok(());
    }
    let (apps, ids): (Vec<&str>, Vec<&str>) =
        again.iter().map(|(a, s)| (a.as_str(), s.as_str())).unzip();
    // A row gone meanwhile (pruned) must not be written back from the first
    // read.
    for key in &again {
        state.slots.remove(*key);
    }
    state.slots.retain(|_, s| {
        s.record
            .user_id
            .as_ref()
            .is_none_or(|u| !users.contains(u.as_str()))
    });
    state.claims.retain(|user, _| !users.contains(user));
    let user_list: Vec<&str> = users.iter().map(String::as_str).collect();
    state.add(load(conn, &apps, &ids, &user_list, claims).await?);
    Ok(())
}

/// Whether an event of `user`, not locked, on the session in `slot` can
/// only touch it: a request (checked by the caller's kind test through
/// `apply`'s classification) for a live row of the log that belongs to the
/// same user.
fn is_touch(slot: Option<&Slot>, user: &str, now: DateTime<Utc>) -> bool {
    slot.is_some_and(|s| {
        s.origin == Origin::Log
            && s.record
                .user_id
                .as_ref()
                .is_some_and(|u| u.as_str() == user)
            && s.record.is_active_at(now)
    })
}

/// The hooks' limits for a user in an app, from the batch's state (with
/// what that app claims for the user).
fn evaluate(
    state: &State,
    rules: &Enforcement,
    user: &UserId,
    app: &AppName,
    now: DateTime<Utc>,
) -> EffectiveLimits {
    let sessions = summaries(&state.live(user, now));
    let overrides = state
        .overrides
        .get(user.as_str())
        .map_or(&[][..], Vec::as_slice);
    let none = Attributes::new();
    rules.hooks.evaluate(&HookContext {
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
/// another app's.
fn check(
    state: &State,
    rules: &Enforcement,
    user: &UserId,
    event: &SessionEvent,
    now: DateTime<Utc>,
) -> (Vec<(Candidate, Revocation)>, EffectiveLimits) {
    let app = &event.app;
    let sessions = state.live(user, now);
    let summaries = summaries(&sessions);
    let overrides = state
        .overrides
        .get(user.as_str())
        .map_or(&[][..], Vec::as_slice);
    let none = Attributes::new();
    let evaluate = |a: &AppName| {
        rules.hooks.evaluate(&HookContext {
            app: a,
            user_id: user,
            attributes: state.attributes(user.as_str(), a.as_str()).unwrap_or(&none),
            sessions: &summaries,
            overrides,
        })
    };
    let mut per_app: BTreeMap<AppName, EffectiveLimits> = BTreeMap::new();
    per_app.insert(app.clone(), evaluate(app));
    for c in &sessions {
        if !per_app.contains_key(&c.app) {
            per_app.insert(c.app.clone(), evaluate(&c.app));
        }
    }
    let effective = per_app[app].clone();

    // Idle sessions count as expired, judged at event time, never the
    // session of this event.
    let mut revocations: Vec<(Candidate, Revocation)> = Vec::new();
    for (a, limits) in &per_app {
        let except = Some(&event.session_id).filter(|_| a == app);
        for idle in idle_sessions(
            &sessions,
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
    let live: Vec<Candidate> = sessions
        .iter()
        .filter(|c| !revocations.iter().any(|(idle, _)| idle == *c))
        .cloned()
        .collect();
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
    for victim in select_victims(&live, &caps) {
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
        revocations.push((
            victim.session,
            Revocation {
                reason,
                ended_by,
                note: None,
                max_sessions,
            },
        ));
    }
    (revocations, effective)
}

/// Ends sessions in memory and returns their revoke messages.
fn revoke(
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
        if slot.record.end_reason.is_some() {
            continue;
        }
        slot.record.ended_at = Some(now);
        slot.record.end_reason = Some(r.reason);
        slot.record.max_sessions = Some(r.max_sessions);
        slot.record.last_revoke_at = Some(now);
        slot.ended_by = Some(r.ended_by);
        slot.end_note = r.note.clone();
        slot.dirty = true;
        *outcome.revoked_by.entry(r.reason.as_str()).or_default() += 1;
        messages.push(
            RevokeMessage::new(
                &candidate.app,
                candidate.session_id.as_str(),
                user.as_str(),
                r.reason.into(),
                now,
                r.max_sessions,
                false,
            )
            .with_note(r.note),
        );
    }
    messages
}

/// Writes back every changed session: one upsert for the rows of locked
/// users and new rows, one update for tombstones and one for shadow flags.
/// Returns the rows of users not locked, for [`touch`] to write last. A row
/// whose only change is a `last_seen_at` moved by less than `resolution`
/// is not written at all (its next event that moves it further is).
async fn write(
    conn: &mut PgConnection,
    state: &State,
    locked: &BTreeSet<String>,
    resolution: Duration,
    now: DateTime<Utc>,
    (events, event_keys): (&[SessionEvent], &[Key]),
    outcome: &mut BatchOutcome,
) -> sqlx::Result<Touches> {
    // Sorted, so that concurrent batches lock rows in the same order.
    let mut dirty: Vec<(&Key, &Slot)> = Vec::new();
    for (key, slot) in &state.slots {
        if !slot.dirty {
            continue;
        }
        // Ended rows are always written: their last_seen_at decides whether
        // a later request repeats the revoke.
        let within = slot.loaded.as_ref().is_some_and(|loaded| {
            !slot.flag
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
    let mut rows = Vec::new();
    let mut touches = Vec::new();
    let mut tombstones = Vec::new();
    for (key, slot) in dirty {
        let user_locked = slot
            .record
            .user_id
            .as_ref()
            .is_none_or(|u| locked.contains(u.as_str()));
        match (slot.origin, &slot.loaded) {
            (Origin::Tombstone, _) => tombstones.push(slot),
            (Origin::Log, Some(loaded)) if !user_locked => touches.push((key, slot, loaded)),
            _ => rows.push(slot),
        }
    }
    outcome.touched += touches.len();
    let mut t = Touches::default();
    if !touches.is_empty() {
        let mut by_key: HashMap<&Key, Vec<&SessionEvent>> = HashMap::new();
        for (e, key) in events.iter().zip(event_keys) {
            by_key.entry(key).or_default().push(e);
        }
        for (key, slot, loaded) in &touches {
            let events = by_key.get(*key).map_or(&[][..], Vec::as_slice);
            t.push(key, &slot.record, loaded, events);
        }
    }

    // Claims: locked users' changes are upserted here; a claim of a user
    // not locked can only have been renewed (a replacement needs the lock),
    // and goes with the touches.
    let mut claimed: Vec<(&str, &str, &Claim)> = Vec::new();
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
                claimed.push((user, app, claim));
            } else {
                t.claim_user.push(user.clone());
                t.claim_app.push(app.clone());
                t.claim_attributes
                    .push(serde_json::Value::Object(claim.attributes.clone()));
                t.claim_at.push(claim.occurred_at);
            }
        }
    }
    if !claimed.is_empty() {
        // Sorted, so that concurrent batches lock rows in the same order.
        claimed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut users = Vec::with_capacity(claimed.len());
        let mut apps = Vec::with_capacity(claimed.len());
        let mut attributes = Vec::with_capacity(claimed.len());
        let mut times = Vec::with_capacity(claimed.len());
        for (user, app, claim) in claimed {
            users.push(user);
            apps.push(app);
            attributes.push(serde_json::Value::Object(claim.attributes.clone()));
            times.push(claim.occurred_at);
        }
        // The user's lock keeps out every other writer but touches renewing
        // a claim, which never run while the lock is held (see `touch`);
        // still, a claim only ever moves forward in event time.
        sqlx::query(
            "INSERT INTO user_attributes AS u (user_id, app, attributes, occurred_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
             ON CONFLICT (user_id, app) DO UPDATE
             SET attributes = EXCLUDED.attributes, occurred_at = EXCLUDED.occurred_at
             WHERE u.occurred_at <= EXCLUDED.occurred_at",
        )
        .bind(&users)
        .bind(&apps)
        .bind(&attributes)
        .bind(&times)
        .execute(&mut *conn)
        .await?;
    }

    if !rows.is_empty() {
        let mut c = Columns::default();
        for slot in &rows {
            c.push(slot);
        }
        sqlx::query(
            "INSERT INTO sessions AS s (app, session_id, user_id, login_at, login_seen,
                 last_seen_at, ip, user_agent, expires_at, ended_at, end_reason, max_sessions,
                 last_revoke_at, attributes, ended_by, end_note)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                 $5::bool[], $6::timestamptz[], $7::inet[], $8::text[], $9::timestamptz[],
                 $10::timestamptz[], $11::text[], $12::int4[], $13::timestamptz[],
                 $14::jsonb[], $15::text[], $16::text[])
             ON CONFLICT (app, session_id) DO UPDATE SET
                 user_id = coalesce(s.user_id, EXCLUDED.user_id),
                 -- The activity columns may have moved since this batch read
                 -- the row (a touch by a batch that did not lock the user):
                 -- they only move forward, as in the touch update.
                 login_at = CASE
                     WHEN EXCLUDED.login_seen = s.login_seen
                         THEN least(s.login_at, EXCLUDED.login_at)
                     WHEN EXCLUDED.login_seen THEN EXCLUDED.login_at
                     ELSE s.login_at END,
                 login_seen = s.login_seen OR EXCLUDED.login_seen,
                 last_seen_at = greatest(s.last_seen_at, EXCLUDED.last_seen_at),
                 ip = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
                      THEN EXCLUDED.ip ELSE s.ip END,
                 user_agent = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
                      THEN EXCLUDED.user_agent ELSE s.user_agent END,
                 expires_at = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
                      THEN EXCLUDED.expires_at ELSE s.expires_at END,
                 -- An end written by someone else meanwhile (a logout that did
                 -- not know its user, so took no user lock) is never undone.
                 ended_at = coalesce(s.ended_at, EXCLUDED.ended_at),
                 end_reason = coalesce(s.end_reason, EXCLUDED.end_reason),
                 max_sessions = coalesce(s.max_sessions, EXCLUDED.max_sessions),
                 last_revoke_at = EXCLUDED.last_revoke_at,
                 attributes = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
                      THEN EXCLUDED.attributes ELSE s.attributes END,
                 ended_by = coalesce(s.ended_by, EXCLUDED.ended_by),
                 end_note = coalesce(s.end_note, EXCLUDED.end_note)",
        )
        .bind(&c.app)
        .bind(&c.session_id)
        .bind(&c.user_id)
        .bind(&c.login_at)
        .bind(&c.login_seen)
        .bind(&c.last_seen_at)
        .bind(&c.ip)
        .bind(&c.user_agent)
        .bind(&c.expires_at)
        .bind(&c.ended_at)
        .bind(&c.end_reason)
        .bind(&c.max_sessions)
        .bind(&c.last_revoke_at)
        .bind(&c.attributes)
        .bind(&c.ended_by)
        .bind(&c.end_note)
        .execute(&mut *conn)
        .await?;
    }
    if !tombstones.is_empty() {
        let mut c = Columns::default();
        for slot in &tombstones {
            c.push(slot);
        }
        sqlx::query(
            "UPDATE session_tombstones t
             SET user_id = coalesce(t.user_id, v.user_id), last_seen_at = v.last_seen_at,
                 last_revoke_at = v.last_revoke_at, login_at = v.login_at
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[], $6::timestamptz[])
                  AS v(app, session_id, user_id, last_seen_at, last_revoke_at, login_at)
             WHERE t.app = v.app AND t.session_id = v.session_id",
        )
        .bind(&c.app)
        .bind(&c.session_id)
        .bind(&c.user_id)
        .bind(&c.last_seen_at)
        .bind(&c.last_revoke_at)
        .bind(&c.login_at)
        .execute(&mut *conn)
        .await?;
    }
    let flags: Vec<&Key> = state
        .slots
        .iter()
        .filter(|(_, s)| s.flag)
        .map(|(k, _)| k)
        .collect();
    if !flags.is_empty() {
        let (apps, ids): (Vec<&str>, Vec<&str>) =
            flags.iter().map(|(a, s)| (a.as_str(), s.as_str())).unzip();
        sqlx::query(
            "UPDATE sessions s SET shadow_flagged_at = $3
             FROM unnest($1::text[], $2::text[]) AS v(app, session_id)
             WHERE s.app = v.app AND s.session_id = v.session_id",
        )
        .bind(&apps)
        .bind(&ids)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(t)
}

/// Writes the rows of users not locked, and the claims they renewed, as the
/// batch's last statement, and returns what it could not write.
///
/// Another batch may write the same rows at the same time (these users are
/// not locked), so every column moves one way only: the newest event wins,
/// whatever the commit order; columns the batch did not change are sent as
/// NULL and kept. Rows another transaction holds are skipped, never waited
/// for (SKIP LOCKED): a touch therefore never waits, so no deadlock can pass
/// through one, and a transaction waiting for a touched row waits only for
/// a commit that is already under way. The caller runs the batch again
/// with the skipped rows' users locked, which writes them with the upsert.
///
/// A renewed claim moves its `occurred_at` forward only while nobody holds
/// the user's lock (a share lock on the user's `session_users` row, taken
/// without waiting), and only if the claim is still the one the batch read:
/// a batch holding the lock reads the claims after taking it, so it never
/// decides on a claim that a touch renews under it. Otherwise the caller
/// runs the batch again with the user locked.
async fn touch(conn: &mut PgConnection, t: &Touches) -> sqlx::Result<Skipped> {
    if t.app.is_empty() && t.claim_user.is_empty() {
        return Ok(Skipped::default());
    }
    let written: Vec<(String, String, bool)> = sqlx::query_as(
        "WITH v AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::inet[],
                                  $5::timestamptz[], $6::text[], $7::timestamptz[],
                                  $8::timestamptz[], $9::timestamptz[], $10::jsonb[],
                                  $11::timestamptz[], $12::timestamptz[])
                 AS v(app, session_id, last_seen_at, ip, ip_at, user_agent, user_agent_at,
                      expires_at, expires_at_at, attributes, attributes_at, login_at)
         ), mine AS (
             -- LATERAL: one index probe per key, whatever the planner
             -- believes of the table's size (a hash join over a seq scan of
             -- a log that grew since the last ANALYZE is ruinous here).
             SELECT l.app, l.session_id FROM v
             CROSS JOIN LATERAL (
                 SELECT s.app, s.session_id FROM sessions s
                 WHERE s.app = v.app AND s.session_id = v.session_id
                 FOR UPDATE SKIP LOCKED
             ) l
         ), touched AS (
             UPDATE sessions s SET
                 last_seen_at = greatest(s.last_seen_at, v.last_seen_at),
                 ip = CASE WHEN v.ip_at > s.last_seen_at THEN v.ip ELSE s.ip END,
                 user_agent = CASE WHEN v.user_agent_at > s.last_seen_at
                      THEN v.user_agent ELSE s.user_agent END,
                 expires_at = CASE WHEN v.expires_at_at > s.last_seen_at
                      THEN v.expires_at ELSE s.expires_at END,
                 attributes = CASE WHEN v.attributes_at > s.last_seen_at
                      THEN v.attributes ELSE s.attributes END,
                 login_at = CASE WHEN NOT s.login_seen AND v.login_at < s.login_at
                      THEN v.login_at ELSE s.login_at END
             FROM v JOIN mine m ON m.app = v.app AND m.session_id = v.session_id
             WHERE s.app = v.app AND s.session_id = v.session_id
               AND (v.last_seen_at > s.last_seen_at
                    OR (NOT s.login_seen AND v.login_at < s.login_at))
             RETURNING 1
         ), c AS (
             SELECT * FROM unnest($13::text[], $14::text[], $15::jsonb[], $16::timestamptz[])
                 AS c(user_id, app, attributes, occurred_at)
         ), held AS (
             -- Claims still as read, or renewed further meanwhile; those of
             -- a user whose lock someone holds, or being written, are left.
             SELECT l.user_id, l.app FROM c
             CROSS JOIN LATERAL (
                 SELECT FROM session_users su WHERE su.user_id = c.user_id
                 FOR SHARE SKIP LOCKED
             ) free
             CROSS JOIN LATERAL (
                 SELECT u.user_id, u.app FROM user_attributes u
                 WHERE u.user_id = c.user_id AND u.app = c.app
                   AND (u.attributes = c.attributes OR u.occurred_at >= c.occurred_at)
                 FOR UPDATE SKIP LOCKED
             ) l
         ), renewed AS (
             UPDATE user_attributes u SET occurred_at = c.occurred_at
             FROM c JOIN held h ON h.user_id = c.user_id AND h.app = c.app
             WHERE u.user_id = c.user_id AND u.app = c.app
               AND u.attributes = c.attributes AND u.occurred_at < c.occurred_at
             RETURNING 1
         )
         SELECT app, session_id, false FROM mine
         UNION ALL
         SELECT app, user_id, true FROM held",
    )
    .bind(&t.app)
    .bind(&t.session_id)
    .bind(&t.last_seen_at)
    .bind(&t.ip)
    .bind(&t.ip_at)
    .bind(&t.user_agent)
    .bind(&t.user_agent_at)
    .bind(&t.expires_at)
    .bind(&t.expires_at_at)
    .bind(&t.attributes)
    .bind(&t.attributes_at)
    .bind(&t.login_at)
    .bind(&t.claim_user)
    .bind(&t.claim_app)
    .bind(&t.claim_attributes)
    .bind(&t.claim_at)
    .fetch_all(conn)
    .await?;
    // Session keys, and claims as (app, user_id).
    let mut sessions: BTreeSet<(String, String)> = BTreeSet::new();
    let mut claims: BTreeSet<(String, String)> = BTreeSet::new();
    for (app, id, claim) in written {
        if claim {
            claims.insert((app, id));
        } else {
            sessions.insert((app, id));
        }
    }
    Ok(Skipped {
        sessions: t
            .app
            .iter()
            .zip(&t.session_id)
            .map(|(a, s)| (a.clone(), s.clone()))
            .filter(|k| !sessions.contains(k))
            .collect(),
        claims_of: t
            .claim_app
            .iter()
            .zip(&t.claim_user)
            .map(|(a, u)| (a.clone(), u.clone()))
            .filter(|k| !claims.contains(k))
            .map(|(_, u)| u)
            .collect(),
    })
}

/// What [`touch`] could not write: the caller runs the batch again with
/// the users of these locked.
#[derive(Default)]
struct Skipped {
    /// Session rows another transaction held.
    sessions: Vec<Key>,
    /// Users whose renewed claims were not written.
    claims_of: Vec<String>,
}

/// Column arrays for the touch update. Each activity column comes with the
/// event time that set it in this batch (NULL: the batch did not set it),
/// so a value older than what another batch committed meanwhile is kept out.
#[derive(Default)]
struct Touches {
    app: Vec<String>,
    session_id: Vec<String>,
    last_seen_at: Vec<DateTime<Utc>>,
    ip: Vec<Option<IpAddr>>,
    ip_at: Vec<Option<DateTime<Utc>>>,
    user_agent: Vec<Option<String>>,
    user_agent_at: Vec<Option<DateTime<Utc>>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    expires_at_at: Vec<Option<DateTime<Utc>>>,
    attributes: Vec<Option<serde_json::Value>>,
    attributes_at: Vec<Option<DateTime<Utc>>>,
    login_at: Vec<DateTime<Utc>>,
    /// Users of renewed claims (same index as the three below).
    claim_user: Vec<String>,
    /// Apps of renewed claims.
    claim_app: Vec<String>,
    /// The claimed attributes, as read and claimed again.
    claim_attributes: Vec<serde_json::Value>,
    /// Event time of each renewal.
    claim_at: Vec<DateTime<Utc>>,
}

impl Touches {
    /// One row: replays the batch's events on it (in arrival order, as
    /// `apply_event` does) to learn when each column was set.
    fn push(
        &mut self,
        key: &Key,
        r: &SessionRecord,
        loaded: &SessionRecord,
        events: &[&SessionEvent],
    ) {
        // The last event (that moved last_seen_at) to set each column;
        // borrowed while replaying, copied once below.
        let mut seen = loaded.last_seen_at;
        let (mut ip, mut user_agent, mut expires_at, mut attributes) = (None, None, None, None);
        for &e in events {
            if e.occurred_at <= seen {
                continue;
            }
            seen = e.occurred_at;
            if e.ip.is_some() {
                ip = Some(e);
            }
            if e.user_agent.is_some() {
                user_agent = Some(e);
            }
            if e.expires_at.is_some() {
                expires_at = Some(e);
            }
            if e.attributes.as_ref().is_some_and(|a| !a.is_empty()) {
                attributes = Some(e);
            }
        }
        self.app.push(key.0.clone());
        self.session_id.push(key.1.clone());
        self.last_seen_at.push(r.last_seen_at);
        push_set(&mut self.ip, &mut self.ip_at, ip, |e| e.ip);
        push_set(
            &mut self.user_agent,
            &mut self.user_agent_at,
            user_agent,
            |e| e.user_agent.clone(),
        );
        push_set(
            &mut self.expires_at,
            &mut self.expires_at_at,
            expires_at,
            |e| e.expires_at,
        );
        push_set(
            &mut self.attributes,
            &mut self.attributes_at,
            attributes,
            |e| e.attributes.clone().map(serde_json::Value::Object),
        );
        self.login_at.push(r.login_at);
    }
}

/// Pushes one column of a touch: the value `by` set and when (its event
/// time), or NULL and NULL if no event of the batch set it.
fn push_set<T>(
    values: &mut Vec<Option<T>>,
    times: &mut Vec<Option<DateTime<Utc>>>,
    by: Option<&SessionEvent>,
    value: impl FnOnce(&SessionEvent) -> Option<T>,
) {
    values.push(by.and_then(value));
    times.push(by.map(|e| e.occurred_at));
}

/// Column arrays for the UNNEST statements.
#[derive(Default)]
struct Columns {
    app: Vec<String>,
    session_id: Vec<String>,
    user_id: Vec<Option<String>>,
    login_at: Vec<DateTime<Utc>>,
    login_seen: Vec<bool>,
    last_seen_at: Vec<DateTime<Utc>>,
    ip: Vec<Option<IpAddr>>,
    user_agent: Vec<Option<String>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
    end_reason: Vec<Option<String>>,
    max_sessions: Vec<Option<i32>>,
    last_revoke_at: Vec<Option<DateTime<Utc>>>,
    attributes: Vec<Option<serde_json::Value>>,
    ended_by: Vec<Option<String>>,
    end_note: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, slot: &Slot) {
        let r = &slot.record;
        self.app.push(r.app.to_string());
        self.session_id.push(r.session_id.to_string());
        self.user_id
            .push(r.user_id.as_ref().map(ToString::to_string));
        self.login_at.push(r.login_at);
        self.login_seen.push(r.login_seen);
        self.last_seen_at.push(r.last_seen_at);
        self.ip.push(r.ip);
        self.user_agent.push(r.user_agent.clone());
        self.expires_at.push(r.expires_at);
        self.ended_at.push(r.ended_at);
        self.end_reason
            .push(r.end_reason.map(|e| e.as_str().to_owned()));
        self.max_sessions
            .push(r.max_sessions.map(|n| n.min(i32::MAX as u32) as i32));
        self.last_revoke_at.push(r.last_revoke_at);
        self.attributes.push(r.attributes.clone());
        self.ended_by.push(slot.ended_by.clone());
        self.end_note.push(slot.end_note.clone());
    }
}
