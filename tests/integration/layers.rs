//! The import rules docs/ARCHITECTURE.md states ("must not import"),
//! checked on the source: a module that reaches a layer above it, or a pure
//! part that reaches for I/O, fails here with the file and line, before it
//! becomes an import circle or a decision that waits on the network.
//!
//! Each rule is a folder or file and the paths its code must not name. Code
//! is every line that is not a comment (doc links to a layer above, which
//! explain who calls a module, are allowed). Needs no service.

use std::path::{Path, PathBuf};

/// One rule: under `place` (a file or a folder, from the repository's
/// root), no line of code names any of `forbidden` followed by `::`
/// (`crate::runtime`, `lapin`, ...).
struct Rule {
    place: &'static str,
    forbidden: &'static [&'static str],
    /// Why, as ARCHITECTURE.md says it: shown when the rule is broken.
    why: &'static str,
}

/// The rules, from the bottom of the workspace up.
const RULES: &[Rule] = &[
    Rule {
        place: "protocol/src",
        forbidden: &[
            "lapin",
            "sqlx",
            "tokio",
            "session_guard",
            "session_guard_amqp",
            "session_guard_client",
        ],
        why: "the wire contract does no I/O and depends on no other crate of the workspace",
    },
    Rule {
        place: "amqp/src",
        forbidden: &["sqlx", "session_guard", "session_guard_client"],
        why: "the shared RabbitMQ pieces sit below the worker and the client",
    },
    Rule {
        place: "clients/rust/src",
        forbidden: &["sqlx", "session_guard"],
        why: "the client crate never depends on the worker",
    },
    Rule {
        place: "clients/rust/src/publisher",
        forbidden: &["reqwest", "crate::api"],
        why: "the publisher pulls no HTTP stack: the sessions API's client is the `api` feature's",
    },
    Rule {
        place: "clients/rust/src/listener",
        forbidden: &["reqwest", "crate::api"],
        why: "the listener pulls no HTTP stack: the sessions API's client is the `api` feature's",
    },
    Rule {
        place: "clients/rust/src/api",
        forbidden: &[
            "lapin",
            "session_guard_amqp",
            "crate::publisher",
            "crate::listener",
        ],
        why: "the sessions API's client speaks HTTP only, apart from the AMQP side",
    },
    Rule {
        place: "src/domain",
        forbidden: &[
            "crate::apply",
            "crate::broker",
            "crate::cli",
            "crate::configuration",
            "crate::consumer",
            "crate::db",
            "crate::health",
            "crate::metric",
            "crate::refusal",
            "crate::relay",
            "crate::runtime",
            "crate::shutdown",
            "crate::state",
            "crate::sweep",
            "crate::telemetry",
            "crate::terminal",
            "sqlx",
            "lapin",
            "tokio",
            "axum",
            "metrics",
            "session_guard_amqp",
        ],
        why: "the decision core is pure: no I/O, nothing of the worker above it",
    },
    Rule {
        place: "src/db",
        forbidden: &[
            "crate::apply",
            "crate::broker",
            "crate::cli",
            "crate::consumer",
            "crate::relay",
            "crate::runtime",
            "crate::state",
            "crate::sweep",
            "lapin",
        ],
        why: "the statements decide nothing and know nothing of who calls them",
    },
    Rule {
        place: "src/apply",
        forbidden: &[
            "crate::broker",
            "crate::cli",
            "crate::consumer",
            "crate::relay",
            "crate::runtime",
            "crate::state",
            "lapin",
        ],
        why: "applying a batch neither acks nor publishes: it writes outbox rows",
    },
    Rule {
        place: "src/cli",
        forbidden: &["crate::consumer", "crate::relay"],
        why: "a command that runs the worker goes through the runtime",
    },
    Rule {
        place: "src/api",
        forbidden: &[
            "crate::broker",
            "crate::cli",
            "crate::consumer",
            "crate::relay",
            "crate::runtime",
            "crate::state",
            "lapin",
        ],
        why: "the sessions API sits beside the runtime, which may start it: it revokes through \
              apply's outbox rows and never publishes, consumes or runs the worker",
    },
    Rule {
        place: "src/consumer",
        forbidden: &["crate::cli", "crate::relay", "crate::runtime"],
        why: "the consumer is run by the supervisor, never the other way round",
    },
    Rule {
        place: "src/relay.rs",
        forbidden: &["crate::cli", "crate::consumer", "crate::runtime"],
        why: "the relay is run by the supervisor and shares only the worker's state",
    },
    Rule {
        place: "src/configuration",
        forbidden: &[
            "crate::apply",
            "crate::broker",
            "crate::cli",
            "crate::consumer",
            "crate::db",
            "crate::relay",
            "crate::runtime",
            "crate::state",
        ],
        why: "settings are read at the edge, below everything that uses them",
    },
    Rule {
        place: "src/refusal.rs",
        forbidden: &["crate::apply", "crate::runtime", "crate::state"],
        why: "telling a refusal from an outage sits below every task that reports one",
    },
    Rule {
        place: "src/metric.rs",
        forbidden: &[
            "crate::apply",
            "crate::cli",
            "crate::consumer",
            "crate::db",
            "crate::relay",
            "crate::runtime",
        ],
        why: "every layer records metrics, so their definitions sit below all of them",
    },
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(place: &Path, out: &mut Vec<PathBuf>) {
    if place.is_file() {
        out.push(place.to_owned());
        return;
    }
    let mut entries: Vec<_> = std::fs::read_dir(place)
        .unwrap_or_else(|e| panic!("{}: {e}", place.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` (code, not a comment) names `path` as a path's start:
/// `path::` not preceded by a character that would make it part of a
/// longer name (`my_sqlx::` is not `sqlx::`), or `use path;`/`use path as`.
fn names(line: &str, path: &str) -> bool {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(at) = line[from..].find(path) {
        let start = from + at;
        let end = start + path.len();
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let rest = &line[end..];
        let after_ok = rest.starts_with("::")
            || (line[..start].trim_end().ends_with("use")
                && (rest.starts_with(';') || rest.starts_with(" as ")));
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

/// The lines of `rule` that break it, as `file:line: text`.
fn breaches(rule: &Rule) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join(rule.place), &mut files);
    assert!(!files.is_empty(), "{}: no Rust file there", rule.place);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // A trailing comment is not code either.
            let code = code.split(" //").next().unwrap_or(code);
            for path in rule.forbidden {
                if names(code, path) {
                    let shown = file.strip_prefix(root()).unwrap_or(&file);
                    found.push(format!(
                        "{}:{}: {} ({path})",
                        shown.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn every_layer_keeps_to_what_it_may_import() {
    let mut broken = Vec::new();
    for rule in RULES {
        let lines = breaches(rule);
        if !lines.is_empty() {
            broken.push(format!(
                "{} must not import {:?}: {}\n  {}",
                rule.place,
                rule.forbidden,
                rule.why,
                lines.join("\n  ")
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "import rules broken (docs/ARCHITECTURE.md, \"Code map\"):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_sees_a_path_and_not_a_longer_name() {
    assert!(names("use crate::runtime::Worker;", "crate::runtime"));
    assert!(names("let x = sqlx::query(\"\");", "sqlx"));
    assert!(names("use sqlx;", "sqlx"));
    assert!(!names("let my_sqlx::x = 1;", "sqlx"));
    assert!(!names("use crate::runtime_stats::X;", "crate::runtime"));
    assert!(!names("use session_guard_amqp::url;", "session_guard"));
    assert!(names("use session_guard::Settings;", "session_guard"));
}

#[test]
fn every_rule_names_a_place_that_exists() {
    for rule in RULES {
        assert!(
            root().join(rule.place).exists(),
            "{}: no such file or folder; update the rule with the code",
            rule.place
        );
    }
}

#[test]
fn the_client_crate_pulls_an_http_stack_only_with_its_api_feature() {
    let text = std::fs::read_to_string(root().join("clients/rust/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    // `api` enables reqwest and percent-encoding (the caller's session id
    // in its header), both optional: without the feature, neither is built.
    let api: Vec<&str> = manifest["features"]["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(api, ["dep:reqwest", "dep:percent-encoding"]);
    for dep in ["reqwest", "percent-encoding"] {
        assert_eq!(
            manifest["dependencies"][dep].get("optional"),
            Some(&toml::Value::Boolean(true)),
            "{dep}"
        );
    }
    let default = manifest["features"].get("default");
    assert!(
        default.is_none_or(|d| !d
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some("api"))),
        "the api feature is off by default"
    );
}

#[test]
fn only_the_worker_binary_sets_a_global_allocator() {
    // jemalloc is the worker binary's choice (src/main.rs): the library and
    // the crates apps use must leave the allocator to the programs that
    // embed them.
    let mut files = Vec::new();
    for place in ["src", "protocol", "amqp", "clients/rust"] {
        rust_files(&root().join(place), &mut files);
    }
    let setting: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("#[global_allocator]")
        })
        .map(|f| f.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    assert_eq!(setting, ["src/main.rs"]);
}
