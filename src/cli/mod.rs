//! Command-line interface: the parsed command line and the dispatch to one
//! module per command. The command modules only look down: to the input
//! checks and the session listing they share, and to the library below.

mod api;
mod check_config;
mod demo;
mod enforcement;
mod input;
mod limits;
mod migrate;
mod revoke;
mod run;
mod session_listing;
mod sessions;
pub mod synopsis;
mod tokens;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::configuration::Settings;
use crate::telemetry;

pub use demo::DemoArgs;
pub use limits::{LimitsAction, LimitsClearArgs, LimitsGetArgs, LimitsSetArgs};
pub use revoke::RevokeArgs;
pub use sessions::SessionsArgs;
pub use tokens::{TokensAction, TokensCreateArgs, TokensRevokeArgs};

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
    /// Manage the limits stored for one user (the `user_overrides` hook).
    Limits {
        #[command(subcommand)]
        action: LimitsAction,
    },
    /// Serve only the sessions API (`api.listen`), without consuming;
    /// the schema must be migrated already.
    Api,
    /// Manage the sessions API's bearer tokens.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Revoke sessions as an operator (reason "admin"); running workers
    /// publish the revoke events.
    Revoke(RevokeArgs),
    /// Validate the configuration, print the effective values (passwords
    /// masked), and check that PostgreSQL and RabbitMQ accept the worker.
    /// Changes nothing: no database is created, no migration applied,
    /// nothing declared.
    CheckConfig,
    /// See the whole flow in a few seconds: a fake app logs a user in from
    /// two browsers, a worker in this process revokes the older session,
    /// the app ends it. Uses a database and queues of its own, removed at
    /// the end.
    Demo(DemoArgs),
}

/// Runs the parsed command line. `main` only builds the runtime around it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Demo(_)) {
        // The demo tells its own story on stdout; RUST_LOG still wins.
        // Dropping a database can pass sqlx's slow-statement threshold: not
        // worth a warning here.
        settings.log.level = "warn,sqlx::query=error".to_owned();
    }
    telemetry::init_logging(&settings.log)?;
    match cli.command {
        Command::Migrate => migrate::migrate(&settings).await,
        Command::Run => run::run_worker(settings).await,
        Command::Sessions(args) => sessions::sessions(&settings, &args).await,
        Command::Limits { action } => limits::limits(&settings, action).await,
        Command::Revoke(args) => revoke::revoke(&settings, &args).await,
        Command::Api => api::api(&settings).await,
        Command::Tokens { action } => tokens::tokens(&settings, action).await,
        Command::CheckConfig => check_config::check_config(&settings).await,
        Command::Demo(args) => demo::run(&settings, &args).await,
    }
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

    #[test]
    fn limits_beyond_the_database_columns_are_refused_by_the_parser() {
        let set = |flag: &str, value: &str| {
            Cli::try_parse_from(["session-guard", "limits", "set", "--user", "u", flag, value])
        };
        for flag in ["--max", "--max-global", "--log-limit"] {
            assert!(set(flag, "2147483647").is_ok(), "{flag}");
            let err = set(flag, "2147483648").unwrap_err().to_string();
            assert!(err.contains("2147483648 is not in 0..=2147483647"), "{err}");
        }
        assert!(set("--idle-timeout", "9223372036854775807").is_ok());
        assert!(set("--idle-timeout", "9223372036854775808").is_err());
    }
}
