//! The generated traffic, in named mixes ([`Mix`]). Seeded, so every run
//! replays the same events.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
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
    /// Deploying onto a live site: every user holds 1 session (80% of
    /// users) or 2 (20%) from before the deployment, and users come back
    /// in a random order. 60% of events are requests naming one of those
    /// sessions for the first time (it becomes live; with the limit at 1, a
    /// user's second one revokes the first), 25% requests on sessions that
    /// ended (logged out or revoked), 10% requests on live sessions, 2%
    /// logins, 3% logouts; time as in `production`. Past one pass over the
    /// users, new user numbers (from --users up) come back.
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

/// Browsers the production-shaped mixes' logins come from (see
/// `Traffic::user_agent`).
const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) \
     Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
     Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
];

/// FNV-1a: a stable hash, so that a session always has the same address
/// and device.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Zipf exponent of the production-shaped mixes' user activity.
const ZIPF_EXPONENT: f64 = 1.0;
/// Pre-existing sessions waiting for their first sighting (`first-sightings`):
/// a first sighting picks one at random among this many, so a user's two
/// sessions are seen some events apart, not back to back.
const PENDING_WINDOW: usize = 1_000;
/// Users holding 2 sessions from before the deployment (the others hold 1).
const TWO_SESSIONS_SHARE: f64 = 0.2;

/// Realistic traffic from a fixed seed.
pub struct Traffic {
    /// Which traffic this is.
    mix: Mix,
    /// Cumulative Zipf weights of the users (production-shaped mixes).
    zipf: Vec<f64>,
    /// Sessions that ended (logged out or revoked), for `first-sightings`.
    ended: Vec<(usize, String)>,
    /// The order in which users come back after the deployment
    /// (`first-sightings`): a seeded permutation of 0..users.
    comeback: Vec<usize>,
    /// Users of [`Traffic::comeback`] handed out so far; past one pass the
    /// order repeats with user numbers `users` higher, so no user ever
    /// holds more than 2 pre-existing sessions.
    comebacks: usize,
    /// Pre-existing sessions not seen yet, about [`PENDING_WINDOW`] of them.
    pending: Vec<(usize, String)>,
    /// Live sessions whose login was never seen (first seen in a request):
    /// the worker ranks them older than any session whose login it saw.
    unseen_login: HashSet<String>,
    /// Requests naming a pre-existing session for the first time.
    pub first_sightings: u64,
    /// First sightings that found their user with a live session: with the
    /// limit at 1, each revokes one of the two.
    pub sighting_conflicts: u64,
    /// Of those, the ones where the worker revoked the session just seen:
    /// its user's live session had a login the worker saw, which ranks
    /// newer than a session first seen in a request.
    pub sightings_revoked: u64,
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
        let mut rng = StdRng::seed_from_u64(seed);
        let comeback = if mix == Mix::FirstSightings {
            let mut order: Vec<usize> = (0..users).collect();
            order.shuffle(&mut rng);
            order
        } else {
            Vec::new()
        };
        Traffic {
            mix,
            zipf,
            ended: Vec::new(),
            comeback,
            comebacks: 0,
            pending: Vec::new(),
            unseen_login: HashSet::new(),
            first_sightings: 0,
            sighting_conflicts: 0,
            sightings_revoked: 0,
            unknown: 0,
            rng,
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
    fn ip(&self, user: usize, session: &str) -> String {
        if self.mix == Mix::Burst {
            return "192.0.2.1".into();
        }
        // Each user comes from two networks (/24s: home and work, say), a
        // session from one of them, always the same address: what a
        // notice's new_network is decided on.
        let h = fnv(session.as_bytes());
        let net = fnv(&user.to_le_bytes()).wrapping_add(h & 1);
        format!(
            "10.{}.{}.{}",
            (net >> 8) & 255,
            net & 255,
            ((h >> 8) & 253) + 1
        )
    }

    /// A real browser's user agent for a session of `user`: each user signs
    /// in from two devices of [`USER_AGENTS`], a session from one of them,
    /// so that notices compare real devices (both settings alike).
    fn user_agent(&self, user: usize, session: &str) -> &'static str {
        if self.mix == Mix::Burst {
            return "bench/1.0";
        }
        let n = USER_AGENTS.len();
        let first = user % n;
        let second = (user / n + first + 1) % n;
        let pick = if fnv(session.as_bytes()) & 2 == 0 {
            first
        } else {
            second
        };
        USER_AGENTS[pick]
    }

    fn fresh_session(&mut self, prefix: &str) -> String {
        self.next_session += 1;
        format!("{prefix}{}", self.next_session)
    }

    /// A login for `user`; returns the event and the session it revokes.
    fn login_for(&mut self, user: usize) -> (Value, Option<String>) {
        let session = self.fresh_session("s");
        let at = self.tick();
        let ip = self.ip(user, &session);
        let user_agent = self.user_agent(user, &session);
        let sessions = self.live.entry(user).or_default();
        let revoked = sessions.pop();
        if let Some(old) = &revoked {
            self.pool.retain(|(_, s)| s != old);
            self.conflicts += 1;
            if self.mix == Mix::FirstSightings {
                self.unseen_login.remove(old);
                self.ended.push((user, old.clone()));
            }
        }
        sessions.push(session.clone());
        self.pool.push((user, session.clone()));
        let event = json!({
            "type": "login", "app": "bench", "session_id": session,
            "user_id": format!("user{user}"), "occurred_at": at,
            "ip": ip, "user_agent": user_agent,
        });
        (event, revoked)
    }

