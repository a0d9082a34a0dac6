//! The notices of a batch: for each session it adds, compare it with the
//! user's other sessions (those read with the batch, and the history read
//! with them: see `load::reload`) by the pure rules of
//! [`crate::domain::notice`], and build the notice, if one is due, for the
//! outbox, in the transaction that stores the session.
//!
//! A session gets a notice only when the batch adds its row: at its login,
//! or at its first sighting. A redelivered batch finds the row and adds
//! nothing; a rerun pass decides again from scratch.

use std::collections::HashMap;

use super::enforcement::{MAX_DEVICES_CACHED, Notices};
use super::known::{Fact, Learned, scope_app};
use super::load::{Key, Origin, Slot, State};
use crate::domain::device::device;
use crate::domain::notice::{Arrival, DeviceKey, Network, Notice, Seen, SignIn};
use session_guard_protocol::api::Device;

/// The facts the sessions the batch adds bring, for [`KnownFacts::learn`]
/// once the batch commits.
pub(super) fn learned(state: &State, notices: &Notices) -> Vec<Learned> {
    let scope = notices.policy.scope;
    let mut out = Vec::new();
    for slot in state.slots.values() {
        if slot.origin != Origin::New || !slot.dirty {
            continue;
        }
        let record = &slot.record;
        let Some(user) = record.user_id.as_ref() else {
            continue;
        };
        let key = |fact| {
            let app = scope_app(scope, record.app.as_str());
            (user.to_string(), app.to_owned(), fact)
        };
        if let Some(ua) = &record.user_agent {
            out.push((key(Fact::UserAgent(ua.clone())), record.login_at));
        }
        if let Some(ip) = record.ip {
            let network = Network::of(ip).first_address();
            out.push((key(Fact::Network(network)), record.login_at));
        }
    }
    out
}

/// The notices due for the sessions the batch adds, in key order.
pub(super) fn notices(state: &State, notices: &Notices) -> Vec<Notice> {
    let mut added: Vec<(&Key, &Slot)> = state
        .slots
        .iter()
        .filter(|(_, s)| s.origin == Origin::New && s.dirty)
        .collect();
    if added.is_empty() {
        return Vec::new();
    }
    added.sort_by(|a, b| a.0.cmp(b.0));
    // A poisoned lock only means another batch panicked while parsing: the
    // cache holds whole entries still.
    let mut cache = notices
        .devices
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() > MAX_DEVICES_CACHED {
        cache.clear();
    }
    let mut devices = Devices(&mut cache);
    let mut out = Vec::new();
    for (key, slot) in added {
        let record = &slot.record;
        let Some(user) = record.user_id.as_ref() else {
            continue;
        };
        // A user whose history was not read gets none: the worker's
        // memory (`known::KnownFacts`) or the read's probes proved each of
        // their new sessions' user agents and networks known, or none had
        // one to compare, or they were not locked (nothing is decided on a
        // part). Except a user whose lock row was just created: they had no
        // sessions.
        let read = state.history_read.contains(user.as_str());
        if !read && !state.created.contains(user.as_str()) {
            continue;
        }
        let earlier = earlier_sessions(state, key, slot, &mut devices);
        let arrival = Arrival {
            app: &record.app,
            at: record.login_at,
            device: devices.key(record.user_agent.as_deref()),
            network: record.ip.map(Network::of),
        };
        let Some(facts) = notices.policy.decide(&arrival, &earlier) else {
            continue;
        };
        let sign_in = SignIn {
            app: &record.app,
            session_id: record.session_id.as_str(),
            handle: notices
                .handles
                .seal(record.app.as_str(), record.session_id.as_str()),
            user_id: user.as_str(),
            at: record.login_at,
            device: devices.device(record.user_agent.as_deref()),
            ip: record.ip.map(|ip| ip.to_string()),
        };
        out.extend(Notice::new(sign_in, &facts));
    }
    out
}

/// What the new session `key` is compared with: its user's history from
/// the log, and the user's other sessions in the batch's state (their
/// latest user agent and address; of sessions the batch adds too, only
/// those that signed in before it).
fn earlier_sessions(state: &State, key: &Key, slot: &Slot, devices: &mut Devices) -> Vec<Seen> {
    let record = &slot.record;
    let user = record.user_id.as_ref().map(|u| u.as_str()).unwrap_or("");
    let mut seen: Vec<Seen> = Vec::new();
    for e in state.history.get(user).into_iter().flatten() {
        seen.push(Seen {
            app: e.app.clone(),
            device: devices.key(e.user_agent.as_deref()),
            network: e.ip.map(Network::of),
            last_seen_at: e.last_seen_at,
        });
    }
    let others = state.by_user.get(user).into_iter().flatten();
    for other_key in others.filter(|k| *k != key) {
        let Some(other) = state.slots.get(other_key) else {
            continue;
        };
        let before = (other.record.login_at, other_key) < (record.login_at, key);
        let counts = match other.origin {
            Origin::Log => true,
            Origin::New => before,
            Origin::Tombstone => false,
        };
        if counts && other.record.user_id == record.user_id {
            seen.push(Seen {
                app: other.record.app.to_string(),
                device: devices.key(other.record.user_agent.as_deref()),
                network: other.record.ip.map(Network::of),
                last_seen_at: other.record.last_seen_at,
            });
        }
    }
    seen
}

