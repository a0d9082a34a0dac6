//! Trust of what apps send: the `superuser` claim lifts nothing unless the
//! operator enables its hook, an app's claims (`attributes`) stand for the
//! user's later events in that app until the app sends others (the latest
//! by event time), and an app's claims never decide the limits in another.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use session_guard::apply::{self, Enforcement};
use session_guard::domain::event::SessionEvent;

use crate::helpers::*;

fn with_attributes(mut event: Value, attributes: Value) -> Value {
    event["attributes"] = attributes;
    event
}

fn staff_rule(s: &mut session_guard::Settings) {
    s.limits.rules = vec![
        serde_json::from_value(
            json!({"name": "staff", "when": {"role": "staff"}, "max_sessions": 3}),
        )
        .unwrap(),
    ];
}

/// Session ids of revokes, sorted.
fn ids(revokes: &[Revoke]) -> Vec<String> {
    let mut ids: Vec<String> = revokes.iter().map(|r| r.body.session_id.clone()).collect();
    ids.sort();
    ids
}

/// (end_reason, ended_by, max_sessions) of a session in the log.
async fn ending(app: &TestApp, session: &str) -> (Option<String>, Option<String>, Option<i32>) {
    sqlx::query_as("SELECT end_reason, ended_by, max_sessions FROM sessions WHERE session_id = $1")
        .bind(session)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// What `app` claims for `user`, as remembered.
async fn claim(test: &TestApp, user: &str, app: &str) -> Option<(Value, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT attributes, occurred_at FROM user_attributes WHERE user_id = $1 AND app = $2",
    )
    .bind(user)
    .bind(app)
    .fetch_optional(&test.pool)
    .await
    .unwrap()
}

/// `limits get --json` for one user and app, with the test's settings (the
/// staff rule of [`staff_rule`] among them).
async fn limits_get(app: &TestApp, user: &str, in_app: &str) -> Value {
    let out = app
        .command(&["limits", "get", "--user", user, "--app", in_app, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    report[0].clone()
}

#[tokio::test]
async fn a_superuser_claim_lifts_no_limit_unless_the_hook_is_enabled() {
    // The default chain: `superuser` is an attribute like any other.
    let mut app = spawn_app().await;
    assert_eq!(app.settings.limits.hooks, ["rules", "user_overrides"]);
    for i in 0..2 {
        let e = login("shop", &format!("root{i}"), "root", t(i));
        app.publish(&with_attributes(e, json!({"superuser": true})))
            .await;
    }
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(ids(&revoked), ["root0"]);
    assert_eq!(
        ending(&app, "root0").await,
        (Some("session_limit".into()), Some("config".into()), Some(1))
    );
    assert_eq!(app.active("root", "shop").await, ["root1"]);
    // Stopped before the drop: Drop cannot wait for the worker's tasks, which
    // would go on on this runtime and declare the deleted topology again.
    app.stop_worker().await;
    drop(app);

    // Enabled by name, the claim lifts the limit.
    let mut app = spawn_app_with(with_superusers).await;
    for i in 0..2 {
        let e = login("shop", &format!("root{i}"), "root", t(i));
        app.publish(&with_attributes(e, json!({"superuser": true})))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("root", "shop").await, ["root0", "root1"]);
}

#[tokio::test]
async fn attributes_sent_at_login_stand_for_later_events_without_any() {
    let mut app = spawn_app_with(staff_rule).await;
    for i in 0..3 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, json!({"roles": ["staff"]})))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;

    // Requests carry no attributes (one says null): the login's claim stands.
    for i in 0..3 {
        let mut e = request("shop", &format!("st{i}"), "sam", t(10 + i));
        if i == 1 {
            e["attributes"] = Value::Null;
        }
        app.publish(&e).await;
    }
    // A new login without attributes too: the staff limit (3) still holds.
    app.publish(&login("shop", "st3", "sam", t(20))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(ids(&revoked), ["st0"]);
    assert_eq!(
        ending(&app, "st0").await,
        (
            Some("session_limit".into()),
            Some("rules:staff".into()),
            Some(3)
        )
    );
    assert_eq!(app.active("sam", "shop").await, ["st1", "st2", "st3"]);
    assert_eq!(
        claim(&app, "sam", "shop").await,
        Some((json!({"roles": ["staff"]}), t(2)))
    );
    let report = limits_get(&app, "sam", "shop").await;
    assert_eq!(report["attributes"], json!({"roles": ["staff"]}));
    assert_eq!(report["limits"]["max_sessions"], 3);
    assert_eq!(report["set_by"]["max_sessions"], "rules:staff");
}

#[tokio::test]
async fn an_empty_attributes_object_replaces_the_claim() {
    let mut app = spawn_app_with(staff_rule).await;
    for i in 0..3 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, json!({"roles": ["staff"]})))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;

    // The app now claims nothing: back to the configured limit (1), the
    // oldest sessions go.
    let e = login("shop", "st3", "sam", t(10));
    app.publish(&with_attributes(e, json!({}))).await;
    app.settle().await;
    let revoked = app.expect_revokes(3).await;
    assert_eq!(ids(&revoked), ["st0", "st1", "st2"]);
    assert!(revoked.iter().all(|r| r.body.max_sessions == 1));
    assert_eq!(
        ending(&app, "st2").await,
        (Some("session_limit".into()), Some("config".into()), Some(1))
    );
    assert_eq!(claim(&app, "sam", "shop").await, Some((json!({}), t(10))));
    let report = limits_get(&app, "sam", "shop").await;
    assert_eq!(report["attributes"], json!({}));
    assert_eq!(report["limits"]["max_sessions"], 1);
    assert_eq!(report["set_by"]["max_sessions"], "config");

    // Later events without attributes do not bring the old claim back.
    app.publish(&request("shop", "st3", "sam", t(11))).await;
    app.publish(&login("shop", "st4", "sam", t(12))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(ids(&revoked), ["st3"]);
    assert_eq!(app.active("sam", "shop").await, ["st4"]);
}