    /// A request on `session` of `user`.
    fn request(&mut self, user: usize, session: String) -> Value {
        let at = self.tick();
        let ip = self.ip(user, &session);
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
            self.unseen_login.remove(&session);
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
        self.first_sighting()
    }

    /// Tops [`Traffic::pending`] up to [`PENDING_WINDOW`] with the sessions
    /// of the next users to come back, 1 or 2 each.
    fn refill_pending(&mut self) {
        while self.pending.len() < PENDING_WINDOW {
            let n = self.comeback.len();
            let user = self.comebacks / n * self.users + self.comeback[self.comebacks % n];
            self.comebacks += 1;
            let held = if self.rng.random::<f64>() < TWO_SESSIONS_SHARE {
                2
            } else {
                1
            };
            for _ in 0..held {
                let session = self.fresh_session("p");
                self.pending.push((user, session));
            }
        }
    }

    /// A request on a pre-existing session, seen for the first time. The
    /// worker counts it live from then on (its login time: this event's),
    /// so with the limit at 1 a live session of its user means a revoke:
    /// of the older of the two, where a session whose login was never seen
    /// ranks older than one whose login was (`older_first` in the worker).
    fn first_sighting(&mut self) -> Value {
        self.refill_pending();
        let i = self.rng.random_range(0..self.pending.len());
        let (user, session) = self.pending.swap_remove(i);
        self.first_sightings += 1;
        let event = self.request(user, session.clone());
        let held = self.live.get(&user).and_then(|s| s.last()).cloned();
        if let Some(old) = held {
            self.sighting_conflicts += 1;
            if !self.unseen_login.contains(&old) {
                // The user logged in since: the session just seen goes.
                self.sightings_revoked += 1;
                self.ended.push((user, session));
                return event;
            }
            if let Some(s) = self.live.get_mut(&user) {
                s.retain(|x| x != &old);
            }
            self.pool.retain(|(_, s)| s != &old);
            self.unseen_login.remove(&old);
            self.ended.push((user, old));
        }
        self.live.entry(user).or_default().push(session.clone());
        self.unseen_login.insert(session.clone());
        self.pool.push((user, session));
        event
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
        self.logout_live().expect("a live session")
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

/// Requests a visit makes after its page: the page's assets and API calls.
pub const PAGE_FOLLOW_UPS: usize = 5;
/// Shortest and longest pause between two visits of one session, in
/// milliseconds (uniform between them).
const VISIT_GAP_MS: (i64, i64) = (10_000, 60_000);
/// The follow-ups come within this many milliseconds after the page.
const FOLLOW_UP_WITHIN_MS: i64 = 1_000;

/// One request of page-load traffic ([`page_loads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// The session, numbered from 0.
    pub session: usize,
    /// Milliseconds after the start of the traffic.
    pub at_ms: i64,
    /// The first request of the session's first visit (the app sends the
    /// login just before it).
    pub first: bool,
}

/// Page-load-shaped traffic, the shape request coalescing is measured on:
/// `sessions` sessions over `seconds` seconds of event time; each visit is
/// a page request and [`PAGE_FOLLOW_UPS`] more within the following second
/// (uniform), and a session visits again 10-60 s later (uniform), its
/// first visit within the first 60 s. Seeded; sorted by time, as an app
/// sends them.
pub fn page_loads(sessions: usize, seconds: u64, seed: u64) -> Vec<PageRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end_ms = i64::try_from(seconds.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let mut requests = Vec::new();
    for session in 0..sessions {
        let mut page = rng.random_range(0..VISIT_GAP_MS.1);
        let mut first = true;
        while page < end_ms {
            requests.push(PageRequest {
                session,
                at_ms: page,
                first,
            });
            first = false;
            for _ in 0..PAGE_FOLLOW_UPS {
                requests.push(PageRequest {
                    session,
                    at_ms: page + rng.random_range(1..FOLLOW_UP_WITHIN_MS),
                    first: false,
                });
            }
            page += rng.random_range(VISIT_GAP_MS.0..=VISIT_GAP_MS.1);
        }
    }
    // Stable: a visit's page stays before follow-ups at the same time.
    requests.sort_by_key(|r| r.at_ms);
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares of logins, logouts and requests in `n` events of `mix`, and
    /// the generator.
    /// The shares of each event type in `n` events, and the traffic after
    /// them with the event time it started from (the span of event time is
    /// judged from that, never from the wall clock, which a busy machine
    /// moves on while the events are generated).
    fn shares(mix: Mix, n: usize) -> (HashMap<String, f64>, Traffic, DateTime<Utc>) {
        let mut t = Traffic::with_mix(mix, 50_000, 1);
        let start = t.clock;
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
        (shares, t, start)
    }

    #[test]
    fn production_mix_has_the_documented_shape() {
        let n = 50_000;
        let (s, t, start) = shares(Mix::Production, n);
        assert!((s["request"] - 0.85).abs() < 0.02, "{s:?}");
        assert!((s["login"] - 0.10).abs() < 0.02, "{s:?}");
        assert!((s["logout"] - 0.05).abs() < 0.02, "{s:?}");
        assert_eq!(t.unknown, 0, "requests only on live sessions");
        // 20,000 events/s: n events span n / 20,000 s.
        let span = t.clock - start;
        assert!((span.num_milliseconds() - 2_500).abs() < 100, "{span}");
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
        let (s, t, _) = shares(Mix::FirstSightings, n);
        assert!((s["request"] - 0.95).abs() < 0.02, "{s:?}");
        assert!((s["login"] - 0.02).abs() < 0.01, "{s:?}");
        assert!((s["logout"] - 0.03).abs() < 0.01, "{s:?}");
        let requests = s["request"] * n as f64;
        // 85 of the 95 requests in 100 events name a session not live.
        let unknown = t.unknown as f64 / requests;
        assert!(
            (0.86..0.93).contains(&unknown),
            "{unknown} of requests unknown"
        );
        // 60 of them a session seen for the first time.
        let first = t.first_sightings as f64 / requests;
        assert!((0.60..0.66).contains(&first), "{first} first sightings");
    }

    /// Runs `n` events of `first-sightings` over `users` users; returns the
    /// generator and, by user, the pre-existing sessions first seen.
    fn sightings(users: usize, n: usize) -> (Traffic, HashMap<String, usize>) {
        let mut t = Traffic::with_mix(Mix::FirstSightings, users, 4);
        let mut seen: HashSet<String> = HashSet::new();
        let mut by_user: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            let e = t.next_event();
            let session = e["session_id"].as_str().unwrap();
            if session.starts_with('p') && seen.insert(session.to_owned()) {
                assert_eq!(e["type"], "request", "{e}");
                let user = e["user_id"].as_str().unwrap().to_owned();
                *by_user.entry(user).or_default() += 1;
            }
        }
        assert_eq!(seen.len() as u64, t.first_sightings);
        (t, by_user)
    }

