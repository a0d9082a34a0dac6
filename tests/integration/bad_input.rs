//! Bad input is dead-lettered with its reason, and never blocks what follows.

use chrono::SubsecRound as _;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let mut app = spawn_app().await;
    let good = login("shop", "ok", "alice", t(0));
    let with = |key: &str, value: serde_json::Value| {
        let mut e = good.clone();
        e[key] = value;
        e.to_string().into_bytes()
    };
    let without = |key: &str| {
        let mut e = good.clone();
        e.as_object_mut().unwrap().remove(key);
        e.to_string().into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"type\": login}".to_vec(),
            "invalid JSON at line 1 column 10",
        ),
        (b"".to_vec(), "invalid JSON at line 1 column 0"),
        (b"[1, 2]".to_vec(), "event must be a JSON object"),
        (without("user_id"), "missing field user_id"),
        (without("occurred_at"), "missing field occurred_at"),
        (with("ip", json!("300.1.1.1")), "ip: invalid IP address"),
        (
            with("type", json!("hello")),
            "type: unknown event type \"hello\"",
        ),
        (with("app", json!("bad app")), "app: invalid character ' '"),
        (
            with("session_id", json!("")),
            "session_id: must be 1-256 characters, got 0",
        ),
        (
            with("user_id", json!(7)),
            "user_id: expected a string, got a number",
        ),
        (
            with("occurred_at", json!("2026-13-01")),
            "occurred_at: invalid RFC 3339 time",
        ),
        (
            with("expires_at", json!("soon")),
            "expires_at: invalid RFC 3339 time",
        ),
        (
            with("occurred_at", json!("9999-12-31T23:59:00-23:59")),
            "occurred_at: \"9999-12-31T23:59:00-23:59\" is outside years 0001-9999 once \
             converted to UTC",
        ),
        (
            with("user_agent", json!("agent\u{0}")),
            "user_agent: must not contain NUL (U+0000)",
        ),
        (
            with("user_agent", json!("x".repeat(600))),
            "user_agent: longer than 512 characters",
        ),
        (
            with("attributes", json!("admin")),
            "attributes: expected a JSON object",
        ),
        (
            with("padding", json!("x".repeat(70 * 1024))),
            "message too large:",
        ),
    ];
    for (body, _) in &cases {
        app.publish_raw("login.shop", body).await;
    }
    // A good event after all of them still gets through.
    app.publish(&good).await;
    app.publish(&login("shop", "ok2", "alice", t(10))).await;

    for (body, reason) in &cases {
        let dead = app.next_dead_letter().await;
        assert_eq!(&dead.body, body, "body must be unchanged");
        assert_eq!(dead.kind.as_deref(), Some("invalid"), "{reason}");
        let error = dead.error.expect("x-session-guard-error header");
        assert!(
            error.starts_with(reason),
            "expected {reason:?}, got {error:?}"
        );
    }
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "ok");
    assert_eq!(app.active("alice", "shop").await, ["ok2"]);
}

#[tokio::test]
async fn bad_input_inside_a_batch_does_not_hold_back_the_rest() {
    // A long batch window so that good and bad events share batches.
    let mut app = spawn_app_without_worker(|s| {
        s.worker.batch_wait_ms = 200;
        s.worker.batch_size = 50;
    })
    .await;
    for i in 0..20 {
        app.publish(&login("shop", &format!("s{i}"), &format!("user{i}"), t(i)))
            .await;
        app.publish_raw("login.shop", b"not json").await;
    }
    app.start_worker().await;
    for _ in 0..20 {
        let dead = app.next_dead_letter().await;
        assert_eq!(dead.body, b"not json");
    }
    app.settle().await;
    for i in 0..20 {
        assert_eq!(
            app.active(&format!("user{i}"), "shop").await,
            [format!("s{i}")]
        );
    }
}