#[tokio::test]
async fn an_older_claim_arriving_late_does_not_replace_a_newer_one() {
    let mut app = spawn_app_with(staff_rule).await;
    let staff = json!({"roles": ["staff"]});
    for i in 0..3 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, staff.clone())).await;
    }
    app.settle().await;
    // A request claims the same again, later (a renewal, without a lock).
    let e = request("shop", "st2", "sam", t(10));
    app.publish(&with_attributes(e, staff.clone())).await;
    app.settle().await;
    assert_eq!(
        claim(&app, "sam", "shop").await,
        Some((staff.clone(), t(10)))
    );

    // Events of before the renewal, and of before the logins, arrive late
    // claiming nothing: they do not count.
    let e = request("shop", "st1", "sam", t(5));
    app.publish(&with_attributes(e, json!({}))).await;
    let e = request("shop", "st0", "sam", t(1));
    app.publish(&with_attributes(e, json!({}))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("sam", "shop").await, ["st0", "st1", "st2"]);
    assert_eq!(claim(&app, "sam", "shop").await, Some((staff, t(10))));

    // A newer one does.
    let e = request("shop", "st2", "sam", t(11));
    app.publish(&with_attributes(e, json!({}))).await;
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert_eq!(ids(&revoked), ["st0", "st1"]);
    assert_eq!(claim(&app, "sam", "shop").await, Some((json!({}), t(11))));
}

#[tokio::test]
async fn an_attributes_event_applies_a_new_claim_at_once_and_only_once() {
    let mut app = spawn_app_with(staff_rule).await;
    let staff = json!({"roles": ["staff"]});
    for i in 0..3 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, staff.clone())).await;
    }
    app.settle().await;
    app.expect_revokes(0).await;

    // The app says sam left the staff group: no session of sam's makes a
    // request, and the extra sessions go at once.
    let left = attributes("shop", "sam", json!({"roles": []}), t(10));
    app.publish(&left).await;
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert_eq!(ids(&revoked), ["st0", "st1"]);
    assert!(revoked.iter().all(|r| r.body.max_sessions == 1));
    assert_eq!(
        ending(&app, "st0").await,
        (Some("session_limit".into()), Some("config".into()), Some(1))
    );
    assert_eq!(app.active("sam", "shop").await, ["st2"]);
    assert_eq!(
        claim(&app, "sam", "shop").await,
        Some((json!({"roles": []}), t(10)))
    );
    // The event made no session of its own.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = 'sam'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);

    // Delivered again, and an older claim arriving late: nothing changes.
    app.publish(&left).await;
    app.publish(&attributes("shop", "sam", staff.clone(), t(5)))
        .await;
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(
        claim(&app, "sam", "shop").await,
        Some((json!({"roles": []}), t(10)))
    );

    // Back in the group: the staff limit holds for the next logins, which
    // carry no attributes.
    app.publish(&attributes("shop", "sam", staff.clone(), t(20)))
        .await;
    for i in 3..5 {
        app.publish(&login("shop", &format!("st{i}"), "sam", t(20 + i)))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("sam", "shop").await, ["st2", "st3", "st4"]);
    assert_eq!(
        claim(&app, "sam", "shop").await,
        Some((staff.clone(), t(20)))
    );

    // The same claim later only renews it (a lock-free touch).
    app.publish(&attributes("shop", "sam", staff.clone(), t(30)))
        .await;
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(claim(&app, "sam", "shop").await, Some((staff, t(30))));
}

