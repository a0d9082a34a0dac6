//! The generated traffic: 85% requests on live sessions, 10% logins, 5%
//! logouts; about 5% of logins go to a user who already has a session
//! (with the limit at 1, each of those revokes one). Seeded, so every run
//! replays the same events.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};

/// Realistic traffic from a fixed seed.
pub struct Traffic {
    /// Picks event kinds, users and sessions.
    rng: StdRng,
    /// How many distinct users there are.
    users: usize,
    /// Live sessions by user, as the generator believes them.
    live: HashMap<usize, Vec<String>>,
    /// (user, session) pairs that are live, for picking requests.
    pool: Vec<(usize, String)>,
    /// The number in the next session id.
    next_session: u64,
    /// The events' `occurred_at`, a little later for each event.
    clock: DateTime<Utc>,
    /// Logins so far that went to a user who already had a session.
    pub conflicts: u64,
}

impl Traffic {
    pub fn new(users: usize, seed: u64) -> Traffic {
        Traffic {
            rng: StdRng::seed_from_u64(seed),
            users,
            live: HashMap::new(),
            pool: Vec::new(),
            next_session: 0,
            clock: Utc::now() - chrono::Duration::hours(1),
            conflicts: 0,
        }
    }

    fn tick(&mut self) -> String {
        self.clock += chrono::Duration::microseconds(250);
        self.clock.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Skewed towards 0: a few users produce most of the traffic.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64) * self.rng.random::<f64>().powi(3)) as usize % n.max(1)
    }

    /// A login for `user`; returns the event and the session it revokes.
    fn login_for(&mut self, user: usize) -> (Value, Option<String>) {
        self.next_session += 1;
        let session = format!("s{}", self.next_session);
        let at = self.tick();
        let sessions = self.live.entry(user).or_default();
        let revoked = sessions.pop();
        if let Some(old) = &revoked {
            self.pool.retain(|(_, s)| s != old);
            self.conflicts += 1;
        }
        sessions.push(session.clone());
        self.pool.push((user, session.clone()));
        let event = json!({
            "type": "login", "app": "bench", "session_id": session,
            "user_id": format!("user{user}"), "occurred_at": at,
            "ip": "192.0.2.1", "user_agent": "bench/1.0",
        });
        (event, revoked)
    }

    /// A login for a user who holds a session, and the session it revokes;
    /// `None` while nobody holds one.
    pub fn login_over_the_limit(&mut self) -> Option<(Value, Option<String>)> {
        if self.pool.is_empty() {
            return None;
        }
        let user = self.pool[self.rng.random_range(0..self.pool.len())].0;
        Some(self.login_for(user))
    }

    pub fn next_event(&mut self) -> Value {
        let r: f64 = self.rng.random();
        if self.pool.is_empty() || r < 0.10 {
            let user = self.login_user();
            return self.login_for(user).0;
        }
        if r < 0.95 {
            let i = self.skewed(self.pool.len());
            let (user, session) = self.pool[i].clone();
            let at = self.tick();
            return json!({
                "type": "request", "app": "bench", "session_id": session,
                "user_id": format!("user{user}"), "occurred_at": at, "ip": "192.0.2.1",
            });
        }
        let i = self.rng.random_range(0..self.pool.len());
        let (user, session) = self.pool.swap_remove(i);
        if let Some(s) = self.live.get_mut(&user) {
            s.retain(|x| x != &session);
        }
        let at = self.tick();
        json!({"type": "logout", "app": "bench", "session_id": session, "occurred_at": at})
    }

    /// Who logs in next: 95% of logins go to a user without a live session.
    fn login_user(&mut self) -> usize {
        let conflict = self.rng.random::<f64>() < 0.05;
        let mut user = self.skewed(self.users);
        for _ in 0..20 {
            let has = self.live.get(&user).is_some_and(|s| !s.is_empty());
            if has == conflict || self.pool.is_empty() {
                break;
            }
            user = if conflict {
                self.pool[self.rng.random_range(0..self.pool.len())].0
            } else {
                self.rng.random_range(0..self.users.max(1))
            };
        }
        user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_has_the_documented_mix() {
        let mut t = Traffic::new(5_000, 1);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let n = 50_000;
        let mut logins = 0;
        for _ in 0..n {
            let e = t.next_event();
            let kind = e["type"].as_str().unwrap().to_owned();
            logins += usize::from(kind == "login");
            *counts.entry(kind).or_default() += 1;
        }
        let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share("request") - 0.85).abs() < 0.02, "{counts:?}");
        assert!((share("login") - 0.10).abs() < 0.02, "{counts:?}");
        assert!((share("logout") - 0.05).abs() < 0.02, "{counts:?}");
        let over = t.conflicts as f64 / logins as f64;
        assert!(
            (0.02..0.10).contains(&over),
            "{over} of logins over the limit"
        );
    }
}
