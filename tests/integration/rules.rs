//! Rule hooks, eviction policies, both scopes, idle expiry, shadow mode, the
//! logout_others / logout_all events and the operator commands.

use chrono::Utc;
use serde_json::{Value, json};
use session_guard::domain::limits::{EvictionPolicy, HookContext, LimitsEditor, Rule, RuleHook};

use crate::helpers::*;

fn with_attributes(mut event: Value, attributes: Value) -> Value {
    event["attributes"] = attributes;
    event
}

fn rule(v: Value) -> Rule {
    serde_json::from_value(v).unwrap()
}

/// (end_reason, ended_by, end_note) of a session.
async fn ending(app: &TestApp, session: &str) -> (Option<String>, Option<String>, Option<String>) {
    sqlx::query_as("SELECT end_reason, ended_by, end_note FROM sessions WHERE session_id = $1")
        .bind(session)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn superusers_are_unlimited() {
    let mut app = spawn_app_with(with_superusers).await;
    for i in 0..3 {
        let e = login("shop", &format!("root{i}"), "root", t(i));
        app.publish(&with_attributes(e, json!({"superuser": true})))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("root", "shop").await.len(), 3);

    // Once the app no longer claims it, the default limit applies.
    let e = request("shop", "root2", "root", t(10));
    app.publish(&with_attributes(e, json!({}))).await;
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert!(revoked.iter().all(|r| r.body.reason == "session_limit"));
    assert_eq!(app.active("root", "shop").await, ["root2"]);
}

#[tokio::test]
async fn rules_from_the_config_apply_and_a_lost_role_takes_effect_at_the_next_event() {
    let mut app = spawn_app_with(|s| {
        s.limits.rules = vec![
            rule(json!({"name": "staff", "when": {"role": "staff"}, "max_sessions": 3})),
            rule(json!({"name": "kiosk", "when": {"app": "kiosk"}, "max_sessions": 0})),
        ];
    })
    .await;
    let staff = json!({"roles": ["staff"]});
    for i in 0..4 {
        let e = login("shop", &format!("st{i}"), "sam", t(i));
        app.publish(&with_attributes(e, staff.clone())).await;
    }
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "st0");
    assert_eq!(revoked[0].body.max_sessions, 3);
    assert_eq!(ending(&app, "st0").await.1.as_deref(), Some("rules:staff"));

    // Sam loses the staff role: the next event brings him back to 1.
    let e = request("shop", "st3", "sam", t(10));
    app.publish(&with_attributes(e, json!({"roles": []}))).await;
    app.settle().await;
    let mut revoked: Vec<String> = app
        .expect_revokes(2)
        .await
        .into_iter()
        .map(|r| r.body.session_id)
        .collect();
    revoked.sort();
    assert_eq!(revoked, ["st1", "st2"]);
    assert_eq!(ending(&app, "st1").await.1.as_deref(), Some("config"));
    assert_eq!(app.active("sam", "shop").await, ["st3"]);

    // A rule on the app: unlimited in the kiosk app.
    for i in 0..3 {
        app.publish(&login("kiosk", &format!("k{i}"), "sam", t(20 + i)))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
}

#[tokio::test]
async fn operator_overrides_set_get_and_clear() {
    let mut app = spawn_app_with(with_superusers).await;
    app.publish(&login("shop", "o1", "olga", t(0))).await;
    app.settle().await;

    let out = app
        .command(&[
            "limits",
            "set",
            "--user",
            "olga",
            "--app",
            "shop",
            "--max",
            "2",
            "--operator",
            "ops-ann",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = app
        .command(&["limits", "get", "--user", "olga", "--app", "shop", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["limits"]["max_sessions"], 2);
    assert_eq!(report[0]["set_by"]["max_sessions"], "user_overrides:shop");
    assert_eq!(report[0]["set_by"]["policy"], "config");

    app.publish(&login("shop", "o2", "olga", t(1))).await;
    app.settle().await;
    app.expect_revokes(0).await;

    // Lowered: the next event revokes what no longer fits.
    let out = app
        .command(&[
            "limits", "set", "--user", "olga", "--app", "shop", "--max", "1",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    app.publish(&request("shop", "o2", "olga", t(5))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "o1");
    assert_eq!(
        ending(&app, "o1").await.1.as_deref(),
        Some("user_overrides:shop")
    );

    // Cleared: back to the config.
    let out = app
        .command(&["limits", "clear", "--user", "olga", "--app", "shop"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleared"));
    let out = app
        .command(&["limits", "get", "--user", "olga", "--app", "shop", "--json"])
        .output()
        .await
        .unwrap();
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["set_by"]["max_sessions"], "config");

    // The readable form names the source of each value.
    let out = app
        .command(&[
            "limits",
            "get",
            "--user",
            "olga",
            "--attributes",
            r#"{"superuser": true}"#,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("set by superuser_unlimited"), "{text}");
}

#[tokio::test]
async fn evict_idle_keeps_the_most_recently_seen() {
    let mut app = spawn_app_with(|s| {
        s.limits.policy = EvictionPolicy::EvictIdle;
        s.limits.max_sessions = 2;
    })
    .await;
    app.publish(&login("shop", "busy", "ida", t(0))).await;
    app.publish(&login("shop", "quiet", "ida", t(1))).await;
    app.publish(&request("shop", "busy", "ida", t(5))).await;
    app.publish(&login("shop", "new", "ida", t(6))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "quiet");
    assert_eq!(app.active("ida", "shop").await, ["busy", "new"]);
}

#[tokio::test]
async fn deny_new_refuses_the_newcomer() {
    let mut app = spawn_app_with(|s| s.limits.policy = EvictionPolicy::DenyNew).await;
    app.publish(&login("shop", "first", "dan", t(0))).await;
    app.publish(&login("shop", "second", "dan", t(1))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "second");
    assert_eq!(revoked[0].body.reason, "session_limit_denied");
    assert_eq!(app.active("dan", "shop").await, ["first"]);
}

#[tokio::test]
async fn under_deny_new_an_idle_session_expires_and_frees_the_slot() {
    let mut app = spawn_app_with(|s| {
        s.limits.policy = EvictionPolicy::DenyNew;
        s.limits.idle_timeout = 300;
    })
    .await;
    // The old browser was closed an hour ago; its last event is that old.
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    app.publish(&login("shop", "closed-browser", "eve", hour_ago))
        .await;
    app.publish(&login("shop", "new-laptop", "eve", Utc::now()))
        .await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "closed-browser");
    assert_eq!(revoked[0].body.reason, "idle_timeout");
    let states = app.states("eve", "shop").await;
    assert_eq!(states["closed-browser"], SessionState::Expired);
    assert_eq!(states["new-laptop"], SessionState::Active);

    // And the `sessions` command shows it as expired.
    let out = app
        .command(&["sessions", "--user", "eve", "--all", "--json"])
        .output()
        .await
        .unwrap();
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let old = all
        .iter()
        .find(|s| s["session_id"] == "closed-browser")
        .unwrap();
    assert_eq!(old["state"], "expired");
    assert_eq!(old["end_reason"], "idle_timeout");
}

#[tokio::test]
async fn per_app_and_global_limits_together_revoke_the_fewest() {
    let mut app = spawn_app_with(|s| {
        s.limits.max_sessions = 1;
        s.limits.max_sessions_global = 2;
    })
    .await;
    app.publish(&login("blog", "b1", "gus", t(0))).await;
    app.publish(&login("shop", "s1", "gus", t(1))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    // Both limits exceeded by s2: revoking s1 alone satisfies both.
    app.publish(&login("shop", "s2", "gus", t(2))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "s1");
    assert_eq!(app.active("gus", "blog").await, ["b1"]);
    // Only the global limit exceeded: the oldest anywhere goes, in its app.
    app.publish(&login("wiki", "w1", "gus", t(3))).await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "b1");
    assert_eq!(revoked[0].routing_key, "revoke.blog");
    assert_eq!(
        revoked[0].body.max_sessions, 2,
        "the global limit was in force"
    );
}

#[tokio::test]
async fn shadow_mode_decides_but_revokes_nothing() {
    let mut app = spawn_app_with(|s| s.limits.enforce = false).await;
    for i in 0..3 {
        app.publish(&login("shop", &format!("s{i}"), "sid", t(i)))
            .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
    assert_eq!(app.active("sid", "shop").await, ["s0", "s1", "s2"]);

    // The decisions are still made and counted, each session once: s0 and
    // s1 were counted when s1 and s2 arrived; the next login adds s2.
    let enforcement = session_guard::apply::Enforcement::from_settings(&app.settings, &[]).unwrap();
    let next = session_guard::domain::event::SessionEvent::decode(
        login("shop", "s3", "sid", t(3)).to_string().as_bytes(),
    )
    .unwrap();
    let outcome = session_guard::apply::process_batch(&app.pool, &enforcement, &[next], Utc::now())
        .await
        .unwrap();
    assert_eq!(outcome.shadow_revoked, 1);
    assert_eq!(outcome.revoked(), 0);
    let flagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE user_id = 'sid' AND shadow_flagged_at IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(flagged, 3, "s0, s1 and s2 would be revoked");
    // Another event of the same user: nothing new to report.
    let again = session_guard::domain::event::SessionEvent::decode(
        request("shop", "s3", "sid", t(4)).to_string().as_bytes(),
    )
    .unwrap();
    let outcome =
        session_guard::apply::process_batch(&app.pool, &enforcement, &[again], Utc::now())
            .await
            .unwrap();
    assert_eq!(outcome.shadow_revoked, 0);
    assert_eq!(app.active("sid", "shop").await.len(), 4);
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn logout_others_and_logout_all() {
    let mut app = spawn_app_with(|s| s.limits.max_sessions = 0).await;
    for i in 0..3 {
        app.publish(&login("shop", &format!("p{i}"), "pam", t(i)))
            .await;
    }
    app.publish(&login("blog", "pb", "pam", t(3))).await;
    // A login that happened after the logout_others, arriving before it:
    // not one of the "other devices" the user meant.
    app.publish(&login("shop", "p-later", "pam", t(15))).await;
    let mut others = login("shop", "p1", "pam", t(10));
    others["type"] = "logout_others".into();
    app.publish(&others).await;
    app.settle().await;
    let mut revoked: Vec<(String, String)> = app
        .expect_revokes(2)
        .await
        .into_iter()
        .map(|r| (r.body.session_id, r.body.reason))
        .collect();
    revoked.sort();
    assert_eq!(
        revoked,
        [
            ("p0".into(), "logout_others".into()),
            ("p2".into(), "logout_others".into())
        ]
    );
    assert_eq!(app.active("pam", "shop").await, ["p-later", "p1"]);
    assert_eq!(
        app.active("pam", "blog").await,
        ["pb"],
        "other apps are untouched"
    );
    assert_eq!(ending(&app, "p0").await.1.as_deref(), Some("user"));

    app.publish(&login("shop", "p3", "pam", t(20))).await;
    let mut all = login("shop", "p3", "pam", t(30));
    all["type"] = "logout_all".into();
    app.publish(&all).await;
    app.settle().await;
    let mut revoked: Vec<(String, String)> = app
        .expect_revokes(3)
        .await
        .into_iter()
        .map(|r| (r.body.session_id, r.body.reason))
        .collect();
    revoked.sort();
    assert_eq!(
        revoked,
        [
            ("p-later".into(), "logout_all".into()),
            ("p1".into(), "logout_all".into()),
            ("p3".into(), "logout_all".into())
        ]
    );
    assert!(app.active("pam", "shop").await.is_empty());
}

#[tokio::test]
async fn operators_revoke_one_session_or_all_of_a_users() {
    let mut app = spawn_app_with(|s| s.limits.max_sessions = 0).await;
    for i in 0..3 {
        app.publish(&login("shop", &format!("r{i}"), "rex", t(i)))
            .await;
    }
    app.settle().await;

    let out = app
        .command(&[
            "revoke",
            "--app",
            "shop",
            "--session",
            "r0",
            "--reason",
            "stolen laptop",
            "--operator",
            "ops-bob",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.settle().await;
    let r = app.expect_revokes(1).await.remove(0);
    assert_eq!(r.body.session_id, "r0");
    assert_eq!(r.body.reason, "admin");
    assert_eq!(r.body.note.as_deref(), Some("stolen laptop"));
    assert_eq!(
        ending(&app, "r0").await,
        (
            Some("admin".into()),
            Some("operator:ops-bob".into()),
            Some("stolen laptop".into())
        )
    );

    let out = app
        .command(&[
            "revoke",
            "--app",
            "shop",
            "--user",
            "rex",
            "--all",
            "--operator",
            "ops-bob",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 session(s) revoked"));
    app.settle().await;
    let revoked = app.expect_revokes(2).await;
    assert!(
        revoked
            .iter()
            .all(|r| r.body.reason == "admin" && r.body.note.is_none())
    );
    assert!(app.active("rex", "shop").await.is_empty());

    // Unknown sessions are an error; bad arguments are refused by the parser.
    let out = app
        .command(&["revoke", "--app", "shop", "--session", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session nope"));
    let out = app
        .command(&["revoke", "--app", "shop", "--user", "rex"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "--user needs --all");
}

/// A program's own hook, registered on the builder.
struct PlanHook;

impl RuleHook for PlanHook {
    fn name(&self) -> &str {
        "plan"
    }
    fn apply(&self, ctx: &HookContext<'_>, limits: &mut LimitsEditor<'_>) {
        if ctx.attributes.get("plan").and_then(Value::as_str) == Some("family") {
            limits.set_max_sessions(4);
        }
    }
}

#[tokio::test]
async fn hooks_of_an_embedding_program_run_in_the_configured_order() {
    // "plan" runs before superuser_unlimited: a superuser stays unlimited.
    let mut app = spawn_app_without_worker(|s| {
        s.limits.hooks = vec!["plan".into(), "superuser_unlimited".into()];
    })
    .await;
    let worker = session_guard::Worker::builder(app.settings.clone())
        .hook(PlanHook)
        .build()
        .await
        .unwrap();
    app.run_worker(worker);
    for i in 0..5 {
        let e = login("shop", &format!("f{i}"), "fay", t(i));
        app.publish(&with_attributes(e, json!({"plan": "family"})))
            .await;
    }
    for i in 0..5 {
        let e = login("shop", &format!("z{i}"), "zed", t(i));
        app.publish(&with_attributes(
            e,
            json!({"plan": "family", "superuser": true}),
        ))
        .await;
    }
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.session_id, "f0");
    assert_eq!(revoked[0].body.max_sessions, 4);
    assert_eq!(ending(&app, "f0").await.1.as_deref(), Some("plan"));
    assert_eq!(app.active("zed", "shop").await.len(), 5);

    // A hook named in the config but registered nowhere is refused.
    let mut settings = app.settings.clone();
    settings.limits.hooks = vec!["nope".into()];
    let err = session_guard::Worker::builder(settings)
        .build()
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("unknown hook \"nope\""));
}
