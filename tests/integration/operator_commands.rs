//! The operator's commands as a terminal sees them: escaped output, refused
//! arguments, the schema check of the commands that must not change it, one
//! error line, no colours off a terminal.

use std::process::Output;

use serde_json::Value;
use session_guard::configuration::with_database;

use crate::helpers::*;

/// A user agent that clears the screen, sets the window title, rings the
/// bell, forges a line, and then tries C1 and bidi controls.
const HOSTILE_AGENT: &str = "ua\u{1b}[2J\u{1b}]0;owned\u{7}\r\nforged\u{9b}1m\u{202e}x";
/// How `HOSTILE_AGENT` reads once escaped.
const HOSTILE_AGENT_ESCAPED: &str = r"ua\x1b[2J\x1b]0;owned\x07\r\nforged\u{9b}1m\u{202e}x";

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Fails unless the command succeeded; shows its stderr otherwise.
fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// Bytes and characters that must not reach a terminal raw (a line feed is
/// allowed only as the end of a line the program wrote).
fn assert_terminal_safe(text: &str) {
    for c in text.chars() {
        let bad = (c.is_control() && c != '\n')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        assert!(!bad, "raw {c:?} in {text:?}");
    }
}

/// The one line a failed command prints: `error: ...`, nothing else.
fn the_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure: {}", stdout(out));
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err:?}");
    lines[0].to_owned()
}

