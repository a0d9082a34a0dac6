//! One layer of settings over the defaults (the file, or the environment):
//! where each of its values came from, and how to drop a bad one so that
//! the rest can be read, for messages that name the key and its source.

use std::collections::BTreeMap;
use std::path::Path;

use super::key_path::{Segment, dotted};
use super::problem::Problem;
use super::sources::{defaults, env_name, environment};

/// A layer over the defaults: where its values come from, and the values.
pub(super) enum Layer<'a> {
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
    pub(super) fn sources(&self) -> Vec<Box<dyn config::Source + Send + Sync>> {
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
    pub(super) fn origin(&self, path: &[Segment]) -> String {
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
    pub(super) fn drop_key(&mut self, path: &[Segment]) -> bool {
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
    pub(super) fn unknown(&self, path: &[Segment], known: &[&str]) -> Problem {
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
pub(super) fn siblings<'k>(known: &'k serde_json::Value, path: &[Segment]) -> Vec<&'k str> {
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
