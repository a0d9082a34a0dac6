//! Reading a batch's state: the sessions its events name, the live
//! sessions and claims of its users, read once before any lock and again,
//! for the users locked, after (with, for notices, where the sessions of
//! the users the batch may add a session for came from lately).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::known::{Fact, KnownFacts, scope_app};
use crate::db::sessions::{self, HistoryRead, LoadedRow, SessionRow};
use crate::domain::claims::{Claim, ClaimChange};
use crate::domain::decision::Candidate;
use crate::domain::event::{SessionEvent, UserId};
use crate::domain::limits::UserOverride;
use crate::domain::notice::{Network, Scope};
use crate::domain::session::SessionRecord;

/// A session's key: (app, session_id).
pub(super) type Key = (String, String);

/// The session key an event names; `None` for an `attributes` event, which
/// is about its user and names no session.
pub(super) type EventKey = Option<Key>;

/// The session key an event names (see [`EventKey`]).
pub(super) fn key_of(event: &SessionEvent) -> EventKey {
    let session = event.session_id.as_ref()?;
    Some((event.app.to_string(), session.to_string()))
}

/// Where a session's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A row of `sessions`.
    Log,
    /// A row of `session_tombstones` (pruned from the log).
    Tombstone,
    /// Not stored yet: created by this batch.
    New,
}

/// One session, in memory for the batch.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// The session now, as the batch's events and revocations left it.
    pub record: SessionRecord,
    /// Where it is stored.
    pub origin: Origin,
    /// The record as read from the log, to tell what the batch changed.
    pub loaded: Option<SessionRecord>,
    /// The rule, hook or operator that ended it (`sessions.ended_by`).
    pub ended_by: Option<String>,
    /// An operator's explanation of its end (`sessions.end_note`).
    pub end_note: Option<String>,
    /// Shadow mode flagged it, in this batch or before.
    pub shadow_flagged: bool,
    /// Must be written back.
    pub dirty: bool,
    /// Flagged by shadow mode in this batch: its flag must be written.
    pub newly_flagged: bool,
}

/// Where some of a user's sessions in the log came from (one app, user
/// agent and network), and when one of them was last active: what a new
/// session is compared with for notices.
#[derive(Debug, Clone)]
pub(super) struct Earlier {
    pub app: String,
    pub user_agent: Option<String>,
    /// The first address of the network (see `sessions::load_for_batch`).
    pub ip: Option<std::net::IpAddr>,
    pub last_seen_at: DateTime<Utc>,
}

/// Attributes as JSON objects.
pub(super) type Attributes = serde_json::Map<String, serde_json::Value>;

/// What one app claims for one user, in memory for the batch.
#[derive(Debug, Clone, Default)]
pub(super) struct ClaimSlot {
    /// The claim now (`None`: the app never claimed anything for the user).
    pub claim: Option<Claim>,
    /// As read from `user_attributes`, to tell what the batch changed.
    pub loaded: Option<Claim>,
}

/// Claims by user, then app.
pub(super) type Claims = HashMap<String, BTreeMap<String, ClaimSlot>>;

/// The batch's view of the database.
#[derive(Default)]
pub(super) struct State {
    /// Every session read or created, by key.
    pub slots: HashMap<Key, Slot>,
    /// Keys of each user's sessions (live ones, and those the events named).
    pub by_user: HashMap<String, BTreeSet<Key>>,
    /// The limits operators set for the batch's users.
    pub overrides: HashMap<String, Vec<UserOverride>>,
    /// What the apps claim for the batch's users (read only when needed).
    pub claims: Claims,
    /// Locked users whose lock row this pass created: they had no sessions
    /// written under a lock, so they are not read again after it, and their
    /// new rows go in only if their keys are still free (see
    /// `db::locks::lock_users`).
    pub created: BTreeSet<String>,
    /// Where the sessions of the users in `history_read` came from lately,
    /// by user (read after the locks, only with notices on).
    pub history: HashMap<String, Vec<Earlier>>,
    /// Users whose history was read: a new session of any other user
    /// (except those in `created`, who had none) gets no notice.
    pub history_read: BTreeSet<String>,
}

