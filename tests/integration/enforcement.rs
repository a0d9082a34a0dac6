//! The limit: who gets revoked, in which order, and what apps receive.

use crate::helpers::*;

#[tokio::test]
async fn two_logins_with_limit_one_revoke_the_older() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s-old", "alice", t(0))).await;
    app.publish(&login("shop", "s-new", "alice", t(10))).await;
    app.settle().await;

    let revokes = app.expect_revokes(1).await;
    let r = &revokes[0];
    assert_eq!(r.body.kind, "revoke");
    assert_eq!(r.body.app, "shop");
    assert_eq!(r.body.session_id, "s-old");
    assert_eq!(r.body.user_id, "alice");
    assert_eq!(r.body.reason, "session_limit");
    assert_eq!(r.body.max_sessions, 1);
    assert!(!r.body.repeat);
    assert_eq!(r.routing_key, "revoke.shop");
    assert_eq!(
        r.message_id.as_deref(),
        Some(r.body.event_id.to_string().as_str())
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert!(r.persistent);
    chrono::DateTime::parse_from_rfc3339(&r.body.revoked_at).expect("revoked_at is RFC 3339");

    assert_eq!(app.active("alice", "shop").await, ["s-new"]);
    assert_eq!(
        app.states("alice", "shop").await["s-old"],
        SessionState::Revoked
    );
    let (ip, agent): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT host(ip), user_agent FROM sessions WHERE app = 'shop' AND session_id = 's-old'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(agent.as_deref(), Some("test-agent/1.0"));
}

#[tokio::test]
async fn reverse_arrival_order_gives_the_same_result() {
    let mut app = spawn_app().await;
    // The newer login arrives first; the older one, arriving late, must not
    // evict it: it is revoked itself.
    app.publish(&login("shop", "s-new", "alice", t(10))).await;
    app.publish(&login("shop", "s-old", "alice", t(0))).await;
    app.settle().await;

    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "s-old");
    assert_eq!(app.active("alice", "shop").await, ["s-new"]);
}

#[tokio::test]
async fn duplicate_deliveries_give_one_revoke() {
    let mut app = spawn_app().await;
    let first = login("shop", "s1", "alice", t(0));
    let second = login("shop", "s2", "alice", t(10));
    for event in [&first, &second, &second, &first, &second] {
        app.publish(event).await;
    }
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "s1");
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE end_reason IS NOT NULL AND user_id = 'alice'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(revoked, 1);
}

#[tokio::test]
async fn logout_frees_a_slot() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.publish(&logout("shop", "s1", t(5))).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    let states = app.states("alice", "shop").await;
    assert_eq!(states["s1"], SessionState::LoggedOut);
    assert_eq!(states["s2"], SessionState::Active);
}

#[tokio::test]
async fn a_logout_arriving_before_its_login_keeps_the_session_ended() {
    let mut app = spawn_app().await;
    app.publish(&logout("shop", "s1", t(5))).await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    let states = app.states("alice", "shop").await;
    assert_eq!(states["s1"], SessionState::LoggedOut);
    assert_eq!(states["s2"], SessionState::Active);
}

#[tokio::test]
async fn a_request_for_an_unknown_session_creates_it_and_is_checked() {
    let mut app = spawn_app().await;
    // A session older than the deployment: first heard of through a request.
    app.publish(&request("shop", "legacy", "alice", t(0))).await;
    app.settle().await;
    assert_eq!(app.active("alice", "shop").await, ["legacy"]);
    let (login_seen,): (bool,) =
        sqlx::query_as("SELECT login_seen FROM sessions WHERE session_id = 'legacy'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!login_seen);

    app.publish(&login("shop", "fresh", "alice", t(10))).await;
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "legacy");
    assert_eq!(app.active("alice", "shop").await, ["fresh"]);
}

#[tokio::test]
async fn requests_update_last_seen_ip_and_agent_latest_wins() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    let mut newer = request("shop", "s1", "alice", t(20));
    newer["ip"] = "2001:db8::20".into();
    newer["user_agent"] = "agent-20".into();
    let mut older = request("shop", "s1", "alice", t(10));
    older["ip"] = "2001:db8::10".into();
    app.publish(&newer).await;
    app.publish(&older).await;
    app.settle().await;
    let (last_seen, ip, agent): (chrono::DateTime<chrono::Utc>, String, String) = sqlx::query_as(
        "SELECT last_seen_at, host(ip), user_agent FROM sessions WHERE session_id = 's1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(last_seen, t(20));
    assert_eq!(ip, "2001:db8::20");
    assert_eq!(agent, "agent-20");
}

