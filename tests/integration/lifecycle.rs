//! The real binary: migrate, run, stop on SIGTERM, restart without losing
//! anything, and the `sessions` command.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_restart_loses_nothing() {
    let mut app = spawn_app_without_worker(|_| {}).await;
    let first = app.spawn_process();
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.settle().await;
    assert_eq!(app.active("alice", "shop").await, ["s1"]);

    // SIGTERM: finish in-flight work, flush the outbox, exit 0.
    assert_eq!(app.terminate_process(first).await, Some(0));

    // While no worker runs, events pile up in the durable queue...
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.publish(&login("shop", "s3", "bob", t(11))).await;
    app.publish(&login("shop", "s4", "bob", t(12))).await;
    // ...and a revoke committed by a worker that died before publishing it
    // waits in the outbox.
    let orphan = session_guard::domain::revoke::RevokeMessage::new(
        &session_guard::domain::event::AppName::parse("shop").unwrap(),
        "orphan",
        "zoe",
        session_guard::domain::session::EndReason::SessionLimit.into(),
        chrono::Utc::now(),
        1,
        false,
    );
    let mut conn = app.pool.acquire().await.unwrap();
    session_guard::db::outbox::write(&mut conn, std::slice::from_ref(&orphan))
        .await
        .unwrap();
    drop(conn);

    app.spawn_process();
    app.settle().await;
    let mut revokes = app.expect_revokes(3).await;
    revokes.sort_by(|a, b| a.body.session_id.cmp(&b.body.session_id));
    let ids: Vec<&str> = revokes.iter().map(|r| r.body.session_id.as_str()).collect();
    assert_eq!(ids, ["orphan", "s1", "s3"]);
    assert_eq!(
        revokes[0].body.event_id, orphan.event_id,
        "a re-send keeps its event_id"
    );
    assert_eq!(app.active("alice", "shop").await, ["s2"]);
    assert_eq!(app.active("bob", "shop").await, ["s4"]);
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn migrate_creates_the_database_and_sessions_lists_the_log() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.publish(&login("blog", "b1", "alice", t(20))).await;
    app.settle().await;
    app.expect_revokes(1).await;

    // `migrate` on a database that does not exist yet creates it.
    let fresh_db = format!("sg_test_migrate_{}", uuid::Uuid::new_v4().simple());
    let mut fresh = app.settings.clone();
    fresh.database.url = app.settings.database.url.replace(
        app.settings.database.url.rsplit('/').next().unwrap(),
        &fresh_db,
    );
    let out = app
        .command_with(&fresh, &["migrate"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&fresh_db)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(exists);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{fresh_db}\" WITH (FORCE)"
    )))
    .execute(&app.pool)
    .await
    .unwrap();

    // Active only, as JSON.
    let out = app
        .command(&["sessions", "--user", "alice", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let active: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = active
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b1", "s2"]);
    let s2 = active.iter().find(|s| s["session_id"] == "s2").unwrap();
    for key in [
        "app",
        "session_id",
        "user_id",
        "ip",
        "user_agent",
        "login_at",
        "last_seen_at",
        "ended_at",
        "end_reason",
        "state",
    ] {
        assert!(s2.get(key).is_some(), "missing {key} in {s2}");
    }
    assert_eq!(s2["state"], "active");
    assert_eq!(s2["ip"], "192.0.2.10");
    assert_eq!(s2["ended_at"], Value::Null);

    // --all --app shop (global option after the command) shows the revoked one too.
    let out = app
        .command(&[
            "sessions", "--user", "alice", "--app", "shop", "--all", "--json",
        ])
        .output()
        .await
        .unwrap();
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.len(), 2);
    let s1 = all.iter().find(|s| s["session_id"] == "s1").unwrap();
    assert_eq!(s1["state"], "revoked");
    assert_eq!(s1["end_reason"], "session_limit");
    assert!(s1["ended_at"].is_string());

    // The table, for people.
    let out = app
        .command(&["sessions", "--user", "alice", "--all"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("APP"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("revoked") && table.contains("session_limit"),
        "{table}"
    );

    // A config file given after the command is honoured.
    let dir = std::env::temp_dir().join(format!("sg-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_sessions = \"lots\"\n").unwrap();
    let out = bare_command(&[
        "sessions",
        "--user",
        "alice",
        "--config",
        file.to_str().unwrap(),
    ])
    .output()
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "the bad file must be read");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_sessions"));
}

#[tokio::test]
async fn graceful_stop_of_the_in_process_worker_then_resume() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.settle().await;
    app.stop_worker().await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.start_worker().await;
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "s1");
}
