//! Layered settings: the embedded `config/default.toml`, then an optional file,
//! then `SESSION_GUARD__<SECTION>__<KEY>` environment variables.
//!
//! Loading is strict. Each layer is read on its own over the defaults (the
//! file, then the environment), so that every unknown key and every bad value
//! is reported with where it came from: the file's path or the variable's
//! name. The keys known are those of the [`Settings`] types, never a list
//! kept by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::domain::limits::{
    BUILT_IN_HOOKS, EvictionPolicy, HookChain, Limits, Rule, RuleHook, Rules, SuperuserUnlimited,
    UserOverrides,
};

/// The defaults, compiled in so that the binary runs without any file around it.
const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "SESSION_GUARD";

/// Largest value of a setting that ends up in a PostgreSQL `integer` column
/// (a session's `max_sessions`) or an AMQP signed 32-bit argument.
pub const MAX_INT4: u32 = i32::MAX as u32;

/// Largest duration, in seconds, a setting may hold: 100 years, far beyond
/// any use, and small enough that "now minus this" is still a timestamp.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

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
    /// Deprecated keys the file or the environment used (old name, new
    /// name): they still work, and the worker warns about each at start.
    #[serde(skip)]
    pub deprecated: Vec<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Where `run` serves `/health/live`, `/health/ready` and `/metrics`;
    /// empty turns the endpoint off.
    pub listen: String,
}

/// Keys renamed, as (old, new) dotted keys of two parts: the old name is still
/// read, as the new one, since config files in the wild use it.
const RENAMED: &[(&str, &str)] = &[("metrics.listen", "http.listen")];

