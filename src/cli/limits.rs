//! `session-guard limits set|get|clear`: the limits stored for one user
//! (the `user_overrides` hook), and the effective limits after every hook.
//! Each action reads its flags, makes one database call and prints.

use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::enforcement::built_in_enforcement;
use super::input::{int4, operator, parse_user, parse_user_and_app};
use crate::apply::{self, Enforcement};
use crate::configuration::Settings;
use crate::db;
use crate::domain::event::AppName;
use crate::domain::limits::{EffectiveLimits, EvictionPolicy, UserOverride};
use crate::terminal::{escape, escape_json};

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
    /// The user whose stored limits to set (their id, as apps send it).
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

#[derive(Debug, Args)]
pub struct LimitsGetArgs {
    /// The user whose effective limits to show.
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
    /// The user whose stored limits to delete.
    #[arg(long)]
    pub user: String,
    /// The app-specific override to delete (default: the all-apps one).
    #[arg(long)]
    pub app: Option<String>,
}

impl LimitsAction {
    /// `--user` and `--app`, which every action has.
    fn user_and_app(&self) -> (&str, Option<&str>) {
        let (user, app) = match self {
            LimitsAction::Set(a) => (&a.user, &a.app),
            LimitsAction::Get(a) => (&a.user, &a.app),
            LimitsAction::Clear(a) => (&a.user, &a.app),
        };
        (user, app.as_deref())
    }
}

pub(super) async fn limits(settings: &Settings, action: LimitsAction) -> anyhow::Result<()> {
    let (user, app) = action.user_and_app();
    parse_user_and_app(user, app)?;
    let pool = db::connect_checked(&settings.database).await?;
    let mut out = std::io::stdout().lock();
    match action {
        LimitsAction::Set(a) => set(&pool, &a, &mut out).await?,
        LimitsAction::Clear(a) => clear(&pool, &a, &mut out).await?,
        LimitsAction::Get(a) => get(settings, &pool, &a, &mut out).await?,
    }
    pool.close().await;
    Ok(())
}

async fn set(pool: &PgPool, a: &LimitsSetArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let limits = stored_override(a)?;
    db::overrides::set_override(
        pool,
        &a.user,
        a.app.as_deref(),
        &limits,
        &operator(&a.operator),
    )
    .await
    .context("cannot store the override")?;
    writeln!(
        out,
        "stored limits for user {} in {}; they apply from the user's next event",
        escape(&a.user),
        scope(a.app.as_deref())
    )?;
    Ok(())
}

/// The override `limits set` stores; refused if it would set nothing.
fn stored_override(a: &LimitsSetArgs) -> anyhow::Result<UserOverride> {
    let limits = UserOverride {
        app: a.app.clone(),
        max_sessions: a.max_sessions,
        max_sessions_global: a.max_sessions_global,
        policy: a.policy,
        idle_timeout: a.idle_timeout,
        log_limit: a.log_limit,
    };
    let nothing = UserOverride {
        app: a.app.clone(),
        ..UserOverride::default()
    };
    if limits == nothing {
        anyhow::bail!(
            "nothing to set: give --max, --max-global, --policy, --idle-timeout or --log-limit"
        );
    }
    Ok(limits)
}

async fn clear(pool: &PgPool, a: &LimitsClearArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let removed = db::overrides::clear_override(pool, &a.user, a.app.as_deref()).await?;
    let scope = scope(a.app.as_deref());
    let user = escape(&a.user);
    if removed {
        writeln!(out, "cleared the limits stored for user {user} in {scope}")?;
    } else {
        writeln!(out, "no limits were stored for user {user} in {scope}")?;
    }
    Ok(())
}

/// "every app", or "app NAME", escaped for the terminal.
fn scope(app: Option<&str>) -> String {
    app.map_or("every app".to_owned(), |app| format!("app {}", escape(app)))
}

/// The effective limits of the user in one app, with what they were
/// computed from.
struct Evaluated {
    /// The app they apply in.
    app: AppName,
    /// The attributes the hooks saw: given with --attributes, else claimed.
    attributes: Map<String, Value>,
    /// The limits, and which hook set each.
    effective: EffectiveLimits,
}

async fn get(
    settings: &Settings,
    pool: &PgPool,
    a: &LimitsGetArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let user = parse_user(&a.user)?;
    let enforcement = built_in_enforcement(settings);
    let given = parse_attributes(a.attributes.as_deref())?;
    let mut report = Vec::new();
    for (app, stored) in apps_to_evaluate(pool, a).await? {
        let attributes = match (&given, stored) {
            (Some(given), _) => given.clone(),
            (None, Some(Value::Object(map))) => map,
            (None, _) => Map::new(),
        };
        let app = AppName::from_trusted(app);
        let effective =
            apply::effective_limits(pool, &enforcement, &user, &app, &attributes).await?;
        let evaluated = Evaluated {
            app,
            attributes,
            effective,
        };
        if !a.json {
            write_text(out, &a.user, &enforcement, &evaluated)?;
        }
        report.push(to_json(&a.user, &enforcement, evaluated));
    }
    if a.json {
        let json = serde_json::to_string_pretty(&report)?;
        writeln!(out, "{}", escape_json(&json))?;
    }
    Ok(())
}

/// `--attributes`, which must be a JSON object.
fn parse_attributes(given: Option<&str>) -> anyhow::Result<Option<Map<String, Value>>> {
    given
        .map(|json| match serde_json::from_str(json) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(anyhow::anyhow!("--attributes must be a JSON object")),
        })
        .transpose()
}

/// The apps to evaluate (--app, else every app of the user's log), each
/// with the attributes the app last claimed for the user.
async fn apps_to_evaluate(
    pool: &PgPool,
    a: &LimitsGetArgs,
) -> anyhow::Result<Vec<(String, Option<Value>)>> {
    let mut targets = db::claims::latest_attributes(pool, &a.user, a.app.as_deref()).await?;
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
    Ok(targets)
}

/// One app's part of `limits get --json`.
fn to_json(user: &str, enforcement: &Enforcement, evaluated: Evaluated) -> Value {
    serde_json::json!({
        "user_id": user,
        "app": evaluated.app.as_str(),
        "attributes": evaluated.attributes,
        "limits": evaluated.effective.limits,
        "set_by": evaluated.effective.set_by,
        "enforce": enforcement.enforce,
        "hooks": enforcement.hooks.names(),
    })
}

/// One app's part of `limits get`: a line per limit and who set it.
fn write_text(
    out: &mut impl Write,
    user: &str,
    enforcement: &Enforcement,
    evaluated: &Evaluated,
) -> anyhow::Result<()> {
    let l = &evaluated.effective.limits;
    let by = &evaluated.effective.set_by;
    writeln!(
        out,
        "user {} in app {}",
        escape(user),
        escape(evaluated.app.as_str())
    )?;
    let attributes = Value::Object(evaluated.attributes.clone()).to_string();
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
    if !enforcement.enforce {
        writeln!(
            out,
            "  (shadow mode: limits.enforce = false, nothing is revoked)"
        )?;
    }
    Ok(())
}
