//! Command-line interface: parsing and dispatch to the commands.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::Worker;
use crate::configuration::Settings;
use crate::domain::event::{AppName, SessionId, UserId};
use crate::domain::limits::{BUILT_IN_HOOKS, EvictionPolicy, UserOverride};
use crate::domain::session::{EndReason, SessionState, state_of};
use crate::store::{self, AdminTarget, Enforcement, LoggedSession};
use crate::terminal::{escape, escape_json};
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
    /// Manage the limits stored for one user (the `user_overrides` hook).
    Limits {
        #[command(subcommand)]
        action: LimitsAction,
    },
    /// Revoke sessions as an operator (reason "admin"); running workers
    /// publish the revoke events.
    Revoke(RevokeArgs),
    /// Validate the configuration, print the effective values (passwords
    /// masked), and check that PostgreSQL and RabbitMQ accept the worker.
    /// Changes nothing: no database is created, no migration applied,
    /// nothing declared.
    CheckConfig,
    /// Measure throughput, latency and memory against the local services,
    /// next to a baseline consumer; writes BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
    /// See the whole flow in a few seconds: a fake app logs a user in from
    /// two browsers, a worker in this process revokes the older session,
    /// the app ends it. Uses a database and queues of its own, removed at
    /// the end.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Store limits for a user, for one app or all; unset values stay as they were.
    Set(LimitsSetArgs),
    /// Show the effective limits of a user after all hooks, and who set each.
    Get(LimitsGetArgs),
    /// Delete the limits stored for a user (for one app, or the all-apps ones).
    Clear(LimitsClearArgs),
}

#[derive(Debug, Args)]
pub struct LimitsSetArgs {
    #[arg(long)]
    pub user: String,
    /// Only for this app (default: every app).
    #[arg(long)]
    pub app: Option<String>,
    /// Active sessions allowed in the app (0 = unlimited).
    #[arg(long = "max", value_parser = int4())]
    pub max_sessions: Option<u32>,
    /// Active sessions allowed across all apps (0 = no such limit).
    #[arg(long = "max-global", value_parser = int4())]
    pub max_sessions_global: Option<u32>,
    /// evict_oldest, evict_idle or deny_new.
    #[arg(long)]
    pub policy: Option<EvictionPolicy>,
    /// Seconds without an event after which a session counts as expired (0 = off).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    pub idle_timeout: Option<u64>,
    /// Ended sessions kept in this user's log.
    #[arg(long, value_parser = int4())]
    pub log_limit: Option<u32>,
    /// Recorded as who made the change (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

/// A count the database stores as `integer`: 0 to 2147483647, refused by
/// the parser beyond that rather than stored as something else.
fn int4() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=i64::from(i32::MAX))
}

#[derive(Debug, Args)]
pub struct LimitsGetArgs {
    #[arg(long)]
    pub user: String,
    /// The app to evaluate for (default: every app in the user's log).
    #[arg(long)]
    pub app: Option<String>,
    /// Evaluate with these attributes (a JSON object) instead of those the
    /// app claims for the user.
    #[arg(long)]
    pub attributes: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LimitsClearArgs {
    #[arg(long)]
    pub user: String,
    /// The app-specific override to delete (default: the all-apps one).
    #[arg(long)]
    pub app: Option<String>,
}

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
    /// Revoke every active session of --user in --app.
    #[arg(long, requires = "user")]
    pub all: bool,
    /// An explanation, recorded in the log and sent to the app as `note`.
    #[arg(long)]
    pub reason: Option<String>,
    /// Recorded as who revoked (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
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
    let mut settings = Settings::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Demo(_)) {
        // The demo tells its own story on stdout; RUST_LOG still wins.
        // Dropping a database can pass sqlx's slow-statement threshold: not
        // worth a warning here.
        settings.log.level = "warn,sqlx::query=error".to_owned();
    }
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
            telemetry::init_metrics();
            let worker = Worker::builder(settings).build().await?;
            worker.run(shutdown::signal()).await
        }
        Command::Sessions(args) => sessions(&settings, &args).await,
        Command::Limits { action } => limits(&settings, action).await,
        Command::Revoke(args) => revoke(&settings, &args).await,
        Command::CheckConfig => check_config(&settings).await,
        Command::Bench(args) => crate::bench::run(&settings, &args).await,
        Command::Demo(args) => crate::demo::run(&settings, &args).await,
    }
}