/// Renames deprecated keys of a config file to their new names (a new name
/// set in the same file wins) and drops the sections left empty; returns
/// the renames it made.
fn rename_in_file(table: &mut toml::Table) -> Vec<(&'static str, &'static str)> {
    let mut renamed = Vec::new();
    for &(old, new) in RENAMED {
        let (Some((old_section, old_key)), Some((new_section, new_key))) =
            (old.split_once('.'), new.split_once('.'))
        else {
            continue;
        };
        let Some(toml::Value::Table(section)) = table.get_mut(old_section) else {
            continue;
        };
        let Some(value) = section.remove(old_key) else {
            continue;
        };
        if section.is_empty() {
            table.remove(old_section);
        }
        renamed.push((old, new));
        let target = table
            .entry(new_section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(target) = target {
            target.entry(new_key).or_insert(value);
        }
    }
    renamed
}

/// Renames deprecated keys among environment variables (dotted key →
/// name, value), the variable named as the new key's would be (a variable
/// of the new name wins); returns the renames it made.
fn rename_in_environment(
    vars: &mut BTreeMap<String, (String, String)>,
) -> Vec<(&'static str, &'static str)> {
    let mut renamed = Vec::new();
    for &(old, new) in RENAMED {
        if let Some((_, value)) = vars.remove(old) {
            renamed.push((old, new));
            vars.entry(new.to_owned())
                .or_insert_with(|| (env_name(new), value));
        }
    }
    renamed
}

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

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// RabbitMQ URL; may hold a password, so it is only ever logged (and
    /// serialized) redacted.
    #[serde(serialize_with = "serialize_redacted")]
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

/// Why the configuration could not be loaded. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--config` names nothing.
    #[error("config file {} not found", .0.display())]
    FileNotFound(PathBuf),
    /// `--config` names a directory.
    #[error("config file {} is a directory, not a file", .0.display())]
    FileIsDirectory(PathBuf),
    /// The file exists but cannot be read (permissions, not UTF-8...).
    // Not a `source`: the message already says it, and a chain would say
    // it twice.
    #[error("config file {} cannot be read: {reason}", .path.display())]
    FileUnreadable {
        /// The file given.
        path: PathBuf,
        /// What the operating system said.
        reason: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {}: {message}", .path.display())]
    FileSyntax {
        /// The file given.
        path: PathBuf,
        /// Where and what: "line 3, column 7: invalid string".
        message: String,
    },
    /// Unknown keys and bad values, every one found.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One unknown key or bad value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// "config file PATH", "environment variable NAME" or "built-in
    /// defaults"; `None` for checks across keys of several layers.
    pub origin: Option<String>,
    /// The key, dotted as in the docs: `limits.max_sessions`, `limits.rules[0].policy`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One step of a key's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A key of a table.
    Key(String),
    /// An element of an array (`[[limits.rules]]`).
    Index(usize),
}

/// `limits.rules[0].policy`.
fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A layer over the defaults: where its values come from, and the values.
enum Layer<'a> {
    /// The built-in defaults alone.
    Defaults,
    /// The `--config` file, parsed.
    File(&'a Path, toml::Table),
    /// Variables by their key path as the config crate maps them
    /// (lowercased, `__` = `.`): `limits.policy` → (name, value).
    Environment(BTreeMap<String, (String, String)>),
}

impl Layer<'_> {
    /// The config sources of this layer, over the defaults.
    fn sources(&self) -> Vec<Box<dyn config::Source + Send + Sync>> {
        let mut sources: Vec<Box<dyn config::Source + Send + Sync>> = vec![Box::new(defaults())];
        match self {
            Layer::Defaults => {}
            Layer::File(_, table) => sources.push(Box::new(config::File::from_str(
                &toml::to_string(table).unwrap_or_default(),
                config::FileFormat::Toml,
            ))),
            Layer::Environment(vars) => {
                sources.push(Box::new(environment(vars.values().cloned().collect())))
            }
        }
        sources
    }

    /// Where the value at `path` came from.
    fn origin(&self, path: &[Segment]) -> String {
        match self {
            Layer::Defaults => "built-in defaults".to_owned(),
            Layer::File(file, _) => format!("config file {}", file.display()),
            Layer::Environment(vars) => {
                let names: Vec<&str> = setting(vars, path)
                    .iter()
                    .map(|k| vars[k].0.as_str())
                    .collect();
                match names.len() {
                    0 => "environment".to_owned(),
                    1 => format!("environment variable {}", names[0]),
                    _ => format!("environment variables {}", names.join(", ")),
                }
            }
        }
    }

    /// Whether this layer sets a table (a section) at `path`.
    fn is_table(&self, path: &[Segment]) -> bool {
        match self {
            Layer::Defaults => false,
            Layer::File(_, table) => {
                let mut value = None::<&toml::Value>;
                let mut table: Option<&toml::Table> = Some(table);
                for segment in path {
                    value = match (segment, value, table) {
                        (Segment::Key(k), _, Some(t)) => t.get(k),
                        (Segment::Index(i), Some(toml::Value::Array(a)), _) => a.get(*i),
                        _ => None,
                    };
                    table = value.and_then(toml::Value::as_table);
                }
                table.is_some()
            }
            Layer::Environment(vars) => {
                let key = dotted(path);
                vars.keys().any(|k| k.starts_with(&format!("{key}.")))
            }
        }
    }

    /// Drops what this layer sets at `path` (or the closest key above it),
    /// so that it can be read again for the problems after that one.
    /// Returns whether anything was dropped.
    fn drop_key(&mut self, path: &[Segment]) -> bool {
        match self {
            Layer::Defaults => false,
            Layer::File(_, table) => drop_from_table(table, path),
            Layer::Environment(vars) => {
                let doomed = setting(vars, path);
                for key in &doomed {
                    vars.remove(key);
                }
                !doomed.is_empty()
            }
        }
    }

    /// The problem of an unknown key at `path`, with "did you mean ...?"
    /// when one of the `known` keys beside it is close.
    fn unknown(&self, path: &[Segment], known: &[&str]) -> Problem {
        let what = if self.is_table(path) {
            "unknown section"
        } else {
            "unknown key"
        };
        let message = match self.suggestion(path, known) {
            Some(s) => format!("{what} (did you mean {s}?)"),
            None => what.to_owned(),
        };
        Problem {
            origin: Some(self.origin(path)),
            key: dotted(path),
            message,
        }
    }

    /// The key (in a file) or the variable (in the environment) that an
    /// unknown key at `path` was probably meant to be.
    fn suggestion(&self, path: &[Segment], known: &[&str]) -> Option<String> {
        let (Segment::Key(unknown), parent) = path.split_last()? else {
            return None;
        };
        let best = closest(unknown, known.iter().copied())?;
        match self {
            Layer::Environment(vars) => {
                // The variable as it should have been spelt: the same path
                // with the misspelt step corrected.
                let key = dotted(path);
                let var_key = vars
                    .keys()
                    .find(|k| **k == key || k.starts_with(&format!("{key}.")))?;
                let mut fixed = dotted(parent);
                if !fixed.is_empty() {
                    fixed.push('.');
                }
                fixed.push_str(best);
                fixed.push_str(&var_key[key.len()..]);
                Some(env_name(&fixed))
            }
            _ => Some(best.to_owned()),
        }
    }
}

