//! Layered settings: the embedded `config/default.toml`, then an optional file,
//! then `SESSION_GUARD__<SECTION>__<KEY>` environment variables.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use crate::domain::limits::{
    BUILT_IN_HOOKS, EvictionPolicy, HookChain, Limits, Rule, RuleHook, Rules, SuperuserUnlimited,
    UserOverrides,
};

/// The defaults, compiled in so that the binary runs without any file around it.
const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "SESSION_GUARD";

/// Everything session-guard can be told; one section per subsystem.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub limits: LimitSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// Where `run` serves Prometheus metrics; empty turns the endpoint off.
    pub listen: String,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; may hold a password, so it is only ever logged redacted.
    pub url: String,
    /// Pool size: one connection per batch in flight plus the relay and housekeeping.
    pub max_connections: u32,
}

#[derive(Clone, Deserialize)]
pub struct AmqpSettings {
    /// RabbitMQ URL; may hold a password, so it is only ever logged redacted.
    pub url: String,
    /// Topic exchange apps publish events to.
    pub events_exchange: String,
    /// Quorum queue the workers share.
    pub events_queue: String,
    /// Topic exchange revoke events go to.
    pub revocations_exchange: String,
    /// Fanout exchange for messages that cannot be accepted.
    pub dead_letter_exchange: String,
    /// Durable queue bound to the dead-letter exchange, so nothing rejected is lost.
    pub dead_letter_queue: String,
    /// Per-consumer prefetch: the only backpressure lapin's consumer has.
    pub prefetch: u16,
    /// Delivery limit of the events queue, after which the broker dead-letters.
    pub max_redeliveries: u32,
    /// Require the AMQP `user-id` property on events, and that it names an
    /// AMQP user allowed to speak for the event's app.
    pub require_user_id: bool,
    /// AMQP user → apps it may publish events for. A user not listed may
    /// publish for the app of its own name only.
    #[serde(default)]
    pub app_users: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Most deliveries handled in one transaction.
    pub batch_size: usize,
    /// Time to wait for a batch to fill once its first delivery arrived.
    pub batch_wait_ms: u64,
    /// Upper bound of the exponential backoff after an error.
    pub max_backoff_ms: u64,
    /// Seconds a graceful shutdown may take before `run` gives up waiting.
    pub shutdown_timeout: u64,
    /// Batches in the database at once per worker (each on its own
    /// connection): while one commits, the next is being read and applied.
    pub pipeline: usize,
    /// Milliseconds by which `last_seen_at` may lag in the log: a request
    /// that moves it by less is not written (0 = write every one).
    pub last_seen_resolution_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Active sessions per user and app; 0 means unlimited.
    pub max_sessions: u32,
    /// Active sessions per user across all apps; 0 = no such limit.
    pub max_sessions_global: u32,
    /// Which sessions stay when a user holds too many.
    pub policy: EvictionPolicy,
    /// Seconds without an event after which a session counts as expired; 0 = off.
    pub idle_timeout: u64,
    /// `false` = shadow mode: decide, log, count, revoke nothing.
    pub enforce: bool,
    /// Seconds between two revoke messages for one session; 0 = no pause.
    pub repeat_revoke_after: u64,
    /// Seconds an event's `occurred_at` may be ahead of the worker's clock
    /// before it is dead-lettered; 0 = no bound.
    pub max_clock_skew: u64,
    /// Rule hooks by name, in the order they run.
    pub hooks: Vec<String>,
    /// Declarative rules for the `rules` hook, applied in file order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Ended rows kept per user; `None` keeps everything.
    #[serde(default)]
    pub log_limit: Option<u32>,
    /// Seconds a pruned session's key is remembered after its last sign of life; 0 = forever.
    pub tombstone_ttl: u64,
    /// Ended rows whose end is older than this are swept out of the log by
    /// housekeeping; `None` keeps them.
    #[serde(default, deserialize_with = "human_duration::optional")]
    pub max_age: Option<Duration>,
    /// How often housekeeping expires tombstones and, with `max_age`, sweeps.
    #[serde(deserialize_with = "human_duration::required")]
    pub sweep_interval: Duration,
}