#[tokio::test]
async fn an_event_the_database_keeps_refusing_is_dead_lettered_alone() {
    let mut app = spawn_app_without_worker(|s| {
        s.amqp.max_redeliveries = 2;
        // One batch for the three events below.
        s.worker.batch_wait_ms = 300;
    })
    .await;
    // Make PostgreSQL refuse one session, every time (not a transient error).
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
    let poison = login("shop", "poison", "bob", t(1));
    app.publish(&login("shop", "good-a", "alice", t(0))).await;
    app.publish(&poison).await;
    app.publish(&login("shop", "good-c", "carol", t(2))).await;
    app.start_worker().await;

    let dead = app.next_dead_letter().await;
    assert_eq!(dead.body, poison.to_string().into_bytes());
    assert_eq!(dead.kind.as_deref(), Some("failed"));
    let error = dead.error.expect("x-session-guard-error header");
    assert!(error.starts_with("database refused the event:"), "{error}");
    assert!(error.contains("poison session refused"), "{error}");

    app.settle().await;
    assert_eq!(app.active("alice", "shop").await, ["good-a"]);
    assert_eq!(app.active("carol", "shop").await, ["good-c"]);
    assert!(app.active("bob", "shop").await.is_empty());
    app.expect_revokes(0).await;
}

#[tokio::test]
async fn attributes_out_of_bounds_are_dead_lettered() {
    let mut app = spawn_app().await;
    let cases = [
        (
            json!({"a": {"b": {"c": {"d": 1}}}}),
            "attributes: nested deeper than 4 levels",
        ),
        (
            json!({"roles": "admin"}),
            "attributes.roles: expected an array of strings",
        ),
        (
            json!({"superuser": 1}),
            "attributes.superuser: expected a boolean",
        ),
        (
            json!({"blob": "x".repeat(5000)}),
            "attributes: larger than 4096 bytes",
        ),
    ];
    for (attributes, _) in &cases {
        let mut e = login("shop", "s", "u", t(0));
        e["attributes"] = attributes.clone();
        app.publish(&e).await;
    }
    for (_, reason) in &cases {
        let error = app.next_dead_letter().await.error.unwrap();
        assert!(
            error.starts_with(reason),
            "expected {reason:?}, got {error:?}"
        );
    }
}

