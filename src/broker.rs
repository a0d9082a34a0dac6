//! RabbitMQ: connections, the topology session-guard owns, and confirmed
//! publishing.

use anyhow::Context;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use session_guard_amqp::quorum::{declare_quorum_queue, replicated_quorum_arguments};

use session_guard_amqp::brokers::{Brokers, Connected};

use crate::configuration::AmqpSettings;

pub use session_guard_protocol::names::{
    ERROR_HEADER, ERROR_KIND_HEADER, MAX_ERROR_HEADER_BYTES, error_header_value,
};

use crate::domain::dead_letter::ErrorKind;

/// Opens a connection to one of the brokers of `amqp.url`; `role` and the
/// events queue name show in the management UI next to it ("session-guard
/// consumer (session_guard.events)"). For one-off connections; the
/// worker's tasks, which reconnect, use [`connect_to`] with the brokers
/// they share.
pub async fn connect(settings: &AmqpSettings, role: &str) -> anyhow::Result<Connection> {
    let brokers = Brokers::parse(&settings.url).map_err(|e| anyhow::anyhow!("amqp.url: {e}"))?;
    Ok(connect_to(&brokers, settings, role).await?.connection)
}

/// [`connect`] through `brokers`: one pass over them, from a random one,
/// the one last connected to last (`session_guard_amqp::brokers`); the
/// connection and which broker it went to. A failed pass is one error
/// naming each broker and why (passwords masked); the caller retries with
/// backoff.
pub async fn connect_to(
    brokers: &Brokers,
    settings: &AmqpSettings,
    role: &str,
) -> anyhow::Result<Connected> {
    let name = format!("session-guard {role} ({})", settings.events_queue);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connected = brokers.connect(properties).await.with_context(|| {
        if brokers.len() == 1 {
            format!("cannot connect to RabbitMQ at {}", brokers.shown())
        } else {
            format!(
                "cannot connect to any of the {} RabbitMQ brokers",
                brokers.len()
            )
        }
    })?;
    if brokers.len() > 1 {
        tracing::info!(role, broker = %connected.shown_url, "connected to RabbitMQ");
    }
    Ok(connected)
}

/// Declares every exchange and queue session-guard uses, on channels of its
/// own. Idempotent: each worker runs it at start, so the order workers start
/// in does not matter.
pub async fn declare_topology(
    connection: &Connection,
    settings: &AmqpSettings,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let declared = declare_on(connection, &channel, settings).await;
    if declared.is_ok() {
        let _ = channel.close(200, "topology declared".into()).await;
    }
    declared
}

async fn declare_on(
    connection: &Connection,
    channel: &Channel,
    settings: &AmqpSettings,
) -> anyhow::Result<()> {
    // Durable: survive a broker restart. Not auto-delete: apps bind to them.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (&settings.events_exchange, ExchangeKind::Topic),
        (&settings.revocations_exchange, ExchangeKind::Topic),
        (&settings.notices_exchange, ExchangeKind::Topic),
        // Fanout: everything rejected goes to the one dead-letter queue,
        // whatever its routing key.
        (&settings.dead_letter_exchange, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await
            .with_context(|| format!("cannot declare exchange {name}"))?;
    }

    declare_dead_letter_queue(connection, channel, settings).await?;
    declare_events_queue(connection, channel, settings).await
}

/// Declares the quorum queue `name` with `args`: an existing queue that
/// differs only in its initial group size is kept as it is, and the log
/// says so.
async fn declare_queue(
    connection: &Connection,
    name: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    if let Some(kept) = declare_quorum_queue(connection, name, DURABLE_QUEUE, args).await? {
        tracing::warn!(queue = name, "amqp.quorum_initial_group_size: {kept}");
    }
    Ok(())
}

/// Durable, not exclusive, not auto-deleted: the queues outlive any worker.
const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// The dead-letter queue, bound to the dead-letter exchange.
async fn declare_dead_letter_queue(
    connection: &Connection,
    channel: &Channel,
    settings: &AmqpSettings,
) -> anyhow::Result<()> {
    declare_queue(
        connection,
        &settings.dead_letter_queue,
        replicated_quorum_arguments(settings.quorum_initial_group_size),
    )
    .await
    .with_context(|| format!("cannot declare queue {}", settings.dead_letter_queue))?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind the dead-letter queue")?;
    Ok(())
}

/// The events queue (quorum, with a delivery limit and the dead-letter
/// exchange), bound to the events exchange with `#`.
async fn declare_events_queue(
    connection: &Connection,
    channel: &Channel,
    settings: &AmqpSettings,
) -> anyhow::Result<()> {
    let mut events_args = replicated_quorum_arguments(settings.quorum_initial_group_size);
    // What the broker does with a message that failed too often: send it to
    // our dead-letter exchange rather than dropping it.
    events_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(settings.dead_letter_exchange.as_str().into()),
    );
    // RabbitMQ 3.10 has no default delivery limit on quorum queues; without
    // one a message that crashes workers would loop forever.
    events_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(settings.max_redeliveries.min(i32::MAX as u32) as i32),
    );
    declare_queue(connection, &settings.events_queue, events_args)
        .await
        .with_context(|| {
            format!(
                "cannot declare queue {} (if it exists with other arguments, delete it or \
                 keep amqp.max_redeliveries as it was)",
                settings.events_queue
            )
        })?;
    channel
        .queue_bind(
            settings.events_queue.as_str().into(),
            settings.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind the events queue")?;
    Ok(())
}

