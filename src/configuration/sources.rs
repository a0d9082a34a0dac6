//! Where settings come from besides a file: the defaults compiled into the
//! binary, and the `SESSION_GUARD__<SECTION>__<KEY>` environment variables.

/// The defaults, compiled in so that the binary runs without any file around it.
const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "SESSION_GUARD";

/// A config source for the built-in defaults.
pub(super) fn defaults() -> config::File<config::FileSourceString, config::FileFormat> {
    config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml)
}

/// A config source for environment variables (name → value, prefix
/// already checked).
pub(super) fn environment(vars: config::Map<String, String>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .separator("__")
        .try_parsing(true)
        // SESSION_GUARD__LIMITS__HOOKS=superuser_unlimited,rules
        .list_separator(",")
        .with_list_parse_key("limits.hooks")
        // SESSION_GUARD__NOTICES__KINDS=new_device,new_network
        .with_list_parse_key("notices.kinds")
        .source(Some(vars))
}

/// The environment variable for a dotted key.
pub(super) fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}