/// With `amqp.require_user_id`, an app's credentials only speak for its own
/// sessions: the AMQP user-id (which RabbitMQ checks against the connection's
/// user) must match the event's app, or `amqp.app_users`.
#[tokio::test]
async fn app_identity_is_enforced_with_require_user_id() {
    let mut app = spawn_app_with(|s| {
        s.amqp.require_user_id = true;
        // The tests connect as "guest": let it speak for "shop" only.
        s.amqp.app_users.insert("guest".into(), vec!["shop".into()]);
    })
    .await;
    let publish_as = |user: Option<&str>, event: &serde_json::Value| {
        let mut props = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(u) = user {
            props = props.with_user_id(u.into());
        }
        let body = event.to_string().into_bytes();
        let exchange = app.settings.amqp.events_exchange.clone();
        let channel = app.publisher.clone();
        async move {
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "login.any".into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    };
    publish_as(Some("guest"), &login("shop", "ok", "ann", t(0))).await;
    publish_as(Some("guest"), &login("blog", "other-app", "ann", t(1))).await;
    publish_as(None, &login("shop", "anonymous", "ann", t(2))).await;

    let first = app.next_dead_letter().await.error.unwrap();
    assert_eq!(
        first,
        "user-id: AMQP user \"guest\" may not publish events for app \"blog\""
    );
    let second = app.next_dead_letter().await.error.unwrap();
    assert!(
        second.starts_with("user-id: missing AMQP user-id property"),
        "{second}"
    );
    app.wait_for("the allowed event", || async {
        app.active("ann", "shop").await == ["ok"]
    })
    .await;
    assert!(app.active("ann", "blog").await.is_empty());
}

/// PostgreSQL's jsonb has no NUL: such an event is refused by the decoder on
/// its first delivery, not after a batch, a one-by-one retry and every
/// redelivery were spent on it.
#[tokio::test]
async fn nul_in_attributes_is_dead_lettered_at_once_and_what_follows_is_applied() {
    let mut app = spawn_app_with(|s| s.amqp.max_redeliveries = 2).await;
    let mut poison = login("shop", "nul", "bob", t(0));
    poison["attributes"] = json!({"plan": {"name": "team\u{0}"}, "roles": ["staff"]});
    app.publish(&poison).await;
    app.publish(&login("shop", "after", "bob", t(1))).await;

    let dead = app.next_dead_letter().await;
    assert_eq!(dead.body, poison.to_string().into_bytes());
    assert_eq!(
        dead.error.as_deref(),
        Some("attributes.plan.name: must not contain NUL (U+0000)")
    );
    assert_eq!(
        dead.delivery_count, 0,
        "dead-lettered on its first delivery"
    );
    app.settle().await;
    app.assert_no_dead_letters(QUIET).await;
    assert_eq!(app.active("bob", "shop").await, ["after"]);
    assert_eq!(
        app.states("bob", "shop").await.len(),
        1,
        "no row for the refused event"
    );
    app.expect_revokes(0).await;
}

/// The worker's clock text in a clock-skew reason, checked against the
/// test's own clock.
fn assert_clock_reason(error: &str, occurred_at: &str) {
    let prefix = format!("occurred_at: {occurred_at} is ");
    let suffix = "); limits.max_clock_skew allows 300 s";
    assert!(
        error.starts_with(&prefix) && error.ends_with(suffix),
        "{error}"
    );
    let (_, clock) = error
        .strip_suffix(suffix)
        .unwrap()
        .split_once(" s ahead of this worker's clock (")
        .unwrap_or_else(|| panic!("{error}"));
    let clock: chrono::DateTime<chrono::Utc> = clock.parse().unwrap();
    assert!(
        (chrono::Utc::now() - clock).num_seconds().abs() < 60,
        "{error}"
    );
}

/// Sessions are ranked by event time: a login dated 9999 would hold the
/// user's slot for good, and every real login after it would be revoked.
#[tokio::test]
async fn a_login_far_ahead_of_the_clock_is_dead_lettered_and_holds_no_slot() {
    let mut app = spawn_app().await;
    let mut future = login("shop", "from-9999", "carl", t(0));
    future["occurred_at"] = json!("9999-12-31T00:00:00Z");
    app.publish(&future).await;
    app.publish(&login("shop", "real-1", "carl", t(10))).await;
    app.publish(&login("shop", "real-2", "carl", t(20))).await;

    let dead = app.next_dead_letter().await;
    assert_eq!(dead.body, future.to_string().into_bytes());
    assert_clock_reason(&dead.error.unwrap(), "9999-12-31T00:00:00Z");
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "real-1");
    let states = app.states("carl", "shop").await;
    assert_eq!(states.len(), 2, "no row for the refused login: {states:?}");
    assert_eq!(states["real-1"], SessionState::Revoked);
    assert_eq!(states["real-2"], SessionState::Active);
}

/// A request dated far ahead would become the session's latest event for
/// good: its last-seen time and address would never move again. Ordinary
/// skew (seconds ahead) is applied.
#[tokio::test]
async fn a_request_far_ahead_leaves_the_row_alone_and_a_few_seconds_ahead_is_fine() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "dora", t(0))).await;
    let mut future = request("shop", "s1", "dora", t(0));
    future["occurred_at"] = json!("3000-01-01T00:00:00Z");
    future["ip"] = json!("198.51.100.66");
    app.publish(&future).await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(10)).trunc_subsecs(6);
    let mut ahead = request("shop", "s1", "dora", soon);
    ahead["ip"] = json!("203.0.113.9");
    app.publish(&ahead).await;

    let dead = app.next_dead_letter().await;
    assert_eq!(dead.body, future.to_string().into_bytes());
    assert_clock_reason(&dead.error.unwrap(), "3000-01-01T00:00:00Z");
    app.settle().await;
    app.assert_no_dead_letters(QUIET).await;
    let (last_seen, ip): (chrono::DateTime<chrono::Utc>, Option<String>) =
        sqlx::query_as("SELECT last_seen_at, host(ip) FROM sessions WHERE session_id = 's1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last_seen, soon);
    assert_eq!(ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(app.active("dora", "shop").await, ["s1"]);
}