/// The keys beside `path` in the defaults' key tree.
fn siblings<'k>(known: &'k serde_json::Value, path: &[Segment]) -> Vec<&'k str> {
    let mut here = known;
    for segment in path.split_last().map_or(&[][..], |(_, parent)| parent) {
        here = match (segment, here) {
            (Segment::Key(k), serde_json::Value::Object(map)) => match map.get(k) {
                Some(v) => v,
                None => return Vec::new(),
            },
            (Segment::Index(_), serde_json::Value::Array(items)) => match items.first() {
                Some(v) => v,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        };
    }
    match here {
        serde_json::Value::Object(map) => map.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The keys of the variables that set `path`: the one for it or for a key
/// above it; failing that, those for keys under it.
fn setting(vars: &BTreeMap<String, (String, String)>, path: &[Segment]) -> Vec<String> {
    let key = dotted(path);
    let above = |k: &str| {
        key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
    };
    let mut keys: Vec<String> = vars.keys().filter(|k| above(k)).cloned().collect();
    if keys.is_empty() {
        keys = vars
            .keys()
            .filter(|k| k.starts_with(&format!("{key}.")))
            .cloned()
            .collect();
    }
    keys
}

/// Removes the value at `path` from `table`, or the deepest key above it
/// that exists. Returns whether anything was removed.
fn drop_from_table(table: &mut toml::Table, path: &[Segment]) -> bool {
    let Some((Segment::Key(first), rest)) = path.split_first() else {
        return false;
    };
    let Some(value) = table.get_mut(first) else {
        return false;
    };
    if rest.is_empty() || !drop_from_value(value, rest) {
        table.remove(first);
    }
    true
}

/// [`drop_from_table`] below a value; `false` if nothing under it matched
/// (the caller then drops the value itself).
fn drop_from_value(value: &mut toml::Value, path: &[Segment]) -> bool {
    match (value, path.split_first()) {
        (toml::Value::Table(t), Some((Segment::Key(k), _))) if t.contains_key(k) => {
            drop_from_table(t, path)
        }
        (toml::Value::Array(items), Some((Segment::Index(i), rest))) if *i < items.len() => {
            if rest.is_empty() || !drop_from_value(&mut items[*i], rest) {
                items.remove(*i);
            }
            true
        }
        _ => false,
    }
}

/// The candidate closest to a misspelt `word`, if one is close enough.
fn closest<'c>(word: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The environment variable for a dotted key.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// A path as serde_ignored reports it, as segments.
fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    match path {
        serde_ignored::Path::Root => {}
        serde_ignored::Path::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push(Segment::Index(*index));
        }
        serde_ignored::Path::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent, out),
    }
}

/// A path as serde_path_to_error reports it, as segments.
fn error_path(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// The message of a deserialization error, without the key and origin the
/// config crate may have added (the caller names both).
fn bare_message(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::At { error, .. } => bare_message(error),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        config::ConfigError::NotFound(key) => format!("missing key {key}"),
        other => other.to_string(),
    }
}

/// The keys a table takes, from serde's "unknown field `x`, expected one
/// of `a`, `b`" (the error of `deny_unknown_fields`); `None` for any other
/// message.
fn unknown_field(message: &str) -> Option<Vec<&str>> {
    let rest = message.strip_prefix("unknown field `")?;
    let (_, expected) = rest.split_once('`')?;
    Some(expected.split('`').skip(1).step_by(2).collect())
}

/// What one reading of a layer found.
struct Reading {
    /// The settings, if every value could be read.
    settings: Option<Settings>,
    /// Unknown keys, and the bad value that stopped the reading if one did.
    problems: Vec<Problem>,
    /// Where a bad value stopped the reading.
    stopped_at: Option<Vec<Segment>>,
}

/// Reads a layer (over the defaults) once. `known` is the defaults' key
/// tree, for suggestions.
fn read_layer(layer: &Layer<'_>, known: &serde_json::Value) -> Reading {
    let config = match config::Config::builder()
        .add_source(layer.sources())
        .build()
    {
        Ok(config) => config,
        Err(e) => {
            return Reading {
                settings: None,
                problems: vec![Problem {
                    origin: Some(layer.origin(&[])),
                    key: "(all)".to_owned(),
                    message: bare_message(&e),
                }],
                stopped_at: None,
            };
        }
    };
    let mut unknown = Vec::new();
    let mut ignored = |path: serde_ignored::Path<'_>| {
        let mut segments = Vec::new();
        ignored_path(&path, &mut segments);
        unknown.push(segments);
    };
    let result: Result<Settings, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(config, &mut ignored));
    let mut problems: Vec<Problem> = unknown
        .iter()
        .map(|path| layer.unknown(path, &siblings(known, path)))
        .collect();
    match result {
        Ok(settings) => Reading {
            settings: Some(settings),
            problems,
            stopped_at: None,
        },
        Err(e) => {
            let path = error_path(e.path());
            let message = bare_message(e.inner());
            problems.push(match unknown_field(&message) {
                Some(known) => layer.unknown(&path, &known),
                None => Problem {
                    origin: Some(layer.origin(&path)),
                    key: dotted(&path),
                    message,
                },
            });
            Reading {
                settings: None,
                problems,
                stopped_at: Some(path),
            }
        }
    }
}

