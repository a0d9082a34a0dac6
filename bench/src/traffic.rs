//! The generated traffic, in named mixes ([`Mix`]). Seeded, so every run
//! replays the same events.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};

/// What the generated traffic models (`--mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A live site: users with Zipf-skewed activity (a few users very
    /// active), a fresh session id per login, requests on live sessions
    /// with a stable IP per session, about 85% requests, 10% logins, 5%
    /// logouts; event time advances as at 20,000 events/s, so one
    /// session's requests are seconds apart.
    Production,
    /// The benchmark's first traffic: 85% requests on live sessions, 10%
    /// logins, 5% logouts; about 5% of logins go to a user who already has
    /// a session (with the limit at 1, each of those revokes one); one IP,
    /// event time advancing as at 4,000 events/s.
    Burst,
    /// Deploying onto a live site, or apps using revoked sessions: 85% of
    /// events are requests naming sessions the worker has never seen
    /// (60%, a fresh one each time) or that already ended (25%); 10%
    /// requests on live sessions, 2% logins, 3% logouts; time as in
    /// `production`.
    FirstSightings,
}

impl Mix {
    /// The name `--mix` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Production => "production",
            Mix::Burst => "burst",
            Mix::FirstSightings => "first-sightings",
        }
    }
}

/// Zipf exponent of the production-shaped mixes' user activity.
const ZIPF_EXPONENT: f64 = 1.0;

/// Realistic traffic from a fixed seed.
pub struct Traffic {
    /// Which traffic this is.
    mix: Mix,
    /// Cumulative Zipf weights of the users (production-shaped mixes).
    zipf: Vec<f64>,
    /// Sessions that ended (logged out or revoked), for `first-sightings`.
    ended: Vec<(usize, String)>,
    /// Requests naming a session that was not live (never seen or ended).
    pub unknown: u64,
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
    /// The `burst` mix.
    pub fn new(users: usize, seed: u64) -> Traffic {
        Traffic::with_mix(Mix::Burst, users, seed)
    }

