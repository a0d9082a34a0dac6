//! What the worker adds to a message it cannot accept before it publishes
//! it, body and properties unchanged, to the dead-letter exchange.

use serde::{Deserialize, Serialize};

use crate::names::MAX_ERROR_HEADER_BYTES;

/// Why a message was dead-lettered, in a word: the value of the
/// [`ERROR_KIND_HEADER`](crate::names::ERROR_KIND_HEADER) header, for
/// sorting and alerting (the error header says what exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(
    description = "Why the message was dead-lettered, in a word, for sorting and \
                          alerting (the error header says what exactly)."
)]
pub enum ErrorKind {
    /// The body is not a valid event (not JSON, not an object, a field
    /// missing, of the wrong type or out of bounds, too large): the
    /// publishing app has a bug; the same message fails again.
    Invalid,
    /// The message's AMQP user-id may not speak for its app (with
    /// `amqp.require_user_id`): wrong credentials or permissions.
    Forbidden,
    /// `occurred_at` is further ahead of the worker's clock than
    /// `limits.max_clock_skew` allows: a clock is wrong.
    ClockSkew,
    /// The database refused the event every time, `amqp.max_redeliveries`
    /// times: look at the error and the worker's log.
    Failed,
}

impl ErrorKind {
    /// Every kind this version sets.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Invalid,
        ErrorKind::Forbidden,
        ErrorKind::ClockSkew,
        ErrorKind::Failed,
    ];

    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::ClockSkew => "clock_skew",
            ErrorKind::Failed => "failed",
        }
    }

    /// The kind named `s`, if this version knows it.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The headers the worker adds to a dead-lettered message. The message
/// keeps the headers it came with too (and a redelivered one RabbitMQ's
/// `x-delivery-count`).
///
/// Its JSON Schema (`schema/dead-letter-headers.schema.json`) is generated
/// from this type: the AMQP headers table, read as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(
    description = "The AMQP headers of a message in the dead-letter queue, read as a \
                          JSON object: session-guard adds these two to the headers the \
                          message came with (which stay, like RabbitMQ's `x-delivery-count` \
                          on a redelivered one). Messages the broker itself dead-letters \
                          (delivery limit reached) carry RabbitMQ's `x-death` instead."
)]
pub struct DeadLetterHeaders {
    /// What was wrong, as a person reads it (e.g. `missing field user_id`):
    /// UTF-8, at most 1024 bytes, longer texts cut at a character boundary.
    #[serde(rename = "x-session-guard-error")]
    #[schemars(length(min = 1, max = MAX_ERROR_HEADER_BYTES))]
    pub error: String,
    /// The kind of refusal.
    #[serde(rename = "x-session-guard-error-kind")]
    pub kind: ErrorKind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ERROR_HEADER, ERROR_KIND_HEADER};

    #[test]
    fn the_header_names_are_the_constants() {
        let headers = DeadLetterHeaders {
            error: "missing field user_id".into(),
            kind: ErrorKind::Invalid,
        };
        let json = serde_json::to_value(&headers).unwrap();
        assert_eq!(json[ERROR_HEADER], "missing field user_id");
        assert_eq!(json[ERROR_KIND_HEADER], "invalid");
        assert_eq!(json.as_object().unwrap().len(), 2);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(ErrorKind::parse("exploded"), None);
    }
}
