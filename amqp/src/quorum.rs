//! Quorum queues: the arguments every queue session-guard and its apps
//! declare starts from, and the delivery count the broker adds to their
//! redeliveries.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Header RabbitMQ sets on a quorum queue's redeliveries: how many
/// deliveries of the message came before.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// `x-queue-type = quorum`: replicated, durable, with delivery counts and
/// delivery limits, and faster than classic queues on the machines measured.
/// Callers add their own arguments (dead-lettering, `x-delivery-limit`,
/// which RabbitMQ 3.x does not set by default) to the table.
pub fn quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// How many times the broker delivered this message before (0 for a first
/// delivery, or a message from a queue that does not count).
pub fn delivery_count(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get(DELIVERY_COUNT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => (*n).clamp(0, u32::MAX as i64) as u32,
        Some(AMQPValue::LongInt(n)) => (*n).max(0) as u32,
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => (*n).max(0) as u32,
        Some(AMQPValue::ShortShortInt(n)) => (*n).max(0) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_count(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(DELIVERY_COUNT_HEADER.into(), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn queues_are_quorum_queues() {
        let args = quorum_arguments();
        assert_eq!(
            args.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(args.inner().len(), 1);
    }

    #[test]
    fn delivery_counts_read_every_integer_type_and_clamp() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        assert_eq!(delivery_count(&with_count(AMQPValue::LongLongInt(3))), 3);
        assert_eq!(delivery_count(&with_count(AMQPValue::LongInt(2))), 2);
        assert_eq!(delivery_count(&with_count(AMQPValue::LongUInt(7))), 7);
        assert_eq!(delivery_count(&with_count(AMQPValue::ShortInt(1))), 1);
        assert_eq!(delivery_count(&with_count(AMQPValue::ShortShortInt(4))), 4);
        assert_eq!(delivery_count(&with_count(AMQPValue::LongInt(-1))), 0);
        assert_eq!(
            delivery_count(&with_count(AMQPValue::LongLongInt(i64::MAX))),
            u32::MAX
        );
        assert_eq!(
            delivery_count(&with_count(AMQPValue::LongString("3".into()))),
            0
        );
    }
}
