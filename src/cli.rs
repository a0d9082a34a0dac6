//! Command-line interface: parsing and dispatch to the commands.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::configuration::Settings;
use crate::domain::session::{EndReason, SessionState, state_of};
use crate::store::{self, LoggedSession};
use crate::worker::Worker;
use crate::{shutdown, telemetry};

/// Enforces per-user concurrent session limits for web apps, from session
/// events on RabbitMQ, with a session log in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "session-guard", version, about)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults (environment
    /// variables SESSION_GUARD__SECTION__KEY override both).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if it does not exist and apply migrations.
    Migrate,
    /// Migrate, declare the RabbitMQ topology, consume events and publish
    /// revokes until SIGINT or SIGTERM.
    Run,
    /// Show a user's sessions from the log.
    Sessions(SessionsArgs),
}

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

/// Runs the parsed command line. `main` only builds the runtime around it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init_logging(&settings.log)?;
    match cli.command {
        Command::Migrate => {
            let pool = store::connect_and_migrate(&settings.database).await?;
            pool.close().await;
            tracing::info!("database is up to date");
            Ok(())
        }
        Command::Run => {
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                database = %crate::configuration::redact_url(&settings.database.url),
                amqp = %crate::configuration::redact_url(&settings.amqp.url),
                max_sessions = settings.limits.max_sessions,
                "starting session-guard"
            );
            telemetry::init_metrics(&settings.metrics);
            let worker = Worker::builder(settings).build().await?;
            worker.run(shutdown::signal()).await
        }
        Command::Sessions(args) => sessions(&settings, &args).await,
    }
}

/// One session as `sessions --json` prints it.
#[derive(Debug, Serialize)]
struct SessionOut {
    app: String,
    session_id: String,
    user_id: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    login_at: String,
    last_seen_at: String,
    ended_at: Option<String>,
    end_reason: Option<String>,
    state: &'static str,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl SessionOut {
    fn new(s: LoggedSession, now: DateTime<Utc>) -> SessionOut {
        let state = state_of(
            s.end_reason.as_deref().and_then(EndReason::parse),
            s.expires_at,
            now,
        );
        // An expired session has no end row of its own: it ended at expiry.
        let (ended_at, end_reason) = match (state, s.ended_at) {
            (SessionState::Expired, None) => (s.expires_at, Some("expired".to_owned())),
            _ => (s.ended_at, s.end_reason),
        };
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
            state: state.as_str(),
        }
    }
}

async fn sessions(settings: &Settings, args: &SessionsArgs) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    let rows = store::user_sessions(&pool, &args.user, args.app.as_deref())
        .await
        .context("cannot read the session log")?;
    pool.close().await;
    let now = Utc::now();
    let sessions: Vec<SessionOut> = rows
        .into_iter()
        .map(|s| SessionOut::new(s, now))
        .filter(|s| args.all || s.state == SessionState::Active.as_str())
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sessions)?;
        writeln!(out)?;
    } else if sessions.is_empty() {
        writeln!(
            out,
            "no {}sessions for user {}{}",
            if args.all { "" } else { "active " },
            args.user,
            args.app
                .as_deref()
                .map(|a| format!(" in app {a}"))
                .unwrap_or_default()
        )?;
    } else {
        write_table(&mut out, &sessions)?;
    }
    Ok(())
}

/// A plain, aligned text table; long user agents are cut to stay readable.
fn write_table(out: &mut impl Write, sessions: &[SessionOut]) -> std::io::Result<()> {
    let header = [
        "APP",
        "SESSION",
        "STATE",
        "LOGIN",
        "LAST SEEN",
        "ENDED",
        "REASON",
        "IP",
        "USER AGENT",
    ];
    let dash = || "-".to_owned();
    let rows: Vec<[String; 9]> = sessions
        .iter()
        .map(|s| {
            [
                s.app.clone(),
                s.session_id.clone(),
                s.state.to_owned(),
                s.login_at.clone(),
                s.last_seen_at.clone(),
                s.ended_at.clone().unwrap_or_else(dash),
                s.end_reason.clone().unwrap_or_else(dash),
                s.ip.clone().unwrap_or_else(dash),
                s.user_agent
                    .as_deref()
                    .map(|ua| ua.chars().take(40).collect())
                    .unwrap_or_else(dash),
            ]
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_accepted_before_or_after_the_command() {
        let a = Cli::try_parse_from(["session-guard", "--config", "x.toml", "run"]).unwrap();
        let b = Cli::try_parse_from(["session-guard", "run", "--config", "x.toml"]).unwrap();
        assert_eq!(a.config, b.config);
        let c = Cli::try_parse_from([
            "session-guard",
            "sessions",
            "--user",
            "u",
            "--all",
            "--json",
        ])
        .unwrap();
        let Command::Sessions(args) = c.command else {
            panic!("not sessions")
        };
        assert!(args.all && args.json && args.app.is_none());
        assert!(
            Cli::try_parse_from(["session-guard", "sessions"]).is_err(),
            "--user is required"
        );
    }
}
