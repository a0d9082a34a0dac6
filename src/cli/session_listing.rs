//! A user's sessions from the log, as a table or JSON: what `sessions`
//! prints, and what the demo shows at its end.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::configuration::DatabaseSettings;
use crate::db::{self, sessions::LoggedSession};
use crate::domain::session::{SessionState, shown_end};
use crate::terminal::{escape, escape_json};

/// Which sessions to list, and how.
pub(super) struct Listing<'a> {
    /// The user whose sessions to show.
    pub user: &'a str,
    /// Only sessions of this app.
    pub app: Option<&'a str>,
    /// Ended sessions too, not only active ones.
    pub all: bool,
    /// A JSON array instead of a table.
    pub json: bool,
}

/// One session as `sessions --json` prints it.
#[derive(Debug, Serialize)]
struct SessionOut {
    /// The app the session belongs to.
    app: String,
    /// The app's id for it.
    session_id: String,
    /// Its user (absent if only a logout without `user_id` was seen).
    user_id: Option<String>,
    /// The address it logged in from, as the app sent it.
    ip: Option<String>,
    /// The browser, as the app sent it.
    user_agent: Option<String>,
    /// RFC 3339, to the second.
    login_at: String,
    /// The last event of the session, RFC 3339.
    last_seen_at: String,
    /// When it ended: its end row, or its expiry.
    ended_at: Option<String>,
    /// Why it ended ("expired" for a session past its expiry, which has no
    /// end row).
    end_reason: Option<String>,
    /// The rule, hook or operator that ended it ("user" for logout_others
    /// and logout_all; absent for logouts).
    ended_by: Option<String>,
    /// An operator's explanation.
    note: Option<String>,
    /// active, revoked, logged_out or expired, as the domain decides it.
    state: &'static str,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl SessionOut {
    fn new(s: LoggedSession, now: DateTime<Utc>) -> SessionOut {
        let (state, ended_at, end_reason) = shown_end(s.end_reason, s.ended_at, s.expires_at, now);
        SessionOut {
            app: s.app,
            session_id: s.session_id,
            user_id: s.user_id,
            ip: s.ip.map(|ip| ip.to_string()),
            user_agent: s.user_agent,
            login_at: rfc3339(s.login_at),
            last_seen_at: rfc3339(s.last_seen_at),
            ended_at: ended_at.map(rfc3339),
            end_reason,
            ended_by: s.ended_by,
            note: s.end_note,
            state: state.as_str(),
        }
    }
}

/// Reads the listing from the log and prints it on stdout. The user and
/// the app are checked by the caller.
pub(super) async fn print_sessions(
    database: &DatabaseSettings,
    listing: &Listing<'_>,
) -> anyhow::Result<()> {
    let sessions = load(database, listing).await?;
    let mut out = std::io::stdout().lock();
    write_listing(&mut out, listing, &sessions)
}

/// The listed sessions, as they stand now.
async fn load(
    database: &DatabaseSettings,
    listing: &Listing<'_>,
) -> anyhow::Result<Vec<SessionOut>> {
    let pool = db::connect_checked(database).await?;
    let rows = db::sessions::user_sessions(&pool, listing.user, listing.app)
        .await
        .context("cannot read the session log")?;
    pool.close().await;
    let now = Utc::now();
    Ok(rows
        .into_iter()
        .map(|s| SessionOut::new(s, now))
        .filter(|s| listing.all || s.state == SessionState::Active.as_str())
        .collect())
}

fn write_listing(
    out: &mut impl Write,
    listing: &Listing<'_>,
    sessions: &[SessionOut],
) -> anyhow::Result<()> {
    if listing.json {
        let json = serde_json::to_string_pretty(sessions)?;
        writeln!(out, "{}", escape_json(&json))?;
    } else if sessions.is_empty() {
        writeln!(
            out,
            "no {}sessions for user {}{}",
            if listing.all { "" } else { "active " },
            escape(listing.user),
            listing
                .app
                .map(|a| format!(" in app {}", escape(a)))
                .unwrap_or_default()
        )?;
    } else {
        write_table(out, sessions)?;
    }
    Ok(())
}

/// A plain, aligned text table; long user agents are cut to stay readable.
/// Every cell is escaped: apps send the user agent, and operators' names
/// end up in "ended by".
fn write_table(out: &mut impl Write, sessions: &[SessionOut]) -> std::io::Result<()> {
    // Typed with its length so a column added to the rows but not here (or
    // the other way round) does not compile.
    let header: [&str; 10] = [
        "APP",
        "SESSION",
        "STATE",
        "LOGIN",
        "LAST SEEN",
        "ENDED",
        "REASON",
        "ENDED BY",
        "IP",
        "USER AGENT",
    ];
    let rows: Vec<[String; 10]> = sessions.iter().map(table_row).collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&header.map(str::to_owned)))?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

/// One session's cells, escaped, in the header's order.
fn table_row(s: &SessionOut) -> [String; 10] {
    let dash = || "-".to_owned();
    [
        s.app.clone(),
        s.session_id.clone(),
        s.state.to_owned(),
        s.login_at.clone(),
        s.last_seen_at.clone(),
        s.ended_at.clone().unwrap_or_else(dash),
        s.end_reason.clone().unwrap_or_else(dash),
        s.ended_by.clone().unwrap_or_else(dash),
        s.ip.clone().unwrap_or_else(dash),
        s.user_agent
            .as_deref()
            .map(|ua| ua.chars().take(40).collect())
            .unwrap_or_else(dash),
    ]
    .map(|cell| escape(&cell).into_owned())
}
