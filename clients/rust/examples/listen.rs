//! Ends the sessions session-guard revokes for the app `shop`.
//!
//! Start session-guard first (it declares the revocations exchange), then:
//! `cargo run -p session-guard-client --example listen` and Ctrl-C to stop.
//! `AMQP_URL` overrides the broker (default guest on localhost).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use session_guard_client::protocol::event::AppName;
use session_guard_client::{ListenerConfig, RevocationListener, Revoke};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let config = ListenerConfig::new(url, AppName::parse("shop")?);
    let listener = RevocationListener::connect(config).await?;

    // Stands in for the app's session store (Redis, a table...).
    let ended = Arc::new(Mutex::new(HashSet::new()));
    let handler = move |revoke: Revoke| {
        let ended = ended.clone();
        async move {
            let m = &revoke.message;
            // Delivery is at least once: ending a session twice is harmless.
            let first = ended.lock().unwrap().insert(m.session_id.clone());
            println!(
                "ended session {} of user {}: {}{}",
                m.session_id,
                m.user_id,
                m.reason(),
                if first { "" } else { " (again)" }
            );
            // An Err here would put the revoke back in the queue.
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    listener.run(handler, ctrl_c).await?;
    Ok(())
}
