//! session-guard-client's RevocationListener against the real broker and
//! the real worker: typed revokes, one handling per app across instances,
//! retries, dead letters, reconnection, permissions.

use std::time::Duration;

use lapin::BasicProperties;
use session_guard_client::protocol::event::AppName;
use session_guard_client::protocol::revoke::RevokeReason;
use session_guard_client::{ListenerConfig, ListenerError, RevocationListener, Revoke};
use tokio::sync::{mpsc, oneshot};

use crate::helpers::*;
use crate::listening::{AppQueues, AppUser, handled, next_dead_letter, no_more, ready, unique_app};

/// The revocation listener running in a task of the test.
type Running = crate::listening::Running<RevocationListener>;

/// The defaults for `app`, on the test's broker and revocations exchange.
fn config(test: &TestApp, app: &AppName) -> ListenerConfig {
    let mut config = ListenerConfig::new(test.settings.amqp.url.clone(), app.clone());
    config.exchange = test.settings.amqp.revocations_exchange.clone();
    config.max_backoff = Duration::from_millis(500);
    config
}

/// One user logs in twice: the worker revokes the first session.
async fn two_logins(test: &mut TestApp, app: &AppName, user: &str, at: i64) {
    let app = app.as_str();
    test.publish(&login(app, &format!("{user}-a"), user, t(at)))
        .await;
    test.publish(&login(app, &format!("{user}-b"), user, t(at + 1)))
        .await;
}

#[tokio::test]
async fn the_workers_revokes_arrive_typed_through_the_listener() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config, |_| Ok(())).await;

    two_logins(&mut test, &app, "u1", 0).await;
    let got = handled(&mut rx, 1).await;
    let revoke = &got[0].1;
    assert_eq!(revoke.delivery_count, 0);
    let m = &revoke.message;
    assert_eq!(
        (m.app.as_str(), m.session_id.as_str(), m.user_id.as_str()),
        (app.as_str(), "u1-a", "u1")
    );
    assert_eq!(m.reason(), RevokeReason::SessionLimit);
    assert_eq!((m.max_sessions, m.repeat), (1, false));
    assert_eq!(
        test.states("u1", app.as_str()).await["u1-a"],
        SessionState::Revoked
    );

    test.settle().await;
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(test.next_revoke(PATIENCE).await.unwrap().body, *m);
}

