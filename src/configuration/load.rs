//! Loading the settings: the defaults, then an optional file, then the
//! environment (with the `config` crate), strictly. Each layer is read on
//! its own over the defaults, so that every unknown key and every bad
//! value is reported with where it came from; the checks across keys run
//! last, on the layers together.

use std::collections::BTreeMap;
use std::path::Path;

use super::key_path::{Segment, dotted, error_path, ignored_path};
use super::layer::{Layer, siblings};
use super::problem::{Problem, SettingsError};
use super::renamed::{rename_in_environment, rename_in_file};
use super::settings::Settings;
use super::sources::{ENV_PREFIX, defaults, environment};

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
