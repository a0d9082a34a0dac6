//! The Rust client's `SessionsApi` (feature `api`) against a real worker
//! serving the sessions API, with PostgreSQL and RabbitMQ: what it lists is
//! what was published, a revoke through it reaches the app's revocation
//! queue with reason `user`, limits round-trip, and every refusal comes back
//! as a typed problem.

use std::time::Duration;

use futures::TryStreamExt;
use session_guard_client::api::{
    ApiConfig, ApiError, LimitsOverride, ListOptions, ProblemKind, SessionsApi, StateFilter,
};
use session_guard_client::protocol::api::{DeviceKind, SessionState};

use crate::api::{DESKTOP, PHONE, create_token, login_from, spawn_api};
use crate::helpers::*;

fn client(base: &str, token: &str) -> SessionsApi {
    SessionsApi::new(ApiConfig::new(base, token).unwrap()).unwrap()
}

/// The problem kind of a failed call; panics on success or a transport error.
fn kind_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (ProblemKind, u16) {
    match result {
        Err(ApiError::Problem(p)) => (p.kind(), p.status),
        other => panic!("expected a problem, got {other:?}"),
    }
}

#[tokio::test]
async fn the_client_lists_what_was_published_and_revokes_with_reason_user() {
    let (mut app, api) = spawn_api().await;
    let all = create_token(&app, "console", "*", "sessions:read,sessions:revoke").await;
    let shop = create_token(&app, "shop-app", "shop", "sessions:read,sessions:revoke").await;
    app.publish(&login_from("shop", "sid-a", "u1", 1, DESKTOP))
        .await;
    app.publish(&login_from("shop", "sid-b", "u1", 2, PHONE))
        .await;
    app.publish(&login_from("shop", "sid-c", "u1", 3, DESKTOP))
        .await;
    app.publish(&login_from("blog", "sid-d", "u1", 4, PHONE))
        .await;
    app.publish(&login_from("shop", "sid-e", "u2", 5, DESKTOP))
        .await;
    app.settle().await;
    let console = client(&api.base, &all);
    let shop_api = client(&api.base, &shop);

    // Every page, two at a time: the user's four logins, newest first.
    let options = ListOptions {
        limit: Some(2),
        ..ListOptions::default()
    };
    let first = console.list_sessions("u1", &options).await.unwrap();
    assert_eq!(first.sessions.len(), 2);
    assert!(first.next_cursor.is_some());
    let sessions = console.all_sessions("u1", options).await.unwrap();
    let apps: Vec<&str> = sessions.iter().map(|s| s.app.as_str()).collect();
    assert_eq!(apps, ["blog", "shop", "shop", "shop"]);
    let logins: Vec<_> = sessions.iter().map(|s| s.login_at).collect();
    assert_eq!(logins, [t(4), t(3), t(2), t(1)]);
    assert!(sessions.iter().all(|s| s.state == SessionState::Active));
    assert_eq!(sessions[0].device.kind, DeviceKind::Phone);
    assert_eq!(sessions[1].device.browser.as_deref(), Some("Chrome"));
    assert_eq!(sessions[0].ip.as_deref(), Some("192.0.2.10"));
    let handles: Vec<String> = sessions.iter().map(|s| s.handle.clone()).collect();
    let [h_d, h_c, h_b, h_a] = <[String; 4]>::try_from(handles).unwrap();

    // The shop's token sees the shop's only; the caller's own is marked.
    let mine = shop_api
        .list_sessions(
            "u1",
            &ListOptions {
                current_session: Some("sid-b".into()),
                current_app: Some("shop".into()),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap();
    let seen: Vec<(&str, bool)> = mine
        .sessions
        .iter()
        .map(|s| (s.handle.as_str(), s.current))
        .collect();
    assert_eq!(
        seen,
        [
            (h_c.as_str(), false),
            (h_b.as_str(), true),
            (h_a.as_str(), false)
        ]
    );
    let blog_for_shop = shop_api
        .list_sessions(
            "u1",
            &ListOptions {
                apps: vec!["blog".into()],
                ..ListOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(blog_for_shop.sessions.is_empty());

    // One revoke: the shop's queue gets it, reason `user`, with the note.
    let done = shop_api
        .revoke_session(&h_b, Some("lost phone"))
        .await
        .unwrap();
    assert_eq!(done.revoked, std::slice::from_ref(&h_b));
    let now = done.session.expect("the session as it stands");
    assert_eq!(now.state, SessionState::Ended);
    assert_eq!(now.end_reason.as_deref(), Some("user"));
    assert_eq!(now.ended_by.as_deref(), Some("token:shop-app"));
    let revoke = app
        .next_revoke(Duration::from_secs(10))
        .await
        .expect("a revoke on the app's queue");
    assert_eq!(revoke.body.reason, "user");
    assert_eq!(revoke.body.session_id, "sid-b");
    assert_eq!(revoke.body.app, "shop");
    assert_eq!(revoke.body.note.as_deref(), Some("lost phone"));
    assert_eq!(revoke.routing_key, "revoke.shop");

    // Again: nothing revoked, nothing sent.
    let again = shop_api.revoke_session(&h_b, None).await.unwrap();
    assert!(again.revoked.is_empty());
    assert_eq!(again.session.unwrap().end_reason.as_deref(), Some("user"));
    app.settle().await;
    assert!(
        app.drain_revokes(Duration::from_millis(500))
            .await
            .is_empty()
    );
    let ended: Vec<String> = console
        .sessions(
            "u1",
            ListOptions {
                state: StateFilter::Ended,
                ..ListOptions::default()
            },
        )
        .map_ok(|s| s.handle)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ended, std::slice::from_ref(&h_b));

    // Everywhere else, in the shop only: a's revoke; blog's d stays.
    let rest = console
        .revoke_user_sessions("u1", Some(&h_c), Some(&["shop"]), Some("elsewhere"))
        .await
        .unwrap();
    assert_eq!(rest.revoked, std::slice::from_ref(&h_a));
    let sent = app.expect_revokes(1).await;
    assert_eq!(sent[0].body.session_id, "sid-a");
    assert_eq!(sent[0].body.reason, "user");
    let active: Vec<String> = console
        .all_sessions("u1", ListOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.handle)
        .collect();
    assert_eq!(active, [h_d, h_c]);
}

#[tokio::test]
async fn refusals_come_back_as_typed_problems_and_limits_round_trip() {
    let (mut app, api) = spawn_api().await;
    let shop = create_token(
        &app,
        "shop",
        "shop",
        "sessions:read,sessions:revoke,limits:read,limits:write",
    )
    .await;
    let blog = create_token(&app, "blog", "blog", "sessions:read,sessions:revoke").await;
    let reader = create_token(&app, "reader", "*", "sessions:read").await;
    app.publish(&login_from("shop", "sid-1", "u1", 1, DESKTOP))
        .await;
    app.settle().await;
    let shop_api = client(&api.base, &shop);
    let handle = shop_api
        .list_sessions("u1", &ListOptions::default())
        .await
        .unwrap()
        .sessions
        .remove(0)
        .handle;

    // Another app's session does not exist for a token: 404.
    let foreign = client(&api.base, &blog).revoke_session(&handle, None).await;
    assert_eq!(kind_of(foreign), (ProblemKind::NotFound, 404));
    let mut tampered = handle.clone();
    tampered.push('A');
    let tampered = shop_api.revoke_session(&tampered, None).await;
    assert_eq!(kind_of(tampered), (ProblemKind::NotFound, 404));
    // A bad token: 401. A missing scope: 403.
    let bad = client(&api.base, "sgt_not-a-token")
        .list_sessions("u1", &ListOptions::default())
        .await;
    assert_eq!(kind_of(bad), (ProblemKind::Unauthorized, 401));
    let read_only = client(&api.base, &reader)
        .revoke_session(&handle, None)
        .await;
    assert_eq!(kind_of(read_only), (ProblemKind::ForbiddenScope, 403));
    // Bad input: 400.
    let too_many = shop_api
        .list_sessions(
            "u1",
            &ListOptions {
                limit: Some(101),
                ..ListOptions::default()
            },
        )
        .await;
    assert_eq!(kind_of(too_many), (ProblemKind::InvalidInput, 400));
    // None of it ended the session, nor sent anything.
    assert!(
        app.drain_revokes(Duration::from_millis(500))
            .await
            .is_empty()
    );
    let still = shop_api
        .list_sessions("u1", &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(still.sessions.len(), 1);

    // Limits: set, read back as the API shows them, clear, clear again.
    let set = LimitsOverride {
        max_sessions: Some(4),
        policy: Some("evict_idle".into()),
        ..LimitsOverride::default()
    };
    shop_api.set_limits("u1", Some("shop"), &set).await.unwrap();
    let view = shop_api.limits("u1", "shop").await.unwrap();
    assert_eq!(view.limits.max_sessions, 4);
    assert_eq!(view.limits.policy, "evict_idle");
    assert_eq!((view.user_id.as_str(), view.app.as_str()), ("u1", "shop"));
    shop_api.clear_limits("u1", Some("shop")).await.unwrap();
    let cleared = shop_api.clear_limits("u1", Some("shop")).await;
    assert_eq!(kind_of(cleared), (ProblemKind::NotFound, 404));
    assert_eq!(
        shop_api
            .limits("u1", "shop")
            .await
            .unwrap()
            .set_by
            .max_sessions,
        "config"
    );

    // Nothing listening: a transport error, quickly, with no URL in it.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let config = ApiConfig::new(&nowhere, &shop)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let down = SessionsApi::new(config)
        .unwrap()
        .list_sessions(
            "u1",
            &ListOptions {
                current_session: Some("sid-1".into()),
                ..ListOptions::default()
            },
        )
        .await;
    match down {
        Err(error @ ApiError::Transport(_)) => {
            let text = format!("{error} {error:?}");
            assert!(!text.contains("sid-1"), "{text}");
            assert!(!text.contains(&shop), "{text}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}
