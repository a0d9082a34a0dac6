//! `session-guard tokens create|list|revoke`: the sessions API's bearer
//! tokens. A token is printed once, at its creation; the database keeps
//! only its SHA-256.

use std::io::Write;

use anyhow::Context as _;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};

use super::input::parse_app;
use crate::api::token::{self, EVERY_APP, Scope};
use crate::configuration::Settings;
use crate::db;
use crate::terminal::escape;

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Create a token and print it, once.
    Create(TokensCreateArgs),
    /// List the tokens: name, apps, scopes, created, revoked (never the token).
    List,
    /// Revoke a token: every API server refuses it from its next request.
    Revoke(TokensRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokensCreateArgs {
    /// A unique name, recorded as `token:NAME` in the log for what it ends.
    pub name: String,
    /// The apps whose sessions it may see, comma-separated; '*' = every app.
    #[arg(long, value_delimiter = ',', required = true)]
    pub apps: Vec<String>,
    /// What it may do, comma-separated: sessions:read, sessions:revoke,
    /// limits:read, limits:write.
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokensRevokeArgs {
    /// The token's name.
    pub name: String,
}

/// Longest token name: it ends up in `ended_by`, beside operators' names.
const MAX_NAME_CHARS: usize = 64;

pub(super) async fn tokens(settings: &Settings, action: TokensAction) -> anyhow::Result<()> {
    if let TokensAction::Create(a) = &action {
        check_create(a)?;
    }
    let pool = db::connect_checked(&settings.database).await?;
    let mut out = std::io::stdout().lock();
    let result = match action {
        TokensAction::Create(a) => create(&pool, &a, &mut out).await,
        TokensAction::List => list(&pool, &mut out).await,
        TokensAction::Revoke(a) => revoke(&pool, &a, &mut out).await,
    };
    pool.close().await;
    result
}

/// The name, apps and scopes, checked before anything is stored.
fn check_create(a: &TokensCreateArgs) -> anyhow::Result<()> {
    let n = a.name.chars().count();
    if n == 0
        || n > MAX_NAME_CHARS
        || !a
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        anyhow::bail!(
            "NAME: 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . - (got {:?})",
            escape(&a.name)
        );
    }
    for app in &a.apps {
        if app != EVERY_APP {
            parse_app(app)?;
        }
    }
    if a.apps.len() > 1 && a.apps.iter().any(|app| app == EVERY_APP) {
        anyhow::bail!("--apps: '*' means every app; name no other app with it");
    }
    for scope in &a.scopes {
        if Scope::parse(scope).is_none() {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            anyhow::bail!(
                "--scopes: unknown scope {:?} (known: {})",
                escape(scope),
                known.join(", ")
            );
        }
    }
    Ok(())
}

async fn create(
    pool: &sqlx::PgPool,
    a: &TokensCreateArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let token = token::generate();
    let created = db::tokens::create(pool, &a.name, &token::hash(&token), &a.apps, &a.scopes)
        .await
        .context("cannot store the token")?;
    if !created {
        anyhow::bail!("a token named {} exists already", a.name);
    }
    // The token alone on stdout, so that `$(session-guard tokens create ...)`
    // captures it; the advice goes to stderr.
    writeln!(out, "{token}")?;
    eprintln!(
        "token {} created; it is shown only this once: store it as a secret",
        a.name
    );
    Ok(())
}

async fn list(pool: &sqlx::PgPool, out: &mut impl Write) -> anyhow::Result<()> {
    let rows = db::tokens::list(pool).await?;
    if rows.is_empty() {
        writeln!(out, "no tokens")?;
        return Ok(());
    }
    let when = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.apps.join(","),
                r.scopes.join(","),
                when(r.created_at),
                r.revoked_at.map_or("-".to_owned(), when),
            ]
            .map(|c| escape(&c).into_owned())
        })
        .collect();
    let header = ["NAME", "APPS", "SCOPES", "CREATED", "REVOKED"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

async fn revoke(
    pool: &sqlx::PgPool,
    a: &TokensRevokeArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if db::tokens::revoke(pool, &a.name).await? {
        writeln!(out, "token {} revoked", escape(&a.name))?;
        Ok(())
    } else {
        anyhow::bail!("no live token named {}", escape(&a.name))
    }
}
