//! The decision core: given a user's active sessions and the limits in force,
//! which sessions to revoke. Pure functions, no I/O, unit- and property-tested.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::event::{AppName, SessionId};
use super::limits::{EvictionPolicy, Limits};
use super::session::SessionRecord;

/// An active session, as the decision core needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub app: AppName,
    pub session_id: SessionId,
    /// When the session logged in (event time).
    pub login_at: DateTime<Utc>,
    /// Whether a login event was seen; sessions known only from requests
    /// (older than the deployment, or forgotten by retention) are older than
    /// any login seen.
    pub login_seen: bool,
    /// Event time of the session's latest event.
    pub last_seen_at: DateTime<Utc>,
}

impl From<&SessionRecord> for Candidate {
    fn from(r: &SessionRecord) -> Candidate {
        Candidate {
            app: r.app.clone(),
            session_id: r.session_id.clone(),
            login_at: r.login_at,
            login_seen: r.login_seen,
            last_seen_at: r.last_seen_at,
        }
    }
}

/// Which limit a revoked session broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `max_sessions`: too many in the app being checked.
    App,
    /// `max_sessions_global`: too many across all apps.
    Global,
}

/// A session to revoke, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub session: Candidate,
    pub scope: Scope,
}

/// Age order: which of two sessions logged in first. Sessions whose login was
/// never seen come first (they predate what the worker saw), then by login
/// time; ties are broken by app and session id so the order is total and the
/// result never depends on the order sessions are given in.
fn older_first(a: &Candidate, b: &Candidate) -> Ordering {
    a.login_seen
        .cmp(&b.login_seen)
        .then_with(|| a.login_at.cmp(&b.login_at))
        .then_with(|| a.app.cmp(&b.app))
        .then_with(|| a.session_id.cmp(&b.session_id))
}

/// The order in which `policy` wants to keep sessions: first = kept first.
fn keep_order(policy: EvictionPolicy, a: &Candidate, b: &Candidate) -> Ordering {
    match policy {
        EvictionPolicy::EvictOldest => older_first(b, a),
        EvictionPolicy::EvictIdle => b
            .last_seen_at
            .cmp(&a.last_seen_at)
            .then_with(|| older_first(b, a)),
        // Keep the earliest by the time each was first seen: a session whose
        // first request beat its login to the worker must not pass for old
        // and push out the session that really was there first.
        EvictionPolicy::DenyNew => a
            .login_at
            .cmp(&b.login_at)
            .then_with(|| a.app.cmp(&b.app))
            .then_with(|| a.session_id.cmp(&b.session_id)),
    }
}

/// The caps one check enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Per-app limits; an app not listed, or listed with 0, is unlimited.
    pub per_app: BTreeMap<AppName, u32>,
    /// Limit across all apps; 0 = none.
    pub global: u32,
    /// Which sessions to keep first.
    pub policy: EvictionPolicy,
}

impl Caps {
    fn app_cap(&self, app: &AppName) -> usize {
        self.per_app.get(app).copied().unwrap_or(0) as usize
    }
}

/// Returns the sessions to revoke so that at most `limits.max_sessions` stay
/// in `app` and at most `limits.max_sessions_global` in all apps together
/// (0 = no limit for either); other apps' own limits are not applied. See
/// [`select_victims`].
pub fn sessions_to_revoke(active: &[Candidate], app: &AppName, limits: &Limits) -> Vec<Victim> {
    select_victims(
        active,
        &Caps {
            per_app: BTreeMap::from([(app.clone(), limits.max_sessions)]),
            global: limits.max_sessions_global,
            policy: limits.policy,
        },
    )
}

