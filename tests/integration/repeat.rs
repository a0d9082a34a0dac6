//! A revoked session never comes back, and an app that keeps using one hears
//! about it again, at most once per `repeat_revoke_after`.

use chrono::Utc;

use crate::helpers::*;

/// Logs in s1 then s2, so s1 is revoked; returns the first revoke.
async fn revoke_s1(app: &mut TestApp) -> Revoke {
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.settle().await;
    let first = app.expect_revokes(1).await.remove(0);
    assert_eq!(first.body.session_id, "s1");
    first
}

#[tokio::test]
async fn a_request_after_the_revocation_repeats_the_revoke_once_per_pause() {
    let mut app = spawn_app_with(|s| s.limits.repeat_revoke_after = 2).await;
    let first = revoke_s1(&mut app).await;

    // Within the pause after the first revoke, a request repeats nothing...
    app.publish(&request("shop", "s1", "alice", Utc::now()))
        .await;
    app.settle().await;
    app.expect_revokes(0).await;

    // ...after it, the app evidently missed the revoke: it is sent again.
    // The pause is wall-clock time on the worker: letting it pass is the
    // point.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let later = Utc::now();
    app.publish(&request("shop", "s1", "alice", later)).await;
    app.settle().await;
    let repeat = app.expect_revokes(1).await.remove(0);
    assert!(repeat.body.repeat);
    assert_eq!(repeat.body.session_id, "s1");
    assert_eq!(repeat.body.reason, "session_limit");
    assert_ne!(
        repeat.body.event_id, first.body.event_id,
        "a repeat is a new message"
    );
    assert_eq!(
        repeat.body.revoked_at, first.body.revoked_at,
        "same revocation"
    );

    // More requests within the pause: no flood.
    for i in 2..6 {
        app.publish(&request(
            "shop",
            "s1",
            "alice",
            later + chrono::Duration::seconds(i),
        ))
        .await;
    }
    app.settle().await;
    app.expect_revokes(0).await;
    // And the session is still revoked, never active again.
    assert_eq!(
        app.states("alice", "shop").await["s1"],
        SessionState::Revoked
    );
    assert_eq!(app.active("alice", "shop").await, ["s2"]);
}

#[tokio::test]
async fn with_no_pause_every_newer_request_repeats_but_redeliveries_do_not() {
    let mut app = spawn_app_with(|s| s.limits.repeat_revoke_after = 0).await;
    revoke_s1(&mut app).await;
    let later = Utc::now() + chrono::Duration::seconds(1);
    let r1 = request("shop", "s1", "alice", later);
    let r2 = request("shop", "s1", "alice", later + chrono::Duration::seconds(1));
    app.publish(&r1).await;
    app.publish(&r1).await; // a redelivery of the same request
    app.publish(&r2).await;
    app.settle().await;
    let repeats = app.expect_revokes(2).await;
    assert!(repeats.iter().all(|r| r.body.repeat));
    assert_ne!(repeats[0].body.event_id, repeats[1].body.event_id);
}

#[tokio::test]
async fn requests_from_before_the_revocation_do_not_repeat() {
    let mut app = spawn_app_with(|s| s.limits.repeat_revoke_after = 0).await;
    revoke_s1(&mut app).await;
    // In flight when the revoke was decided: the app could not know yet.
    app.publish(&request("shop", "s1", "alice", t(20))).await;
    app.settle().await;
    app.expect_revokes(0).await;
}