/// User agents parsed once (see [`Notices::devices`]).
struct Devices<'a>(&'a mut HashMap<String, Device>);

impl Devices<'_> {
    /// The device `user_agent` describes.
    fn device(&mut self, user_agent: Option<&str>) -> Device {
        match user_agent {
            Some(ua) => self.parsed(ua).clone(),
            None => device(None),
        }
    }

    /// Its key, as notices compare devices.
    fn key(&mut self, user_agent: Option<&str>) -> Option<DeviceKey> {
        DeviceKey::of(self.parsed(user_agent?))
    }

    fn parsed(&mut self, user_agent: &str) -> &Device {
        if !self.0.contains_key(user_agent) {
            self.0
                .insert(user_agent.to_owned(), device(Some(user_agent)));
        }
        &self.0[user_agent]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{at, stored};
    use crate::apply::load::Earlier;
    use crate::domain::handle::HandleKey;
    use crate::domain::notice::{NoticeKind, NoticePolicy, Scope};

    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    const CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, \
                          like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

    fn policy() -> Notices {
        Notices {
            policy: NoticePolicy {
                lookback: std::time::Duration::from_secs(90 * 86_400),
                scope: Scope::AllApps,
                kinds: NoticeKind::ALL.to_vec(),
            },
            handles: HandleKey::from_bytes(&[7; 64]).unwrap(),
            devices: Default::default(),
            known: Default::default(),
        }
    }

    /// A session of `user` the batch adds, from `ua` at `ip`.
    fn added(session: &str, user: &str, minute: u32, ua: &str, ip: &str) -> Slot {
        let mut slot = stored(session, user, minute);
        slot.origin = Origin::New;
        slot.loaded = None;
        slot.dirty = true;
        slot.record.user_agent = Some(ua.to_owned());
        slot.record.ip = Some(ip.parse().unwrap());
        slot
    }

    fn ids(notices: &[Notice]) -> Vec<(String, uuid::Uuid)> {
        notices
            .iter()
            .map(|n| (n.kind.clone(), n.event_id))
            .collect()
    }

    #[test]
    fn added_sessions_compare_with_the_history_and_the_earlier_ones_of_the_batch() {
        let n = policy();
        // ann: Firefox in the log's history; the batch adds Chrome, then
        // Chrome again (nothing new against the first Chrome).
        let mut state = crate::apply::fixtures::state_of(vec![
            added("s2", "ann", 5, CHROME, "10.0.0.2"),
            added("s3", "ann", 6, CHROME, "10.0.0.3"),
            // bob's history was not read, nor was his lock row created:
            // nothing is decided for him on a part of it.
            added("b1", "bob", 5, CHROME, "10.0.0.2"),
        ]);
        state.history.insert(
            "ann".to_owned(),
            vec![Earlier {
                app: "shop".to_owned(),
                user_agent: Some(FIREFOX.to_owned()),
                ip: Some("10.0.0.1".parse().unwrap()),
                last_seen_at: at(1),
            }],
        );
        state.history_read.insert("ann".to_owned());
        let got = notices(&state, &n);
        assert_eq!(
            ids(&got),
            [("new_device".to_owned(), Notice::event_id_for("shop", "s2"))]
        );
        let (app, session) = n.handles.open(&got[0].session).unwrap();
        assert_eq!((app.as_str(), session.as_str()), ("shop", "s2"));
        assert_eq!(got[0].device.browser.as_deref(), Some("Chrome"));

        // A user whose lock row the batch created had no sessions: their
        // first one gives nothing, their second is compared with it.
        let mut first = crate::apply::fixtures::state_of(vec![
            added("c1", "cat", 5, FIREFOX, "10.0.0.1"),
            added("c2", "cat", 6, CHROME, "10.9.0.1"),
        ]);
        first.created.insert("cat".to_owned());
        let got = notices(&first, &n);
        assert_eq!(
            ids(&got),
            [("new_device".to_owned(), Notice::event_id_for("shop", "c2"))]
        );
        assert!(got[0].new_network);
    }
}