/// How long `check-config` waits for each service to answer.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `check-config`: the configuration is valid (loading it checked every key
/// and value), the hook chain builds, and both services accept the worker.
/// Prints the effective settings as TOML, then one comment line per service;
/// fails with one line naming the setting, the service and why.
async fn check_config(settings: &Settings) -> anyhow::Result<()> {
    Enforcement::from_settings(settings, &[])?;
    print!("{}", settings.to_toml());
    let database = check_database(settings).await?;
    println!("\n# PostgreSQL: {database}");
    let broker = check_broker(settings).await?;
    println!("# RabbitMQ: {broker}");
    println!("# configuration OK");
    Ok(())
}

/// Connects to PostgreSQL as `run` would, without creating the database,
/// and compares the applied migrations with this binary's.
async fn check_database(settings: &Settings) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let url = crate::configuration::redact_url(&settings.database.url);
    let options: sqlx::postgres::PgConnectOptions = settings.database.url.parse()?;
    let failed = |why: String| anyhow::anyhow!("database.url ({url}): {why}");
    let connected =
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::PgConnection::connect_with(&options)).await;
    let mut conn = match connected {
        Err(_) => {
            return Err(failed(format!(
                "PostgreSQL did not answer within {} s",
                CHECK_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => {
            if let Some(refusal) = crate::refusal::Refusal::of_database(&e) {
                anyhow::bail!(refusal.explain(settings));
            }
            if let Some(db) = e.as_database_error()
                && db.code().as_deref() == Some("3D000")
            {
                return Ok(format!(
                    "server at {url} reached; database {:?} does not exist yet (`migrate` or \
                     `run` creates it, with the CREATEDB privilege)",
                    options.get_database().unwrap_or_default()
                ));
            }
            return Err(failed(format!("cannot connect to PostgreSQL: {e}")));
        }
        Ok(Ok(conn)) => conn,
    };
    let applied: Result<Vec<(i64, bool, Vec<u8>)>, sqlx::Error> =
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await;
    let _ = conn.close().await;
    let expected: Vec<&sqlx::migrate::Migration> = store::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let schema = match applied {
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => {
            format!(
                "schema missing, none of the {} migrations applied (`migrate` or `run` applies them)",
                expected.len()
            )
        }
        Err(e) => return Err(failed(format!("cannot read the applied migrations: {e}"))),
        Ok(applied) => {
            for (version, success, checksum) in &applied {
                match expected.iter().find(|m| m.version == *version) {
                    None => {
                        return Err(failed(format!(
                            "the schema is newer than this binary (migration {version} is unknown \
                             to it): use a newer session-guard"
                        )));
                    }
                    Some(_) if !success => {
                        return Err(failed(format!(
                            "migration {version} failed partway: repair it by hand, then remove \
                             its row from _sqlx_migrations"
                        )));
                    }
                    Some(m) if m.checksum.as_ref() != checksum.as_slice() => {
                        return Err(failed(format!(
                            "migration {version} was applied from a different file than this \
                             binary's"
                        )));
                    }
                    Some(_) => {}
                }
            }
            let behind = expected.len() - applied.len();
            if behind == 0 {
                format!("schema up to date ({} migrations)", expected.len())
            } else {
                format!(
                    "schema behind: {} of {} migrations applied (`migrate` or `run` applies the rest)",
                    applied.len(),
                    expected.len()
                )
            }
        }
    };
    Ok(format!("connected to {url}; {schema}"))
}

/// Connects to RabbitMQ as `run` would (the credentials and the vhost),
/// without declaring anything.
async fn check_broker(settings: &Settings) -> anyhow::Result<String> {
    let amqp = &settings.amqp;
    let url = crate::configuration::redact_url(&amqp.url);
    let connected =
        tokio::time::timeout(CHECK_TIMEOUT, crate::broker::connect(amqp, "check-config")).await;
    match connected {
        Err(_) => anyhow::bail!(
            "amqp.url ({url}): RabbitMQ did not answer within {} s",
            CHECK_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => {
            if let Some(refusal) = crate::refusal::Refusal::find(&e) {
                anyhow::bail!(refusal.explain(settings));
            }
            // The context names the (redacted) URL; lapin's error repeats
            // its own cause, so only the first one.
            let cause = e
                .chain()
                .nth(1)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            anyhow::bail!("amqp.url: {e}{cause}")
        }
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "checked".into()).await;
            Ok(format!("connected to {url}"))
        }
    }
}

/// The hooks as the command line can run them: the built-in ones. Hooks of
/// an embedding program are not in this binary; they are skipped, with a
/// warning, rather than making every command fail.
fn cli_enforcement(settings: &Settings) -> Enforcement {
    let mut settings = settings.clone();
    let (known, unknown): (Vec<String>, Vec<String>) = settings
        .limits
        .hooks
        .iter()
        .cloned()
        .partition(|h| BUILT_IN_HOOKS.contains(&h.as_str()));
    if !unknown.is_empty() {
        eprintln!(
            "warning: hooks not built into this binary are skipped ({}); the worker that \
             registers them may decide differently",
            escape(&unknown.join(", "))
        );
    }
    settings.limits.hooks = known;
    Enforcement::from_settings(&settings, &[]).expect("built-in hooks always build")
}

/// Who runs the command, for the log: --operator, else $USER.
fn operator(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn parse_app(app: &str) -> anyhow::Result<AppName> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!("--app: {e}"))
}

fn parse_user(user: &str) -> anyhow::Result<UserId> {
    UserId::parse(user).map_err(|e| anyhow::anyhow!("--user: {e}"))
}

/// Checks `--user` and `--app` as the worker checks events, before anything
/// is read or written.
fn parse_user_and_app(user: &str, app: Option<&str>) -> anyhow::Result<()> {
    parse_user(user)?;
    app.map(parse_app).transpose()?;
    Ok(())
}

/// "every app", or "app NAME", escaped for the terminal.
fn scope(app: Option<&str>) -> String {
    app.map_or("every app".to_owned(), |app| format!("app {}", escape(app)))
}

async fn limits(settings: &Settings, action: LimitsAction) -> anyhow::Result<()> {
    let (user, app) = match &action {
        LimitsAction::Set(a) => (&a.user, &a.app),
        LimitsAction::Get(a) => (&a.user, &a.app),
        LimitsAction::Clear(a) => (&a.user, &a.app),
    };
    parse_user_and_app(user, app.as_deref())?;
    let pool = store::connect_checked(&settings.database).await?;
    let mut out = std::io::stdout().lock();
    match action {
        LimitsAction::Set(a) => {
            let o = UserOverride {
                app: a.app.clone(),
                max_sessions: a.max_sessions,
                max_sessions_global: a.max_sessions_global,
                policy: a.policy,
                idle_timeout: a.idle_timeout,
                log_limit: a.log_limit,
            };
            if o == (UserOverride {
                app: a.app.clone(),
                ..UserOverride::default()
            }) {
                anyhow::bail!(
                    "nothing to set: give --max, --max-global, --policy, --idle-timeout or --log-limit"
                );
            }
            store::set_override(&pool, &a.user, a.app.as_deref(), &o, &operator(&a.operator))
                .await
                .context("cannot store the override")?;
            writeln!(
                out,
                "stored limits for user {} in {}; they apply from the user's next event",
                escape(&a.user),
                scope(a.app.as_deref())
            )?;
        }
        LimitsAction::Clear(a) => {
            let removed = store::clear_override(&pool, &a.user, a.app.as_deref()).await?;
            let scope = scope(a.app.as_deref());
            let user = escape(&a.user);
            if removed {
                writeln!(out, "cleared the limits stored for user {user} in {scope}")?;
            } else {
                writeln!(out, "no limits were stored for user {user} in {scope}")?;
            }
        }
        LimitsAction::Get(a) => {
            let user = parse_user(&a.user)?;
            let rules = cli_enforcement(settings);
            let given: Option<serde_json::Map<String, serde_json::Value>> = a
                .attributes
                .as_deref()
                .map(|json| match serde_json::from_str(json) {
                    Ok(serde_json::Value::Object(map)) => Ok(map),
                    _ => Err(anyhow::anyhow!("--attributes must be a JSON object")),
                })
                .transpose()?;
            let mut targets = store::latest_attributes(&pool, &a.user, a.app.as_deref()).await?;
            if let Some(app) = &a.app
                && targets.is_empty()
            {
                targets.push((app.clone(), None));
            }
            if targets.is_empty() {
                anyhow::bail!(
                    "user {} has no sessions in the log: name an app with --app",
                    a.user
                );
            }
            let mut report = Vec::new();
            for (app, stored) in targets {
                let attributes = match (&given, stored) {
                    (Some(given), _) => given.clone(),
                    (None, Some(serde_json::Value::Object(map))) => map,
                    (None, _) => serde_json::Map::new(),
                };
                let app = AppName::from_trusted(app);
                let effective =
                    store::effective_limits(&pool, &rules, &user, &app, &attributes).await?;
                report.push(serde_json::json!({
                    "user_id": a.user,
                    "app": app.as_str(),
                    "attributes": attributes,
                    "limits": effective.limits,
                    "set_by": effective.set_by,
                    "enforce": rules.enforce,
                    "hooks": rules.hooks.names(),
                }));
                if !a.json {
                    let l = &effective.limits;
                    let by = &effective.set_by;
                    writeln!(
                        out,
                        "user {} in app {}",
                        escape(&a.user),
                        escape(app.as_str())
                    )?;
                    let attributes = serde_json::Value::Object(attributes).to_string();
                    writeln!(out, "  attributes: {}", escape(&attributes))?;
                    let rows = [
                        ("max_sessions", l.max_sessions.to_string(), &by.max_sessions),
                        (
                            "max_sessions_global",
                            l.max_sessions_global.to_string(),
                            &by.max_sessions_global,
                        ),
                        ("policy", l.policy.to_string(), &by.policy),
                        ("idle_timeout", l.idle_timeout.to_string(), &by.idle_timeout),
                        (
                            "log_limit",
                            l.log_limit.map_or("unset".to_owned(), |n| n.to_string()),
                            &by.log_limit,
                        ),
                    ];
                    for (key, value, source) in rows {
                        let source = escape(source);
                        writeln!(out, "  {key:<20} {value:<13} set by {source}")?;
                    }
                    if !rules.enforce {
                        writeln!(
                            out,
                            "  (shadow mode: limits.enforce = false, nothing is revoked)"
                        )?;
                    }
                }
            }
            if a.json {
                let json = serde_json::to_string_pretty(&report)?;
                writeln!(out, "{}", escape_json(&json))?;
            }
        }
    }
    pool.close().await;
    Ok(())
}

async fn revoke(settings: &Settings, args: &RevokeArgs) -> anyhow::Result<()> {
    let app = parse_app(&args.app)?;
    let target = match (&args.session, &args.user) {
        (Some(session), _) => AdminTarget::Session {
            app,
            session_id: SessionId::parse(session).map_err(|e| anyhow::anyhow!("--session: {e}"))?,
        },
        (None, Some(user)) => AdminTarget::User {
            app,
            user_id: parse_user(user)?,
        },
        (None, None) => anyhow::bail!("give --session S, or --user U --all"),
    };
    let pool = store::connect_checked(&settings.database).await?;
    let rules = cli_enforcement(settings);
    let revoked = store::admin_revoke(
        &pool,
        &rules,
        &target,
        &operator(&args.operator),
        args.reason.clone(),
    )
    .await?;
    pool.close().await;
    let mut out = std::io::stdout().lock();
    if revoked.is_empty() {
        writeln!(out, "nothing to revoke: no active session matched")?;
    } else {
        for r in &revoked {
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
    }
    Ok(())
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
    /// The rule, hook or operator that ended it ("user" for logout_others
    /// and logout_all; absent for logouts).
    ended_by: Option<String>,
    /// An operator's explanation.
    note: Option<String>,
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
            ended_by: s.ended_by,
            note: s.end_note,
            state: state.as_str(),
        }
    }
}

pub(crate) async fn sessions(settings: &Settings, args: &SessionsArgs) -> anyhow::Result<()> {
    parse_user_and_app(&args.user, args.app.as_deref())?;
    let pool = store::connect_checked(&settings.database).await?;
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
        let json = serde_json::to_string_pretty(&sessions)?;
        writeln!(out, "{}", escape_json(&json))?;
    } else if sessions.is_empty() {
        writeln!(
            out,
            "no {}sessions for user {}{}",
            if args.all { "" } else { "active " },
            escape(&args.user),
            args.app
                .as_deref()
                .map(|a| format!(" in app {}", escape(a)))
                .unwrap_or_default()
        )?;
    } else {
        write_table(&mut out, &sessions)?;
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
    let dash = || "-".to_owned();
    let rows: Vec<[String; 10]> = sessions
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
                s.ended_by.clone().unwrap_or_else(dash),
                s.ip.clone().unwrap_or_else(dash),
                s.user_agent
                    .as_deref()
                    .map(|ua| ua.chars().take(40).collect())
                    .unwrap_or_else(dash),
            ]
            .map(|cell| escape(&cell).into_owned())
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
