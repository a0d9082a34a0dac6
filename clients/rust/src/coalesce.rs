//! Request coalescing: at most one `request` event per session per
//! interval, judged by the events' own `occurred_at`.
//!
//! A page load makes a handful of requests within a second, and each would
//! be a `request` event saying the same thing: the session is in use. The
//! worker stores `last_seen_at` to `worker.last_seen_resolution_ms` (1 s by
//! default) and does not write a move smaller than that, so requests closer
//! together than the resolution add nothing it would store. The first
//! request of a session goes out at once (a revoked session is noticed on
//! its first use); the ones after it, within the interval, are dropped and
//! counted.
//!
//! [`Coalescer`] is the decision alone: no I/O and no clock (times are
//! passed in), so it is tested without a broker. The publisher holds one
//! behind a mutex.

use std::num::NonZeroUsize;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lru::LruCache;

/// What becomes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Publish it: the session has no request on record, or its last
    /// published one is at least an interval older.
    Publish,
    /// Drop it (and count it): the session's last published request is
    /// less than an interval older than this one, or newer.
    Coalesce,
}

/// The sessions that published a request lately, and when (by the
/// request's `occurred_at`), at most `capacity` of them: the least
/// recently used is forgotten first, and a forgotten session's next
/// request is published at once. Only sessions active within the last
/// interval matter, so a capacity far above what one process sees within
/// an interval loses nothing.
pub(crate) struct Coalescer {
    /// Least time between two published requests of one session.
    interval: TimeDelta,
    /// Session id to the `occurred_at` of its last published request.
    published: LruCache<String, DateTime<Utc>>,
    /// Requests coalesced so far.
    coalesced: u64,
}

impl Coalescer {
    /// A coalescer holding at most `capacity` sessions. An interval beyond
    /// what a time difference can hold (about 292 million years) is taken
    /// as that: one request per session for as long as it is remembered.
    pub(crate) fn new(interval: Duration, capacity: NonZeroUsize) -> Coalescer {
        Coalescer {
            interval: TimeDelta::from_std(interval).unwrap_or(TimeDelta::MAX),
            // Sparse: memory grows with the sessions seen, up to the
            // capacity, instead of a table for all of them up front.
            published: LruCache::sparse(capacity),
            coalesced: 0,
        }
    }

    /// The verdict on a request of `session` at `at`, without recording
    /// anything; a coalesced one is counted. Looks the session up by
    /// `&str`: nothing is allocated. Publishers call it before they check
    /// and serialize a request, so a coalesced one costs a lookup.
    pub(crate) fn check(&mut self, session: &str, at: DateTime<Utc>) -> Verdict {
        let verdict = self.verdict(session, at);
        if verdict == Verdict::Coalesce {
            self.coalesced += 1;
        }
        verdict
    }

    /// Decides on a request of `session` at `at` and, if it is to be
    /// published, records it: the session's next requests within the
    /// interval are coalesced. A coalesced one is counted. Publishers call
    /// it once the request is checked (an invalid request records nothing)
    /// and hand it over only on [`Verdict::Publish`]: deciding and
    /// recording at once keeps two threads from both publishing one
    /// session's request.
    pub(crate) fn admit(&mut self, session: &str, at: DateTime<Utc>) -> Verdict {
        let verdict = self.verdict(session, at);
        match verdict {
            Verdict::Coalesce => self.coalesced += 1,
            Verdict::Publish => match self.published.get_mut(session) {
                Some(last) => *last = at,
                // A new session: its id is allocated once, here.
                None => {
                    self.published.put(session.to_owned(), at);
                }
            },
        }
        verdict
    }

    /// Forgets a session that ended (a logout): its id will not be used
    /// again, and its entry would only take room.
    pub(crate) fn forget(&mut self, session: &str) {
        self.published.pop(session);
    }

    /// Requests coalesced so far.
    pub(crate) fn coalesced(&self) -> u64 {
        self.coalesced
    }

