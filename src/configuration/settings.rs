//! The typed settings: one struct per section of the file, each field
//! documented with what it is for. These types are the one list of keys
//! there is: loading (`load.rs`) refuses what they do not name, and
//! `check-config` prints them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::limits::{EvictionPolicy, Limits, Rule};
use session_guard_amqp::url::redact_url;

/// Everything session-guard can be told; one section per subsystem.
///
/// Every settings struct denies unknown fields, so that a misspelt key is an
/// error wherever the settings are read from; [`Settings::load`] also
/// watches for keys ignored anyway (serde_ignored), should a struct without
/// that attribute be added.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub limits: LimitSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    /// Notices to the apps about sign-ins from a new device or network.
    pub notices: NoticeSettings,
    /// Deprecated keys the file or the environment used (old name, new
    /// name): they still work, and the worker warns about each at start.
    #[serde(skip)]
    pub deprecated: Vec<(&'static str, &'static str)>,
}

/// `[http]`: the worker's own HTTP endpoint (health and metrics).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Where `run` serves `/health/live`, `/health/ready` and `/metrics`;
    /// empty turns the endpoint off.
    pub listen: String,
}

/// `[api]`: the sessions API (`/v1/...`), served by `run` and `api`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Where the sessions API listens; empty turns it off in `run` (the
    /// `api` command refuses to start without it). Its own port, apart from
    /// health and metrics, so that it can be exposed to apps alone.
    pub listen: String,
    /// Most milliseconds one request may take before it is answered 503:
    /// a slow database must not pile up requests.
    pub request_timeout_ms: u64,
    /// Largest request body accepted; a bigger one is answered 413 before
    /// it is read. Every body the API accepts is a few hundred bytes.
    pub max_body_bytes: usize,
    /// Connections of the API's own pool, apart from the worker's: API
    /// requests never wait behind a batch's transaction for a connection,
    /// and a burst of them never takes one a batch needs.
    pub max_connections: u32,
}

impl ApiSettings {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

/// `[database]`: the PostgreSQL that holds the session log.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; may hold a password, so it is only ever logged (and
    /// serialized) redacted.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Pool size: one connection per batch in flight plus the relay and housekeeping.
    pub max_connections: u32,
}

/// `[amqp]`: the RabbitMQ broker, its exchanges and queues, and who may
/// publish for which app.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// RabbitMQ URL, or the URLs of a cluster's nodes: a list in the file,
    /// comma-separated in `SESSION_GUARD__AMQP__URL`; held here in the
    /// comma-separated form either way (`session_guard_amqp::url::split_urls`
    /// splits it). May hold passwords, so it is only ever logged (and
    /// serialized) redacted.
    #[serde(
        serialize_with = "serialize_redacted",
        deserialize_with = "deserialize_urls"
    )]
    pub url: String,
    /// Topic exchange apps publish events to.
    pub events_exchange: String,
    /// Quorum queue the workers share.
    pub events_queue: String,
    /// Topic exchange revoke events go to.
    pub revocations_exchange: String,
    /// Topic exchange notices are published to (routing key
    /// `<type>.<app>`).
    pub notices_exchange: String,
    /// Fanout exchange for messages that cannot be accepted.
    pub dead_letter_exchange: String,
    /// Durable queue bound to the dead-letter exchange, so nothing rejected is lost.
    pub dead_letter_queue: String,
    /// Per-consumer prefetch: the only backpressure lapin's consumer has.
    pub prefetch: u16,
    /// Delivery limit of the events queue, after which the broker dead-letters.
    pub max_redeliveries: u32,
    /// `x-quorum-initial-group-size` of the queues the worker declares: on
    /// how many nodes a new queue gets a replica.
    pub quorum_initial_group_size: u32,
    /// Require the AMQP `user-id` property on events, and that it names an
    /// AMQP user allowed to speak for the event's app.
    pub require_user_id: bool,
    /// AMQP user → apps it may publish events for. A user not listed may
    /// publish for the app of its own name only.
    #[serde(default)]
    pub app_users: std::collections::BTreeMap<String, Vec<String>>,
}

/// `[worker]`: how the worker batches, retries and shuts down.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `[limits]`: the base limits, and the rule hooks (by name) and
/// declarative rules that adjust them per user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `[retention]`: how much of the session log is kept, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Ended rows kept per user; `None` keeps everything.
    #[serde(default)]
    pub log_limit: Option<u32>,
    /// Seconds a pruned session's key is remembered after its last sign of life; 0 = forever.
    pub tombstone_ttl: u64,
    /// Ended rows whose end is older than this are swept out of the log by
    /// housekeeping; `None` keeps them.
    #[serde(
        default,
        deserialize_with = "human_duration::optional",
        serialize_with = "human_duration::serialize_optional"
    )]
    pub max_age: Option<Duration>,
    /// How often housekeeping expires tombstones and, with `max_age`, sweeps.
    #[serde(
        deserialize_with = "human_duration::required",
        serialize_with = "human_duration::serialize"
    )]
    pub sweep_interval: Duration,
}