/// The settings a layer (over the defaults) gives, or every problem in it:
/// a bad value stops serde at the first one, so its key is dropped and the
/// layer read again, until nothing stops it.
fn check_layer(mut layer: Layer<'_>, known: &serde_json::Value) -> Result<Settings, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    loop {
        let reading = read_layer(&layer, known);
        for p in reading.problems {
            if !problems.iter().any(|seen| seen.key == p.key) {
                problems.push(p);
            }
        }
        match (reading.settings, reading.stopped_at) {
            (Some(settings), _) => {
                for (key, message) in settings.field_problems() {
                    let path: Vec<Segment> =
                        key.split('.').map(|k| Segment::Key(k.to_owned())).collect();
                    problems.push(Problem {
                        origin: Some(layer.origin(&path)),
                        key,
                        message,
                    });
                }
                return if problems.is_empty() {
                    Ok(settings)
                } else {
                    Err(problems)
                };
            }
            (None, Some(path)) if layer.drop_key(&path) => continue,
            (None, _) => return Err(problems),
        }
    }
}

/// Reads the file `--config` names, telling apart a missing file, a
/// directory and one that cannot be read.
fn read_file(path: &Path) -> Result<String, SettingsError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SettingsError::FileNotFound(path.to_owned()));
        }
        Ok(meta) if meta.is_dir() => return Err(SettingsError::FileIsDirectory(path.to_owned())),
        _ => {}
    }
    std::fs::read_to_string(path).map_err(|reason| SettingsError::FileUnreadable {
        path: path.to_owned(),
        reason,
    })
}

/// "line 3, column 7: ..." for a TOML syntax error, on one line.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A config source for the built-in defaults.
fn defaults() -> config::File<config::FileSourceString, config::FileFormat> {
    config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml)
}