#[tokio::test]
async fn two_instances_of_an_app_handle_each_revoke_once() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let mut config = config(&test, &app);
    // One revoke at a time each, so that both instances get work.
    config.prefetch = 1;
    let _queues = AppQueues::of(&config);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = Running::start(config.clone(), 1, tx.clone(), |_| Ok(())).await;
    let second = Running::start(config, 2, tx, |_| Ok(())).await;

    let users = 20;
    for u in 0..users {
        two_logins(&mut test, &app, &format!("u{u}"), u * 10).await;
    }
    let got = handled(&mut rx, users as usize).await;
    test.settle().await;
    no_more(&mut rx).await;

    let mut sessions: Vec<&str> = got
        .iter()
        .map(|(_, r)| r.message.session_id.as_str())
        .collect();
    sessions.sort();
    let mut expected: Vec<String> = (0..users).map(|u| format!("u{u}-a")).collect();
    expected.sort();
    assert_eq!(
        sessions, expected,
        "each revoke once, across both instances"
    );
    let by_first = got.iter().filter(|(n, _)| *n == 1).count();
    assert!(
        by_first > 0 && by_first < got.len(),
        "both instances handled revokes ({by_first} of {} by the first)",
        got.len()
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_handler_that_fails_once_sees_the_revoke_again_then_it_is_acked() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config.clone(), |r| {
        if r.delivery_count == 0 {
            Err("the session store is busy".to_owned())
        } else {
            Ok(())
        }
    })
    .await;

    two_logins(&mut test, &app, "u1", 0).await;
    let got = handled(&mut rx, 2).await;
    let counts: Vec<u32> = got.iter().map(|(_, r)| r.delivery_count).collect();
    assert_eq!(counts, [0, 1]);
    assert_eq!(got[0].1.message, got[1].1.message, "the same revoke again");
    test.settle().await;
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0, "acked");
    assert_eq!(ready(&config.url, &config.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn a_revoke_the_handler_keeps_failing_on_is_dead_lettered_after_max_attempts() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let mut config = config(&test, &app);
    config.max_attempts = 3;
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config.clone(), |_| {
        Err("the session store is down".to_owned())
    })
    .await;

    two_logins(&mut test, &app, "u1", 0).await;
    let got = handled(&mut rx, 3).await;
    let counts: Vec<u32> = got.iter().map(|(_, r)| r.delivery_count).collect();
    assert_eq!(counts, [0, 1, 2]);
    let dead = next_dead_letter(&test, &config).await;
    let body: serde_json::Value = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!(body["session_id"], "u1-a");
    assert_eq!(body["event_id"], got[0].1.message.event_id.to_string());
    assert_eq!(dead.error.as_deref(), Some("the session store is down"));
    assert_eq!(dead.kind.as_deref(), Some("failed"));
    assert_eq!(dead.routing_key, format!("revoke.{}", app.as_str()));
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_a_revoke_is_dead_lettered_at_once() {
    let test = spawn_app().await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;

    test.publish_to(
        &config.exchange,
        &format!("revoke.{}", app.as_str()),
        b"{\"type\": \"revoke\", \"session_id\": 42}",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let dead = next_dead_letter(&test, &config).await;
    assert_eq!(dead.body, b"{\"type\": \"revoke\", \"session_id\": 42}");
    let error = dead.error.unwrap();
    assert!(
        error.starts_with("not a revoke message: invalid type: integer `42`, expected a string"),
        "{error}"
    );
    assert_eq!(dead.kind.as_deref(), Some("invalid"));
    no_more(&mut rx).await;
    listener.stop().await;
}

/// Closes, on the broker, every connection whose client-provided name is
/// `name`. Returns how many it closed.
async fn close_connections_named(name: &str) -> usize {
    let mut closed = 0;
    for pid in connections_named(&format!("\"{name}\"")).await {
        if close_connection(&pid).await {
            closed += 1;
        }
    }
    closed
}

#[tokio::test]
async fn the_listener_reconnects_after_its_connection_is_closed() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;
    two_logins(&mut test, &app, "u1", 0).await;
    assert_eq!(handled(&mut rx, 1).await[0].1.message.session_id, "u1-a");

    let name = format!("session-guard-client listener ({})", config.queue);
    assert_eq!(close_connections_named(&name).await, 1);
    two_logins(&mut test, &app, "u2", 10).await;
    let got = handled(&mut rx, 1).await;
    assert_eq!(got[0].1.message.session_id, "u2-a");
    test.settle().await;
    no_more(&mut rx).await;
    listener.stop().await;
}

#[tokio::test]
async fn connect_refuses_a_queue_declared_with_other_arguments() {
    let test = spawn_app_without_worker(|_| {}).await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    drop(RevocationListener::connect(config.clone()).await.unwrap());
    let err = RevocationListener::connect(ListenerConfig {
        max_attempts: 3,
        ..config.clone()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, ListenerError::QueueMismatch { limit: 2, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    let expected = format!(
        "queue {q} already exists with other arguments (x-delivery-limit 2, \
         x-dead-letter-exchange {q}.dead, quorum): delete it, or set max_attempts as it was (",
        q = config.queue
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("PRECONDITION_FAILED"), "{text}");
}

#[tokio::test]
async fn connect_says_when_the_revocations_exchange_is_missing() {
    let test = spawn_app_without_worker(|_| {}).await;
    let app = unique_app();
    let mut config = config(&test, &app);
    config.exchange = format!("{}.missing", test.settings.amqp.revocations_exchange);
    let _queues = AppQueues::of(&config);
    let err = RevocationListener::connect(config.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "exchange {} does not exist: start session-guard first (it declares it), or set the \
             listener's exchange to the worker's amqp.revocations_exchange",
            config.exchange
        )
    );
}

#[tokio::test]
async fn a_shutdown_hands_the_revokes_already_sent_to_the_handler() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let config = config(&test, &app);
    let _queues = AppQueues::of(&config);
    let listener = RevocationListener::connect(config.clone()).await.unwrap();
    let users = 5;
    for u in 0..users {
        two_logins(&mut test, &app, &format!("u{u}"), u * 10).await;
    }
    // Every revoke is in the app's queue before the listener consumes.
    test.settle().await;
    assert_eq!(ready(&config.url, &config.queue).await, users as u32);

    let (stop, stopped) = oneshot::channel::<()>();
    let mut stop = Some(stop);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = listener.run(
        move |revoke: Revoke| {
            // The first revoke shuts the listener down while the broker has
            // already sent it the others (prefetch 100).
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            let _ = tx.send((1, revoke));
            async { Ok::<(), String>(()) }
        },
        async move {
            let _ = stopped.await;
        },
    );
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run returns after the shutdown")
        .expect("run returns Ok");
    let got = handled(&mut rx, users as usize).await;
    assert!(got.iter().all(|(_, r)| r.delivery_count == 0), "{got:#?}");
    assert_eq!(
        ready(&config.url, &config.queue).await,
        0,
        "nothing given back"
    );
}

#[tokio::test]
async fn the_permissions_security_md_documents_are_enough_for_the_listener() {
    let mut test = spawn_app().await;
    let app = unique_app();
    let user = AppUser::as_documented(&test, &app).await;
    let mut config = config(&test, &app);
    config.url = user.url();
    // Deleted as guest: the app's user may not delete.
    let _queues = AppQueues::of(&ListenerConfig {
        url: test.settings.amqp.url.clone(),
        ..config.clone()
    });
    let (listener, mut rx) = Running::alone(config.clone(), |r| {
        if r.message.session_id == "u2-a" {
            Err("refused on purpose".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    two_logins(&mut test, &app, "u1", 0).await;
    assert_eq!(handled(&mut rx, 1).await[0].1.message.session_id, "u1-a");
    // Dead-lettering publishes to the app's own exchange.
    let mut dead_config = config.clone();
    dead_config.url = test.settings.amqp.url.clone();
    two_logins(&mut test, &app, "u2", 10).await;
    handled(&mut rx, config.max_attempts as usize).await;
    let dead = next_dead_letter(&test, &dead_config).await;
    assert_eq!(dead.error.as_deref(), Some("refused on purpose"));
    listener.stop().await;
}
