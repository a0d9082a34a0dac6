//! The broker side of the background task: [`Target`] (where and how it
//! publishes: the URL, exchange, routing keys and message properties) and
//! [`Link`] (a live connection with its confirm-mode channel and the
//! confirms still to come).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use session_guard_protocol::event::EventKind;
use session_guard_protocol::names;

use super::config::PublisherConfig;
use session_guard_amqp::url::redact_url;

use crate::connection::{CLOSE_TIMEOUT, CONNECT_TIMEOUT};

/// Where and how the task publishes.
pub(super) struct Target {
    /// The broker.
    uri: AMQPUri,
    /// The broker's URL without its password, for logs.
    pub(super) shown_url: String,
    /// Shown next to the connection in RabbitMQ's management UI and
    /// `rabbitmqctl list_connections`.
    connection_name: String,
    /// The events exchange.
    pub(super) exchange: ShortString,
    /// The routing key of each kind of event, by [`kind_index`].
    routing_keys: [ShortString; EventKind::ALL.len()],
    /// Every message's properties.
    pub(super) properties: BasicProperties,
}

impl Target {
    pub(super) fn new(config: &PublisherConfig, uri: AMQPUri) -> Target {
        let app = &config.app;
        let key = |kind| ShortString::from(names::event_routing_key(kind, app));
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id(app.as_str().into());
        // With a password login the broker knows the user and checks the
        // property against it; session-guard's amqp.require_user_id needs
        // it. Other mechanisms take the user from elsewhere (a client
        // certificate), so the property is left out.
        let mechanism = uri.query.auth_mechanism.unwrap_or_default();
        if matches!(mechanism, SASLMechanism::Plain | SASLMechanism::AMQPlain) {
            properties = properties.with_user_id(uri.authority.userinfo.username.as_str().into());
        }
        Target {
            shown_url: redact_url(&config.url),
            connection_name: format!("session-guard publisher ({})", app.as_str()),
            exchange: config.exchange.as_str().into(),
            routing_keys: EventKind::ALL.map(key),
            properties,
            uri,
        }
    }

    /// The routing key of events of `kind`: `<type>.<app>`.
    pub(super) fn routing_key(&self, kind: EventKind) -> &ShortString {
        &self.routing_keys[kind_index(kind)]
    }
}

/// Index of a kind in [`Target::routing_keys`], which follow
/// [`EventKind::ALL`]: the protocol lists the kinds in the order it declares
/// them (a test checks), so the discriminant is the place.
fn kind_index(kind: EventKind) -> usize {
    kind as usize
}

/// A live connection and its confirm-mode channel.
pub(super) struct Link {
    /// The connection, closed when the link is dropped by the task.
    pub(super) connection: Connection,
    /// The channel in confirm mode.
    pub(super) channel: Channel,
    /// The confirms of the publishes on this channel, tagged with the event.
    pub(super) confirms: FuturesUnordered<Tagged>,
}

impl Link {
    pub(super) async fn open(target: &Target) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(target.connection_name.as_str().into());
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri(target.uri.clone(), properties),
        )
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })??;
        let channel = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await;
        match channel {
            Ok(channel) => Ok(Link {
                connection,
                channel,
                confirms: FuturesUnordered::new(),
            }),
            Err(e) => {
                close_in_background(connection, None);
                Err(e)
            }
        }
    }
}

/// Closes a connection without waiting for it; a dead one fails at once.
pub(super) fn close_in_background(connection: Connection, channel: Option<Channel>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            connection.close(200, "session-guard publisher reconnecting".into()),
        )
        .await;
        // Dropped once the connection is closed: a channel dropped while
        // its connection closes makes lapin log an error.
        drop(channel);
    });
}

/// A publish's confirm, tagged with the event's sequence number.
pub(super) struct Tagged {
    /// The event.
    pub(super) seq: u64,
    /// The broker's answer to come.
    pub(super) confirm: lapin::PublisherConfirm,
}

impl Future for Tagged {
    type Output = (u64, lapin::Result<Confirmation>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let seq = self.seq;
        Pin::new(&mut self.confirm).poll(cx).map(|r| (seq, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_guard_protocol::event::AppName;

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    #[test]
    fn routing_keys_are_type_dot_app() {
        let uri: AMQPUri = "amqp://shop:secret@localhost".parse().unwrap();
        let target = Target::new(&PublisherConfig::new("amqp://x", shop()), uri);
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{kind:?}");
            assert_eq!(
                target.routing_key(kind).as_str(),
                format!("{}.shop", kind.as_str())
            );
        }
        assert_eq!(
            target.properties.user_id().as_ref().map(|u| u.as_str()),
            Some("shop")
        );
        assert_eq!(*target.properties.delivery_mode(), Some(2));
        let external: AMQPUri = "amqps://localhost?auth_mechanism=external".parse().unwrap();
        let target = Target::new(&PublisherConfig::new("amqp://x", shop()), external);
        assert_eq!(*target.properties.user_id(), None);
    }
}