/// A config source for environment variables (name → value, prefix
/// already checked).
fn environment(vars: config::Map<String, String>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .separator("__")
        .try_parsing(true)
        // SESSION_GUARD__LIMITS__HOOKS=superuser_unlimited,rules
        .list_separator(",")
        .with_list_parse_key("limits.hooks")
        .source(Some(vars))
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let prefix = format!("{ENV_PREFIX}__");
        let mut vars: BTreeMap<String, (String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, value)| {
                let key = name[prefix.len()..].to_lowercase().replace("__", ".");
                (key, (name, value))
            })
            .collect();
        let mut deprecated = rename_in_environment(&mut vars);
        let file = match file {
            Some(path) => {
                let text = read_file(path)?;
                let mut table: toml::Table =
                    toml::from_str(&text).map_err(|e| SettingsError::FileSyntax {
                        path: path.to_owned(),
                        message: syntax_error(&text, &e),
                    })?;
                deprecated.extend(rename_in_file(&mut table));
                Some((path, table))
            }
            None => None,
        };

        // The defaults alone: they must be valid, and they are the tree of
        // known keys the suggestions come from.
        let base = check_layer(Layer::Defaults, &serde_json::Value::Null)
            .map_err(SettingsError::Invalid)?;
        let known = serde_json::to_value(&base).unwrap_or_default();

        let mut problems = Vec::new();
        if let Some((path, table)) = &file
            && let Err(p) = check_layer(Layer::File(path, table.clone()), &known)
        {
            problems.extend(p);
        }
        if !vars.is_empty()
            && let Err(p) = check_layer(Layer::Environment(vars.clone()), &known)
        {
            problems.extend(p);
        }
        if !problems.is_empty() {
            return Err(SettingsError::Invalid(problems));
        }

        // Each layer was valid on its own; what is left are the checks
        // across keys (which may come from different layers).
        let mut builder = config::Config::builder().add_source(defaults());
        if let Some((_, table)) = &file {
            builder = builder.add_source(config::File::from_str(
                &toml::to_string(table).unwrap_or_default(),
                config::FileFormat::Toml,
            ));
        }
        let all = builder
            .add_source(environment(vars.into_values().collect()))
            .build()
            .and_then(|c| c.try_deserialize::<Settings>())
            .map_err(|e| {
                SettingsError::Invalid(vec![Problem {
                    origin: None,
                    key: "(all)".to_owned(),
                    message: bare_message(&e),
                }])
            })?;
        all.validate().map_err(SettingsError::Invalid)?;
        deprecated.dedup();
        Ok(Settings { deprecated, ..all })
    }

    /// Values out of range, key by key: `(key, what is wrong)`. Checked on
    /// each layer, so each is reported with where it came from.
    fn field_problems(&self) -> Vec<(String, String)> {
        let mut problems = self.range_problems();
        problems.extend(self.minimum_problems());
        problems.extend(self.name_problems());
        problems.extend(self.url_problems());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(("log.level".to_owned(), format!("not a log filter: {e}")));
        }
        problems
    }

    /// Numbers above what PostgreSQL columns, RabbitMQ arguments or
    /// durations can hold.
    fn range_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut at_most = |key: String, value: u64, max: u64, why: &str| {
            if value > max {
                problems.push((
                    key,
                    format!("{value} is out of range: at most {max} ({why})"),
                ));
            }
        };
        const INT4: &str = "it is stored as a PostgreSQL integer";
        const SECONDS: &str = "100 years";
        let max4 = u64::from(MAX_INT4);
        at_most(
            "amqp.max_redeliveries".into(),
            self.amqp.max_redeliveries.into(),
            max4,
            "RabbitMQ's x-delivery-limit is a signed 32-bit integer",
        );
        let limits = &self.limits;
        at_most(
            "limits.max_sessions".into(),
            limits.max_sessions.into(),
            max4,
            INT4,
        );
        at_most(
            "limits.max_sessions_global".into(),
            limits.max_sessions_global.into(),
            max4,
            INT4,
        );
        at_most(
            "limits.idle_timeout".into(),
            limits.idle_timeout,
            MAX_SECONDS,
            SECONDS,
        );
        at_most(
            "retention.tombstone_ttl".into(),
            self.retention.tombstone_ttl,
            MAX_SECONDS,
            SECONDS,
        );
        for (i, rule) in limits.rules.iter().enumerate() {
            let key = |field: &str| format!("limits.rules[{i}].{field}");
            if let Some(n) = rule.max_sessions {
                at_most(key("max_sessions"), n.into(), max4, INT4);
            }
            if let Some(n) = rule.max_sessions_global {
                at_most(key("max_sessions_global"), n.into(), max4, INT4);
            }
            if let Some(n) = rule.idle_timeout {
                at_most(key("idle_timeout"), n, MAX_SECONDS, SECONDS);
            }
        }
        problems
    }

    /// Values that must not be zero.
    fn minimum_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut at_least_1 = |key: &str, value: u64, why: &str| {
            if value == 0 {
                problems.push((key.to_owned(), format!("must be at least 1{why}")));
            }
        };
        at_least_1("worker.batch_size", self.worker.batch_size as u64, "");
        at_least_1("worker.pipeline", self.worker.pipeline as u64, "");
        at_least_1(
            "amqp.prefetch",
            self.amqp.prefetch.into(),
            " (0 would mean unlimited)",
        );
        if self.retention.sweep_interval.is_zero() {
            problems.push((
                "retention.sweep_interval".to_owned(),
                "must be longer than 0".to_owned(),
            ));
        }
        problems
    }

    /// Exchange and queue names RabbitMQ would refuse.
    fn name_problems(&self) -> Vec<(String, String)> {
        let amqp = &self.amqp;
        [
            ("amqp.events_exchange", &amqp.events_exchange),
            ("amqp.events_queue", &amqp.events_queue),
            ("amqp.revocations_exchange", &amqp.revocations_exchange),
            ("amqp.dead_letter_exchange", &amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &amqp.dead_letter_queue),
        ]
        .into_iter()
        .filter(|(_, name)| name.is_empty() || name.len() > 255)
        .map(|(key, _)| (key.to_owned(), "must be 1-255 bytes long".to_owned()))
        .collect()
    }

    /// URLs that do not parse, with their passwords masked in the reason.
    fn url_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let url = &self.database.url;
        let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
        match url.parse::<sqlx::postgres::PgConnectOptions>() {
            Err(e) => problems.push((
                "database.url".to_owned(),
                format!("not a PostgreSQL URL: {e}").replace(url, &redact_url(url)),
            )),
            Ok(_) if !scheme_ok => problems.push((
                "database.url".to_owned(),
                "not a PostgreSQL URL: it must start with postgres:// or postgresql://".to_owned(),
            )),
            Ok(_) => {}
        }
        if let Err(e) = self.amqp.url.parse::<lapin::uri::AMQPUri>() {
            problems.push((
                "amqp.url".to_owned(),
                format!("not an AMQP URL: {e}")
                    .replace(&self.amqp.url, &redact_url(&self.amqp.url)),
            ));
        }
        problems
    }

    /// Rejects combinations of keys that would misbehave at run time.
    fn validate(&self) -> Result<(), Vec<Problem>> {
        if (self.database.max_connections as usize) < self.worker.pipeline + 2 {
            return Err(vec![Problem {
                origin: None,
                key: "database.max_connections".to_owned(),
                message: format!(
                    "{} is too small: it must be at least worker.pipeline + 2 ({}): one \
                     connection per batch in flight, one for the outbox relay, one for \
                     housekeeping",
                    self.database.max_connections,
                    self.worker.pipeline + 2
                ),
            }]);
        }
        Ok(())
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
}

/// Serializes a URL with its password masked.
fn serialize_redacted<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
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

/// `url` with its database name replaced by `db`, everything else kept: how
/// tests, the demo and the benchmark make databases of their own.
///
/// The URL is edited rather than rebuilt from `PgConnectOptions`, whose
/// `to_url_lossy` drops parameters it does not model. A URL that does not
/// parse is returned as it is: connecting with it fails the same way.
pub fn with_database(url: &str, db: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{db}"));
            parsed.into()
        }
        Err(_) => url.to_owned(),
    }
}

/// What `redact_url` shows for a URL that does not parse: where its
/// password would be cannot be told, so none of it is shown.
const UNPARSEABLE_URL: &str = "(a URL that does not parse)";

