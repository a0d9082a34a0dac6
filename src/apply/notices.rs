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
use super::load::{Key, Origin, Slot, State};
use crate::domain::device::device;
use crate::domain::notice::{Arrival, DeviceKey, Network, Notice, Seen, SignIn};
use session_guard_protocol::api::Device;

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
        // A user whose history was not read (nor known to be empty: a lock
        // row just created) gets none rather than one decided on a part.
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
