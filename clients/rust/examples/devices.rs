//! "Your devices" from the command line: lists a user's active sessions in
//! every app the token may see, and ends one of them.
//!
//! ```text
//! export SESSION_GUARD_API_URL=http://127.0.0.1:9465
//! export SESSION_GUARD_API_TOKEN=sgt_...   # session-guard tokens create ...
//! cargo run -p session-guard-client --features api --example devices -- 42
//! cargo run -p session-guard-client --features api --example devices -- 42 sgh_...
//! ```

use futures::TryStreamExt;
use session_guard_client::api::{ApiConfig, ApiError, ListOptions, ProblemKind, SessionsApi};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let user = args
        .next()
        .ok_or("usage: devices USER_ID [HANDLE_TO_SIGN_OUT]")?;
    let url = std::env::var("SESSION_GUARD_API_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:9465".to_owned());
    let token = std::env::var("SESSION_GUARD_API_TOKEN")?;
    let api = SessionsApi::new(ApiConfig::new(&url, token)?)?;

    let sessions: Vec<_> = api
        .sessions(&user, ListOptions::default())
        .try_collect()
        .await?;
    for s in &sessions {
        println!(
            "{:<8} {:<10} {:<12} {:<16} last seen {}  {}",
            s.app,
            s.device.browser.as_deref().unwrap_or("?"),
            s.device.os.as_deref().unwrap_or("?"),
            s.ip.as_deref().unwrap_or("-"),
            s.last_seen_at.format("%Y-%m-%d %H:%M"),
            s.handle,
        );
    }

    if let Some(handle) = args.next() {
        match api
            .revoke_session(&handle, Some("signed out from the devices example"))
            .await
        {
            Ok(done) if done.revoked.is_empty() => println!("{handle} had ended already"),
            Ok(_) => println!("signed out {handle}"),
            Err(ApiError::Problem(p)) if p.kind() == ProblemKind::NotFound => {
                println!("no such session for this token: {handle}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