/// Returns the sessions to revoke so that every app holds at most its cap
/// and all apps together at most the global cap.
///
/// Sessions are taken in the policy's order of preference and each is kept
/// if keeping it breaks no cap. The caps are nested (each app's sessions are
/// a subset of all sessions: a laminar family), which makes this greedy
/// choice optimal: it revokes the fewest sessions that satisfy every cap,
/// and among those, the ones the policy likes least. (Revoking for each
/// limit on its own, as some peers do, can revoke two sessions where one
/// would do.)
///
/// With `evict_oldest` and logins alone, the outcome does not depend on
/// arrival order: the sessions a full check keeps are also kept by every
/// check on a subset that holds them, so no check ever revokes a session
/// that a later, fuller check would keep.
pub fn select_victims(active: &[Candidate], caps: &Caps) -> Vec<Victim> {
    let global = caps.global as usize;
    let over_app = caps.per_app.iter().any(|(app, &cap)| {
        cap != 0 && active.iter().filter(|c| &c.app == app).count() > cap as usize
    });
    if !over_app && (global == 0 || active.len() <= global) {
        return Vec::new();
    }
    let mut ranked: Vec<&Candidate> = active.iter().collect();
    ranked.sort_by(|a, b| keep_order(caps.policy, a, b));
    let mut kept_per_app: BTreeMap<&AppName, usize> = BTreeMap::new();
    let mut kept = 0usize;
    let mut victims = Vec::new();
    for c in ranked {
        let cap = caps.app_cap(&c.app);
        let kept_here = kept_per_app.entry(&c.app).or_default();
        if cap != 0 && *kept_here >= cap {
            victims.push(Victim {
                session: c.clone(),
                scope: Scope::App,
            });
        } else if global != 0 && kept >= global {
            victims.push(Victim {
                session: c.clone(),
                scope: Scope::Global,
            });
        } else {
            kept += 1;
            *kept_here += 1;
        }
    }
    victims
}

