//! What the real worker puts on the wire is what the published contract
//! says: revoke bodies validate against `schema/revoke.schema.json`, the
//! headers of dead letters against `schema/dead-letter-headers.schema.json`
//! (the checked-in files apps use, not the types they come from).

use std::collections::BTreeSet;

use lapin::BasicProperties;
use serde_json::{Value, json};
use session_guard::domain::dead_letter::ErrorKind;
use session_guard::domain::event::{AppName, SessionId};
use session_guard::domain::limits::Rule;
use session_guard::domain::revoke::RevokeReason;

use crate::helpers::*;

/// A checked-in schema of the contract, compiled.
fn schema(file: &str) -> jsonschema::Validator {
    let path = format!("{}/schema/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_valid(schema: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = schema
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} does not validate: {errors:#?}"
    );
}

fn rule(v: Value) -> Rule {
    serde_json::from_value(v).unwrap()
}

/// Every reason the worker sends, a repeat and an operator's note: each
/// revoke, as received, validates, and carries the AMQP properties the
/// AsyncAPI document promises.
#[tokio::test]
async fn revokes_of_every_reason_validate_against_the_revoke_schema() {
    let mut app = spawn_app_with(|s| {
        s.limits.repeat_revoke_after = 0;
        s.limits.rules = vec![
            rule(json!({"name": "bank", "when": {"app": "bank"}, "policy": "deny_new"})),
            rule(json!({"name": "kiosk", "when": {"app": "kiosk"}, "idle_timeout": 60})),
            rule(json!({"name": "multi", "when": {"app": "multi"}, "max_sessions": 0})),
        ];
    })
    .await;
    // session_limit: the older login goes.
    app.publish(&login("shop", "shop-1", "alice", t(0))).await;
    app.publish(&login("shop", "shop-2", "alice", t(10))).await;
    // session_limit_denied: with deny_new, the newcomer goes.
    app.publish(&login("bank", "bank-1", "bob", t(0))).await;
    app.publish(&login("bank", "bank-2", "bob", t(10))).await;
    // idle_timeout: nothing from kiosk-1 for over a minute of event time.
    app.publish(&login("kiosk", "kiosk-1", "carol", t(0))).await;
    app.publish(&login("kiosk", "kiosk-2", "carol", t(100)))
        .await;
    // logout_others, then logout_all, with no limit in the way.
    for (i, session) in ["multi-1", "multi-2", "multi-3"].into_iter().enumerate() {
        app.publish(&login("multi", session, "dora", t(i as i64)))
            .await;
    }
    let mut others = request("multi", "multi-3", "dora", t(20));
    others["type"] = json!("logout_others");
    app.publish(&others).await;
    let mut all = request("multi", "multi-3", "dora", t(30));
    all["type"] = json!("logout_all");
    app.publish(&all).await;
    app.settle().await;
    // An operator's revoke, with an explanation.
    let out = app
        .command(&[
            "revoke",
            "--app",
            "shop",
            "--session",
            "shop-2",
            "--reason",
            "fraud review #7",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    app.settle().await;
    // A user's revoke, as the sessions API makes it (the API's own tests
    // go through HTTP; the path and the message are the same).
    app.publish(&login("multi", "multi-9", "erin", t(40))).await;
    app.settle().await;
    let enforcement = session_guard::apply::Enforcement::from_settings(&app.settings, &[]).unwrap();
    let target = session_guard::apply::AdminTarget::Session {
        app: AppName::parse("multi").unwrap(),
        session_id: SessionId::parse("multi-9").unwrap(),
    };
    let by_user = session_guard::apply::Revoker {
        reason: session_guard::domain::session::EndReason::User,
        ended_by: "token:portal".into(),
    };
    let sent = session_guard::apply::revoke(
        &app.pool,
        &enforcement,
        &target,
        &by_user,
        Some("from my devices".into()),
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 1);
    app.settle().await;
    // A request for a revoked session, after its revocation: a repeat.
    app.publish(&request("shop", "shop-1", "alice", chrono::Utc::now()))
        .await;
    app.settle().await;

    let revokes = app.expect_revokes(9).await;
    let schema = schema("revoke.schema.json");
    let mut seen = BTreeSet::new();
    for revoke in &revokes {
        assert_valid(&schema, &revoke.json);
        let body = &revoke.body;
        // The schema admits reasons added later; this worker sends only
        // the ones it lists.
        assert_ne!(body.reason(), RevokeReason::Other, "{body:?}");
        assert_eq!(revoke.message_id, Some(body.event_id.to_string()));
        assert_eq!(revoke.content_type.as_deref(), Some("application/json"));
        assert_eq!(revoke.message_type.as_deref(), Some("revoke"));
        assert_eq!(revoke.app_id.as_deref(), Some("session-guard"));
        assert!(revoke.persistent);
        assert_eq!(revoke.routing_key, format!("revoke.{}", body.app));
        seen.insert((
            body.session_id.clone(),
            body.reason.clone(),
            body.repeat,
            body.note.clone(),
        ));
    }
    let expected: BTreeSet<_> = [
        ("shop-1", "session_limit", false, None),
        ("bank-2", "session_limit_denied", false, None),
        ("kiosk-1", "idle_timeout", false, None),
        ("multi-1", "logout_others", false, None),
        ("multi-2", "logout_others", false, None),
        ("multi-3", "logout_all", false, None),
        ("shop-2", "admin", false, Some("fraud review #7")),
        ("multi-9", "user", false, Some("from my devices")),
        ("shop-1", "session_limit", true, None),
    ]
    .into_iter()
    .map(|(s, r, repeat, note)| (s.to_owned(), r.to_owned(), repeat, note.map(str::to_owned)))
    .collect();
    assert_eq!(seen, expected);
    let reasons: BTreeSet<&str> = revokes.iter().map(|r| r.body.reason.as_str()).collect();
    assert_eq!(
        reasons,
        RevokeReason::ALL.map(RevokeReason::as_str).into(),
        "every reason of the contract was seen"
    );
}

/// Publishes `body` to the events exchange with the AMQP user-id `user`.
async fn publish_as(app: &TestApp, user: Option<&str>, body: &[u8]) {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(user) = user {
        properties = properties.with_user_id(user.into());
    }
    app.publish_to(
        &app.settings.amqp.events_exchange,
        "login.shop",
        body,
        properties,
    )
    .await;
}

/// Each kind of refusal the worker makes: the headers of the dead letter
/// validate, the kind is the one its cause calls for, and an error text
/// longer than the header allows is cut to fit.
#[tokio::test]
async fn dead_letters_of_every_kind_validate_against_the_headers_schema() {
    let mut app = spawn_app_without_worker(|s| {
        s.amqp.max_redeliveries = 2;
        s.amqp.require_user_id = true;
        // The tests connect as "guest": let it speak for "shop" only.
        s.amqp.app_users.insert("guest".into(), vec!["shop".into()]);
    })
    .await;
    // Makes PostgreSQL refuse one session, every time.
    sqlx::query(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.session_id = 'poison' THEN RAISE EXCEPTION 'poison session refused'; END IF;
             RETURN NEW;
         END $$",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON sessions
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let mut no_user = login("shop", "s1", "ann", t(0));
    no_user.as_object_mut().unwrap().remove("user_id");
    let mut future = login("shop", "s2", "ann", t(0));
    future["occurred_at"] = json!("9999-12-31T00:00:00Z");
    let long_type = format!("log{}", "é".repeat(2000));
    let cases: Vec<(Option<&str>, Vec<u8>, ErrorKind, &str)> = vec![
        (
            Some("guest"),
            b"not json".to_vec(),
            ErrorKind::Invalid,
            "invalid JSON at line 1 column ",
        ),
        (
            Some("guest"),
            no_user.to_string().into_bytes(),
            ErrorKind::Invalid,
            "missing field user_id",
        ),
        (
            Some("guest"),
            with_type(login("shop", "s3", "ann", t(0)), &long_type),
            ErrorKind::Invalid,
            "type: unknown event type \"logééé",
        ),
        (
            None,
            login("shop", "s4", "ann", t(0)).to_string().into_bytes(),
            ErrorKind::Forbidden,
            "user-id: missing AMQP user-id property (amqp.require_user_id is on)",
        ),
        (
            Some("guest"),
            login("blog", "s5", "ann", t(0)).to_string().into_bytes(),
            ErrorKind::Forbidden,
            "user-id: AMQP user \"guest\" may not publish events for app \"blog\"",
        ),
        (
            Some("guest"),
            future.to_string().into_bytes(),
            ErrorKind::ClockSkew,
            "occurred_at: 9999-12-31T00:00:00Z is ",
        ),
        (
            Some("guest"),
            login("shop", "poison", "ann", t(0))
                .to_string()
                .into_bytes(),
            ErrorKind::Failed,
            "database refused the event: ",
        ),
    ];
    for (user, body, _, _) in &cases {
        publish_as(&app, *user, body).await;
    }
    app.start_worker().await;

    let schema = schema("dead-letter-headers.schema.json");
    let mut dead = Vec::new();
    for _ in &cases {
        dead.push(app.next_dead_letter().await);
    }
    app.assert_no_dead_letters(QUIET).await;
    for (_, body, kind, error) in &cases {
        let letter = dead
            .iter()
            .find(|d| &d.body == body)
            .unwrap_or_else(|| panic!("no dead letter for {error:?}"));
        assert_valid(&schema, &letter.headers);
        assert_eq!(letter.kind.as_deref(), Some(kind.as_str()), "{error}");
        let text = letter.error.as_deref().unwrap();
        assert!(text.starts_with(error), "expected {error:?}, got {text:?}");
        assert!(text.len() <= session_guard::broker::MAX_ERROR_HEADER_BYTES);
    }
    let cut = dead
        .iter()
        .find_map(|d| d.error.as_deref().filter(|e| e.contains("logéé")))
        .unwrap();
    assert!(
        cut.len() > 1000,
        "cut to the limit, not far short: {}",
        cut.len()
    );
    let kinds: BTreeSet<_> = dead.iter().filter_map(|d| d.kind.clone()).collect();
    assert_eq!(
        kinds,
        ErrorKind::ALL.map(|k| k.as_str().to_owned()).into(),
        "every kind of the contract was seen"
    );
}

fn with_type(mut event: Value, kind: &str) -> Vec<u8> {
    event["type"] = json!(kind);
    event.to_string().into_bytes()
}
