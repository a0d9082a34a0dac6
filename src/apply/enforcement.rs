//! What a batch is decided by, besides its events and the stored state:
//! the rule hooks and base limits, the repeat pause, shadow mode and the
//! `last_seen_at` write resolution, all from the settings.

use std::sync::Arc;
use std::time::Duration;

use crate::configuration::Settings;
use crate::domain::limits::{HookChain, RuleHook};

/// How limits are enforced: the rule hooks and the base limits they start
/// from, the repeat pause, shadow mode and the `last_seen_at` write
/// resolution. What a batch, an operator's revocation and `limits get`
/// decide by.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// The configured rule hooks and the base limits they start from.
    pub hooks: HookChain,
    /// Least time between two revoke messages for one session.
    pub repeat_revoke_after: Duration,
    /// `false` = shadow mode: decide, log and count, revoke nothing.
    pub enforce: bool,
    /// A `last_seen_at` that moved by less than this is not written back:
    /// requests in a burst cost one write, not one each.
    pub last_seen_resolution: Duration,
}

impl Enforcement {
    /// From the settings, with hooks of an embedding program's own.
    /// A hook name that is neither built in nor in `custom` is an error
    /// that names the key: the worker must not start without a hook it was
    /// told to run.
    pub fn from_settings(
        settings: &Settings,
        custom: &[Arc<dyn RuleHook>],
    ) -> anyhow::Result<Enforcement> {
        let limits = &settings.limits;
        let hooks =
            HookChain::configured(settings.base_limits(), &limits.hooks, &limits.rules, custom)
                .map_err(|e| anyhow::anyhow!("limits.hooks: {e}"))?;
        Ok(Enforcement {
            hooks,
            repeat_revoke_after: Duration::from_secs(settings.limits.repeat_revoke_after),
            enforce: settings.limits.enforce,
            last_seen_resolution: settings.worker.last_seen_resolution(),
        })
    }
}
