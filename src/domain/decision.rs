//! The decision core: given a user's active sessions and the limits in force,
//! which sessions to revoke. Pure functions, no I/O, unit-tested here.

use chrono::{DateTime, Utc};

use super::event::{AppName, SessionId};

/// The limits that apply to one user in one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Active sessions allowed at once; 0 means unlimited.
    pub max_sessions: u32,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.max_sessions == 0
    }
}

/// An active session, as the decision core needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub app: AppName,
    pub session_id: SessionId,
    /// When the session logged in (event time): the ranking key.
    pub login_at: DateTime<Utc>,
    /// Whether a login event was seen; sessions known only from requests
    /// (older than the deployment, or forgotten by retention) rank below.
    pub login_seen: bool,
}

/// Returns the sessions to revoke so that at most `limits.max_sessions` stay,
/// keeping the most recently logged-in ones.
///
/// Sessions whose login was seen rank above sessions known only from a
/// request (their real login time is unknown, and older than anything the
/// worker saw: they predate it). Within each group they are ranked by
/// `login_at` (newest first), ties broken by app and session id, so the
/// result depends only on the set of sessions, never on
/// the order they are given in. That is what makes the outcome independent of
/// arrival order across consumers: the newest `max_sessions` sessions of a set
/// are also among the newest of any subset that holds them, so no check can
/// ever revoke a session that a later, fuller check would keep.
pub fn sessions_to_revoke(active: &[Candidate], limits: Limits) -> Vec<Candidate> {
    if limits.is_unlimited() || active.len() <= limits.max_sessions as usize {
        return Vec::new();
    }
    let mut ranked: Vec<&Candidate> = active.iter().collect();
    ranked.sort_by(|a, b| {
        b.login_seen
            .cmp(&a.login_seen)
            .then_with(|| b.login_at.cmp(&a.login_at))
            .then_with(|| b.app.cmp(&a.app))
            .then_with(|| b.session_id.cmp(&a.session_id))
    });
    ranked
        .into_iter()
        .skip(limits.max_sessions as usize)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn c(id: &str, minute: u32) -> Candidate {
        Candidate {
            app: AppName::parse("shop").unwrap(),
            session_id: SessionId::parse(id).unwrap(),
            login_at: Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap(),
            login_seen: true,
        }
    }

    fn ids(v: &[Candidate]) -> Vec<&str> {
        v.iter().map(|c| c.session_id.as_str()).collect()
    }

    #[test]
    fn within_the_limit_nothing_is_revoked() {
        assert!(sessions_to_revoke(&[c("a", 1)], Limits { max_sessions: 1 }).is_empty());
        assert!(sessions_to_revoke(&[], Limits { max_sessions: 1 }).is_empty());
        let two = [c("a", 1), c("b", 2)];
        assert!(sessions_to_revoke(&two, Limits { max_sessions: 2 }).is_empty());
    }

    #[test]
    fn zero_means_unlimited() {
        let many: Vec<_> = (0..50).map(|i| c(&format!("s{i}"), i)).collect();
        assert!(sessions_to_revoke(&many, Limits { max_sessions: 0 }).is_empty());
    }

    #[test]
    fn keeps_the_most_recent_logins() {
        let s = [c("old", 1), c("new", 3), c("mid", 2)];
        assert_eq!(
            ids(&sessions_to_revoke(&s, Limits { max_sessions: 1 })),
            ["mid", "old"]
        );
        assert_eq!(
            ids(&sessions_to_revoke(&s, Limits { max_sessions: 2 })),
            ["old"]
        );
    }

    #[test]
    fn sessions_known_only_from_requests_rank_below_seen_logins() {
        let mut legacy = c("legacy", 9);
        legacy.login_seen = false;
        let s = [c("fresh", 1), legacy];
        assert_eq!(
            ids(&sessions_to_revoke(&s, Limits { max_sessions: 1 })),
            ["legacy"]
        );
    }

    #[test]
    fn ties_are_broken_by_session_id_whatever_the_input_order() {
        let a = [c("x", 5), c("y", 5)];
        let b = [c("y", 5), c("x", 5)];
        let limits = Limits { max_sessions: 1 };
        assert_eq!(
            sessions_to_revoke(&a, limits),
            sessions_to_revoke(&b, limits)
        );
        assert_eq!(ids(&sessions_to_revoke(&a, limits)), ["x"]);
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
            let limits = Limits { max_sessions: max };
            let mut outcomes = std::collections::BTreeSet::new();
            for order in permutations(logins.clone()) {
                let mut active: Vec<Candidate> = Vec::new();
                for login in order {
                    active.push(login);
                    let revoked = sessions_to_revoke(&active, limits);
                    active.retain(|s| !revoked.contains(s));
                }
                let mut survivors: Vec<String> =
                    active.iter().map(|s| s.session_id.to_string()).collect();
                survivors.sort();
                outcomes.insert(survivors);
            }
            assert_eq!(outcomes.len(), 1, "max {max}: {outcomes:?}");
            let expected = if max == 0 { 5 } else { max.min(5) as usize };
            assert_eq!(outcomes.first().unwrap().len(), expected);
        }
    }
}