/// Durations written for people: "90d", "12h", "1m 30s" (humantime's syntax).
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

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

    /// Written back the way people write it (`check-config` prints it), in
    /// the largest unit that divides it exactly: humantime's own formatting
    /// turns "90d" into months of 30.44 days.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*value))
    }

    fn format(value: Duration) -> String {
        if value.subsec_nanos() != 0 || value.is_zero() {
            return humantime::format_duration(value).to_string();
        }
        let secs = value.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs.is_multiple_of(size) {
                return format!("{}{unit}", secs / size);
            }
        }
        format!("{secs}s")
    }

    pub fn serialize_optional<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| parse(&text))
            .transpose()
    }
}

/// `[log]`: the worker's own log lines.
/// `[notices]`: what the worker tells an app when one of its sessions
/// signs in from a device or a network the user's other sessions have not
/// used lately (see `domain::notice`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeSettings {
    /// Publish notices (on by default: see docs/CONFIGURATION.md for what
    /// they tell the apps, and when to turn them off).
    pub enabled: bool,
    /// Earlier sessions count if their last activity is this recent,
    /// before the sign-in.
    #[serde(
        deserialize_with = "human_duration::required",
        serialize_with = "human_duration::serialize"
    )]
    pub lookback: Duration,
    /// Compare with the user's sessions in every app, or in the sign-in's.
    pub scope: NoticeScope,
    /// The kinds published: `new_device`, `new_network`.
    pub kinds: Vec<String>,
}

/// Which of the user's sessions a sign-in is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeScope {
    /// Every app's: "new" means new for the user anywhere.
    AllApps,
    /// The sign-in's app's only.
    PerApp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// tracing EnvFilter directive, e.g. "info" or "session_guard=debug,info".
    pub level: String,
    /// Output format for the log lines.
    pub format: LogFormat,
}

// Deserialized through `TryFrom<String>`, so that a wrong value is answered
// with the allowed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Every format, as spelt in the configuration.
    pub const ALL: [(&str, LogFormat); 2] =
        [("pretty", LogFormat::Pretty), ("json", LogFormat::Json)];
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        LogFormat::ALL
            .into_iter()
            .find(|(name, _)| *name == s)
            .map(|(_, format)| format)
            .ok_or_else(|| {
                let allowed: Vec<&str> = LogFormat::ALL.iter().map(|(name, _)| *name).collect();
                format!("unknown value {s:?} (allowed: {})", allowed.join(", "))
            })
    }
}

impl Settings {
    /// The database settings of the sessions API's own pool: the same
    /// database, `api.max_connections` connections.
    pub fn api_database(&self) -> DatabaseSettings {
        DatabaseSettings {
            max_connections: self.api.max_connections,
            ..self.database.clone()
        }
    }

    /// The effective settings as TOML, passwords masked; keys left unset
    /// are listed as comments so that every key shows.
    pub fn to_toml(&self) -> String {
        let text = toml::to_string(self).unwrap_or_else(|e| format!("# cannot show: {e}\n"));
        let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(self) else {
            return text;
        };
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
                continue;
            };
            if let Some(serde_json::Value::Object(keys)) = sections.get(section) {
                for (key, value) in keys {
                    if value.is_null() {
                        out.push_str(&format!("# {key}: unset\n"));
                    }
                }
            }
        }
        out
    }

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
}

/// Serializes a URL with its password masked.
fn serialize_redacted<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// `amqp.url`: one URL (a list of them, comma-separated, in an environment
/// variable) or a list of URLs, kept in the comma-separated form.
fn deserialize_urls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Urls;
    impl<'de> serde::de::Visitor<'de> for Urls {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL, or a list of URLs")
        }

        fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<String, E> {
            Ok(url.to_owned())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut urls: Vec<String> = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                urls.push(url);
            }
            if urls.is_empty() {
                return Err(serde::de::Error::invalid_length(0, &"at least one URL"));
            }
            Ok(urls.join(","))
        }
    }
    deserializer.deserialize_any(Urls)
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
            .field("notices_exchange", &self.notices_exchange)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("prefetch", &self.prefetch)
            .field("max_redeliveries", &self.max_redeliveries)
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .field("require_user_id", &self.require_user_id)
            .field("app_users", &self.app_users)
            .finish()
    }
}
