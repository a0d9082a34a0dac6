//! What the worker's batches added lately, for notices: the user agents
//! and networks of the sessions they committed, by user. A sign-in whose
//! every fact is here is no news, without a look at the log (see
//! `load::sign_ins`). In memory, shared by one worker's batches; depends on
//! nothing else of `apply`, which all of it may use.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::domain::notice::Scope;

/// What a sign-in brings that must be known for it to be no news.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Fact {
    /// Its very user agent (the same string: the same device).
    UserAgent(String),
    /// Its network, as its first address (`Network::first_address`).
    Network(IpAddr),
}

/// How long a fact [`KnownFacts`] learned counts, in event time after the
/// login of the session it was learned from (and never longer than
/// `notices.lookback`): long enough for a busy user's next sign-ins to find
/// it, short enough that a session retention prunes from the log meanwhile
/// counts a little longer at most.
pub const KNOWN_FOR: chrono::Duration = chrono::Duration::hours(1);

/// Most facts [`KnownFacts`] keeps: past this it starts over, so that its
/// memory stays bounded (some 10 MB) whatever the traffic.
const MAX_FACTS: usize = 100_000;

/// The user agents and networks of the sessions this worker's batches added
/// and committed lately, by user (and app, with the per-app scope): a
/// sign-in whose every fact is here is no news, without a look at the log
/// (see `load::sign_ins`). Shared by the worker's batches; another worker's
/// sessions are not here, and its sign-ins are looked up in the log. For
/// its hour, a fact counts even where the log would no longer show it: a
/// session retention pruned, or one pushed out of the user's latest
/// `HISTORY_SESSIONS` by more sign-ins (a device used within the hour is
/// not news either way).
#[derive(Debug, Default)]
pub struct KnownFacts {
    /// (user, app or "" for every app, fact) → the latest login it was
    /// learned from.
    by_key: HashMap<(String, String, Fact), DateTime<Utc>>,
}

impl KnownFacts {
    /// Whether `fact` of `user` in `app` (`""`: any app) counts for a
    /// sign-in at `at`, kept `known_for`.
    pub(super) fn knows(
        &self,
        (user, app): (&str, &str),
        fact: &Fact,
        at: DateTime<Utc>,
        known_for: chrono::Duration,
    ) -> bool {
        // No allocation-free lookup by borrowed parts of a tuple key: the
        // batch's sign-ins are few (about one in ten events).
        let key = (user.to_owned(), app.to_owned(), fact.clone());
        self.by_key
            .get(&key)
            .is_some_and(|&login| at <= login + known_for)
    }

    /// Keeps what the sessions a batch added, now committed, brought.
    pub(super) fn learn(&mut self, learned: Vec<Learned>) {
        if self.by_key.len() + learned.len() > MAX_FACTS {
            self.by_key.clear();
        }
        for (key, login) in learned {
            let latest = self.by_key.entry(key).or_insert(login);
            *latest = (*latest).max(login);
        }
    }
}

/// A fact of a session a batch added: its key in [`KnownFacts`], and the
/// session's login.
pub(super) type Learned = ((String, String, Fact), DateTime<Utc>);

/// The app part of a fact's key: the app with the per-app scope, `""` (any
/// app) without.
pub(super) fn scope_app(scope: Scope, app: &str) -> &str {
    match scope {
        Scope::PerApp => app,
        Scope::AllApps => "",
    }
}
