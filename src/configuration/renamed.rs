//! Keys renamed over time: the old name is still read, as the new one, and
//! the worker warns about each at start.

use std::collections::BTreeMap;

use super::sources::env_name;

/// Keys renamed, as (old, new) dotted keys of two parts: the old name is still
/// read, as the new one, since config files in the wild use it.
const RENAMED: &[(&str, &str)] = &[("metrics.listen", "http.listen")];

/// Renames deprecated keys of a config file to their new names (a new name
/// set in the same file wins) and drops the sections left empty; returns
/// the renames it made.
pub(super) fn rename_in_file(table: &mut toml::Table) -> Vec<(&'static str, &'static str)> {
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
pub(super) fn rename_in_environment(
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