    /// Sessions remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.published.len()
    }

    fn verdict(&mut self, session: &str, at: DateTime<Utc>) -> Verdict {
        // `get` marks the session as recently used: an active session
        // stays, whether its requests were published or coalesced.
        match self.published.get(session) {
            // A request older than the last published one is coalesced too:
            // the worker's last-seen time only moves forward, so it adds
            // nothing. Two valid times are at most ±10,000 years apart, far
            // within a TimeDelta: the difference cannot overflow.
            Some(last) if at.signed_duration_since(*last) < self.interval => Verdict::Coalesce,
            _ => Verdict::Publish,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// `ms` milliseconds after a fixed instant.
    fn t(ms: i64) -> DateTime<Utc> {
        "2026-11-27T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::milliseconds(ms)
    }

    fn coalescer(interval_ms: u64, capacity: usize) -> Coalescer {
        Coalescer::new(
            Duration::from_millis(interval_ms),
            NonZeroUsize::new(capacity).unwrap(),
        )
    }

    /// What `admit` says about each request, in order.
    fn admit_all(c: &mut Coalescer, requests: &[(&str, i64)]) -> Vec<Verdict> {
        requests.iter().map(|(s, ms)| c.admit(s, t(*ms))).collect()
    }

    use Verdict::{Coalesce, Publish};

    #[test]
    fn the_first_request_goes_at_once_and_the_rest_of_the_interval_is_coalesced() {
        let mut c = coalescer(1_000, 10);
        let verdicts = admit_all(
            &mut c,
            &[
                ("s1", 0),
                ("s1", 100),
                ("s1", 999),
                // Exactly an interval after the last published one.
                ("s1", 1_000),
                ("s1", 1_500),
                ("s1", 2_000),
            ],
        );
        assert_eq!(
            verdicts,
            [Publish, Coalesce, Coalesce, Publish, Coalesce, Publish]
        );
        assert_eq!(c.coalesced(), 3);
    }

    #[test]
    fn the_interval_counts_from_the_last_published_request_not_the_last_seen() {
        let mut c = coalescer(1_000, 10);
        // Requests every 400 ms, without a pause: a coalesced one does not
        // push the next publication back (the session is not starved), so
        // the first at least 1,000 ms after the last published one goes
        // out: 0, 1,200, 2,400.
        let requests: Vec<(&str, i64)> = (0..8).map(|i| ("s1", i * 400)).collect();
        assert_eq!(
            admit_all(&mut c, &requests),
            [
                Publish, Coalesce, Coalesce, Publish, Coalesce, Coalesce, Publish, Coalesce
            ]
        );
    }

    #[test]
    fn a_request_older_than_the_last_published_one_is_coalesced() {
        let mut c = coalescer(1_000, 10);
        assert_eq!(c.admit("s1", t(5_000)), Publish);
        // Older by more than the interval: still nothing the worker would
        // store (last-seen only moves forward).
        assert_eq!(c.admit("s1", t(1_000)), Coalesce);
        assert_eq!(c.admit("s1", t(4_999)), Coalesce);
        assert_eq!(c.admit("s1", t(6_000)), Publish);
    }

    #[test]
    fn sessions_are_coalesced_each_on_its_own() {
        let mut c = coalescer(1_000, 10);
        assert_eq!(
            admit_all(
                &mut c,
                &[("s1", 0), ("s2", 10), ("s1", 20), ("s2", 30), ("s3", 40)]
            ),
            [Publish, Publish, Coalesce, Coalesce, Publish]
        );
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn check_records_nothing_and_admit_decides_again() {
        let mut c = coalescer(1_000, 10);
        // Checked, then found invalid by the publisher: never admitted, so
        // the next request of the session is still the first.
        assert_eq!(c.check("s1", t(0)), Publish);
        assert_eq!(c.len(), 0);
        assert_eq!(c.check("s1", t(10)), Publish);
        assert_eq!(c.admit("s1", t(10)), Publish);
        assert_eq!(c.check("s1", t(20)), Coalesce);
        // Two threads checked the same session before either admitted:
        // the second admission is coalesced.
        assert_eq!(c.check("s2", t(0)), Publish);
        assert_eq!(c.check("s2", t(1)), Publish);
        assert_eq!(c.admit("s2", t(0)), Publish);
        assert_eq!(c.admit("s2", t(1)), Coalesce);
        assert_eq!(c.coalesced(), 2);
    }

    #[test]
    fn a_forgotten_session_publishes_its_next_request_at_once() {
        let mut c = coalescer(1_000, 10);
        assert_eq!(c.admit("s1", t(0)), Publish);
        c.forget("s1");
        c.forget("never-seen");
        assert_eq!(c.len(), 0);
        assert_eq!(c.admit("s1", t(1)), Publish);
    }

    #[test]
    fn the_least_recently_used_session_is_forgotten_first() {
        let mut c = coalescer(1_000, 2);
        assert_eq!(c.admit("s1", t(0)), Publish);
        assert_eq!(c.admit("s2", t(0)), Publish);
        // s1 is used again (coalesced): s2 is now the least recently used.
        assert_eq!(c.check("s1", t(10)), Coalesce);
        assert_eq!(c.admit("s3", t(20)), Publish);
        assert_eq!(c.len(), 2);
        assert_eq!(c.check("s1", t(30)), Coalesce, "s1 stayed");
        assert_eq!(c.check("s2", t(30)), Publish, "s2 was forgotten");
    }

    #[test]
    fn an_interval_too_long_for_a_time_difference_coalesces_every_later_request() {
        let mut c = Coalescer::new(Duration::MAX, NonZeroUsize::new(1).unwrap());
        let year_9999 = "9999-12-31T23:59:59Z".parse().unwrap();
        let year_1 = "0001-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(c.admit("s1", year_1), Publish);
        assert_eq!(c.admit("s1", year_9999), Coalesce);
    }

    /// One step of a generated sequence: a request, or a logout (which
    /// forgets the session), of one of a few sessions.
    #[derive(Debug, Clone)]
    enum Step {
        Request { session: u8, at_ms: i64 },
        Logout { session: u8 },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            8 => (0u8..6, 0i64..20_000).prop_map(|(session, at_ms)| Step::Request { session, at_ms }),
            1 => (0u8..6).prop_map(|session| Step::Logout { session }),
        ];
        prop::collection::vec(step, 0..200)
    }

    proptest! {
        /// With room for every session, the coalescer decides exactly as
        /// the rule says: publish when the session has no published
        /// request, or the last one is at least an interval older.
        #[test]
        fn with_room_for_every_session_it_follows_the_rule(
            steps in steps(),
            interval_ms in 1u64..5_000,
        ) {
            let mut c = coalescer(interval_ms, 6);
            let mut last: HashMap<u8, i64> = HashMap::new();
            let mut coalesced = 0;
            for step in steps {
                match step {
                    Step::Request { session, at_ms } => {
                        let expected = match last.get(&session) {
                            Some(l) if at_ms - l < interval_ms as i64 => Coalesce,
                            _ => Publish,
                        };
                        let verdict = c.admit(&format!("s{session}"), t(at_ms));
                        prop_assert_eq!(verdict, expected);
                        match verdict {
                            Publish => { last.insert(session, at_ms); }
                            Coalesce => coalesced += 1,
                        }
                    }
                    Step::Logout { session } => {
                        c.forget(&format!("s{session}"));
                        last.remove(&session);
                    }
                }
            }
            prop_assert_eq!(c.coalesced(), coalesced);
        }

        /// With less room than sessions, memory stays within the capacity,
        /// and a session it remembers still never publishes twice within
        /// an interval.
        #[test]
        fn with_little_room_memory_is_bounded_and_remembered_sessions_are_coalesced(
            steps in steps(),
            capacity in 1usize..4,
        ) {
            let mut c = coalescer(1_000, capacity);
            for step in steps {
                match step {
                    Step::Request { session, at_ms } => {
                        let id = format!("s{session}");
                        let remembered = c.published.peek(&id).copied();
                        let verdict = c.admit(&id, t(at_ms));
                        if let Some(last) = remembered {
                            let close = t(at_ms).signed_duration_since(last)
                                < TimeDelta::milliseconds(1_000);
                            prop_assert_eq!(verdict == Coalesce, close);
                        } else {
                            prop_assert_eq!(verdict, Publish);
                        }
                    }
                    Step::Logout { session } => c.forget(&format!("s{session}")),
                }
                prop_assert!(c.len() <= capacity);
            }
        }
    }
}
