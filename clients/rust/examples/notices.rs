//! Tells the users of the app `shop` about sign-ins from a device or a
//! network new to them (here on stdout; an app sends an email).
//!
//! Start session-guard first (it declares the notices exchange), then:
//! `cargo run -p session-guard-client --example notices` and Ctrl-C to stop.
//! `AMQP_URL` overrides the broker (default guest on localhost).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use session_guard_client::protocol::event::AppName;
use session_guard_client::protocol::notice::NoticeKind;
use session_guard_client::{ListenerConfig, NoticeListener, SignInNotice};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let config = ListenerConfig::notices(url, AppName::parse("shop")?);
    let listener = NoticeListener::connect(config).await?;

    // Delivery is at least once, and a re-sent notice keeps its event id:
    // remembering the ids handled sends one email per notice. An app keeps
    // them in a cache with a TTL (Redis, a table...).
    let told = Arc::new(Mutex::new(HashSet::new()));
    let handler = move |notice: SignInNotice| {
        let told = told.clone();
        async move {
            let n = &notice.message;
            if !told.lock().unwrap().insert(n.event_id) {
                return Ok(());
            }
            let what = match n.kind() {
                NoticeKind::NewDevice => "a new device",
                NoticeKind::NewNetwork => "a new network",
                // A kind newer than this program: nothing to say about it.
                NoticeKind::Other => return Ok(()),
            };
            println!(
                "to user {}: a sign-in to your account from {what}: {} on {} from {} at {} \
                 (not you? end it: session {})",
                n.user_id,
                n.device.browser.as_deref().unwrap_or("an unknown browser"),
                n.device.os.as_deref().unwrap_or("an unknown system"),
                n.ip.as_deref().unwrap_or("an unknown address"),
                n.signed_in_at,
                n.session,
            );
            // An Err here (the mail server is down) would retry the notice.
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    listener.run(handler, ctrl_c).await?;
    Ok(())
}