/// Durations written for people: "90d", "12h", "1m 30s" (humantime's syntax).
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!(
                "{text:?} is not a duration (write a number and a unit, such as \"90d\", \"12h\" \
                 or \"30s\"): {e}"
            ))
        })
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| parse(&text))
            .transpose()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// tracing EnvFilter directive, e.g. "info" or "session_guard=debug,info".
    pub level: String,
    /// Output format for the log lines.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator("__")
                .try_parsing(true)
                // SESSION_GUARD__LIMITS__HOOKS=superuser_unlimited,rules
                .list_separator(",")
                .with_list_parse_key("limits.hooks")
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .context("failed to read the configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects combinations that would misbehave at run time.
    fn validate(&self) -> anyhow::Result<()> {
        if self.worker.batch_size == 0 {
            anyhow::bail!("worker.batch_size must be at least 1");
        }
        if self.worker.pipeline == 0 {
            anyhow::bail!("worker.pipeline must be at least 1");
        }
        if (self.database.max_connections as usize) < self.worker.pipeline + 2 {
            anyhow::bail!(
                "database.max_connections ({}) must be at least worker.pipeline + 2 ({}): one \
                 connection per batch in flight, one for the outbox relay, one for housekeeping",
                self.database.max_connections,
                self.worker.pipeline + 2
            );
        }
        if self.retention.sweep_interval.is_zero() {
            anyhow::bail!("retention.sweep_interval must be longer than 0");
        }
        if self.amqp.prefetch == 0 {
            anyhow::bail!("amqp.prefetch must be at least 1 (0 would mean unlimited)");
        }
        for (key, name) in [
            ("amqp.events_exchange", &self.amqp.events_exchange),
            ("amqp.events_queue", &self.amqp.events_queue),
            ("amqp.revocations_exchange", &self.amqp.revocations_exchange),
            ("amqp.dead_letter_exchange", &self.amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
        ] {
            if name.is_empty() || name.len() > 255 {
                anyhow::bail!("{key} must be 1-255 bytes long");
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The limits every user starts from, before any hook.
    pub fn base_limits(&self) -> Limits {
        Limits {
            max_sessions: self.limits.max_sessions,
            max_sessions_global: self.limits.max_sessions_global,
            policy: self.limits.policy,
            idle_timeout: self.limits.idle_timeout,
            log_limit: self.retention.log_limit,
        }
    }

    /// The hook chain of `limits.hooks`: built-in hooks by name, and `custom`
    /// hooks (from a program embedding the worker) where their name appears,
    /// or after the configured ones if it does not.
    pub fn hook_chain(&self, custom: &[Arc<dyn RuleHook>]) -> anyhow::Result<HookChain> {
        let mut chain: Vec<Arc<dyn RuleHook>> = Vec::new();
        let mut used = vec![false; custom.len()];
        for name in &self.limits.hooks {
            if let Some(i) = custom.iter().position(|h| h.name() == name) {
                chain.push(custom[i].clone());
                used[i] = true;
                continue;
            }
            let hook: Arc<dyn RuleHook> = match name.as_str() {
                "superuser_unlimited" => Arc::new(SuperuserUnlimited),
                "rules" => Arc::new(Rules::new(self.limits.rules.clone())),
                "user_overrides" => Arc::new(UserOverrides),
                other => anyhow::bail!(
                    "limits.hooks: unknown hook {other:?} (built in: {}{})",
                    BUILT_IN_HOOKS.join(", "),
                    if custom.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; registered: {}",
                            custom
                                .iter()
                                .map(|h| h.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            };
            chain.push(hook);
        }
        for (hook, used) in custom.iter().zip(used) {
            if !used {
                chain.push(hook.clone());
            }
        }
        Ok(HookChain::new(self.base_limits(), chain))
    }
}

impl LimitSettings {
    /// How far ahead of the worker's clock an event may be; `None` when
    /// `max_clock_skew` is 0 (no bound).
    pub fn max_clock_skew(&self) -> Option<Duration> {
        (self.max_clock_skew > 0).then(|| Duration::from_secs(self.max_clock_skew))
    }
}

impl WorkerSettings {
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms.max(100))
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
    pub fn last_seen_resolution(&self) -> Duration {
        Duration::from_millis(self.last_seen_resolution_ms)
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("events_exchange", &self.events_exchange)
            .field("events_queue", &self.events_queue)
            .field("revocations_exchange", &self.revocations_exchange)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("prefetch", &self.prefetch)
            .field("max_redeliveries", &self.max_redeliveries)
            .field("require_user_id", &self.require_user_id)
            .field("app_users", &self.app_users)
            .finish()
    }
}

/// `url` with its database name replaced by `db` (the query string kept):
/// how tests and the benchmark make databases of their own.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Replaces the password of a URL (`scheme://user:password@host/...`) with `***`,
/// and any `password=` query parameter too, so URLs can be logged.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                let end = rest_start + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_reach_the_local_services() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(
            s.database.url,
            "postgres://postgres@127.0.0.1:5432/session_guard"
        );
        assert_eq!(s.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.amqp.events_exchange, "session_guard.events");
        assert_eq!(s.limits.max_sessions, 1);
        assert_eq!(s.limits.repeat_revoke_after, 30);
        assert_eq!(s.limits.max_clock_skew(), Some(Duration::from_secs(300)));
        assert_eq!(s.limits.policy, EvictionPolicy::EvictOldest);
        assert!(s.limits.enforce);
        assert_eq!(s.limits.hooks, ["rules", "user_overrides"]);
        assert_eq!(s.retention.log_limit, None);
        assert_eq!(s.retention.max_age, None);
        assert_eq!(s.retention.sweep_interval, Duration::from_secs(60));
    }

    #[test]
    fn retention_durations_are_written_for_people() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__RETENTION__MAX_AGE", "90d"),
                ("SESSION_GUARD__RETENTION__SWEEP_INTERVAL", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(s.retention.sweep_interval, Duration::from_millis(250));

        for (value, expected) in [
            ("90", "\"90\" is not a duration"),
            ("soon", "\"soon\" is not a duration"),
        ] {
            let e = Settings::load_from(None, env(&[("SESSION_GUARD__RETENTION__MAX_AGE", value)]))
                .unwrap_err();
            assert!(format!("{e:#}").contains(expected), "{e:#}");
        }
        let e = Settings::load_from(
            None,
            env(&[("SESSION_GUARD__RETENTION__SWEEP_INTERVAL", "0s")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "retention.sweep_interval must be longer than 0"
        );
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__LIMITS__MAX_SESSIONS", "3"),
                ("SESSION_GUARD__RETENTION__LOG_LIMIT", "0"),
                ("SESSION_GUARD__AMQP__EVENTS_QUEUE", "q.custom"),
                ("SESSION_GUARD__DATABASE__URL", "postgres://u:p@db/x"),
                ("OTHER__LIMITS__MAX_SESSIONS", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(s.limits.max_sessions, 3);
        assert_eq!(s.retention.log_limit, Some(0));
        assert_eq!(s.amqp.events_queue, "q.custom");
        assert_eq!(s.database.url, "postgres://u:p@db/x");
    }

    #[test]
    fn a_max_clock_skew_of_zero_means_no_bound() {
        let s = Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__MAX_CLOCK_SKEW", "0")]))
            .unwrap();
        assert_eq!(s.limits.max_clock_skew(), None);
    }

    #[test]
    fn file_layers_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("sg-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("custom.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_sessions = 2\nrepeat_revoke_after = 5\n[retention]\nlog_limit = 10\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[("SESSION_GUARD__LIMITS__MAX_SESSIONS", "4")]),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.limits.max_sessions, 4, "environment beats the file");
        assert_eq!(s.limits.repeat_revoke_after, 5, "file beats the defaults");
        assert_eq!(s.retention.log_limit, Some(10));
    }

    #[test]
    fn hooks_rules_and_policies_come_from_the_file_and_the_environment() {
        let dir = std::env::temp_dir().join(format!("sg-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.toml");
        std::fs::write(
            &file,
            r#"
[limits]
policy = "deny_new"
idle_timeout = 900

[[limits.rules]]
name = "staff"
when = { role = "staff" }
max_sessions = 3

[[limits.rules]]
when = { app = "admin", attribute = { mfa = true } }
policy = "evict_idle"
"#,
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[("SESSION_GUARD__LIMITS__HOOKS", "rules,superuser_unlimited")]),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.limits.policy, EvictionPolicy::DenyNew);
        assert_eq!(s.limits.idle_timeout, 900);
        assert_eq!(s.limits.rules.len(), 2);
        assert_eq!(s.limits.rules[0].when.role.as_deref(), Some("staff"));
        assert_eq!(
            s.limits.rules[1].when.attribute.as_ref().unwrap()["mfa"],
            serde_json::json!(true)
        );
        assert_eq!(s.limits.hooks, ["rules", "superuser_unlimited"]);
        assert_eq!(
            s.hook_chain(&[]).unwrap().names(),
            ["rules", "superuser_unlimited"]
        );
    }

    #[test]
    fn unknown_hooks_and_policies_are_refused() {
        // A hook name may belong to an embedding program: the settings load,
        // but the chain does not build without that hook.
        let s = Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__HOOKS", "rules,nope")]))
            .unwrap();
        let err = s.hook_chain(&[]).err().unwrap();
        assert!(
            format!("{err:#}").contains("unknown hook \"nope\""),
            "{err:#}"
        );
        let err = Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__POLICY", "lru")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("lru"), "{err:#}");
    }

    #[test]
    fn missing_file_and_bad_values_are_errors() {
        assert!(Settings::load_from(Some(Path::new("/nonexistent/x.toml")), env(&[])).is_err());
        let err = Settings::load_from(
            None,
            env(&[("SESSION_GUARD__LIMITS__MAX_SESSIONS", "many")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("max_sessions"), "{err:#}");
    }

    #[test]
    fn the_pool_must_fit_the_pipeline() {
        let err = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__WORKER__PIPELINE", "4"),
                ("SESSION_GUARD__DATABASE__MAX_CONNECTIONS", "5"),
            ]),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("at least worker.pipeline + 2 (6)"),
            "{err:#}"
        );
        let s = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__WORKER__PIPELINE", "4"),
                ("SESSION_GUARD__DATABASE__MAX_CONNECTIONS", "6"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.pipeline, 4);
        assert!(
            Settings::load_from(None, env(&[("SESSION_GUARD__WORKER__PIPELINE", "0")])).is_err()
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/db"),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u:s3cr@t@h/db?sslmode=require&password=x"),
            "postgres://u:***@h/db?sslmode=require&password=***"
        );
        let debug = format!("{:?}", Settings::load_from(None, env(&[])).unwrap());
        assert!(!debug.contains("guest:guest"), "{debug}");
    }
}
