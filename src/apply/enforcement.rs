//! What a batch is decided by, besides its events and the stored state:
//! the rule hooks and base limits, the repeat pause, shadow mode and the
//! `last_seen_at` write resolution, all from the settings; and the notices
//! policy with the key that names sessions in them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::known::KnownFacts;
use crate::configuration::NoticeScope;
use crate::configuration::Settings;
use crate::domain::handle::HandleKey;
use crate::domain::limits::{HookChain, RuleHook};
use crate::domain::notice::{NoticeKind, NoticePolicy, Scope};
use session_guard_protocol::api::Device;

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
    /// Notices to publish (`None`: `notices.enabled` is false, or the
    /// caller does not publish them).
    pub notices: Option<Notices>,
}

/// How notices are decided, and the key that seals the session's handle
/// they carry (the sessions API's, from `api_keys`).
#[derive(Debug, Clone)]
pub struct Notices {
    pub policy: NoticePolicy,
    pub handles: HandleKey,
    /// User agents already parsed, shared by the worker's batches: woothee
    /// is the costly part of a notice, and an app's users have few
    /// distinct browsers.
    pub devices: Arc<Mutex<HashMap<String, Device>>>,
    /// The user agents and networks of the sessions the worker's batches
    /// added lately: most sign-ins of a busy user are proven no news here,
    /// without a look at the log.
    pub known: Arc<Mutex<KnownFacts>>,
}

/// Most user agents [`Notices::devices`] keeps: past this it starts over,
/// so that made-up user agents cannot grow it without bound.
pub const MAX_DEVICES_CACHED: usize = 10_000;

impl Notices {
    /// From the settings, with the handle key read from the database;
    /// `None` when `notices.enabled` is false.
    pub fn from_settings(settings: &Settings, handles: HandleKey) -> Option<Notices> {
        let notices = &settings.notices;
        if !notices.enabled {
            return None;
        }
        let policy = NoticePolicy {
            lookback: notices.lookback,
            scope: match notices.scope {
                NoticeScope::AllApps => Scope::AllApps,
                NoticeScope::PerApp => Scope::PerApp,
            },
            // Checked when the settings were loaded: every kind is known.
            kinds: notices.kinds.iter().map(|k| NoticeKind::parse(k)).collect(),
        };
        Some(Notices {
            policy,
            handles,
            devices: Arc::default(),
            known: Arc::default(),
        })
    }
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
            // Needs the handle key, from the database: see `Notices`.
            notices: None,
        })
    }
}