    /// The traffic of `mix`.
    pub fn with_mix(mix: Mix, users: usize, seed: u64) -> Traffic {
        let users = users.max(1);
        let zipf = if mix == Mix::Burst {
            Vec::new()
        } else {
            let mut sum = 0.0;
            (0..users)
                .map(|k| {
                    sum += 1.0 / ((k + 1) as f64).powf(ZIPF_EXPONENT);
                    sum
                })
                .collect()
        };
        Traffic {
            mix,
            zipf,
            ended: Vec::new(),
            unknown: 0,
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
        let step = if self.mix == Mix::Burst { 250 } else { 50 };
        self.clock += chrono::Duration::microseconds(step);
        self.clock.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Skewed towards 0: a few users produce most of the traffic.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64) * self.rng.random::<f64>().powi(3)) as usize % n.max(1)
    }

    /// A user drawn from the Zipf weights: user 0 is the most active.
    fn zipf_user(&mut self) -> usize {
        let total = self.zipf.last().copied().unwrap_or(0.0);
        let x = self.rng.random::<f64>() * total;
        self.zipf.partition_point(|&c| c < x).min(self.users - 1)
    }

    /// The session's IP: one address for `burst`, else stable per session.
    fn ip(&self, session: &str) -> String {
        if self.mix == Mix::Burst {
            return "192.0.2.1".into();
        }
        // FNV-1a: the same session always comes from the same address.
        let h = session.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!(
            "10.{}.{}.{}",
            (h >> 16) & 255,
            (h >> 8) & 255,
            (h & 253) + 1
        )
    }

    /// A session id not used before.
    fn fresh_session(&mut self, prefix: &str) -> String {
        self.next_session += 1;
        format!("{prefix}{}", self.next_session)
    }

    /// A login for `user`; returns the event and the session it revokes.
    fn login_for(&mut self, user: usize) -> (Value, Option<String>) {
        let session = self.fresh_session("s");
        let at = self.tick();
        let ip = self.ip(&session);
        let sessions = self.live.entry(user).or_default();
        let revoked = sessions.pop();
        if let Some(old) = &revoked {
            self.pool.retain(|(_, s)| s != old);
            self.conflicts += 1;
            if self.mix == Mix::FirstSightings {
                self.ended.push((user, old.clone()));
            }
        }
        sessions.push(session.clone());
        self.pool.push((user, session.clone()));
        let event = json!({
            "type": "login", "app": "bench", "session_id": session,
            "user_id": format!("user{user}"), "occurred_at": at,
            "ip": ip, "user_agent": "bench/1.0",
        });
        (event, revoked)
    }

    /// A request on `session` of `user`.
    fn request(&mut self, user: usize, session: String) -> Value {
        let at = self.tick();
        let ip = self.ip(&session);
        json!({
            "type": "request", "app": "bench", "session_id": session,
            "user_id": format!("user{user}"), "occurred_at": at, "ip": ip,
        })
    }

    /// A logout of a live session drawn at random (`None` while there is
    /// none).
    fn logout_live(&mut self) -> Option<Value> {
        if self.pool.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.pool.len());
        let (user, session) = self.pool.swap_remove(i);
        if let Some(s) = self.live.get_mut(&user) {
            s.retain(|x| x != &session);
        }
        if self.mix == Mix::FirstSightings {
            self.ended.push((user, session.clone()));
        }
        let at = self.tick();
        Some(json!({"type": "logout", "app": "bench", "session_id": session, "occurred_at": at}))
    }

    /// A request on a live session, its user drawn from the Zipf weights
    /// (else any live session).
    fn request_on_live_zipf(&mut self) -> Value {
        for _ in 0..8 {
            let user = self.zipf_user();
            if let Some(session) = self.live.get(&user).and_then(|s| s.last()).cloned() {
                return self.request(user, session);
            }
        }
        let (user, session) = self.pool[self.rng.random_range(0..self.pool.len())].clone();
        self.request(user, session)
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
        match self.mix {
            Mix::Burst => self.next_burst(),
            Mix::Production => self.next_production(),
            Mix::FirstSightings => self.next_first_sighting(),
        }
    }

    fn next_production(&mut self) -> Value {
        let r: f64 = self.rng.random();
        if self.pool.is_empty() || r < 0.10 {
            let user = self.zipf_user();
            return self.login_for(user).0;
        }
        if r < 0.95 {
            return self.request_on_live_zipf();
        }
        self.logout_live().expect("a live session")
    }

    fn next_first_sighting(&mut self) -> Value {
        let r: f64 = self.rng.random();
        if r < 0.02 {
            let user = self.zipf_user();
            return self.login_for(user).0;
        }
        if r < 0.05 {
            if let Some(event) = self.logout_live() {
                return event;
            }
            let session = self.fresh_session("u");
            let user = self.zipf_user();
            self.ended.push((user, session.clone()));
            let at = self.tick();
            return json!({"type": "logout", "app": "bench", "session_id": session, "occurred_at": at});
        }
        if r < 0.15 && !self.pool.is_empty() {
            return self.request_on_live_zipf();
        }
        self.unknown += 1;
        if r < 0.40 && !self.ended.is_empty() {
            let (user, session) = self.ended[self.rng.random_range(0..self.ended.len())].clone();
            return self.request(user, session);
        }
        let user = self.zipf_user();
        let session = self.fresh_session("u");
        self.request(user, session)
    }

    fn next_burst(&mut self) -> Value {
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

    /// Shares of logins, logouts and requests in `n` events of `mix`, and
    /// the generator.
    fn shares(mix: Mix, n: usize) -> (HashMap<String, f64>, Traffic) {
        let mut t = Traffic::with_mix(mix, 50_000, 1);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            let e = t.next_event();
            *counts
                .entry(e["type"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        let shares = counts
            .into_iter()
            .map(|(k, c)| (k, c as f64 / n as f64))
            .collect();
        (shares, t)
    }

    #[test]
    fn production_mix_has_the_documented_shape() {
        let n = 50_000;
        let (s, t) = shares(Mix::Production, n);
        assert!((s["request"] - 0.85).abs() < 0.02, "{s:?}");
        assert!((s["login"] - 0.10).abs() < 0.02, "{s:?}");
        assert!((s["logout"] - 0.05).abs() < 0.02, "{s:?}");
        assert_eq!(t.unknown, 0, "requests only on live sessions");
        // 20,000 events/s: n events span n / 20,000 s.
        let span = t.clock - (Utc::now() - chrono::Duration::hours(1));
        assert!((span.num_milliseconds() - 2_500).abs() < 1_000, "{span}");
        // Skewed: the most active user gets far more than 1/50,000.
        let mut t = Traffic::with_mix(Mix::Production, 50_000, 2);
        let top = (0..10_000).filter(|_| t.zipf_user() == 0).count();
        assert!(top > 500, "user 0 drew {top} of 10,000");
    }

    #[test]
    fn production_mix_keeps_one_ip_per_session() {
        let mut t = Traffic::with_mix(Mix::Production, 50_000, 3);
        let mut ips: HashMap<String, String> = HashMap::new();
        for _ in 0..20_000 {
            let e = t.next_event();
            if let Some(ip) = e["ip"].as_str() {
                let session = e["session_id"].as_str().unwrap().to_owned();
                let first = ips.entry(session).or_insert_with(|| ip.to_owned());
                assert_eq!(first, ip);
            }
        }
        let distinct: std::collections::HashSet<_> = ips.values().collect();
        assert!(distinct.len() > 100, "{} distinct IPs", distinct.len());
    }

    #[test]
    fn first_sightings_mix_is_mostly_unknown_sessions() {
        let n = 50_000;
        let (s, t) = shares(Mix::FirstSightings, n);
        assert!((s["request"] - 0.95).abs() < 0.02, "{s:?}");
        assert!((s["login"] - 0.02).abs() < 0.01, "{s:?}");
        assert!((s["logout"] - 0.03).abs() < 0.01, "{s:?}");
        let unknown = t.unknown as f64 / (s["request"] * n as f64);
        assert!(
            (0.85..0.95).contains(&unknown),
            "{unknown} of requests unknown"
        );
    }

    #[test]
    fn burst_mix_keeps_one_ip() {
        let mut t = Traffic::new(5_000, 7);
        for _ in 0..1_000 {
            let e = t.next_event();
            if let Some(ip) = e["ip"].as_str() {
                assert_eq!(ip, "192.0.2.1");
            }
        }
        assert_eq!(t.unknown, 0);
    }

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
