//! [`RevocationListener`]: the app's revokes, from `<app>.revocations`.

use std::fmt::Display;
use std::future::Future;

use session_guard_protocol::event::AppName;
use session_guard_protocol::names;
use session_guard_protocol::revoke::RevokeMessage;

use super::{Delivered, Listener, ListenerConfig, ListenerError, Received};

/// One revoke for the app: end the session `message.session_id` names.
/// `message` is what session-guard sent: the session, the user, why
/// ([`RevokeMessage::reason`]), when.
pub type Revoke = Delivered<RevokeMessage>;

impl Received for RevokeMessage {
    const LISTENER: &'static str = "revocation";
    const WHAT: &'static str = "revoke";
    const EXCHANGE_SETTING: &'static str = "amqp.revocations_exchange";

    fn binding_key(app: &AppName) -> String {
        names::revoke_routing_key(app.as_str())
    }

    fn decode(body: &[u8]) -> Result<RevokeMessage, String> {
        let message: RevokeMessage =
            serde_json::from_slice(body).map_err(|e| format!("not a revoke message: {e}"))?;
        if message.kind != "revoke" {
            return Err(format!("type: expected \"revoke\", got {:?}", message.kind));
        }
        Ok(message)
    }

    fn event_id(&self) -> &dyn Display {
        &self.event_id
    }

    fn session(&self) -> &str {
        &self.session_id
    }
}

/// Receives the revokes session-guard publishes for one app.
///
/// ```no_run
/// # async fn demo() -> Result<(), session_guard_client::ListenerError> {
/// use session_guard_client::{ListenerConfig, RevocationListener, Revoke};
/// use session_guard_client::protocol::event::AppName;
///
/// let app = AppName::parse("shop").expect("a valid app name");
/// let config = ListenerConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", app);
/// let listener = RevocationListener::connect(config).await?;
/// listener
///     .run(
///         |revoke: Revoke| async move {
///             // Delete the session from your session store; an Err retries.
///             println!("ending {} ({})", revoke.message.session_id, revoke.message.reason);
///             Ok::<(), std::io::Error>(())
///         },
///         async { tokio::signal::ctrl_c().await.ok(); },
///     )
///     .await
/// # }
/// ```
pub struct RevocationListener(Listener<RevokeMessage>);

impl std::fmt::Debug for RevocationListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("RevocationListener", f)
    }
}

impl RevocationListener {
    /// Connects and declares (idempotently) the durable quorum queue bound
    /// to `revoke.<app>`, with `x-delivery-limit` and the dead-letter
    /// exchange and queue. An unreachable broker, refused credentials or
    /// permissions, a missing revocations exchange or a queue declared with
    /// other arguments are errors here, before any revoke is consumed.
    pub async fn connect(config: ListenerConfig) -> Result<RevocationListener, ListenerError> {
        Listener::connect(config).await.map(RevocationListener)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ListenerConfig {
        self.0.config()
    }

    /// Calls `handler` for each revoke, one at a time, until `shutdown`
    /// resolves. Then it takes no new revokes, lets the handler in progress
    /// finish, hands the handler the revokes the broker had already sent
    /// (at most `prefetch`; given back, each would count as a delivery), and
    /// returns.
    ///
    /// - `Ok` from the handler acks the revoke.
    /// - `Err` logs it and puts the revoke back in the queue after a short
    ///   pause (100 ms times the attempt number): the broker delivers it
    ///   again, to this instance or another, with a higher
    ///   [`Revoke::delivery_count`](Delivered::delivery_count). When the last
    ///   of `max_attempts` fails, the revoke goes to the dead-letter queue
    ///   with the handler's error in the `x-session-guard-error` header.
    /// - A body that is not a revoke is logged and dead-lettered at once.
    /// - A lost connection is re-established with jittered backoff (up to
    ///   `max_backoff`); the revokes that were not acked yet come back from
    ///   the broker (each with its delivery count one higher).
    ///
    /// Returns an error only for what retrying cannot fix: the queue was
    /// re-declared with other arguments meanwhile.
    pub async fn run<F, Fut, E>(
        self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ListenerError>
    where
        F: FnMut(Revoke) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        self.0.run(handler, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_revokes_say_why() {
        let parse = RevokeMessage::decode;
        assert!(
            parse(b"nope")
                .unwrap_err()
                .starts_with("not a revoke message: ")
        );
        let login = br#"{"type":"login","event_id":"5b0f7d3e-5b8e-4b7e-9a51-0d6c3f8f4a11",
            "app":"shop","session_id":"s","user_id":"u","reason":"x","revoked_at":"t",
            "max_sessions":1,"repeat":false}"#;
        assert_eq!(
            parse(login).unwrap_err(),
            "type: expected \"revoke\", got \"login\""
        );
        let revoke = String::from_utf8_lossy(login).replace("\"login\"", "\"revoke\"");
        assert_eq!(parse(revoke.as_bytes()).unwrap().session_id, "s");
        assert_eq!(
            RevokeMessage::binding_key(&AppName::parse("shop").unwrap()),
            "revoke.shop"
        );
    }
}