/// Sessions of `app` not seen for `idle_timeout` seconds at `at` (event
/// time: the time of the event being processed, so a backlog in the queue
/// does not make live sessions look idle); they count as expired. `except`
/// (the session of that event, which is evidently alive) never is. 0
/// disables the timeout.
pub fn idle_sessions<'a>(
    active: &'a [Candidate],
    app: &AppName,
    idle_timeout: u64,
    at: DateTime<Utc>,
    except: Option<&SessionId>,
) -> Vec<&'a Candidate> {
    if idle_timeout == 0 {
        return Vec::new();
    }
    // A timeout reaching back past the earliest time chrono can hold makes
    // no session idle (and must not panic the batch).
    let Some(cutoff) = i64::try_from(idle_timeout)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|timeout| at.checked_sub_signed(timeout))
    else {
        return Vec::new();
    };
    active
        .iter()
        .filter(|c| &c.app == app && c.last_seen_at <= cutoff)
        .filter(|c| except != Some(&c.session_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap()
    }

    fn c_in(app: &str, id: &str, login: u32, seen: u32) -> Candidate {
        Candidate {
            app: AppName::parse(app).unwrap(),
            session_id: SessionId::parse(id).unwrap(),
            login_at: at(login),
            login_seen: true,
            last_seen_at: at(seen),
        }
    }

    fn c(id: &str, minute: u32) -> Candidate {
        c_in("shop", id, minute, minute)
    }

    fn limits(max: u32) -> Limits {
        Limits {
            max_sessions: max,
            max_sessions_global: 0,
            policy: EvictionPolicy::EvictOldest,
            idle_timeout: 0,
            log_limit: None,
        }
    }

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    fn ids(v: &[Victim]) -> Vec<&str> {
        let mut ids: Vec<&str> = v.iter().map(|v| v.session.session_id.as_str()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn within_the_limit_nothing_is_revoked() {
        assert!(sessions_to_revoke(&[c("a", 1)], &shop(), &limits(1)).is_empty());
        assert!(sessions_to_revoke(&[], &shop(), &limits(1)).is_empty());
        assert!(sessions_to_revoke(&[c("a", 1), c("b", 2)], &shop(), &limits(2)).is_empty());
    }

    #[test]
    fn zero_means_unlimited() {
        let many: Vec<_> = (0..50).map(|i| c(&format!("s{i}"), i)).collect();
        assert!(sessions_to_revoke(&many, &shop(), &limits(0)).is_empty());
    }

    #[test]
    fn evict_oldest_keeps_the_most_recent_logins() {
        let s = [c("old", 1), c("new", 3), c("mid", 2)];
        assert_eq!(
            ids(&sessions_to_revoke(&s, &shop(), &limits(1))),
            ["mid", "old"]
        );
        assert_eq!(ids(&sessions_to_revoke(&s, &shop(), &limits(2))), ["old"]);
    }

    #[test]
    fn evict_idle_keeps_the_most_recently_seen() {
        let s = [
            c_in("shop", "old-busy", 1, 9),
            c_in("shop", "new-idle", 5, 5),
        ];
        let l = Limits {
            policy: EvictionPolicy::EvictIdle,
            ..limits(1)
        };
        assert_eq!(ids(&sessions_to_revoke(&s, &shop(), &l)), ["new-idle"]);
    }

    #[test]
    fn deny_new_keeps_the_earliest_logins() {
        let s = [c("first", 1), c("second", 2), c("newcomer", 3)];
        let l = Limits {
            policy: EvictionPolicy::DenyNew,
            ..limits(2)
        };
        assert_eq!(ids(&sessions_to_revoke(&s, &shop(), &l)), ["newcomer"]);
    }

    #[test]
    fn sessions_known_only_from_requests_are_the_oldest() {
        let mut legacy = c("legacy", 9);
        legacy.login_seen = false;
        let s = [c("fresh", 1), legacy];
        assert_eq!(
            ids(&sessions_to_revoke(&s, &shop(), &limits(1))),
            ["legacy"]
        );
        // deny_new goes by first sight: legacy was first seen after fresh.
        let deny = Limits {
            policy: EvictionPolicy::DenyNew,
            ..limits(1)
        };
        assert_eq!(ids(&sessions_to_revoke(&s, &shop(), &deny)), ["legacy"]);
    }

    #[test]
    fn ties_are_broken_by_session_id_whatever_the_input_order() {
        let a = [c("x", 5), c("y", 5)];
        let b = [c("y", 5), c("x", 5)];
        assert_eq!(
            sessions_to_revoke(&a, &shop(), &limits(1)),
            sessions_to_revoke(&b, &shop(), &limits(1))
        );
        assert_eq!(ids(&sessions_to_revoke(&a, &shop(), &limits(1))), ["x"]);
    }

    #[test]
    fn the_global_limit_counts_every_app() {
        let s = [
            c_in("blog", "b1", 1, 1),
            c_in("wiki", "w1", 2, 2),
            c_in("shop", "s1", 3, 3),
        ];
        let l = Limits {
            max_sessions_global: 2,
            ..limits(1)
        };
        let v = sessions_to_revoke(&s, &shop(), &l);
        assert_eq!(ids(&v), ["b1"]);
        assert_eq!(v[0].scope, Scope::Global);
    }

    /// Both limits exceeded: one revocation in the app satisfies both, where
    /// handling each limit on its own would revoke two sessions.
    #[test]
    fn both_limits_exceeded_revokes_the_fewest() {
        let s = [
            c_in("blog", "b1", 1, 1),
            c_in("shop", "s1", 2, 2),
            c_in("shop", "s2", 3, 3),
        ];
        let l = Limits {
            max_sessions_global: 2,
            ..limits(1)
        };
        let v = sessions_to_revoke(&s, &shop(), &l);
        assert_eq!(ids(&v), ["s1"]);
        assert_eq!(v[0].scope, Scope::App);
    }

    #[test]
    fn idle_sessions_of_the_app_only_never_the_events_own() {
        let s = [
            c_in("shop", "idle", 1, 1),
            c_in("shop", "busy", 1, 25),
            c_in("blog", "other", 1, 1),
            c_in("shop", "current", 1, 1),
        ];
        let current = SessionId::parse("current").unwrap();
        let idle = idle_sessions(&s, &shop(), 600, at(30), Some(&current));
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0].session_id.as_str(), "idle");
        assert!(idle_sessions(&s, &shop(), 0, at(30), None).is_empty());
        // A timeout longer than chrono's time line: nothing is idle, no panic.
        let early = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
        for timeout in [u64::MAX, i64::MAX as u64, 10_000_000_000_000] {
            assert!(idle_sessions(&s, &shop(), timeout, at(30), None).is_empty());
            assert!(idle_sessions(&s, &shop(), timeout, early, None).is_empty());
        }
    }

    #[test]
    fn deny_new_ranks_by_first_sight_whatever_the_login_flag() {
        // B's first request (10:05) beat its login to the worker: B must not
        // pass for older than A, who logged in at 10:00.
        let a = c("a", 0);
        let mut b = c("b", 5);
        b.login_seen = false;
        let l = Limits {
            policy: EvictionPolicy::DenyNew,
            ..limits(1)
        };
        assert_eq!(ids(&sessions_to_revoke(&[a, b], &shop(), &l)), ["b"]);
    }

    #[test]
    fn other_apps_caps_count_before_the_global_cap() {
        // global 3, blog capped at 1: the blog surplus goes first, so the
        // old shop session need not.
        let s = [
            c_in("shop", "s-old", 0, 0),
            c_in("blog", "b1", 1, 1),
            c_in("blog", "b2", 2, 2),
            c_in("blog", "b3", 3, 3),
        ];
        let caps = Caps {
            per_app: BTreeMap::from([(shop(), 1), (AppName::parse("blog").unwrap(), 1)]),
            global: 3,
            policy: EvictionPolicy::EvictOldest,
        };
        let v = select_victims(&s, &caps);
        assert_eq!(ids(&v), ["b1", "b2"]);
        assert!(v.iter().all(|v| v.scope == Scope::App));
    }

    /// Replays logins in every order, a check after each, and compares the
    /// survivors: with logins alone the final state must not depend on order.
    #[test]
    fn any_arrival_order_of_logins_ends_in_the_same_state() {
        fn permutations(items: Vec<Candidate>) -> Vec<Vec<Candidate>> {
            if items.len() <= 1 {
                return vec![items];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.clone();
                let first = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, first.clone());
                    out.push(p);
                }
            }
            out
        }
        let logins = vec![c("a", 1), c("b", 4), c("c", 2), c("d", 4), c("e", 3)];
        for max in 0..=5 {
            let mut outcomes = std::collections::BTreeSet::new();
            for order in permutations(logins.clone()) {
                outcomes.insert(replay(&order, &limits(max)));
            }
            assert_eq!(outcomes.len(), 1, "max {max}: {outcomes:?}");
        }
    }

    /// Applies logins one by one, checking after each; returns the survivors.
    fn replay(order: &[Candidate], limits: &Limits) -> Vec<String> {
        let mut active: Vec<Candidate> = Vec::new();
        for login in order {
            active.push(login.clone());
            let revoked = sessions_to_revoke(&active, &login.app, limits);
            active.retain(|s| !revoked.iter().any(|v| &v.session == s));
        }
        let mut survivors: Vec<String> = active
            .iter()
            .map(|s| format!("{}/{}", s.app, s.session_id))
            .collect();
        survivors.sort();
        survivors
    }

    fn arb_session() -> impl Strategy<Value = Candidate> {
        (0..3usize, 0..1000u32, 0..30u32, 0..30u32, any::<bool>()).prop_map(
            |(app, id, login, seen, login_seen)| Candidate {
                app: AppName::parse(["shop", "blog", "wiki"][app]).unwrap(),
                session_id: SessionId::parse(&format!("s{id}")).unwrap(),
                login_at: at(login),
                login_seen,
                last_seen_at: at(login.max(seen)),
            },
        )
    }

    fn arb_limits() -> impl Strategy<Value = Limits> {
        (0..5u32, 0..6u32, 0..3usize).prop_map(|(max, global, policy)| Limits {
            max_sessions: max,
            max_sessions_global: global,
            policy: EvictionPolicy::ALL[policy],
            idle_timeout: 0,
            log_limit: None,
        })
    }

    fn dedup(mut sessions: Vec<Candidate>) -> Vec<Candidate> {
        sessions.sort_by(|a, b| (&a.app, &a.session_id).cmp(&(&b.app, &b.session_id)));
        sessions.dedup_by(|a, b| a.app == b.app && a.session_id == b.session_id);
        sessions
    }

    proptest! {
        /// Whatever the sessions and limits: the survivors satisfy both
        /// limits, and no smaller set of revocations could.
        #[test]
        fn every_limit_holds_with_the_fewest_revocations(
            sessions in prop::collection::vec(arb_session(), 0..25),
            limits in arb_limits(),
            app in 0..3usize,
        ) {
            let sessions = dedup(sessions);
            let app = AppName::parse(["shop", "blog", "wiki"][app]).unwrap();
            let victims = sessions_to_revoke(&sessions, &app, &limits);
            let kept: Vec<&Candidate> = sessions
                .iter()
                .filter(|s| !victims.iter().any(|v| &v.session == *s))
                .collect();
            let kept_in_app = kept.iter().filter(|s| s.app == app).count();
            if limits.max_sessions != 0 {
                prop_assert!(kept_in_app <= limits.max_sessions as usize);
            }
            if limits.max_sessions_global != 0 {
                prop_assert!(kept.len() <= limits.max_sessions_global as usize);
            }
            // The most that can be kept: the app's sessions up to its limit,
            // plus all others, capped by the global limit.
            let in_app = sessions.iter().filter(|s| s.app == app).count();
            let others = sessions.len() - in_app;
            let app_cap = if limits.max_sessions == 0 { in_app } else { in_app.min(limits.max_sessions as usize) };
            let mut best = app_cap + others;
            if limits.max_sessions_global != 0 {
                best = best.min(limits.max_sessions_global as usize);
            }
            prop_assert_eq!(kept.len(), best, "revoked more than needed");
        }

        /// Caps on every app at once: still every cap holds, with the fewest
        /// revocations.
        #[test]
        fn every_cap_holds_with_the_fewest_revocations_across_apps(
            sessions in prop::collection::vec(arb_session(), 0..25),
            app_caps in prop::collection::vec(0..4u32, 3),
            global in 0..8u32,
            policy in 0..3usize,
        ) {
            let sessions = dedup(sessions);
            let names = ["shop", "blog", "wiki"].map(|a| AppName::parse(a).unwrap());
            let caps = Caps {
                per_app: names.iter().cloned().zip(app_caps.iter().copied()).collect(),
                global,
                policy: EvictionPolicy::ALL[policy],
            };
            let victims = select_victims(&sessions, &caps);
            let kept: Vec<&Candidate> = sessions
                .iter()
                .filter(|s| !victims.iter().any(|v| &v.session == *s))
                .collect();
            let mut best = 0;
            for (name, &cap) in names.iter().zip(&app_caps) {
                let here = kept.iter().filter(|s| &s.app == name).count();
                if cap != 0 {
                    prop_assert!(here <= cap as usize);
                }
                let all_here = sessions.iter().filter(|s| &s.app == name).count();
                best += if cap == 0 { all_here } else { all_here.min(cap as usize) };
            }
            if global != 0 {
                prop_assert!(kept.len() <= global as usize);
                best = best.min(global as usize);
            }
            prop_assert_eq!(kept.len(), best, "revoked more than needed");
        }

        /// The result does not depend on the order the sessions are given in.
        #[test]
        fn input_order_does_not_matter(
            sessions in prop::collection::vec(arb_session(), 0..15),
            limits in arb_limits(),
        ) {
            let sessions = dedup(sessions);
            let mut reversed = sessions.clone();
            reversed.reverse();
            let shop = shop();
            let mut a = sessions_to_revoke(&sessions, &shop, &limits);
            let mut b = sessions_to_revoke(&reversed, &shop, &limits);
            a.sort_by(|x, y| older_first(&x.session, &y.session));
            b.sort_by(|x, y| older_first(&x.session, &y.session));
            prop_assert_eq!(a, b);
        }

        /// With logins alone and evict_oldest, any arrival order gives the
        /// same survivors.
        #[test]
        fn logins_in_any_order_end_the_same(
            sessions in prop::collection::vec(arb_session(), 1..12),
            max in 0..4u32,
            global in 0..5u32,
            seed in any::<u64>(),
        ) {
            let sessions: Vec<Candidate> = dedup(sessions)
                .into_iter()
                .map(|mut s| { s.login_seen = true; s })
                .collect();
            let limits = Limits { max_sessions_global: global, ..limits(max) };
            let mut shuffled = sessions.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            // With a global limit, only per-app order independence holds
            // when all sessions share one app; keep the property honest.
            if global != 0 {
                let one_app: Vec<Candidate> = sessions.iter().cloned().map(|mut s| { s.app = shop(); s }).collect();
                let one_app = dedup(one_app);
                let mut shuffled_one = one_app.clone();
                shuffled_one.reverse();
                prop_assert_eq!(replay(&one_app, &limits), replay(&shuffled_one, &limits));
            } else {
                prop_assert_eq!(replay(&sessions, &limits), replay(&shuffled, &limits));
            }
        }
    }
}
