//! [`NoticeListener`]: the app's notices ("a new device signed in to your
//! account"), from `<app>.notices`.

use std::fmt::Display;
use std::future::Future;

use session_guard_protocol::event::AppName;
use session_guard_protocol::names;
use session_guard_protocol::notice::Notice;

use super::{Delivered, Listener, ListenerConfig, ListenerError, Received};

/// One notice for the app: tell user `message.user_id` that their account
/// signed in from a device ([`Notice::new_device`]) or a network
/// ([`Notice::new_network`]) their sessions in every app have not used
/// lately. [`Notice::kind`] gives the typed kind; a kind newer than this
/// crate is [`NoticeKind::Other`](session_guard_protocol::notice::NoticeKind::Other)
/// and still delivered.
pub type SignInNotice = Delivered<Notice>;

impl Received for Notice {
    const LISTENER: &'static str = "notice";
    const WHAT: &'static str = "notice";
    const EXCHANGE_SETTING: &'static str = "amqp.notices_exchange";

    /// Every kind, those added later too: an app built now hears of them
    /// (its handler may ignore them) rather than leaving them unrouted.
    fn binding_key(app: &AppName) -> String {
        names::notice_routing_key("*", app.as_str())
    }

    fn decode(body: &[u8]) -> Result<Notice, String> {
        let notice: Notice =
            serde_json::from_slice(body).map_err(|e| format!("not a notice: {e}"))?;
        if notice.kind.is_empty() {
            return Err("type: must not be empty".to_owned());
        }
        Ok(notice)
    }

    fn event_id(&self) -> &dyn Display {
        &self.event_id
    }

    fn session(&self) -> &str {
        &self.session
    }
}

/// Receives the notices session-guard publishes for one app: a user's
/// sign-in from a device or network new to them, to email them about.
///
/// Delivery is at least once: a notice handled and not yet acked when a
/// connection drops comes again, with the same
/// `event_id`. To send one email per notice, remember
/// the event ids you handled (a cache with a TTL of a day is plenty).
///
/// ```no_run
/// # async fn demo() -> Result<(), session_guard_client::ListenerError> {
/// use session_guard_client::{ListenerConfig, NoticeListener, SignInNotice};
/// use session_guard_client::protocol::event::AppName;
///
/// let app = AppName::parse("shop").expect("a valid app name");
/// let config = ListenerConfig::notices("amqp://guest:guest@127.0.0.1:5672/%2f", app);
/// let listener = NoticeListener::connect(config).await?;
/// listener
///     .run(
///         |notice: SignInNotice| async move {
///             let n = &notice.message;
///             // Email the user; an Err retries.
///             println!(
///                 "user {}: a new sign-in from {} on {} ({})",
///                 n.user_id,
///                 n.device.browser.as_deref().unwrap_or("an unknown browser"),
///                 n.device.os.as_deref().unwrap_or("an unknown system"),
///                 n.ip.as_deref().unwrap_or("no IP"),
///             );
///             Ok::<(), std::io::Error>(())
///         },
///         async { tokio::signal::ctrl_c().await.ok(); },
///     )
///     .await
/// # }
/// ```
pub struct NoticeListener(Listener<Notice>);

impl std::fmt::Debug for NoticeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("NoticeListener", f)
    }
}

impl NoticeListener {
    /// Connects and declares (idempotently) the durable quorum queue bound
    /// to `*.<app>` (every kind of notice), with `x-delivery-limit` and the
    /// dead-letter exchange and queue; `config` comes from
    /// [`ListenerConfig::notices`]. The same errors as
    /// [`RevocationListener::connect`](super::RevocationListener::connect),
    /// for the notices exchange.
    pub async fn connect(config: ListenerConfig) -> Result<NoticeListener, ListenerError> {
        Listener::connect(config).await.map(NoticeListener)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ListenerConfig {
        self.0.config()
    }

    /// Calls `handler` for each notice, one at a time, until `shutdown`
    /// resolves, as [`RevocationListener::run`](super::RevocationListener::run)
    /// does for revokes: `Ok` acks the notice, `Err` retries it and, after
    /// `max_attempts`, dead-letters it to `<app>.notices.dead`; a body that
    /// is not a notice is dead-lettered at once; a lost connection is
    /// re-established, and the notices not acked yet come again.
    pub async fn run<F, Fut, E>(
        self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ListenerError>
    where
        F: FnMut(SignInNotice) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        self.0.run(handler, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_guard_protocol::notice::NoticeKind;

    const NOTICE: &str = r#"{"type":"new_device","event_id":"5b0f7d3e-5b8e-4b7e-9a51-0d6c3f8f4a11",
        "app":"shop","user_id":"42","session":"sgh_x","signed_in_at":"2026-12-07T16:00:00.000000Z",
        "device":{"browser":"Chrome","os":"Android","kind":"phone"},"ip":"203.0.113.7",
        "new_device":true,"new_network":false,"known_devices":1,"known_networks":1}"#;

    #[test]
    fn notices_of_every_kind_are_read_and_other_bodies_say_why() {
        let n = Notice::decode(NOTICE.as_bytes()).unwrap();
        assert_eq!(
            (n.kind(), n.user_id.as_str()),
            (NoticeKind::NewDevice, "42")
        );
        // A kind, and a field, added after this version: still a notice.
        let later = NOTICE
            .replace("new_device\",", "new_gadget\",")
            .replace("\"ip\":", "\"country\":\"NL\",\"ip\":");
        let n = Notice::decode(later.as_bytes()).unwrap();
        assert_eq!(
            (n.kind(), n.kind.as_str()),
            (NoticeKind::Other, "new_gadget")
        );
        assert!(
            Notice::decode(b"{\"type\":\"revoke\"}")
                .unwrap_err()
                .starts_with("not a notice: missing field")
        );
        let empty = NOTICE.replace("\"new_device\",", "\"\",");
        assert_eq!(
            Notice::decode(empty.as_bytes()).unwrap_err(),
            "type: must not be empty"
        );
        assert_eq!(
            Notice::binding_key(&AppName::parse("shop").unwrap()),
            "*.shop"
        );
    }
}
