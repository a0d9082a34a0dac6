//! `check-config`, and strict configuration in every command of the binary.

use crate::helpers::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` to its end, failing the test if that takes more than
/// `PATIENCE` (`run` with a configuration it accepts never ends by itself).
async fn finish(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("the command ends by itself")
        .expect("session-guard runs")
}

/// The one `error: ` line of a failed command.
fn error_line(out: &std::process::Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_owned()
}

#[tokio::test]
async fn check_config_prints_the_settings_masked_and_checks_both_services() {
    let app = spawn_app_without_worker(|_| {}).await;
    let out = app.command(&["check-config"]).output().await.unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    // Every key, as TOML that reads back; the password masked.
    assert!(
        text.contains("url = \"amqp://guest:***@127.0.0.1:5672/%2f\"\n"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "{text}");
    assert!(text.contains("[retention]\n# log_limit: unset\n"), "{text}");
    assert!(
        text.contains(&format!(
            "events_queue = \"{}\"\n",
            app.settings.amqp.events_queue
        )),
        "{text}"
    );
    let migrations = session_guard::db::MIGRATOR.iter().count();
    assert!(
        text.contains(&format!(
            "# PostgreSQL: connected to {}; schema up to date ({migrations} migrations)\n",
            app.settings.database.url
        )),
        "{text}"
    );
    assert!(
        text.ends_with(
            "# RabbitMQ: connected to amqp://guest:***@127.0.0.1:5672/%2f\n# configuration OK\n"
        ),
        "{text}"
    );
    toml::from_str::<toml::Table>(&text).expect("the output is TOML");
}

#[tokio::test]
async fn check_config_changes_nothing_and_fails_with_one_line() {
    let app = spawn_app_without_worker(|_| {}).await;

    // A database that does not exist yet is reported, not created.
    let db = format!("sg_test_check_{}", uuid::Uuid::new_v4().simple());
    let url = session_guard::configuration::with_database(&app.settings.database.url, &db);
    let out = app
        .command(&["check-config"])
        .env("SESSION_GUARD__DATABASE__URL", &url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("database \"{db}\" does not exist yet")),
        "{}",
        stdout(&out)
    );
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!created, "check-config created the database");

    // A schema behind this binary is reported, not migrated.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let out = app.command(&["check-config"]).output().await.unwrap();
    let migrations = session_guard::db::MIGRATOR.iter().count();
    assert!(
        stdout(&out).contains(&format!(
            "schema behind: {} of {migrations} migrations applied",
            migrations - 1
        )),
        "{}",
        stdout(&out)
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, migrations - 1, "check-config migrated");

    // A refusal: one line naming the setting, the service and why.
    let out = app
        .command(&["check-config"])
        .env(
            "SESSION_GUARD__AMQP__URL",
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        "error: RabbitMQ refused the credentials of amqp.url \
         (amqp://guest:***@127.0.0.1:5672/%2f): ACCESS_REFUSED - Login was refused using \
         authentication mechanism PLAIN. For details see the broker logfile."
    );

    // A service out of reach.
    let out = app
        .command(&["check-config"])
        .env(
            "SESSION_GUARD__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).starts_with(
            "error: amqp.url: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f: "
        ),
        "{}",
        stderr(&out)
    );

    // A hook chain that does not build.
    let out = app
        .command(&["check-config"])
        .env("SESSION_GUARD__LIMITS__HOOKS", "rules,nope")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).starts_with("error: limits.hooks: unknown hook \"nope\""),
        "{}",
        stderr(&out)
    );
}

/// Any command refuses an unknown key or a bad value, naming its source,
/// before it does anything.
#[tokio::test]
async fn every_command_refuses_unknown_keys_and_bad_values() {
    let app = spawn_app_without_worker(|_| {}).await;
    for args in [
        &["run"][..],
        &["migrate"],
        &["check-config"],
        &["sessions", "--user", "u"],
        &["limits", "get", "--user", "u", "--app", "shop"],
    ] {
        let out = finish(
            app.command(args)
                .env("SESSION_GUARD__LIMITS__MAX_SESIONS", "3"),
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            error_line(&out),
            "error: environment variable SESSION_GUARD__LIMITS__MAX_SESIONS: \
             limits.max_sesions: unknown key (did you mean SESSION_GUARD__LIMITS__MAX_SESSIONS?)",
            "{args:?}"
        );
    }

    let dir = std::env::temp_dir().join(format!("sg-check-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("session-guard.toml");
    std::fs::write(
        &file,
        "[limitz]\nmax_sessions = 3\n\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = finish(&mut bare_command(&[
        "--config",
        file.to_str().unwrap(),
        "run",
    ]))
    .await;
    let dir_out = finish(&mut bare_command(&[
        "--config",
        dir.to_str().unwrap(),
        "run",
    ]))
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        format!(
            "error: config file {path}: log.format: unknown value \"xml\" (allowed: pretty, \
             json); config file {path}: limitz: unknown section (did you mean limits?)",
            path = file.display()
        )
    );
    assert_eq!(dir_out.status.code(), Some(1));
    assert_eq!(
        error_line(&dir_out),
        format!(
            "error: config file {} is a directory, not a file",
            dir.display()
        )
    );
}

/// The config file a test's processes get holds every setting the test made
/// (rules too, which no environment variable can give), URLs unredacted.
#[tokio::test]
async fn a_process_config_file_holds_every_setting_of_the_test() {
    let app = spawn_app_without_worker(|s| {
        with_superusers(s);
        s.limits.rules = vec![
            serde_json::from_value(serde_json::json!(
                {"name": "staff", "when": {"role": "staff"}, "max_sessions": 3}
            ))
            .unwrap(),
        ];
        s.retention.log_limit = Some(3);
        s.retention.max_age = Some(std::time::Duration::from_secs(86_400));
        s.worker.last_seen_resolution_ms = 1234;
    })
    .await;
    let file = std::fs::read_to_string(app.config_file(&app.settings)).unwrap();
    let read: session_guard::Settings = toml::from_str(&file).expect("the file reads back");
    assert_eq!(read.database.url, app.settings.database.url);
    assert_eq!(read.amqp.url, app.settings.amqp.url);
    // Everything else, compared as the settings print.
    assert_eq!(
        toml::to_string(&read).unwrap(),
        toml::to_string(&app.settings).unwrap()
    );
}