#[tokio::test]
async fn an_apps_claims_do_not_set_the_limits_in_another_app() {
    let mut app = spawn_app_with(staff_rule).await;
    for i in 0..3 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, json!({"roles": ["staff"]})))
            .await;
    }
    // The blog knows nothing of the staff role; the wiki says so outright.
    // Neither changes the limit of the shop's sessions.
    app.publish(&login("blog", "b0", "sam", t(5))).await;
    let e = login("wiki", "w0", "sam", t(6));
    app.publish(&with_attributes(e, json!({}))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("sam", "shop").await, ["st0", "st1", "st2"]);

    // And the shop's claim does not lift the blog's limit.
    app.publish(&login("blog", "b1", "sam", t(7))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(ids(&revoked), ["b0"]);
    assert_eq!(ending(&app, "b0").await.1.as_deref(), Some("config"));
}

#[tokio::test]
async fn a_superuser_claim_in_one_app_does_not_lift_the_limit_in_another() {
    let mut app = spawn_app_with(|s| {
        s.limits.max_sessions = 3;
        with_superusers(s);
    })
    .await;
    for i in 0..3 {
        app.publish(&login("shop", &format!("s{i}"), "ann", t(i)))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;

    // The operator lowers the limit; it applies at the user's next event,
    // here a login in the admin app that claims superuser there.
    app.stop_worker().await;
    app.settings.limits.max_sessions = 1;
    app.start_worker().await;
    let e = login("admin", "a0", "ann", t(10));
    app.publish(&with_attributes(e, json!({"superuser": true})))
        .await;
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert_eq!(ids(&revoked), ["s0", "s1"]);
    assert_eq!(
        ending(&app, "s0").await,
        (Some("session_limit".into()), Some("config".into()), Some(1))
    );
    assert_eq!(app.active("ann", "shop").await, ["s2"]);

    // In the admin app itself, the claim lifts the limit.
    let e = login("admin", "a1", "ann", t(11));
    app.publish(&with_attributes(e, json!({"superuser": true})))
        .await;
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("ann", "admin").await, ["a0", "a1"]);
}

/// The recipe of SECURITY.md: superusers honoured from one app only, by a
/// rule rather than the `superuser_unlimited` hook.
#[tokio::test]
async fn a_rule_scoped_to_an_app_honours_a_claim_from_that_app_only() {
    let mut app = spawn_app_with(|s| {
        s.limits.rules = vec![
            serde_json::from_value(json!({
                "name": "admin-superusers",
                "when": {"app": "admin", "attribute": {"superuser": true}},
                "max_sessions": 0
            }))
            .unwrap(),
        ];
    })
    .await;
    for i in 0..3 {
        for in_app in ["admin", "shop"] {
            let e = login(in_app, &format!("{in_app}{i}"), "root", t(i));
            app.publish(&with_attributes(e, json!({"superuser": true})))
                .await;
        }
    }
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert_eq!(ids(&revoked), ["shop0", "shop1"]);
    assert_eq!(ending(&app, "shop0").await.1.as_deref(), Some("config"));
    assert_eq!(
        app.active("root", "admin").await,
        ["admin0", "admin1", "admin2"]
    );
}