    #[test]
    fn first_sightings_revoke_about_one_in_six() {
        // 20% of users hold 2 sessions: 0.2 of 1.2 sessions per user find
        // the user's first one live, if it was not logged out meanwhile.
        let (t, _) = sightings(50_000, 50_000);
        let share = t.sighting_conflicts as f64 / t.first_sightings as f64;
        assert!(
            (0.13..0.20).contains(&share),
            "{share} of first sightings found their user with a live session"
        );
        assert!(t.sightings_revoked <= t.sighting_conflicts);
        assert!(
            t.pool.len() as u64 > t.first_sightings / 2,
            "sessions stay live"
        );
    }

    #[test]
    fn no_user_holds_more_than_two_pre_existing_sessions() {
        // 5,000 users, about 25,000 come back: five passes.
        let (t, by_user) = sightings(5_000, 50_000);
        assert!(t.comebacks > 4 * 5_000, "{} users came back", t.comebacks);
        let most = by_user.values().copied().max().unwrap();
        assert_eq!(most, 2, "a user first-sighted with {most} sessions");
        let beyond = by_user
            .keys()
            .filter(|u| u[4..].parse::<usize>().unwrap() >= 5_000)
            .count();
        assert!(beyond > 10_000, "{beyond} users numbered beyond --users");
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

    #[test]
    fn page_loads_have_the_documented_shape() {
        let requests = page_loads(200, 600, 7);
        assert!(requests.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let mut by_session: HashMap<usize, Vec<PageRequest>> = HashMap::new();
        for r in &requests {
            by_session.entry(r.session).or_default().push(*r);
        }
        assert_eq!(by_session.len(), 200);
        for visits in by_session.values() {
            assert!(visits[0].first && visits[0].at_ms < 60_000);
            assert_eq!(visits.iter().filter(|r| r.first).count(), 1);
            // Visits are 10-60 s apart and each is six requests within a
            // second: grouped by gaps of more than a second, every group
            // is one visit.
            let mut groups: Vec<Vec<i64>> = Vec::new();
            for r in visits {
                match groups.last_mut() {
                    Some(g) if r.at_ms - g[0] < FOLLOW_UP_WITHIN_MS => g.push(r.at_ms),
                    _ => groups.push(vec![r.at_ms]),
                }
            }
            assert!(groups.iter().all(|g| g.len() == 1 + PAGE_FOLLOW_UPS));
            for pair in groups.windows(2) {
                let gap = pair[1][0] - pair[0][0];
                assert!((VISIT_GAP_MS.0..=VISIT_GAP_MS.1).contains(&gap), "{gap}");
            }
        }
        // About 600 s / 35 s visits per session.
        let per_session = requests.len() as f64 / 200.0 / 6.0;
        assert!((14.0..20.0).contains(&per_session), "{per_session}");
        assert_eq!(page_loads(200, 600, 7), requests, "seeded");
    }
}
