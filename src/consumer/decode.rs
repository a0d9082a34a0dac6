//! Decoding and checking a batch's deliveries, before any I/O: the consumer
//! does it before the batch goes in flight, so the next batch knows this
//! one's users.

use std::sync::Arc;

use chrono::Utc;
use lapin::message::Delivery;

use crate::broker;
use crate::configuration::Settings;
use crate::domain::dead_letter::ErrorKind;
use crate::domain::event::{EventKind, SessionEvent};

/// A batch's deliveries, decoded and checked.
pub(super) struct Decoded {
    /// Valid events, in delivery order; shared with the batches behind this
    /// one while it is in flight (see [`crate::apply::AheadHints::of`]).
    pub events: Arc<[SessionEvent]>,
    /// Where each valid event sits in the batch.
    pub positions: Vec<usize>,
    /// Deliveries to dead-letter: position, reason, kind.
    pub invalid: Vec<(usize, String, ErrorKind)>,
}

/// Decodes every delivery and checks it: the sender may speak for the
/// event's app, and its time is not too far ahead of ours.
pub(super) fn decode(settings: &Settings, batch: &[Delivery]) -> Decoded {
    let amqp = &settings.amqp;
    let max_skew = settings.limits.max_clock_skew();
    let now = Utc::now();
    let mut events = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    let mut invalid = Vec::new();
    for (i, delivery) in batch.iter().enumerate() {
        let checked = SessionEvent::decode(&delivery.data)
            .map_err(|e| (e.to_string(), ErrorKind::Invalid))
            .and_then(|event| {
                broker::check_app_identity(amqp, &delivery.properties, event.app.as_str())
                    .map(|()| event)
                    .map_err(|e| (e, ErrorKind::Forbidden))
            })
            .and_then(|event| match max_skew {
                Some(skew) => event
                    .check_clock(now, skew)
                    .map(|()| event)
                    .map_err(|e| (e.to_string(), ErrorKind::ClockSkew)),
                None => Ok(event),
            });
        match checked {
            Ok(event) => {
                events.push(event);
                positions.push(i);
            }
            Err((error, kind)) => invalid.push((i, error, kind)),
        }
    }
    Decoded {
        events: events.into(),
        positions,
        invalid,
    }
}

/// The `type` a message claims, as a metric label: an event kind's name,
/// or "unknown" when the message does not decode that far.
pub(super) fn kind_of(body: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Type<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Type>(body)
        .ok()
        .and_then(|t| EventKind::ALL.into_iter().find(|k| k.as_str() == t.kind))
        .map_or("unknown", EventKind::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_contract_is_named_and_the_rest_is_unknown() {
        for kind in EventKind::ALL {
            let body = format!(r#"{{"type": "{}", "app": "shop"}}"#, kind.as_str());
            assert_eq!(kind_of(body.as_bytes()), kind.as_str());
        }
        assert_eq!(kind_of(br#"{"type": "teleport"}"#), "unknown");
        assert_eq!(kind_of(b"not json"), "unknown");
    }
}
