//! Checks of the values operators type, shared by the commands: the same
//! rules the worker applies to events, reported with the flag's name.

use crate::domain::event::{AppName, UserId};

/// A count the database stores as `integer`: 0 to 2147483647, refused by
/// the parser beyond that rather than stored as something else.
pub(super) fn int4() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=i64::from(i32::MAX))
}

/// Who runs the command, for the log: --operator, else $USER.
pub(super) fn operator(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(super) fn parse_app(app: &str) -> anyhow::Result<AppName> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!("--app: {e}"))
}

pub(super) fn parse_user(user: &str) -> anyhow::Result<UserId> {
    UserId::parse(user).map_err(|e| anyhow::anyhow!("--user: {e}"))
}

/// Checks `--user` and `--app` as the worker checks events, before anything
/// is read or written.
pub(super) fn parse_user_and_app(user: &str, app: Option<&str>) -> anyhow::Result<()> {
    parse_user(user)?;
    app.map(parse_app).transpose()?;
    Ok(())
}
