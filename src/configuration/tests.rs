//! The loader's behaviour as its callers see it, through
//! [`Settings::load_from`]: layering, strictness, messages and masking.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::domain::limits::{EvictionPolicy, Rule};
use session_guard_amqp::url::{UNPARSEABLE_URL, redact_url};

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
    assert_eq!(s.amqp.notices_exchange, names::NOTICES_EXCHANGE);
    assert!(s.notices.enabled);
    assert_eq!(s.notices.lookback, Duration::from_secs(90 * 86_400));
    assert_eq!(s.notices.scope, super::settings::NoticeScope::AllApps);
    assert_eq!(s.notices.kinds, ["new_device", "new_network"]);
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
fn notices_are_set_from_the_environment_and_checked() {
    let s = Settings::load_from(
        None,
        env(&[
            ("SESSION_GUARD__NOTICES__ENABLED", "false"),
            ("SESSION_GUARD__NOTICES__LOOKBACK", "30d"),
            ("SESSION_GUARD__NOTICES__SCOPE", "per_app"),
            ("SESSION_GUARD__NOTICES__KINDS", "new_network"),
            ("SESSION_GUARD__AMQP__NOTICES_EXCHANGE", "sg.notices"),
        ]),
    )
    .unwrap();
    assert!(!s.notices.enabled);
    assert_eq!(s.notices.lookback, Duration::from_secs(30 * 86_400));
    assert_eq!(s.notices.scope, super::settings::NoticeScope::PerApp);
    assert_eq!(s.notices.kinds, ["new_network"]);
    assert_eq!(s.amqp.notices_exchange, "sg.notices");
    assert!(s.to_toml().contains("lookback = \"30d\"\n"));

    let bad = Settings::load_from(
        None,
        env(&[
            ("SESSION_GUARD__NOTICES__KINDS", "new_device,new_gadget"),
            ("SESSION_GUARD__NOTICES__LOOKBACK", "0s"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("notices.kinds[1]"), "{bad}");
    assert!(bad.contains("new_gadget"), "{bad}");
    assert!(
        bad.contains("notices.lookback: must be longer than 0"),
        "{bad}"
    );
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
    let s =
        Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__MAX_CLOCK_SKEW", "0")])).unwrap();
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
}

#[test]
fn unknown_policies_are_refused_and_hook_names_left_to_the_chain() {
    // A hook name may belong to an embedding program: the settings load,
    // and building the chain (`HookChain::configured`) tells.
    let s =
        Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__HOOKS", "rules,nope")])).unwrap();
    assert_eq!(s.limits.hooks, ["rules", "nope"]);
    let err =
        Settings::load_from(None, env(&[("SESSION_GUARD__LIMITS__POLICY", "lru")])).unwrap_err();
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
        env_error(&[("SESSION_GUARD__WORKER__BATCH_SIZE", "0")])
            .contains("SESSION_GUARD__WORKER__BATCH_SIZE: worker.batch_size: must be at least 1")
    );
    let (err, _) = file_error("[database]\nurl = \"mysql://u:secret@h/db\"\n");
    assert!(err.contains("database.url: not a PostgreSQL URL"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let (err, _) = file_error("[database]\nurl = \"postgres://u:secret@h1:5432,h2:x/db\"\n");
    assert!(
        err.contains("database.url: not a PostgreSQL URL: host \"h2:x\": invalid port number"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
    let (err, _) = file_error(
        "[database]\nurl = \"postgres://u@h1,h2/db?target_session_attrs=prefer-standby\"\n",
    );
    assert!(
        err.contains("target_session_attrs=prefer-standby is not supported"),
        "{err}"
    );
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
    let err = Settings::load_from(Some(Path::new("/nonexistent/x.toml")), env(&[])).unwrap_err();
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
    assert!(Settings::load_from(None, env(&[("SESSION_GUARD__WORKER__PIPELINE", "0")])).is_err());
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
fn a_url_listing_several_hosts_is_accepted() {
    let url = "postgres://u:p@[::1]:5433,h2:5434,h3/sg?target_session_attrs=read-write";
    let file = TempFile::new(&format!("[database]\nurl = \"{url}\"\n"));
    let s = Settings::load_from(Some(&file.path), env(&[])).expect("a host list is valid");
    assert_eq!(s.database.url, url);
}

#[test]
fn with_database_keeps_a_host_list() {
    assert_eq!(
        with_database(
            "postgres://u:p@h1:5432,[::1]:5433/old?target_session_attrs=any",
            "new"
        ),
        "postgres://u:p@h1:5432,[::1]:5433/new?target_session_attrs=any"
    );
    assert_eq!(with_database("postgres://h1,h2", "x"), "postgres://h1,h2/x");
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
    let options: sqlx::postgres::PgConnectOptions = with_database("postgres://u@h/old", "sg test")
        .parse()
        .unwrap();
    assert_eq!(options.get_database(), Some("sg test"));
    assert_eq!(with_database("not a url", "x"), "not a url");
}

#[test]
fn amqp_url_takes_a_list_in_the_file_and_commas_in_the_environment() {
    let split = |s: &Settings| {
        session_guard_amqp::url::split_urls(&s.amqp.url)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let three = [
        "amqp://u:p1@mq1:5672/%2f",
        "amqp://u:p2@mq2:5672/%2f",
        "amqp://u:p3@mq3:5672/%2f",
    ];

    // A TOML array in the file.
    let file = TempFile::new(&format!(
        "[amqp]\nurl = [\"{}\", \"{}\", \"{}\"]\n",
        three[0], three[1], three[2]
    ));
    let from_file = Settings::load_from(Some(&file.path), env(&[])).unwrap();
    assert_eq!(split(&from_file), three);

    // Comma-separated in the environment, spaces allowed; it overrides the file.
    let over = Settings::load_from(
        Some(&file.path),
        env(&[(
            "SESSION_GUARD__AMQP__URL",
            "amqp://u:p1@mq1:5672/%2f, amqp://u:p2@mq2:5672/%2f",
        )]),
    )
    .unwrap();
    assert_eq!(split(&over), &three[..2]);

    // One URL, in either place, is read as before.
    let one = Settings::load_from(None, env(&[("SESSION_GUARD__AMQP__URL", three[0])])).unwrap();
    assert_eq!(one.amqp.url, three[0]);
    let file = TempFile::new(&format!("[amqp]\nurl = \"{}\"\n", three[1]));
    let one = Settings::load_from(Some(&file.path), env(&[])).unwrap();
    assert_eq!(one.amqp.url, three[1]);

    // Shown (check-config, logs) with every password masked.
    let shown = toml::to_string(&from_file).unwrap();
    assert!(
        shown.contains(
            "amqp://u:***@mq1:5672/%2f,amqp://u:***@mq2:5672/%2f,amqp://u:***@mq3:5672/%2f"
        ),
        "{shown}"
    );
    assert!(
        !["p1", "p2", "p3"]
            .iter()
            .any(|p| shown.contains(&format!(":{p}@"))),
        "{shown}"
    );

    // An empty list, and a list with a URL that does not parse, are refused
    // naming the key, without a password.
    let (empty, _) = file_error("[amqp]\nurl = []\n");
    assert!(empty.contains("amqp.url"), "{empty}");
    let bad = env_error(&[(
        "SESSION_GUARD__AMQP__URL",
        "amqp://u:secret@mq1/%2f,amqp://u:secret@mq2:port/%2f",
    )]);
    assert!(
        bad.contains("amqp.url") && bad.contains("URL 2 of 2"),
        "{bad}"
    );
    assert!(!bad.contains("secret"), "{bad}");
}
