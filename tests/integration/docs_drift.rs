//! The documentation against the code, so what it lists cannot fall behind:
//! every environment variable the configuration accepts, every subcommand
//! and flag of the command line, and the number of migrations. The code is
//! the list: nothing here is a second copy of it. No services needed.

use std::path::Path;

use clap::CommandFactory as _;
use serde_json::Value;
use session_guard::Settings;
use session_guard::cli::Cli;
use session_guard::configuration::ENV_PREFIX;
use session_guard_amqp::url::redact_url;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The settings' keys, as the loader knows them: the default settings as a
/// tree, each leaf's dotted path with its value. Empty tables and arrays
/// (`amqp.app_users`, `limits.rules`) are containers only the config file
/// can fill; they come back separately.
fn setting_keys() -> (Vec<(String, Value)>, Vec<String>) {
    fn walk(
        path: &str,
        value: &Value,
        leaves: &mut Vec<(String, Value)>,
        file_only: &mut Vec<String>,
    ) {
        match value {
            Value::Object(map) if map.is_empty() => file_only.push(path.to_owned()),
            Value::Object(map) => {
                for (key, v) in map {
                    let sub = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(&sub, v, leaves, file_only);
                }
            }
            Value::Array(items) if items.is_empty() || items.iter().any(Value::is_object) => {
                file_only.push(path.to_owned())
            }
            _ => leaves.push((path.to_owned(), value.clone())),
        }
    }
    let defaults =
        Settings::load_from(None, Vec::<(String, String)>::new()).expect("the defaults load");
    let tree = serde_json::to_value(&defaults).expect("settings serialize");
    let (mut leaves, mut file_only) = (Vec::new(), Vec::new());
    walk("", &tree, &mut leaves, &mut file_only);
    (leaves, file_only)
}

fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// docs/CONFIGURATION.md's section "Environment variables, all of them".
fn env_section() -> String {
    let doc = read("docs/CONFIGURATION.md");
    let start = doc
        .find("## Environment variables, all of them")
        .expect("CONFIGURATION.md has the section \"Environment variables, all of them\"");
    doc[start..].to_owned()
}

