//! The broker side of the background task: [`Target`] (where and how it
//! publishes: the brokers, exchange, routing keys and message properties) and
//! [`Link`] (a live connection with its confirm-mode channel and the
//! confirms still to come).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::uri::SASLMechanism;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use session_guard_amqp::brokers::{Brokers, ConnectError};
use session_guard_protocol::event::EventKind;
use session_guard_protocol::names;

use super::config::PublisherConfig;

use crate::connection::CLOSE_TIMEOUT;

/// Where and how the task publishes.
pub(super) struct Target {
    /// The brokers (one, or a cluster's nodes), and which one a reconnection
    /// tries last (the one the lost connection was on).
    pub(super) brokers: Brokers,
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
    /// The target of `config` on `brokers`. Every broker must be logged in
    /// to as the same user: the events carry it in their `user-id`.
    pub(super) fn new(config: &PublisherConfig, brokers: Brokers) -> Result<Target, String> {
        let login = |uri: &lapin::uri::AMQPUri| {
            let mechanism = uri.query.auth_mechanism.unwrap_or_default();
            let password_login =
                matches!(mechanism, SASLMechanism::Plain | SASLMechanism::AMQPlain);
            password_login.then(|| uri.authority.userinfo.username.clone())
        };
        let logins: Vec<Option<String>> = brokers.uris().map(login).collect();
        let user = logins[0].clone();
        if logins.iter().any(|other| *other != user) {
            return Err(
                "url: every broker of the list must be logged in to as the same user, with the \
                 same mechanism (the events' user-id property names the user)"
                    .to_owned(),
            );
        }
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
        if let Some(user) = user {
            properties = properties.with_user_id(user.as_str().into());
        }
        Ok(Target {
            connection_name: format!("session-guard publisher ({})", app.as_str()),
            exchange: config.exchange.as_str().into(),
            routing_keys: EventKind::ALL.map(key),
            properties,
            brokers,
        })
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

/// Why [`Link::open`] failed.
#[derive(Debug)]
pub(super) enum OpenError {
    /// No broker could be connected to.
    Connect(ConnectError),
    /// Connected to the broker shown, but its channel could not be opened.
    Channel(String, lapin::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "{e}"),
            OpenError::Channel(broker, e) => write!(f, "{broker}: {e}"),
        }
    }
}

/// A live connection and its confirm-mode channel.
pub(super) struct Link {
    /// The broker connected to, its password masked.
    pub(super) shown_url: String,
    /// The connection, closed when the link is dropped by the task.
    pub(super) connection: Connection,
    /// The channel in confirm mode.
    pub(super) channel: Channel,
    /// The confirms of the publishes on this channel, tagged with the event.
    pub(super) confirms: FuturesUnordered<Tagged>,
}

impl Link {
    /// Connects to one of the target's brokers (one pass over them, the
    /// one shared with the worker) and opens the confirm-mode channel.
    pub(super) async fn open(target: &Target) -> Result<Link, OpenError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(target.connection_name.as_str().into());
        let connected = target
            .brokers
            .connect(properties)
            .await
            .map_err(OpenError::Connect)?;
        let connection = connected.connection;
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
                shown_url: connected.shown_url,
                connection,
                channel,
                confirms: FuturesUnordered::new(),
            }),
            Err(e) => {
                close_in_background(connection, None);
                Err(OpenError::Channel(connected.shown_url, e))
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
        let brokers = |urls: &str| Brokers::parse(urls).unwrap();
        let config = PublisherConfig::new("amqp://x", shop());
        let target = Target::new(&config, brokers("amqp://shop:secret@localhost")).unwrap();
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
        let external = brokers("amqps://localhost?auth_mechanism=external");
        let target = Target::new(&config, external).unwrap();
        assert_eq!(*target.properties.user_id(), None);
        // A cluster's nodes, logged in to as one user.
        let cluster = brokers("amqp://shop:s@mq1,amqp://shop:s@mq2,amqp://shop:s@mq3");
        let target = Target::new(&config, cluster).unwrap();
        assert_eq!(
            target.properties.user_id().as_ref().map(|u| u.as_str()),
            Some("shop")
        );
        let mixed = brokers("amqp://shop:s@mq1,amqp://other:s@mq2");
        assert!(Target::new(&config, mixed).is_err());
    }
}
