//! What an app claims about its user (the events' `attributes`), remembered
//! per user and app: an app may send its claims at login only, and they
//! stand for the user's later events in that app until it sends others.
//!
//! The latest claim by event time wins, never the latest to arrive: an older
//! event delivered late does not replace a newer claim. Each app speaks for
//! itself only: an app's claims decide the user's limits in that app, never
//! in another.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The attributes an app last claimed for a user, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The claimed attributes; empty when the app claims nothing.
    pub attributes: Map<String, Value>,
    /// Event time of the latest event that claimed them.
    pub occurred_at: DateTime<Utc>,
}

/// What an event did to the remembered claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimChange {
    /// Nothing: the event claims nothing, or its claim is older than the
    /// remembered one, or the same claim at the same time.
    Kept,
    /// The same attributes, claimed again later: only the time moved.
    Renewed,
    /// Other attributes (or the first claim): the limits may change.
    Replaced,
}

impl Claim {
    /// Applies an event's `attributes` (`None`: the event claims nothing) at
    /// event time `at` to the remembered claim `current`.
    pub fn update(
        current: &mut Option<Claim>,
        claimed: Option<&Map<String, Value>>,
        at: DateTime<Utc>,
    ) -> ClaimChange {
        let change = Claim::change_of(current.as_ref(), claimed, at);
        match (change, claimed, current.as_mut()) {
            (ClaimChange::Renewed, _, Some(c)) => c.occurred_at = at,
            (ClaimChange::Replaced, Some(claimed), _) => {
                *current = Some(Claim {
                    attributes: claimed.clone(),
                    occurred_at: at,
                });
            }
            _ => {}
        }
        change
    }

    /// What [`Claim::update`] would do, without doing it.
    pub fn change_of(
        current: Option<&Claim>,
        claimed: Option<&Map<String, Value>>,
        at: DateTime<Utc>,
    ) -> ClaimChange {
        let Some(claimed) = claimed else {
            return ClaimChange::Kept;
        };
        match current {
            // Ties go to the claim at hand, as in the store's upsert.
            Some(c) if c.occurred_at > at => ClaimChange::Kept,
            Some(c) if c.attributes == *claimed => {
                if at > c.occurred_at {
                    ClaimChange::Renewed
                } else {
                    ClaimChange::Kept
                }
            }
            _ => ClaimChange::Replaced,
        }
    }

    /// Whether `later` is this claim renewed by less than `resolution`: a
    /// write the store can skip, as it skips small moves of `last_seen_at`.
    pub fn only_renewed_within(&self, later: &Claim, resolution: Duration) -> bool {
        let moved = later.occurred_at.signed_duration_since(self.occurred_at);
        moved.to_std().is_ok_and(|m| m < resolution) && later.attributes == self.attributes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap()
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn events_without_attributes_leave_the_claim_alone() {
        let mut none = None;
        assert_eq!(Claim::update(&mut none, None, at(1)), ClaimChange::Kept);
        assert_eq!(none, None);
        let staff = map(json!({"roles": ["staff"]}));
        let mut some = None;
        assert_eq!(
            Claim::update(&mut some, Some(&staff), at(1)),
            ClaimChange::Replaced
        );
        assert_eq!(Claim::update(&mut some, None, at(5)), ClaimChange::Kept);
        assert_eq!(some.unwrap().attributes, staff, "still staff");
    }

    #[test]
    fn an_empty_object_replaces_the_claim() {
        let mut c = Some(Claim {
            attributes: map(json!({"superuser": true})),
            occurred_at: at(1),
        });
        assert_eq!(
            Claim::update(&mut c, Some(&Map::new()), at(2)),
            ClaimChange::Replaced
        );
        assert!(c.unwrap().attributes.is_empty());
    }

    #[test]
    fn the_latest_claim_by_event_time_wins_whatever_the_arrival_order() {
        let staff = map(json!({"roles": ["staff"]}));
        let nothing = Map::new();
        let mut c = None;
        Claim::update(&mut c, Some(&staff), at(1));
        // Claimed again at 10: only the time moves.
        assert_eq!(
            Claim::update(&mut c, Some(&staff), at(10)),
            ClaimChange::Renewed
        );
        // An event of 5, arriving late, claims nothing: too old to count.
        assert_eq!(
            Claim::update(&mut c, Some(&nothing), at(5)),
            ClaimChange::Kept
        );
        // The same event again: nothing new.
        assert_eq!(
            Claim::update(&mut c, Some(&staff), at(10)),
            ClaimChange::Kept
        );
        assert_eq!(
            c,
            Some(Claim {
                attributes: staff.clone(),
                occurred_at: at(10)
            })
        );

        // Both arrival orders of two claims end in the same state.
        let (a, b) = (map(json!({"plan": "a"})), map(json!({"plan": "b"})));
        let mut one = None;
        Claim::update(&mut one, Some(&a), at(3));
        Claim::update(&mut one, Some(&b), at(4));
        let mut other = None;
        Claim::update(&mut other, Some(&b), at(4));
        Claim::update(&mut other, Some(&a), at(3));
        assert_eq!(one, other);
        assert_eq!(one.unwrap().attributes, b);
    }

    #[test]
    fn small_renewals_need_no_write() {
        let c = Claim {
            attributes: map(json!({"plan": "a"})),
            occurred_at: at(1),
        };
        let mut later = c.clone();
        later.occurred_at += chrono::Duration::milliseconds(500);
        assert!(c.only_renewed_within(&later, Duration::from_secs(1)));
        assert!(!c.only_renewed_within(&later, Duration::ZERO));
        later.attributes = Map::new();
        assert!(!c.only_renewed_within(&later, Duration::from_secs(1)));
    }
}
