//! `session-guard sessions`: a user's sessions from the log.

use clap::Args;

use super::input::parse_user_and_app;
use super::session_listing::{Listing, print_sessions};
use crate::configuration::Settings;

#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The user whose sessions to show.
    #[arg(long)]
    pub user: String,
    /// Only sessions of this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Include ended sessions (revoked, logged out, expired), not only active ones.
    #[arg(long)]
    pub all: bool,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn sessions(settings: &Settings, args: &SessionsArgs) -> anyhow::Result<()> {
    parse_user_and_app(&args.user, args.app.as_deref())?;
    let listing = Listing {
        user: &args.user,
        app: args.app.as_deref(),
        all: args.all,
        json: args.json,
    };
    print_sessions(&settings.database, &listing).await
}