#[test]
fn every_environment_variable_the_worker_accepts_is_in_the_configuration_reference() {
    let section = env_section();
    let (leaves, file_only) = setting_keys();
    assert!(leaves.len() > 20, "the walk found the keys: {leaves:?}");
    let mut missing = Vec::new();
    for (key, default) in &leaves {
        let name = env_name(key);
        // The variable really is accepted: with its default value, the
        // settings load (an unknown variable is refused).
        if !default.is_null() {
            let value = match default {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            if let Err(e) = Settings::load_from(None, [(name.clone(), value.clone())]) {
                panic!("{name}={value} is refused, so the walk is wrong: {e}");
            }
        }
        if !section
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .any(|w| w == name)
        {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/CONFIGURATION.md, \"Environment variables, all of them\", misses {missing:?}"
    );
    for key in file_only {
        let last = key.rsplit('.').next().unwrap_or(&key);
        assert!(
            section.contains(&format!("{last}: config file only")),
            "the environment section should say `{last}: config file only` ({key})"
        );
    }
}

#[test]
fn every_key_has_a_row_with_its_default_in_the_configuration_reference() {
    let doc = read("docs/CONFIGURATION.md");
    let (leaves, file_only) = setting_keys();
    let mut wrong = Vec::new();
    let all = leaves
        .iter()
        .map(|(k, v)| (k, v))
        .chain(file_only.iter().map(|k| (k, &Value::Null)));
    for (key, default) in all {
        let Some((section, name)) = key.split_once('.') else {
            continue;
        };
        // The section's table: from its heading to the next one.
        let heading = format!("## `[{section}]`");
        let Some(start) = doc.find(&heading) else {
            wrong.push(format!("{key}: no section {heading}"));
            continue;
        };
        let body = &doc[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        let Some(row) = body
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
        else {
            wrong.push(format!("{key}: no row"));
            continue;
        };
        let shown = row.split('|').nth(2).unwrap_or_default();
        let expected: Vec<String> = match default {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect(),
            other => vec![other.to_string()],
        };
        // Settings serialize URLs with the password masked.
        let masked = redact_url(shown.trim().trim_matches('`'));
        if let Some(missing) = expected
            .iter()
            .find(|e| !shown.contains(e.as_str()) && !masked.contains(e.as_str()))
        {
            wrong.push(format!(
                "{key}: the default {missing} is not in `{}`",
                shown.trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "docs/CONFIGURATION.md: {wrong:#?}");
}

#[test]
fn every_variable_the_configuration_reference_lists_is_accepted() {
    let section = env_section();
    let listed: Vec<&str> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    assert!(listed.len() > 20, "{listed:?}");
    for name in listed {
        // A value of the wrong type is refused too, but not as unknown.
        if let Err(e) = Settings::load_from(None, [(name.to_owned(), "x".to_owned())]) {
            assert!(
                !e.to_string().contains("unknown key")
                    && !e.to_string().contains("unknown section"),
                "CONFIGURATION.md lists {name}, which the worker refuses: {e}"
            );
        }
    }
}

#[test]
fn the_number_of_migrations_the_docs_state_is_the_real_one() {
    let count = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .expect("migrations/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let mut docs = vec![("README.md".to_owned(), read("README.md"))];
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            docs.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    let mut stated = 0;
    for (name, text) in &docs {
        let words: Vec<&str> = text.split_whitespace().collect();
        for pair in words.windows(2) {
            // "(6 migrations)", "the 6 migrations", "2 of 6 migrations".
            if pair[1].trim_matches(|c: char| !c.is_alphanumeric()) == "migrations"
                && let Ok(n) = pair[0].trim_start_matches('(').parse::<usize>()
            {
                stated += 1;
                assert_eq!(
                    n, count,
                    "{name} says {n} migrations; migrations/ has {count}"
                );
            }
        }
    }
    assert!(stated > 0, "the check-config examples state the count");
}

#[test]
fn every_subcommand_and_flag_is_in_a_command_list() {
    let missing = session_guard::cli::synopsis::undocumented(
        &Cli::command(),
        &[&read("README.md"), &read("docs/OPERATIONS.md")],
    );
    assert!(
        missing.is_empty(),
        "not in the usage lines of README.md or docs/OPERATIONS.md: {missing:#?}"
    );
}

/// Every test RELIABILITY.md names as the proof of a guarantee exists: a
/// guarantee whose test was renamed or removed must be noticed. Names are
/// written `file::test` (tests/integration/<file>.rs) or with a module path
/// (`db::follow::tests::...`, `protocol/docs::...`); the check is that a
/// function of that last name is defined in the file (integration tests)
/// or anywhere in the workspace's Rust sources (the others).
#[test]
fn every_test_reliability_names_exists() {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !["target", ".git", "node_modules", ".venv"].contains(&name.as_ref()) {
                    sources(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut everywhere = String::new();
    sources(root, &mut everywhere);
    let text = read("docs/RELIABILITY.md");
    let mut named = 0;
    let mut missing = Vec::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((path, test)) = quoted.rsplit_once("::") else {
            continue;
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':' || c == '/'
                })
        };
        // Test names are sentences; paths like `db::hosts` are not tests.
        if !plain(path) || !plain(test) || test.matches('_').count() < 2 {
            continue;
        }
        named += 1;
        let defined = format!("fn {test}(");
        let file = root.join("tests/integration").join(format!("{path}.rs"));
        let found = if !path.contains("::") && file.exists() {
            std::fs::read_to_string(&file).unwrap().contains(&defined)
        } else {
            everywhere.contains(&defined)
        };
        if !found {
            missing.push(quoted.to_owned());
        }
    }
    assert!(named > 20, "RELIABILITY.md names its tests ({named} found)");
    assert!(
        missing.is_empty(),
        "RELIABILITY.md names tests that do not exist: {missing:?}"
    );
}