impl State {
    /// An empty state with room for about `sessions` sessions.
    pub(super) fn with_capacity(sessions: usize) -> State {
        State {
            slots: HashMap::with_capacity(sessions),
            ..State::default()
        }
    }

    /// Files the session `key` under its user, if it has one.
    pub(super) fn index(&mut self, key: &Key) {
        if let Some(user) = self.slots.get(key).and_then(|s| s.record.user_id.clone()) {
            self.by_user
                .entry(user.into_inner())
                .or_default()
                .insert(key.clone());
        }
    }

    /// The user's sessions that count at `now`: not ended, not expired.
    pub(super) fn live(&self, user: &UserId, now: DateTime<Utc>) -> Vec<Candidate> {
        let Some(keys) = self.by_user.get(user.as_str()) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| self.slots.get(k))
            .filter(|s| s.origin != Origin::Tombstone)
            .filter(|s| s.record.user_id.as_ref() == Some(user) && s.record.is_active_at(now))
            .map(|s| Candidate::from(&s.record))
            .collect()
    }

    /// What `app` claims for `user` now: the attributes its hooks see.
    pub(super) fn attributes(&self, user: &str, app: &str) -> Option<&Attributes> {
        self.claims
            .get(user)
            .and_then(|apps| apps.get(app))
            .and_then(|slot| slot.claim.as_ref())
            .map(|c| &c.attributes)
    }

    /// Applies the claim of `event` (if it carries attributes) to what its
    /// app claims for `user`.
    pub(super) fn claim(&mut self, user: &UserId, event: &SessionEvent) -> ClaimChange {
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
pub(super) fn replaces_claim(claims: &Claims, user: &str, event: &SessionEvent) -> bool {
    let current = claims
        .get(user)
        .and_then(|apps| apps.get(event.app.as_str()))
        .and_then(|slot| slot.claim.as_ref());
    Claim::change_of(current, event.attributes.as_ref(), event.occurred_at) == ClaimChange::Replaced
}

impl State {
    /// Files every session under its user (once the reads are done).
    pub(super) fn index_all(&mut self) {
        for (key, slot) in &self.slots {
            if let Some(user) = &slot.record.user_id {
                self.by_user
                    .entry(user.to_string())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// The overrides operators set for `user` (none if they set none).
    pub(super) fn overrides_of(&self, user: &str) -> &[UserOverride] {
        self.overrides.get(user).map_or(&[][..], Vec::as_slice)
    }

    /// Adds what [`load`] read.
    fn add(&mut self, loaded: Loaded) {
        for (key, slot) in loaded.slots {
            self.slots.insert(key, slot);
        }
        for (user, earlier) in loaded.history {
            self.history.entry(user).or_default().push(earlier);
        }
        self.history_read.extend(loaded.history_read);
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

/// A session as read, in the batch's memory.
fn slot_of(mut row: SessionRow, origin: Origin) -> (Key, Slot) {
    let key = (row.app.clone(), row.session_id.clone());
    let ended_by = row.ended_by.take();
    let end_note = row.end_note.take();
    let shadow_flagged = row.shadow_flagged;
    let record = row.into_record();
    let slot = Slot {
        loaded: (origin == Origin::Log).then(|| record.clone()),
        record,
        origin,
        ended_by,
        end_note,
        shadow_flagged,
        dirty: false,
        newly_flagged: false,
    };
    (key, slot)
}

/// What [`load`] read.
struct Loaded {
    /// Sessions, by key.
    slots: Vec<(Key, Slot)>,
    /// Claims: (user_id, app, claim).
    claims: Vec<(String, String, Claim)>,
    /// History: (user_id, where their sessions came from).
    history: Vec<(String, Earlier)>,
    /// Users whose history was read (some with none).
    history_read: BTreeSet<String>,
}

/// Reads into `state` the sessions named by `(apps, ids)`, every live
/// session of `users` and, with `claims`, what the apps claim for `users`
/// and, with `history`, where those users' sessions came from lately (see
/// [`sessions::load_for_batch`]).
pub(super) async fn load(
    conn: &mut PgConnection,
    state: &mut State,
    (apps, ids): (&[&str], &[&str]),
    users: &[&str],
    claims: bool,
    history: Option<HistoryRead<'_>>,
) -> sqlx::Result<()> {
    let rows = sessions::load_for_batch(conn, apps, ids, users, claims, history).await?;
    state.add(collect(rows));
    Ok(())
}

/// Sorts the rows read into sessions and claims.
fn collect(rows: Vec<LoadedRow>) -> Loaded {
    let mut slots: HashMap<Key, Slot> = HashMap::with_capacity(rows.len());
    let mut claimed: Vec<(String, String, Claim)> = Vec::new();
    let mut history: Vec<(String, Earlier)> = Vec::new();
    let mut history_read: BTreeSet<String> = BTreeSet::new();
    for LoadedRow {
        row,
        tombstone,
        claim,
        history: earlier,
    } in rows
    {
        if earlier {
            if let Some(user) = row.user_id {
                if !history_read.contains(&user) {
                    history_read.insert(user.clone());
                }
                // An empty app: the user's history was read, and is empty.
                if row.app.is_empty() {
                    continue;
                }
                let earlier = Earlier {
                    app: row.app,
                    user_agent: row.user_agent,
                    ip: row.ip,
                    last_seen_at: row.last_seen_at,
                };
                history.push((user, earlier));
            }
            continue;
        }
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
        let (key, slot) = slot_of(row, origin);
        // A key both in the log and among tombstones should not exist; if
        // it does, the log row wins.
        if origin == Origin::Log || !slots.contains_key(&key) {
            slots.insert(key, slot);
        }
    }
    Loaded {
        slots: slots.into_iter().collect(),
        claims: claimed,
        history,
        history_read,
    }
}

/// Reads again, once `users` are locked, their rows: every live one and
/// those of the named sessions (`keys`) stored under them or, with
/// `unowned`, under no user or not at all at the first read; and, with
/// `claims`, what the apps claim for them. No row locks: every writer that
/// can end or add a user's session, or change a claim, holds that user's
/// lock, and the rows of users not locked are only touched (a claim only
/// renewed).
///
/// A session not found at the first read and named only by events of
/// users in [`State::created`] is not read again either: the batch inserts
/// it only if its key is still free (see `write`).
///
/// With `history` (notices on), the same statement reads where the
/// sessions came from of the users among `users` whose events name a
/// session the first read did not find (those the batch may add a session
/// for), unless it proves that none of those sessions can be news (see
/// [`sessions::load_for_batch`]).
pub(super) async fn reload(
    conn: &mut PgConnection,
    state: &mut State,
    keys: &[&Key],
    (events, event_keys): (&[SessionEvent], &[EventKey]),
    (users, claims): (&BTreeSet<String>, bool),
    (unowned, history): (bool, Option<HistoryWindow<'_>>),
) -> sqlx::Result<()> {
    let created = &state.created;
    // Keys an event of a user not created names (or an event of no user);
    // `None` when no user was created: every event then.
    let named_otherwise: Option<BTreeSet<&Key>> = (!created.is_empty()).then(|| {
        events
            .iter()
            .zip(event_keys)
            .filter(|(e, _)| {
                e.user_id
                    .as_ref()
                    .is_none_or(|u| !created.contains(u.as_str()))
            })
            .filter_map(|(_, k)| k.as_ref())
            .collect()
    });
    let mut reread: BTreeSet<&Key> = keys
        .iter()
        .copied()
        .filter(|k| match state.slots.get(*k) {
            Some(slot) => match slot.record.user_id.as_ref() {
                Some(u) => users.contains(u.as_str()),
                None => unowned,
            },
            None => unowned && named_otherwise.as_ref().is_none_or(|n| n.contains(*k)),
        })
        .collect();
    reread.extend(
        events
            .iter()
            .zip(event_keys)
            .filter(|(e, _)| {
                e.user_id
                    .as_ref()
                    .is_some_and(|u| users.contains(u.as_str()))
            })
            .filter_map(|(_, k)| k.as_ref()),
    );
    if reread.is_empty() && users.is_empty() {
        return Ok(());
    }
    let sign_ins =
        history.map(|window| sign_ins(window, &state.slots, (events, event_keys), users));
    let history = history
        .zip(sign_ins.as_ref())
        .filter(|(_, s)| !s.users.is_empty())
        .map(|(window, s)| HistoryRead {
            users: &s.users,
            apps: &s.apps,
            user_agents: &s.user_agents,
            ips: &s.ips,
            since: window.since,
            known_since: window.known_since,
            per_app: window.scope == Scope::PerApp,
        });
    let (apps, ids): (Vec<&str>, Vec<&str>) =
        reread.iter().map(|(a, s)| (a.as_str(), s.as_str())).unzip();
    // A row gone meanwhile (pruned) must not be written back from the first
    // read.
    for key in &reread {
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
    load(conn, state, (&apps, &ids), &user_list, claims, history).await
}

/// How the history of the users a batch may add a session for is read, for
/// notices.
#[derive(Debug, Clone, Copy)]
pub(super) struct HistoryWindow<'a> {
    /// The lookback before the batch's earliest event: sessions last active
    /// before this count for none of its sign-ins.
    pub since: DateTime<Utc>,
    /// The lookback before the batch's latest event: a session last active
    /// since this counts for every one of its sign-ins.
    pub known_since: DateTime<Utc>,
    /// Which sessions count: of every app, or the sign-in's only.
    pub scope: Scope,
    /// `new_device` notices are published: user agents must be compared.
    pub devices: bool,
    /// `new_network` notices are published: networks must be compared.
    pub networks: bool,
    /// What the worker's batches added lately (proven no news without a
    /// look), and for how long after a session's login it counts.
    pub known: (&'a Mutex<KnownFacts>, chrono::Duration),
}

/// What [`HistoryRead`] names, as parallel columns borrowed from the
/// batch's events (see [`sign_ins`]).
#[derive(Debug, Default, PartialEq)]
struct SignIns<'e> {
    /// Each fact's user.
    users: Vec<&'e str>,
    /// The app of the session it is of.
    apps: Vec<&'e str>,
    /// The fact, a user agent (and `None` in `ips`)...
    user_agents: Vec<Option<&'e str>>,
    /// ... or a network's first address (and `None` in `user_agents`).
    ips: Vec<Option<std::net::IpAddr>>,
}

/// What must be proven known of the sign-ins the batch may add for
/// `users` (the sessions their events name that are not in `slots`): each
/// distinct (user, app, user agent) and each distinct (user, app, network,
/// as its first address), one fact to a row, so that a user who signs in
/// several times in the batch has each device and each network looked up
/// once. A session's user agent and address are those of its latest event
/// that has one, whoever sent it (a logout need not name its user), so the
/// facts of every event naming such a session count, for each user its
/// events name. What the window does not compare is left out, and so is
/// what the worker's batches added lately (`known::KnownFacts`, as of the
/// batch's latest event, the time `known_since` is reckoned from).
fn sign_ins<'e>(
    window: HistoryWindow<'_>,
    slots: &HashMap<Key, Slot>,
    (events, event_keys): (&'e [SessionEvent], &'e [EventKey]),
    users: &BTreeSet<String>,
) -> SignIns<'e> {
    // The sessions the batch may add for `users`, and whose they are.
    let mut owners: HashMap<&'e Key, BTreeSet<&'e str>> = HashMap::new();
    for (event, key) in events.iter().zip(event_keys) {
        let (Some(user), Some(key)) = (&event.user_id, key) else {
            continue;
        };
        if !slots.contains_key(key) && users.contains(user.as_str()) {
            owners.entry(key).or_default().insert(user.as_str());
        }
    }
    let mut out = SignIns::default();
    let Some(latest) = events.iter().map(|e| e.occurred_at).max() else {
        return out;
    };
    let mut seen = BTreeSet::new();
    let (known, known_for) = window.known;
    // A poisoned lock only means a batch panicked while learning: the
    // facts are whole entries still.
    let known = known.lock().unwrap_or_else(PoisonError::into_inner);
    for (event, key) in events.iter().zip(event_keys) {
        let Some(owners) = key.as_ref().and_then(|k| owners.get(k)) else {
            continue;
        };
        let app = event.app.as_str();
        let user_agent = event.user_agent.as_deref().filter(|_| window.devices);
        let network = (event.ip)
            .filter(|_| window.networks)
            .map(|ip| Network::of(ip).first_address());
        for &user in owners {
            let facts = [(user_agent, None), (None, network)];
            for (user_agent, ip) in facts {
                let fact = match (user_agent, ip) {
                    (Some(ua), _) => Fact::UserAgent(ua.to_owned()),
                    (_, Some(ip)) => Fact::Network(ip),
                    (None, None) => continue,
                };
                let scoped = (user, scope_app(window.scope, app));
                if known.knows(scoped, &fact, latest, known_for) {
                    continue;
                }
                if seen.insert((user, app, user_agent, ip)) {
                    out.users.push(user);
                    out.apps.push(app);
                    out.user_agents.push(user_agent);
                    out.ips.push(ip);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{at, key};
    use crate::domain::session::EndReason;

    fn row(session: &str, user: &str, end_reason: Option<&str>) -> SessionRow {
        SessionRow {
            app: "shop".to_owned(),
            session_id: session.to_owned(),
            user_id: Some(user.to_owned()),
            login_at: at(0),
            login_seen: true,
            last_seen_at: at(1),
            ip: None,
            user_agent: None,
            expires_at: None,
            ended_at: end_reason.map(|_| at(2)),
            end_reason: end_reason.map(str::to_owned),
            max_sessions: None,
            last_revoke_at: None,
            attributes: None,
            ended_by: end_reason.map(|_| "config".to_owned()),
            end_note: None,
            shadow_flagged: false,
        }
    }

    fn loaded(row: SessionRow, tombstone: bool, claim: bool) -> LoadedRow {
        LoadedRow {
            row,
            tombstone,
            claim,
            history: false,
        }
    }

    #[test]
    fn rows_become_sessions_and_claims_and_the_log_wins_over_a_tombstone() {
        let mut claim = row("", "ann", None);
        claim.attributes = Some(serde_json::json!({"role": "staff"}));
        let mut not_an_object = row("", "bob", None);
        not_an_object.attributes = Some(serde_json::json!([1]));
        let rows = vec![
            loaded(row("s1", "ann", None), false, false),
            loaded(row("s2", "ann", Some("expired")), true, false),
            loaded(row("s2", "ann", Some("logout")), false, false),
            loaded(row("s3", "ann", Some("expired")), true, false),
            loaded(claim, false, true),
            loaded(not_an_object, false, true),
        ];
        let mut state = State::default();
        state.add(collect(rows));
        state.index_all();

        assert_eq!(state.slots.len(), 3);
        let s1 = &state.slots[&key("s1")];
        assert_eq!(s1.origin, Origin::Log);
        assert_eq!(s1.loaded.as_ref(), Some(&s1.record));
        let s2 = &state.slots[&key("s2")];
        assert_eq!(s2.origin, Origin::Log);
        assert_eq!(s2.record.end_reason, Some(EndReason::Logout));
        assert_eq!(s2.ended_by.as_deref(), Some("config"));
        let s3 = &state.slots[&key("s3")];
        assert_eq!(s3.origin, Origin::Tombstone);
        assert!(s3.loaded.is_none());

        let staff = state.attributes("ann", "shop").unwrap();
        assert_eq!(staff["role"], "staff");
        assert!(state.attributes("bob", "shop").is_none());
        assert_eq!(
            state.claims["ann"]["shop"]
                .loaded
                .as_ref()
                .unwrap()
                .occurred_at,
            at(1)
        );

        // Only the live session of the log counts.
        let ann = UserId::parse("ann").unwrap();
        let live: Vec<String> = state
            .live(&ann, at(3))
            .into_iter()
            .map(|c| c.session_id.to_string())
            .collect();
        assert_eq!(live, ["s1"]);
        assert_eq!(state.by_user["ann"].len(), 3);
    }

    #[test]
    fn the_sign_ins_to_prove_are_the_distinct_new_ones_of_locked_users() {
        use crate::domain::event::EventKind::{Login, Logout, Request};
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
        let from = |kind, session, user, ua: Option<&str>, ip: Option<&str>| SessionEvent {
            user_agent: ua.map(str::to_owned),
            ip: ip.map(|ip| ip.parse().unwrap()),
            ..crate::apply::fixtures::event(kind, session, Some(user), 0)
        };
        let events = vec![
            // s1 is new: its login, and a request from elsewhere.
            from(Login, "s1", "ann", Some(firefox), Some("::ffff:10.0.0.1")),
            from(Request, "s1", "ann", None, Some("10.0.9.1")),
            // The same again, from the same /24: one entry.
            from(Login, "s1", "ann", Some(firefox), Some("10.0.0.7")),
            // Nothing to compare.
            from(Request, "s1", "ann", None, None),
            // A logout need not name its user: its address is s1's too.
            SessionEvent {
                ip: Some("10.0.5.1".parse().unwrap()),
                ..crate::apply::fixtures::event(Logout, "s1", None, 0)
            },
            // s2 is read already; bob is not locked.
            from(Login, "s2", "ann", Some("other"), Some("10.1.0.1")),
            from(Login, "b1", "bob", Some(firefox), Some("10.2.0.1")),
        ];
        let keys: Vec<EventKey> = events.iter().map(key_of).collect();
        let mut slots = HashMap::new();
        let (k, slot) = slot_of(row("s2", "ann", None), Origin::Log);
        slots.insert(k, slot);
        let users = BTreeSet::from(["ann".to_owned()]);
        let known = Mutex::new(KnownFacts::default());
        let window = |devices, networks| HistoryWindow {
            since: at(0),
            known_since: at(0),
            scope: Scope::AllApps,
            devices,
            networks,
            known: (&known, chrono::Duration::minutes(5)),
        };
        let ip = |s: &str| Some(s.parse().unwrap());

        let got = sign_ins(window(true, true), &slots, (&events, &keys), &users);
        assert_eq!(got.users, ["ann"; 4]);
        assert_eq!(got.apps, ["shop"; 4]);
        // One fact to a row: the user agent, then each network, as its
        // first address (an IPv4-mapped one as its IPv4).
        assert_eq!(got.user_agents, [Some(firefox), None, None, None]);
        let networks = [ip("10.0.0.0"), ip("10.0.9.0"), ip("10.0.5.0")];
        assert_eq!(got.ips[1..], networks);

        // What is not published is not compared.
        let got = sign_ins(window(true, false), &slots, (&events, &keys), &users);
        assert_eq!(got.user_agents, [Some(firefox)]);
        assert_eq!(got.ips, [None]);
        let got = sign_ins(window(false, true), &slots, (&events, &keys), &users);
        assert_eq!(got.user_agents, [None; 3]);
        assert_eq!(got.ips, networks);
        let got = sign_ins(window(false, false), &slots, (&events, &keys), &users);
        assert_eq!(got, SignIns::default());

        // What the worker's batches added lately is known: Firefox from a
        // session of 5 minutes before (in any app), the /24 10.0.0.0 from
        // one too long before.
        let firefox_fact = Fact::UserAgent(firefox.to_owned());
        let network = Fact::Network(ip("10.0.0.0").unwrap());
        let before = |minutes| at(0) - chrono::Duration::minutes(minutes);
        known.lock().unwrap().learn(vec![
            (("ann".to_owned(), String::new(), firefox_fact), before(5)),
            (("ann".to_owned(), String::new(), network), before(6)),
        ]);
        let got = sign_ins(window(true, true), &slots, (&events, &keys), &users);
        assert_eq!(got.user_agents, [None; 3]);
        assert_eq!(got.ips, networks);
    }

    #[test]
    fn a_claim_is_replaced_only_by_other_attributes() {
        let mut state = State::default();
        let mut claim = row("", "ann", None);
        claim.attributes = Some(serde_json::json!({"role": "staff"}));
        state.add(collect(vec![loaded(claim, false, true)]));
        let mut event = crate::apply::fixtures::event(
            crate::domain::event::EventKind::Request,
            "s1",
            Some("ann"),
            5,
        );
        assert!(!replaces_claim(&state.claims, "ann", &event));
        event.attributes = Some(
            serde_json::json!({"role": "staff"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(!replaces_claim(&state.claims, "ann", &event));
        event.attributes = Some(
            serde_json::json!({"role": "guest"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(replaces_claim(&state.claims, "ann", &event));
        assert!(replaces_claim(&state.claims, "bob", &event));
    }
}
