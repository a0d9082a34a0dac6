//! retention.log_limit caps each user's ended rows, that user's only.

use crate::helpers::*;

async fn rows_of(app: &TestApp, user: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT session_id FROM sessions WHERE user_id = $1 ORDER BY session_id")
        .bind(user)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_never_touches_another_users_rows() {
    let mut app = spawn_app_with(|s| s.retention.log_limit = Some(2)).await;
    // Bob ends many sessions first, while alice is idle...
    for i in 0..5 {
        app.publish(&login("shop", &format!("b{i}"), "bob", t(i)))
            .await;
        app.publish(&logout(
            "shop",
            &format!("b{i}"),
            t(i) + chrono::Duration::milliseconds(500),
        ))
        .await;
    }
    // ...alice, who ended sessions too, is pruned to her own limit...
    for i in 0..5 {
        app.publish(&login("shop", &format!("a{i}"), "alice", t(10 + i)))
            .await;
    }
    app.settle().await;
    app.expect_revokes(4).await;
    // Alice: 4 revoked, limit 2 keeps the 2 most recently ended + the active one.
    let alice = rows_of(&app, "alice").await;
    assert_eq!(alice.len(), 3, "{alice:?}");
    assert!(
        alice.contains(&"a4".to_owned()),
        "the active session is never pruned"
    );
    // Bob: 5 logged out, capped at 2 of his own, the newest.
    assert_eq!(rows_of(&app, "bob").await, ["b3", "b4"]);

    // Carol was never touched by any pruning of alice's or bob's.
    let mut untouched = spawn_app_with(|s| s.retention.log_limit = None).await;
    for i in 0..4 {
        untouched
            .publish(&login("shop", &format!("c{i}"), "carol", t(i)))
            .await;
    }
    untouched.settle().await;
    untouched.expect_revokes(3).await;
    assert_eq!(
        rows_of(&untouched, "carol").await.len(),
        4,
        "unset keeps all"
    );
}

#[tokio::test]
async fn pruning_one_user_leaves_other_users_ended_rows_alone() {
    // Retention is per user: one user's limit never deletes another's rows.
    let mut app = spawn_app_with(|s| s.retention.log_limit = Some(1)).await;
    for i in 0..3 {
        app.publish(&login("shop", &format!("d{i}"), "dave", t(i)))
            .await;
        app.publish(&logout(
            "shop",
            &format!("d{i}"),
            t(i) + chrono::Duration::milliseconds(100),
        ))
        .await;
    }
    app.settle().await;
    assert_eq!(rows_of(&app, "dave").await, ["d2"]);
    // Now erin logs in and out many times: dave's kept row must survive.
    for i in 0..6 {
        app.publish(&login("shop", &format!("e{i}"), "erin", t(10 + i)))
            .await;
        app.publish(&logout(
            "shop",
            &format!("e{i}"),
            t(10 + i) + chrono::Duration::milliseconds(100),
        ))
        .await;
    }
    app.settle().await;
    assert_eq!(rows_of(&app, "dave").await, ["d2"]);
    assert_eq!(rows_of(&app, "erin").await, ["e5"]);
    app.expect_revokes(0).await;
}

#[tokio::test]
async fn a_pruned_revoked_session_never_comes_back() {
    let mut app = spawn_app_with(|s| {
        s.retention.log_limit = Some(0);
        s.limits.repeat_revoke_after = 0;
    })
    .await;
    app.publish(&login("shop", "s1", "alice", t(0))).await;
    app.publish(&login("shop", "s2", "alice", t(10))).await;
    app.settle().await;
    app.expect_revokes(1).await;
    assert_eq!(
        rows_of(&app, "alice").await,
        ["s2"],
        "log_limit 0 deletes ended rows at once"
    );

    // The app still uses s1: the row is gone, but s1 must not come back as a
    // fresh active session (which would evict s2); its revoke is repeated.
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    app.publish(&request("shop", "s1", "alice", later)).await;
    app.settle().await;
    let repeat = app.expect_revokes(1).await.remove(0);
    assert!(repeat.body.repeat);
    assert_eq!(repeat.body.session_id, "s1");
    assert_eq!(app.active("alice", "shop").await, ["s2"]);
}