#[tokio::test]
async fn higher_limits_keep_the_newest_and_zero_is_unlimited() {
    let mut app = spawn_app_with(|s| s.limits.max_sessions = 3).await;
    for i in 0..5 {
        app.publish(&login("shop", &format!("s{i}"), "alice", t(i)))
            .await;
    }
    app.settle().await;
    let mut revoked: Vec<String> = app
        .expect_revokes(2)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.body.max_sessions, 3);
            r.body.session_id
        })
        .collect();
    revoked.sort();
    assert_eq!(revoked, ["s0", "s1"]);
    assert_eq!(app.active("alice", "shop").await, ["s2", "s3", "s4"]);

    let mut unlimited = spawn_app_with(|s| s.limits.max_sessions = 0).await;
    for i in 0..5 {
        unlimited
            .publish(&login("shop", &format!("s{i}"), "alice", t(i)))
            .await;
    }
    unlimited.settle().await;
    unlimited.expect_revokes(0).await;
    assert_eq!(unlimited.active("alice", "shop").await.len(), 5);
}

#[tokio::test]
async fn limits_apply_per_user_and_per_app() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "a1", "alice", t(0))).await;
    app.publish(&login("blog", "a2", "alice", t(1))).await;
    app.publish(&login("shop", "b1", "bob", t(2))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    app.publish(&login("blog", "a3", "alice", t(3))).await;
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "a2");
    assert_eq!(revokes[0].routing_key, "revoke.blog");
    assert_eq!(app.active("alice", "shop").await, ["a1"]);
    assert_eq!(app.active("bob", "shop").await, ["b1"]);
}

#[tokio::test]
async fn expired_sessions_do_not_count() {
    let mut app = spawn_app().await;
    let mut old = login("shop", "s1", "alice", t(0));
    old["expires_at"] = t(5).to_rfc3339().into();
    app.publish(&old).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.settle().await;
    app.expect_revokes(0).await;
    let states = app.states("alice", "shop").await;
    assert_eq!(states["s1"], SessionState::Expired);
    assert_eq!(states["s2"], SessionState::Active);
}

/// Two workers on one queue, logins for many users in a shuffled order: the
/// survivors are each user's newest logins whatever consumer got what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_arrival_order_across_two_consumers_ends_the_same() {
    let mut app = spawn_app_with(|s| s.limits.max_sessions = 2).await;
    // A second worker, same queue, same database.
    let second = session_guard::Worker::builder(app.settings.clone())
        .build()
        .await
        .unwrap();
    let stop = session_guard::shutdown::CancellationToken::new();
    let second = tokio::spawn(second.run(stop.clone().cancelled_owned()));

    let users: usize = 40;
    let per_user: i64 = 5;
    let mut events = Vec::new();
    for u in 0..users {
        for s in 0..per_user {
            events.push(login("shop", &format!("u{u}-s{s}"), &format!("u{u}"), t(s)));
        }
    }
    // A deterministic shuffle (no rand crate needed).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..events.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        events.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    for e in &events {
        app.publish(e).await;
    }
    app.wait_for("every login to be logged", || {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sessions WHERE app = 'shop'")
                .fetch_one(&pool)
                .await
                .unwrap()
                == users as i64 * per_user
        }
    })
    .await;
    app.wait_outbox_empty().await;
    let expected = users * (per_user as usize - 2);
    let revokes = app.expect_revokes(expected).await;
    let mut revoked: Vec<String> = revokes.into_iter().map(|r| r.body.session_id).collect();
    revoked.sort();
    revoked.dedup();
    assert_eq!(revoked.len(), expected, "one revoke per revoked session");
    for u in 0..users {
        assert_eq!(
            app.active(&format!("u{u}"), "shop").await,
            [format!("u{u}-s3"), format!("u{u}-s4")]
        );
    }
    stop.cancel();
    second.await.unwrap().unwrap();
    // Stop the first worker too before the queues are deleted: on this
    // multi-threaded runtime it would otherwise reconnect and re-declare them.
    app.stop_worker().await;
}