#[tokio::test]
async fn every_human_readable_output_escapes_control_characters() {
    let mut app = spawn_app_with(|s| s.limits.max_sessions = 0).await;
    let mut event = login("shop", "s1", "alice", t(0));
    event["user_agent"] = HOSTILE_AGENT.into();
    app.publish(&event).await;
    // A user id may hold a bidi override (it is no control character).
    let tricky_user = "bob\u{202e}nimda";
    app.publish(&login("shop", "b1", tricky_user, t(1))).await;
    app.settle().await;

    // The table: the agent escaped, the forged line not a line.
    let out = ok(app
        .command(&["sessions", "--user", "alice"])
        .output()
        .await
        .unwrap());
    let table = stdout(&out);
    assert_terminal_safe(&table);
    assert!(table.contains(HOSTILE_AGENT_ESCAPED), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");

    // JSON: the exact value, still safe to show.
    let out = ok(app
        .command(&["sessions", "--user", "alice", "--json"])
        .output()
        .await
        .unwrap());
    let json = stdout(&out);
    assert_terminal_safe(&json);
    let sessions: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(sessions[0]["user_agent"], HOSTILE_AGENT);

    // The user id in every command's text.
    let escaped_user = r"bob\u{202e}nimda";
    let outputs = [
        app.command(&["sessions", "--user", tricky_user, "--app", "blog"])
            .output()
            .await,
        app.command(&["limits", "set", "--user", tricky_user, "--max", "2"])
            .output()
            .await,
        app.command(&["limits", "get", "--user", tricky_user])
            .output()
            .await,
        app.command(&["limits", "clear", "--user", tricky_user])
            .output()
            .await,
        app.command(&["limits", "clear", "--user", tricky_user])
            .output()
            .await,
        app.command(&["revoke", "--app", "shop", "--user", tricky_user, "--all"])
            .output()
            .await,
    ];
    for out in outputs {
        let text = stdout(&ok(out.unwrap()));
        assert_terminal_safe(&text);
        assert!(text.contains(escaped_user), "{text}");
    }
    // limits get --json keeps the exact id.
    let out = ok(app
        .command(&["limits", "get", "--user", tricky_user, "--json"])
        .output()
        .await
        .unwrap());
    let json = stdout(&out);
    assert_terminal_safe(&json);
    let report: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(report[0]["user_id"], tricky_user);

    // An error that names the user.
    let out = app
        .command(&["limits", "get", "--user", "eve\u{202e}"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let error = the_error(&out);
    assert_terminal_safe(&error);
    assert!(
        error.contains(r"user eve\u{202e} has no sessions in the log"),
        "{error}"
    );
}

#[tokio::test]
async fn limits_set_refuses_values_the_database_cannot_hold() {
    let app = spawn_app_without_worker(|_| {}).await;
    for (flag, value, range) in [
        ("--max", "3000000000", "0..=2147483647"),
        ("--max-global", "2147483648", "0..=2147483647"),
        ("--log-limit", "4294967295", "0..=2147483647"),
        (
            "--idle-timeout",
            "9223372036854775808",
            "0..=9223372036854775807",
        ),
    ] {
        let out = app
            .command(&["limits", "set", "--user", "olga", flag, value])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}"))
                && err.contains(&format!("{value} is not in {range}")),
            "{err}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_overrides")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // The largest values are stored as given.
    ok(app
        .command(&[
            "limits",
            "set",
            "--user",
            "olga",
            "--max",
            "2147483647",
            "--idle-timeout",
            "9223372036854775807",
        ])
        .output()
        .await
        .unwrap());
    let (max, idle): (i32, i64) = sqlx::query_as(
        "SELECT max_sessions, idle_timeout FROM user_overrides WHERE user_id = 'olga'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((max, idle), (i32::MAX, i64::MAX));
}

#[tokio::test]
async fn every_command_validates_user_and_app() {
    let app = spawn_app_without_worker(|_| {}).await;
    let bad_app = "error: --app: invalid character ' ' (allowed: A-Z a-z 0-9 _ . -)";
    let bad_user = "error: --user: must be 1-256 characters, got 0";
    for (args, expected) in [
        (
            vec!["sessions", "--user", "alice", "--app", "bad app"],
            bad_app,
        ),
        (vec!["sessions", "--user", ""], bad_user),
        (
            vec![
                "limits", "set", "--user", "a", "--app", "bad app", "--max", "1",
            ],
            bad_app,
        ),
        (vec!["limits", "set", "--user", "", "--max", "1"], bad_user),
        (
            vec!["limits", "clear", "--user", "a", "--app", "bad app"],
            bad_app,
        ),
        (vec!["limits", "clear", "--user", ""], bad_user),
        (
            vec!["limits", "get", "--user", "", "--app", "shop"],
            bad_user,
        ),
        (
            vec!["limits", "get", "--user", "a", "--app", "bad app"],
            bad_app,
        ),
    ] {
        let out = app.command(&args).output().await.unwrap();
        assert_eq!(the_error(&out), expected, "{args:?}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_overrides")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn revoking_a_user_without_sessions_writes_nothing() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.settle().await;
    let out = ok(app
        .command(&["revoke", "--app", "shop", "--user", "nobody", "--all"])
        .output()
        .await
        .unwrap());
    assert!(
        stdout(&out).contains("nothing to revoke"),
        "{}",
        stdout(&out)
    );
    let users: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM session_users ORDER BY user_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(users, ["alice"]);
    assert_eq!(app.outbox_len().await, 0);

    // A known user still gets revoked.
    let out = ok(app
        .command(&["revoke", "--app", "shop", "--user", "alice", "--all"])
        .output()
        .await
        .unwrap());
    assert!(stdout(&out).contains("1 session(s) revoked"));
    app.settle().await;
    assert_eq!(app.expect_revokes(1).await[0].body.session_id, "s1");
}

/// A database of its own for one test, dropped even if the test fails.
struct ScratchDatabase {
    name: String,
    url: String,
}

impl ScratchDatabase {
    fn new(app: &TestApp) -> ScratchDatabase {
        let name = format!("sg_test_scratch_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&app.settings.database.url, &name);
        ScratchDatabase { name, url }
    }

    async fn exists(&self, app: &TestApp) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&self.name)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    }

    async fn execute(&self, sql: &str) {
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    async fn tables(&self) -> i64 {
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let url = self.url.clone();
        on_own_runtime(async move {
            use sqlx::migrate::MigrateDatabase as _;
            let _ = sqlx::Postgres::force_drop_database(&url).await;
        });
    }
}

/// The commands that must not change the schema, on any database.
const CHECKING_COMMANDS: [&[&str]; 7] = [
    &["sessions", "--user", "alice"],
    &["limits", "get", "--user", "alice", "--app", "shop"],
    &["limits", "set", "--user", "alice", "--max", "2"],
    &["limits", "clear", "--user", "alice"],
    &["revoke", "--app", "shop", "--user", "alice", "--all"],
    &[
        "tokens",
        "create",
        "t",
        "--apps",
        "a",
        "--scopes",
        "limits:read",
    ],
    &["tokens", "list"],
];

/// Runs `args` against `db` at the default log level.
async fn run_on(app: &TestApp, db: &ScratchDatabase, args: &[&str]) -> Output {
    app.command(args)
        .env("SESSION_GUARD__DATABASE__URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn commands_other_than_migrate_and_run_check_the_schema_and_change_nothing() {
    let app = spawn_app_without_worker(|_| {}).await;
    let db = ScratchDatabase::new(&app);

    // No database: not created.
    for args in CHECKING_COMMANDS {
        let error = the_error(&run_on(&app, &db, args).await);
        assert_eq!(
            error,
            format!(
                "error: database \"{}\" does not exist: run `session-guard migrate` first",
                db.name
            ),
            "{args:?}"
        );
        assert!(!db.exists(&app).await, "{args:?} created the database");
    }

    // An empty database: no table created, no log line.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{}\"",
        db.name
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    for args in CHECKING_COMMANDS {
        let error = the_error(&run_on(&app, &db, args).await);
        assert_eq!(
            error,
            "error: the database has no session-guard schema: run `session-guard migrate` first",
            "{args:?}"
        );
        assert_eq!(db.tables().await, 0, "{args:?} changed the schema");
    }

    // Migrated: the commands work and print only their output.
    ok(run_on(&app, &db, &["migrate"]).await);
    for args in [CHECKING_COMMANDS[0], CHECKING_COMMANDS[1]] {
        let out = ok(run_on(&app, &db, args).await);
        assert_eq!(stderr(&out), "", "{args:?}");
        assert!(!stdout(&out).is_empty());
    }

    // Newer than the binary: a migration it does not know.
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'from the future', true, '\\x00', 1)",
    )
    .await;
    for args in CHECKING_COMMANDS {
        let error = the_error(&run_on(&app, &db, args).await);
        assert_eq!(
            error,
            "error: the database schema is newer than this binary (migration 29991231000000 \
             \"from the future\" is unknown to it): use the session-guard version that migrated \
             it, or a newer one",
            "{args:?}"
        );
    }
    db.execute("DELETE FROM _sqlx_migrations WHERE version = 29991231000000")
        .await;

    // Older than the binary: the last migration not applied.
    let last = session_guard::db::MIGRATOR.iter().last().unwrap();
    db.execute(&format!(
        "DELETE FROM _sqlx_migrations WHERE version = {}",
        last.version
    ))
    .await;
    for args in CHECKING_COMMANDS {
        let error = the_error(&run_on(&app, &db, args).await);
        assert_eq!(
            error,
            format!(
                "error: the database schema is older than this binary (migration {} \"{}\" \
                 is not applied): run `session-guard migrate`",
                last.version, last.description
            ),
            "{args:?}"
        );
    }
    let recorded: i64 = {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    assert_eq!(
        recorded as usize,
        session_guard::db::MIGRATOR.iter().count() - 1
    );
}

#[tokio::test]
async fn a_failing_command_prints_its_error_once() {
    let app = spawn_app_without_worker(|_| {}).await;
    for rust_log in [None, Some("debug")] {
        let mut cmd = app.command(&["revoke", "--app", "shop", "--session", "nope"]);
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let out = cmd.output().await.unwrap();
        assert_ne!(out.status.code(), Some(0));
        let err = stderr(&out);
        assert_eq!(
            err.matches("no session nope in app shop").count(),
            1,
            "{err}"
        );
        assert!(
            err.lines()
                .any(|l| l == "error: no session nope in app shop"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_failing_run_reports_once() {
    let app = spawn_app_without_worker(|_| {}).await;
    // The daemon may report through its log (for collectors) or on an
    // `error:` line, not both.
    let out = app
        .command(&["run"])
        .env("SESSION_GUARD__LIMITS__HOOKS", "nosuchhook")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(err.matches("nosuchhook").count(), 1, "{err}");
}

#[tokio::test]
async fn logs_have_no_colours_when_stderr_is_not_a_terminal() {
    let app = spawn_app_without_worker(|_| {}).await;
    let out = ok(app
        .command(&["migrate"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap());
    let err = stderr(&out);
    assert!(err.contains("database is up to date"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}
