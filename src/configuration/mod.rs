//! Layered settings: the embedded `config/default.toml`, then an optional file,
//! then `SESSION_GUARD__<SECTION>__<KEY>` environment variables.
//!
//! Loading is strict. Each layer is read on its own over the defaults (the
//! file, then the environment), so that every unknown key and every bad value
//! is reported with where it came from: the file's path or the variable's
//! name. The keys known are those of the [`Settings`] types, never a list
//! kept by hand.
//!
//! The files, from what callers use down to what they never see:
//! - `settings.rs`: the typed settings, one struct per section (a new
//!   setting starts there, and in `config/default.toml`);
//! - `load.rs`: [`Settings::load`], layer by layer; `validate.rs`: the
//!   checks of values the types let through; `problem.rs`: what loading
//!   refuses ([`SettingsError`], [`Problem`]);
//! - `layer.rs` (one layer and where its values came from), `key_path.rs`
//!   (a key's dotted path), `sources.rs` (the built-in defaults and the
//!   environment), `renamed.rs` (old key names still read);
//! - `url.rs`: masking passwords in URLs, and swapping a URL's database.
//!
//! The rule hooks these settings name are built into a chain where the
//! hooks live, [`crate::domain::limits::HookChain::configured`].

pub mod database_url;
mod key_path;
mod layer;
mod load;
mod problem;
mod renamed;
mod settings;
mod sources;
mod url;
mod validate;

#[cfg(test)]
mod tests;

pub use self::problem::{Problem, SettingsError};
pub use self::settings::{
    AmqpSettings, ApiSettings, DatabaseSettings, HttpSettings, LimitSettings, LogFormat,
    LogSettings, NoticeScope, NoticeSettings, RetentionSettings, Settings, WorkerSettings,
};
pub use self::sources::ENV_PREFIX;
pub use self::url::with_database;
pub use self::validate::{MAX_INT4, MAX_SECONDS};
