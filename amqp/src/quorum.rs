//! Quorum queues: the arguments every queue session-guard and its apps
//! declare starts from, and the delivery count the broker adds to their
//! redeliveries.

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

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

/// The argument that says on how many nodes a new quorum queue gets a
/// replica (its leader included).
pub const INITIAL_GROUP_SIZE_ARG: &str = "x-quorum-initial-group-size";

/// The default initial group size: three replicas, so that a queue
/// survives the loss of one node (a majority of 3 is 2). On a cluster of
/// fewer nodes RabbitMQ places one replica per node it has (a single node:
/// one); nodes that join later get none until `rabbitmq-queues grow`.
pub const DEFAULT_INITIAL_GROUP_SIZE: u32 = 3;

/// [`quorum_arguments`] with `x-quorum-initial-group-size = group_size`.
pub fn replicated_quorum_arguments(group_size: u32) -> FieldTable {
    let mut args = quorum_arguments();
    args.insert(
        INITIAL_GROUP_SIZE_ARG.into(),
        AMQPValue::LongInt(group_size.min(i32::MAX as u32) as i32),
    );
    args
}

/// The queue exists with another initial group size than asked for (or
/// none: declared before the setting existed), which RabbitMQ refuses on a
/// redeclare; [`declare_quorum_queue`] then keeps the existing queue as it
/// is. The group size only counts when a queue is created, so nothing is
/// lost but the difference: say it, and how to change the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptGroupSize {
    /// The existing queue's argument (`None`: it has none, RabbitMQ's
    /// default, all the nodes of the cluster at the time it was created).
    pub existing: Option<i64>,
    /// The size this declaration asked for.
    pub asked: u32,
}

impl std::fmt::Display for KeptGroupSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.existing {
            Some(n) => write!(f, "the queue exists with {INITIAL_GROUP_SIZE_ARG} {n}")?,
            None => write!(f, "the queue exists without {INITIAL_GROUP_SIZE_ARG}")?,
        }
        write!(
            f,
            ", not {}: kept as it is (the argument only counts when a queue is created; \
             `rabbitmq-queues grow` / `shrink` change the replicas of an existing one)",
            self.asked
        )
    }
}

/// The existing queue's initial group size, read from RabbitMQ's answer
/// to a redeclare (PRECONDITION_FAILED, "inequivalent arg
/// 'x-quorum-initial-group-size' ... but current is ..."): `Some(None)` if
/// it has none, `Some(Some(n))` if it has n, `None` if the answer is about
/// something else (another argument: a real mismatch).
pub fn existing_group_size(message: &str) -> Option<Option<i64>> {
    if !message.contains(&format!("inequivalent arg '{INITIAL_GROUP_SIZE_ARG}'")) {
        return None;
    }
    let current = message.rsplit_once("current is ")?.1;
    if current.trim_end().starts_with("none") {
        return Some(None);
    }
    // "'3'" or "the value '3' of type 'signedint'"
    let quoted = current.split('\'').nth(1)?;
    quoted.parse().ok().map(Some)
}

/// Declares the quorum queue `name` with `args` (from
/// [`replicated_quorum_arguments`]), each attempt on a channel of its own
/// (a refusal closes the channel). If the queue exists and differs in its
/// initial group size only, declares it again with the existing value, so
/// every other argument is still checked, and returns what was kept for
/// the caller to log. Any other error is returned as is.
pub async fn declare_quorum_queue(
    connection: &Connection,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<Option<KeptGroupSize>, lapin::Error> {
    let asked = match args.inner().get(INITIAL_GROUP_SIZE_ARG) {
        Some(AMQPValue::LongInt(n)) => Some((*n).max(0) as u32),
        _ => None,
    };
    let first = declare_on_own_channel(connection, name, options, args.clone()).await;
    let (Err(e), Some(asked)) = (&first, asked) else {
        return first.map(|()| None);
    };
    let Some(existing) = precondition_message(e).and_then(|m| existing_group_size(&m)) else {
        return first.map(|()| None);
    };
    let mut kept = FieldTable::default();
    for (key, value) in args.inner() {
        if key.as_str() != INITIAL_GROUP_SIZE_ARG {
            kept.insert(key.clone(), value.clone());
        }
    }
    if let Some(n) = existing {
        kept.insert(
            INITIAL_GROUP_SIZE_ARG.into(),
            AMQPValue::LongInt(n.clamp(0, i32::MAX as i64) as i32),
        );
    }
    declare_on_own_channel(connection, name, options, kept).await?;
    Ok(Some(KeptGroupSize { existing, asked }))
}

async fn declare_on_own_channel(
    connection: &Connection,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel.queue_declare(name.into(), options, args).await;
    if declared.is_ok() {
        let _ = channel.close(200, "declared".into()).await;
    }
    declared.map(|_| ())
}

/// The text of a PRECONDITION_FAILED channel error.
fn precondition_message(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
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
    fn replicated_queues_say_their_initial_group_size() {
        let args = replicated_quorum_arguments(3);
        assert_eq!(
            args.inner().get(INITIAL_GROUP_SIZE_ARG),
            Some(&AMQPValue::LongInt(3))
        );
        assert_eq!(args.inner().len(), 2);
    }

    #[test]
    fn the_existing_group_size_is_read_from_rabbitmqs_refusal() {
        // RabbitMQ 3.10.8's three answers, verbatim.
        let none = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for \
                    queue 'q' in vhost '/': received the value '3' of type 'signedint' but \
                    current is none";
        let three = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for \
                     queue 'q' in vhost '/': received '1' but current is '3'";
        let typed = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for \
                     queue 'q' in vhost '/': received none but current is the value '5' of \
                     type 'signedint'";
        assert_eq!(existing_group_size(none), Some(None));
        assert_eq!(existing_group_size(three), Some(Some(3)));
        assert_eq!(existing_group_size(typed), Some(Some(5)));
        let other = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' \
                     in vhost '/': received '2' but current is '5'";
        assert_eq!(existing_group_size(other), None);
        let kept = KeptGroupSize {
            existing: None,
            asked: 3,
        };
        assert!(
            kept.to_string()
                .contains("without x-quorum-initial-group-size, not 3")
        );
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