/// A request that claims again what its app claimed before is a touch (no
/// lock); one that claims something else locks its user at once (no rerun).
#[tokio::test]
async fn renewing_a_claim_takes_no_lock_and_changing_one_does() {
    let app = spawn_app_without_worker(staff_rule).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let apply = |e: Value| apply_one(&app.pool, &enforcement, e);
    let staff = json!({"roles": ["staff"]});
    let outcome = apply(with_attributes(
        login("shop", "s1", "u1", t(0)),
        staff.clone(),
    ))
    .await;
    assert_eq!(outcome.locked_users, 1);
    assert_eq!(claim(&app, "u1", "shop").await, Some((staff.clone(), t(0))));

    let outcome = apply(with_attributes(
        request("shop", "s1", "u1", t(5)),
        staff.clone(),
    ))
    .await;
    assert_eq!((outcome.locked_users, outcome.relocks), (0, 0));
    assert_eq!(claim(&app, "u1", "shop").await, Some((staff.clone(), t(5))));

    // Renewed by less than the resolution: not written.
    let t5_half = t(5) + chrono::Duration::milliseconds(500);
    let outcome = apply(with_attributes(
        request("shop", "s1", "u1", t5_half),
        staff.clone(),
    ))
    .await;
    assert_eq!(outcome.locked_users, 0);
    assert_eq!(claim(&app, "u1", "shop").await, Some((staff.clone(), t(5))));

    let admin = json!({"roles": ["staff", "admin"]});
    let outcome = apply(with_attributes(
        request("shop", "s1", "u1", t(6)),
        admin.clone(),
    ))
    .await;
    assert_eq!((outcome.locked_users, outcome.relocks), (1, 0));
    assert_eq!(claim(&app, "u1", "shop").await, Some((admin, t(6))));

    // No hook reads attributes and no event carries any: nothing to claim.
    let plain = spawn_app_without_worker(|_| {}).await;
    let enforcement = Enforcement::from_settings(&plain.settings, &[]).unwrap();
    assert!(!enforcement.hooks.reads_attributes());
    let event =
        SessionEvent::decode(login("shop", "s1", "u1", t(0)).to_string().as_bytes()).unwrap();
    apply::process_batch(&plain.pool, &enforcement, &[event], Utc::now())
        .await
        .unwrap();
    assert_eq!(claim(&plain, "u1", "shop").await, None);
}

/// The migration that adds `user_attributes` fills it from the log: per
/// user and app, the attributes of the latest session that had any.
#[tokio::test]
async fn the_migration_remembers_the_claims_found_in_the_log() {
    let app = spawn_app_without_worker(|_| {}).await;
    // Back to the schema before the migration, with a log written then.
    sqlx::query("DROP TABLE user_attributes")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE description = 'user attributes'")
        .execute(&app.pool)
        .await
        .unwrap();
    let rows = [
        ("shop", "a", "ann", t(1), Some(json!({"roles": ["staff"]}))),
        ("shop", "b", "ann", t(5), Some(json!({"plan": "team"}))),
        ("shop", "c", "ann", t(9), None),
        ("blog", "d", "ann", t(2), Some(json!({"superuser": true}))),
        ("shop", "e", "bob", t(3), None),
    ];
    for (in_app, session, user, at, attributes) in rows {
        sqlx::query(
            "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at,
                                   attributes)
             VALUES ($1, $2, $3, $4, true, $4, $5)",
        )
        .bind(in_app)
        .bind(session)
        .bind(user)
        .bind(at)
        .bind(attributes)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    session_guard::db::MIGRATOR.run(&app.pool).await.unwrap();
    assert_eq!(
        claim(&app, "ann", "shop").await,
        Some((json!({"plan": "team"}), t(5)))
    );
    assert_eq!(
        claim(&app, "ann", "blog").await,
        Some((json!({"superuser": true}), t(2)))
    );
    assert_eq!(claim(&app, "bob", "shop").await, None);
}

/// A request renewing a claim while another batch holds its user's lock
/// does not write the claim under that batch: it runs again with the lock,
/// after that batch.
#[tokio::test]
async fn a_renewal_waits_for_a_batch_that_holds_the_users_lock() {
    let app = spawn_app_without_worker(staff_rule).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let staff = json!({"roles": ["staff"]});
    let decode = |e: Value| SessionEvent::decode(e.to_string().as_bytes()).unwrap();
    let login = decode(with_attributes(
        login("shop", "s1", "u1", t(0)),
        staff.clone(),
    ));
    apply::process_batch(&app.pool, &enforcement, &[login], Utc::now())
        .await
        .unwrap();

    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT FROM session_users WHERE user_id = 'u1' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let renewal = decode(with_attributes(
        request("shop", "s1", "u1", t(5)),
        staff.clone(),
    ));
    let batch = tokio::spawn({
        let (pool, enforcement) = (app.pool.clone(), enforcement.clone());
        async move {
            apply::process_batch(&pool, &enforcement, &[renewal], Utc::now())
                .await
                .unwrap()
        }
    });
    app.wait_for_lock_wait("the batch to wait for the user's lock")
        .await;
    assert_eq!(claim(&app, "u1", "shop").await, Some((staff.clone(), t(0))));
    holder.rollback().await.unwrap();
    let outcome = batch.await.unwrap();
    assert_eq!((outcome.relocks, outcome.locked_users), (1, 1));
    assert_eq!(claim(&app, "u1", "shop").await, Some((staff, t(5))));
}
