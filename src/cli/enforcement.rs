//! The limit rules as the command line can evaluate them.

use crate::apply::Enforcement;
use crate::configuration::Settings;
use crate::domain::limits::BUILT_IN_HOOKS;
use crate::terminal::escape;

/// The hooks as the command line can run them: the built-in ones. Hooks of
/// an embedding program are not in this binary; they are skipped, with a
/// warning, rather than making every command fail.
pub(super) fn built_in_enforcement(settings: &Settings) -> Enforcement {
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