/// `url` with its password, and any `password=` query parameter, replaced
/// by `***`, so that it can be logged and printed.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return UNPARSEABLE_URL.to_owned();
    };
    if parsed.password().is_some() {
        // Fails only for URLs without a host, which cannot carry a password.
        let _ = parsed.set_password(Some("***"));
    }
    let is_password = |key: &str| key.eq_ignore_ascii_case("password");
    if parsed.query_pairs().any(|(key, _)| is_password(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_password(&key) {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
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
        // The names apps and the client crate assume, from the protocol crate.
        use session_guard_protocol::names;
        assert_eq!(s.amqp.events_exchange, names::EVENTS_EXCHANGE);
        assert_eq!(s.amqp.events_queue, names::EVENTS_QUEUE);
        assert_eq!(s.amqp.revocations_exchange, names::REVOCATIONS_EXCHANGE);
        assert_eq!(s.amqp.dead_letter_exchange, names::DEAD_LETTER_EXCHANGE);
        assert_eq!(s.amqp.dead_letter_queue, names::DEAD_LETTER_QUEUE);
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
            "environment variable SESSION_GUARD__RETENTION__SWEEP_INTERVAL: \
             retention.sweep_interval: must be longer than 0"
        );
        let shown = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__RETENTION__MAX_AGE", "90d"),
                ("SESSION_GUARD__RETENTION__SWEEP_INTERVAL", "90s"),
            ]),
        )
        .unwrap()
        .to_toml();
        assert!(shown.contains("max_age = \"90d\"\n"), "{shown}");
        assert!(shown.contains("sweep_interval = \"90s\"\n"), "{shown}");
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

    /// A file in a directory of its own; removed with the guard.
    struct TempFile {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl TempFile {
        fn new(text: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!("sg-config-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("session-guard.toml");
            std::fs::write(&path, text).unwrap();
            TempFile { dir, path }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn file_error(text: &str) -> (String, String) {
        let file = TempFile::new(text);
        let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
        (err.to_string(), file.path.display().to_string())
    }

    fn env_error(pairs: &[(&str, &str)]) -> String {
        Settings::load_from(None, env(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn metrics_listen_is_still_read_as_http_listen_and_reported_deprecated() {
        let defaults = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(defaults.http.listen, "127.0.0.1:9464");
        assert!(defaults.deprecated.is_empty());

        let old = Settings::load_from(
            None,
            env(&[("SESSION_GUARD__METRICS__LISTEN", "127.0.0.1:1")]),
        )
        .unwrap();
        assert_eq!(old.http.listen, "127.0.0.1:1");
        assert_eq!(old.deprecated, [("metrics.listen", "http.listen")]);
        let both = Settings::load_from(
            None,
            env(&[
                ("SESSION_GUARD__METRICS__LISTEN", "127.0.0.1:1"),
                ("SESSION_GUARD__HTTP__LISTEN", "127.0.0.1:2"),
            ]),
        )
        .unwrap();
        assert_eq!(both.http.listen, "127.0.0.1:2", "the new name wins");

        let file = TempFile::new("[metrics]\nlisten = \"127.0.0.1:3\"\n");
        let from_file = Settings::load_from(Some(&file.path), env(&[])).unwrap();
        assert_eq!(from_file.http.listen, "127.0.0.1:3");
        assert_eq!(from_file.deprecated, [("metrics.listen", "http.listen")]);
        // The environment still overrides the file, under either name.
        let over = Settings::load_from(
            Some(&file.path),
            env(&[("SESSION_GUARD__HTTP__LISTEN", "")]),
        )
        .unwrap();
        assert_eq!(over.http.listen, "");
        // Only the renamed key is read in the old section.
        let (err, _) = file_error("[metrics]\nlisten = \"x\"\nlisen = 1\n");
        assert!(err.contains("metrics: unknown section"), "{err}");
    }

    #[test]
    fn unknown_keys_and_sections_of_a_file_are_refused_with_the_file_named() {
        let (err, path) = file_error("[limits]\nmax_sesions = 3\n\n[limitz]\nmax_sessions = 2\n");
        assert_eq!(
            err,
            format!(
                "config file {path}: limits.max_sesions: unknown key (did you mean max_sessions?); \
                 config file {path}: limitz: unknown section (did you mean limits?)"
            )
        );
        let (err, path) = file_error("[amqp]\nheartbeat = 10\n");
        assert_eq!(
            err,
            format!("config file {path}: amqp.heartbeat: unknown key")
        );
        // A rule's own fields are checked too.
        let (err, path) = file_error("[[limits.rules]]\nmax_sesions = 3\n");
        assert_eq!(
            err,
            format!(
                "config file {path}: limits.rules[0].max_sesions: unknown key (did you mean \
                 max_sessions?)"
            )
        );
    }

    #[test]
    fn unknown_environment_variables_are_refused_with_the_variable_named() {
        assert_eq!(
            env_error(&[("SESSION_GUARD__LIMITS__MAX_SESIONS", "3")]),
            "environment variable SESSION_GUARD__LIMITS__MAX_SESIONS: limits.max_sesions: \
             unknown key (did you mean SESSION_GUARD__LIMITS__MAX_SESSIONS?)"
        );
        assert_eq!(
            env_error(&[("SESSION_GUARD__LIMITZ__MAX_SESSIONS", "3")]),
            "environment variable SESSION_GUARD__LIMITZ__MAX_SESSIONS: limitz: \
             unknown section (did you mean SESSION_GUARD__LIMITS__MAX_SESSIONS?)"
        );
        assert_eq!(
            env_error(&[("SESSION_GUARD__NOTHING_LIKE_IT", "x")]),
            "environment variable SESSION_GUARD__NOTHING_LIKE_IT: nothing_like_it: unknown key"
        );
    }

    #[test]
    fn bad_values_name_their_source_key_and_the_allowed_values() {
        assert_eq!(
            env_error(&[("SESSION_GUARD__LIMITS__POLICY", "evict_newest")]),
            "environment variable SESSION_GUARD__LIMITS__POLICY: limits.policy: unknown value \
             \"evict_newest\" (allowed: evict_oldest, evict_idle, deny_new)"
        );
        assert_eq!(
            env_error(&[("SESSION_GUARD__LOG__FORMAT", "xml")]),
            "environment variable SESSION_GUARD__LOG__FORMAT: log.format: unknown value \"xml\" \
             (allowed: pretty, json)"
        );
        let (err, path) = file_error("[limits]\npolicy = \"evict_newest\"\n");
        assert_eq!(
            err,
            format!(
                "config file {path}: limits.policy: unknown value \"evict_newest\" \
                 (allowed: evict_oldest, evict_idle, deny_new)"
            )
        );
        let (err, path) = file_error("[[limits.rules]]\npolicy = \"lru\"\n");
        assert_eq!(
            err,
            format!(
                "config file {path}: limits.rules[0].policy: unknown value \"lru\" \
                 (allowed: evict_oldest, evict_idle, deny_new)"
            )
        );
        assert_eq!(
            env_error(&[("SESSION_GUARD__LIMITS__MAX_SESSIONS", "many")]),
            "environment variable SESSION_GUARD__LIMITS__MAX_SESSIONS: limits.max_sessions: \
             expected an integer, found string \"many\""
        );
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert_eq!(
            env_error(&[("SESSION_GUARD__LIMITS__MAX_SESSIONS", "3000000000")]),
            "environment variable SESSION_GUARD__LIMITS__MAX_SESSIONS: limits.max_sessions: \
             3000000000 is out of range: at most 2147483647 (it is stored as a PostgreSQL integer)"
        );
        let (err, path) = file_error(
            "[limits]\nidle_timeout = 10000000000000000\n\n[[limits.rules]]\nmax_sessions = 2147483648\n",
        );
        assert_eq!(
            err,
            format!(
                "config file {path}: limits.idle_timeout: 10000000000000000 is out of range: at \
                 most 3153600000 (100 years); config file {path}: limits.rules[0].max_sessions: \
                 2147483648 is out of range: at most 2147483647 (it is stored as a PostgreSQL \
                 integer)"
            )
        );
        assert!(
            env_error(&[("SESSION_GUARD__WORKER__BATCH_SIZE", "0")]).contains(
                "SESSION_GUARD__WORKER__BATCH_SIZE: worker.batch_size: must be at least 1"
            )
        );
        let (err, _) = file_error("[database]\nurl = \"mysql://u:secret@h/db\"\n");
        assert!(err.contains("database.url: not a PostgreSQL URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let (err, _) = file_error("[log]\nlevel = \"session_guard=loud\"\n");
        assert!(err.contains("log.level: not a log filter"), "{err}");
    }

    #[test]
    fn problems_of_the_file_and_the_environment_are_all_reported() {
        let file = TempFile::new("[limits]\nmax_sesions = 3\n");
        let err = Settings::load_from(
            Some(&file.path),
            env(&[("SESSION_GUARD__LIMITS__POLICY", "nope")]),
        )
        .unwrap_err();
        let SettingsError::Invalid(problems) = &err else {
            panic!("{err}")
        };
        let origins: Vec<_> = problems.iter().map(|p| p.origin.clone().unwrap()).collect();
        assert_eq!(
            origins,
            [
                format!("config file {}", file.path.display()),
                "environment variable SESSION_GUARD__LIMITS__POLICY".to_owned()
            ]
        );
    }

    #[test]
    fn a_bad_value_does_not_hide_the_problems_after_it() {
        // serde stops at the first bad value; every problem is reported all
        // the same, in the order they are met, the out-of-range ones last.
        let (err, path) = file_error(
            "[amqp]\nprefetch = -1\n\n[log]\nformat = \"xml\"\n\n[limitz]\nx = 1\n\n             [[limits.rules]]\npolicy = \"lru\"\nmax_sessions = 3000000000\n",
        );
        let problems: Vec<&str> = err.split("; ").collect();
        let f = format!("config file {path}");
        assert_eq!(
            problems,
            [
                format!(
                    "{f}: amqp.prefetch: expected an unsigned 64 bit or less integer, found \
                     64-bit integer `-1`"
                ),
                format!(
                    "{f}: limits.rules[0].policy: unknown value \"lru\" (allowed: evict_oldest, \
                     evict_idle, deny_new)"
                ),
                format!("{f}: log.format: unknown value \"xml\" (allowed: pretty, json)"),
                format!("{f}: limitz: unknown section (did you mean limits?)"),
                format!(
                    "{f}: limits.rules[0].max_sessions: 3000000000 is out of range: at most \
                     2147483647 (it is stored as a PostgreSQL integer)"
                ),
            ],
            "{err}"
        );
        let err = env_error(&[
            ("SESSION_GUARD__LIMITS__POLICY", "lru"),
            ("SESSION_GUARD__WORKER__PIPELINE", "many"),
            ("SESSION_GUARD__LIMITS__MAX_SESIONS", "3"),
        ]);
        assert_eq!(err.split("; ").count(), 3, "{err}");
    }

    #[test]
    fn optional_keys_free_maps_and_rules_are_known() {
        let file = TempFile::new(
            "[amqp.app_users]\nshop-publisher = [\"shop\"]\n\n[retention]\nlog_limit = 5\n\n\
             [[limits.rules]]\nname = \"staff\"\nwhen = { role = \"staff\", attribute = { mfa = true } }\n\
             max_sessions = 3\nidle_timeout = 60\n",
        );
        let s = Settings::load_from(Some(&file.path), env(&[])).unwrap();
        assert_eq!(s.amqp.app_users["shop-publisher"], ["shop"]);
        assert_eq!(s.retention.log_limit, Some(5));
        assert_eq!(s.limits.rules[0].max_sessions, Some(3));
    }

    #[test]
    fn every_key_the_settings_print_is_accepted_back() {
        // The effective settings, as check-config prints them, read back as
        // a file: every key of the Settings types is known, with no list
        // kept by hand.
        let mut s = Settings::load_from(None, env(&[])).unwrap();
        s.retention.log_limit = Some(7);
        s.limits.rules.push(Rule {
            name: Some("staff".into()),
            max_sessions: Some(3),
            ..Rule::default()
        });
        s.amqp.app_users.insert("pub".into(), vec!["shop".into()]);
        let text = s.to_toml();
        let file = TempFile::new(&text);
        let back = Settings::load_from(Some(&file.path), env(&[])).unwrap();
        assert_eq!(back.to_toml(), text);
        // Unset keys still show.
        let defaults = Settings::load_from(None, env(&[])).unwrap().to_toml();
        assert!(
            defaults.contains("[retention]\n# log_limit: unset\n"),
            "{defaults}"
        );
    }

    #[test]
    fn the_config_file_must_be_a_readable_toml_file() {
        let err =
            Settings::load_from(Some(Path::new("/nonexistent/x.toml")), env(&[])).unwrap_err();
        assert_eq!(err.to_string(), "config file /nonexistent/x.toml not found");
        let dir = std::env::temp_dir();
        let err = Settings::load_from(Some(&dir), env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("config file {} is a directory, not a file", dir.display())
        );
        let (err, path) = file_error("[limits]\nmax_sessions = 3\npolicy = \"deny_new\n");
        assert!(
            err.starts_with(&format!("config file {path}: line 3, column ")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let file = TempFile::new("[limits]\n");
        std::fs::write(&file.path, [0xff, 0xfe]).unwrap();
        let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "config file {} cannot be read: ",
                file.path.display()
            )),
            "{err}"
        );
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
        assert_eq!(
            redact_url("postgres://u@h/db?password=x&options=-c%20a%3Db"),
            "postgres://u@h/db?password=***&options=-c+a%3Db",
            "the query is written anew when it held a password"
        );
        assert_eq!(
            redact_url("postgres//u:secret@h/db"),
            UNPARSEABLE_URL,
            "a password cannot be found in what does not parse"
        );
    }

    #[test]
    fn with_database_swaps_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/old?sslmode=disable", "new"),
            "postgres://u:p@h:5432/new?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql://h/a/b#frag", "x"),
            "postgresql://h/x#frag"
        );
        let options: sqlx::postgres::PgConnectOptions =
            with_database("postgres://u@h/old", "sg test")
                .parse()
                .unwrap();
        assert_eq!(options.get_database(), Some("sg test"));
        assert_eq!(with_database("not a url", "x"), "not a url");
    }
}
