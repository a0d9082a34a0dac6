//! `session-guard revoke`: end sessions as an operator (reason "admin");
//! running workers publish the revoke events from the outbox.

use std::io::Write;

use clap::Args;

use super::enforcement::built_in_enforcement;
use super::input::{operator, parse_app, parse_user};
use session_guard_protocol::revoke::check_note;

use crate::apply::{self, AdminRevokeError, AdminTarget};
use crate::configuration::Settings;
use crate::db;
use crate::domain::event::SessionId;
use crate::domain::revoke::RevokeMessage;
use crate::terminal::escape;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["session", "all"])))]
pub struct RevokeArgs {
    /// The app the sessions belong to.
    #[arg(long)]
    pub app: String,
    /// Revoke this one session.
    #[arg(long, conflicts_with_all = ["user", "all"])]
    pub session: Option<String>,
    /// With --all: the user whose sessions to revoke.
    #[arg(long, requires = "all")]
    pub user: Option<String>,
    /// Revoke every active session of --user in --app (needs --user).
    #[arg(long, requires = "user")]
    pub all: bool,
    /// An explanation, recorded in the log and sent to the app as `note`
    /// (at most 500 characters, as through the sessions API).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
    /// Recorded as who revoked (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

pub(super) async fn revoke(settings: &Settings, args: &RevokeArgs) -> anyhow::Result<()> {
    let target = parse_target(args)?;
    let pool = db::connect_checked(&settings.database).await?;
    let rules = built_in_enforcement(settings);
    let revoked = apply::admin_revoke(
        &pool,
        &rules,
        &target,
        &operator(&args.operator),
        args.reason.clone(),
    )
    .await
    .map_err(|e| match (e, &args.session) {
        // The error holds no session id (it may be logged elsewhere); the
        // operator typed this one, so saying it back is fine (`main`
        // escapes the line).
        (AdminRevokeError::UnknownSession { app }, Some(session)) => {
            anyhow::anyhow!("no session {session} in app {app}")
        }
        (e, _) => e.into(),
    })?;
    pool.close().await;
    print_revoked(&mut std::io::stdout().lock(), &revoked)
}

/// `--reason`, at most `MAX_NOTE_CHARS` characters: the sessions API's cap
/// on `note`, from the one constant both use.
fn parse_reason(reason: &str) -> Result<String, String> {
    check_note(reason).map_err(|e| e.replace("note", "--reason"))?;
    Ok(reason.to_owned())
}

/// One session (`--session`) or every active one of a user (`--user --all`).
fn parse_target(args: &RevokeArgs) -> anyhow::Result<AdminTarget> {
    let app = parse_app(&args.app)?;
    Ok(match (&args.session, &args.user) {
        (Some(session), _) => AdminTarget::Session {
            app,
            session_id: SessionId::parse(session).map_err(|e| anyhow::anyhow!("--session: {e}"))?,
        },
        (None, Some(user)) => AdminTarget::User {
            app,
            user_id: parse_user(user)?,
        },
        (None, None) => anyhow::bail!("give --session S, or --user U --all"),
    })
}

/// One line per revoked session, then the count.
fn print_revoked(out: &mut impl Write, revoked: &[RevokeMessage]) -> anyhow::Result<()> {
    if revoked.is_empty() {
        writeln!(out, "nothing to revoke: no active session matched")?;
        return Ok(());
    }
    for r in revoked {
        writeln!(
            out,
            "revoked {} / {} (user {})",
            escape(&r.app),
            escape(&r.session_id),
            escape(&r.user_id)
        )?;
    }
    writeln!(
        out,
        "{} session(s) revoked; running workers publish the revoke events within a second",
        revoked.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_capped_as_the_apis_note_is() {
        use session_guard_protocol::revoke::MAX_NOTE_CHARS;
        let longest = "\u{e9}".repeat(MAX_NOTE_CHARS);
        assert_eq!(parse_reason(&longest).as_deref(), Ok(longest.as_str()));
        let error = parse_reason(&"r".repeat(MAX_NOTE_CHARS + 1)).unwrap_err();
        assert!(error.starts_with("--reason must be at most 500"), "{error}");
    }
}