/// Messages ready in `queue` (not those delivered and not yet acked), from a
/// passive declare: it changes nothing, but a missing queue closes `channel`,
/// so give it a channel of its own.
pub async fn ready_messages(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("cannot count the messages of queue {queue}"))?;
    Ok(queue.message_count())
}

/// Deletes what [`declare_topology`] declares: both queues, then the three
/// exchanges, over a connection of its own (named after `role`). Best effort
/// (for throwaway topologies: tests, the benchmark); what is already gone,
/// or a broker out of reach, is skipped.
pub async fn delete_topology(settings: &AmqpSettings, role: &str) {
    let Ok(connection) = connect(settings, role).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in [&settings.events_queue, &settings.dead_letter_queue] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            &settings.events_exchange,
            &settings.revocations_exchange,
            &settings.notices_exchange,
            &settings.dead_letter_exchange,
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Declares an exclusive queue, gone with the channel's connection, bound to
/// every app's revokes; returns its name. For watchers that are not an app
/// (tests, the benchmark): an app uses the client crate's
/// `RevocationListener`, whose durable queue outlives its connection.
pub async fn declare_revoke_tap(
    channel: &Channel,
    revocations_exchange: &str,
) -> anyhow::Result<ShortString> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("cannot declare a queue for revokes")?;
    channel
        .queue_bind(
            queue.name().clone(),
            revocations_exchange.into(),
            "revoke.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind a queue to the revocations exchange")?;
    Ok(queue.name().clone())
}

/// Starts consuming the events queue on `channel`, with `settings.prefetch`
/// unacked deliveries at most.
pub async fn consume_events(
    channel: &Channel,
    settings: &AmqpSettings,
) -> anyhow::Result<lapin::Consumer> {
    // Per-consumer prefetch (global: false): RabbitMQ 3.10 refuses global QoS
    // on quorum queues with an error that closes the whole connection.
    channel
        .basic_qos(settings.prefetch, BasicQosOptions { global: false })
        .await?;
    channel
        .basic_consume(
            settings.events_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot consume the events queue")
}

/// A channel in confirm mode, for publishing that must not lose messages.
pub async fn confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    Ok(channel)
}

/// Publishes a copy of a rejected message to the dead-letter exchange, body
/// and properties unchanged but for the two error headers ([`ERROR_HEADER`]:
/// `error`, cut to [`MAX_ERROR_HEADER_BYTES`]; [`ERROR_KIND_HEADER`]:
/// `kind`), and waits for the broker's confirm.
pub async fn dead_letter(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: &BasicProperties,
    error: &str,
    kind: ErrorKind,
) -> anyhow::Result<()> {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from(error_header_value(error))),
    );
    headers.insert(
        ERROR_KIND_HEADER.into(),
        AMQPValue::LongString(LongString::from(kind.as_str())),
    );
    let properties = properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .context("cannot publish to the dead-letter exchange")?
        .await
        .context("no confirm from the dead-letter exchange")?;
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => anyhow::bail!("the broker refused the dead-lettered message"),
    }
}

/// With `amqp.require_user_id`, checks that the message's AMQP `user-id`
/// (validated by RabbitMQ against the publishing connection) may speak for
/// `app`. Returns the dead-letter reason otherwise.
pub fn check_app_identity(
    settings: &AmqpSettings,
    properties: &BasicProperties,
    app: &str,
) -> Result<(), String> {
    if !settings.require_user_id {
        return Ok(());
    }
    let Some(user) = properties.user_id().as_ref().map(|u| u.as_str()) else {
        return Err("user-id: missing AMQP user-id property (amqp.require_user_id is on)".into());
    };
    let allowed = match settings.app_users.get(user) {
        Some(apps) => apps.iter().any(|a| a == app),
        None => user == app,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "user-id: AMQP user {user:?} may not publish events for app {app:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Settings;

    fn amqp(require: bool, map: &[(&str, &[&str])]) -> AmqpSettings {
        let mut s = Settings::load_from(None, Vec::new()).unwrap().amqp;
        s.require_user_id = require;
        s.app_users = map
            .iter()
            .map(|(u, apps)| (u.to_string(), apps.iter().map(|a| a.to_string()).collect()))
            .collect();
        s
    }

    fn from(user: Option<&str>) -> BasicProperties {
        match user {
            Some(u) => BasicProperties::default().with_user_id(u.into()),
            None => BasicProperties::default(),
        }
    }

    #[test]
    fn app_identity_is_only_checked_when_required() {
        assert!(check_app_identity(&amqp(false, &[]), &from(None), "shop").is_ok());
        let on = amqp(true, &[("publisher", &["shop", "blog"])]);
        assert!(
            check_app_identity(&on, &from(None), "shop")
                .unwrap_err()
                .contains("missing")
        );
        assert!(check_app_identity(&on, &from(Some("publisher")), "blog").is_ok());
        assert!(check_app_identity(&on, &from(Some("publisher")), "wiki").is_err());
        assert!(
            check_app_identity(&on, &from(Some("wiki")), "wiki").is_ok(),
            "own name"
        );
        assert_eq!(
            check_app_identity(&on, &from(Some("wiki")), "shop").unwrap_err(),
            "user-id: AMQP user \"wiki\" may not publish events for app \"shop\""
        );
    }
}
