//! The batched path gives exactly the result of event-by-event processing.

use chrono::{SubsecRound as _, TimeZone, Utc};
use serde_json::{Value, json};
use session_guard::apply::{self, Enforcement};
use session_guard::domain::event::SessionEvent;

use crate::helpers::*;

/// A mixed, shuffled stream: logins (some over the limit, some late, some
/// claiming the staff role), requests (some first sightings, some on revoked
/// sessions, some claiming the staff role or nothing), logouts (some before
/// their login), logout_others, for a few dozen users in two apps.
fn stream() -> Vec<Value> {
    let mut seed: u64 = 0x0bad_cafe;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut events = Vec::new();
    for i in 0..1500u64 {
        let user = format!("u{}", next(40));
        let app = ["shop", "blog"][next(2) as usize];
        let session = format!("{user}-{app}-s{}", next(6));
        let at = t(next(600) as i64);
        let event = match next(20) {
            0..=5 => login(app, &session, &user, at),
            6..=15 => {
                // Some requests claim attributes again, or claim none.
                let mut e = request(app, &session, &user, at);
                match next(8) {
                    0 => e["attributes"] = json!({"roles": ["staff"]}),
                    1 => e["attributes"] = json!({}),
                    _ => {}
                }
                e
            }
            16..=17 => logout(app, &session, at),
            18 => {
                let mut e = login(app, &session, &user, at);
                e["type"] = "logout_others".into();
                e
            }
            _ => {
                let mut e = login(app, &session, &user, at);
                e["attributes"] = json!({"roles": ["staff"]});
                e["event_id"] = format!("e{i}").into();
                e
            }
        };
        events.push(event);
    }
    events
}

async fn run(app: &TestApp, batch: usize) -> (Vec<Value>, Vec<Value>) {
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
    let events: Vec<SessionEvent> = stream()
        .iter()
        .map(|e| SessionEvent::decode(e.to_string().as_bytes()).unwrap())
        .collect();
    for chunk in events.chunks(batch) {
        apply::process_batch(&app.pool, &enforcement, chunk, now)
            .await
            .unwrap();
    }
    let sessions: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(s) - 'created_at' FROM sessions s ORDER BY app, session_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Revoke messages without their random event_id.
    let outbox: Vec<Value> = sqlx::query_scalar(
        "SELECT (payload::jsonb - 'event_id') || jsonb_build_object('key', routing_key)
         FROM outbox ORDER BY payload::jsonb ->> 'session_id', payload::jsonb ->> 'repeat'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    (sessions, outbox)
}

#[tokio::test]
async fn batches_give_the_same_result_as_one_event_at_a_time() {
    let configure = |s: &mut session_guard::Settings| {
        s.limits.max_sessions = 2;
        s.limits.max_sessions_global = 3;
        s.limits.repeat_revoke_after = 0;
        s.limits.rules = vec![
            serde_json::from_value(
                json!({"name": "staff", "when": {"role": "staff"}, "max_sessions": 3}),
            )
            .unwrap(),
        ];
    };
    let one_by_one = spawn_app_without_worker(configure).await;
    let batched = spawn_app_without_worker(configure).await;
    let (sessions_a, outbox_a) = run(&one_by_one, 1).await;
    let (sessions_b, outbox_b) = run(&batched, 500).await;
    assert!(sessions_a.len() > 100, "the stream makes many sessions");
    assert!(
        sessions_a
            .iter()
            .filter(|s| s["end_reason"] == "session_limit")
            .count()
            > 20,
        "and revokes many"
    );
    assert_eq!(sessions_a.len(), sessions_b.len());
    for (a, b) in sessions_a.iter().zip(&sessions_b) {
        assert_eq!(a, b);
    }
    assert_eq!(outbox_a, outbox_b);
}

/// Requests on a live session take no lock, and a `last_seen_at` that moved
/// by less than the resolution is not written; anything else is.
#[tokio::test]
async fn requests_touch_without_locks_and_small_moves_are_not_written() {
    let app = spawn_app_without_worker(|_| {}).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    assert_eq!(
        enforcement.last_seen_resolution,
        std::time::Duration::from_secs(1)
    );
    let ms = |n: i64| t(0) + chrono::Duration::milliseconds(n);
    let apply = |e: Value| apply_one(&app.pool, &enforcement, e);
    let last_seen = || async {
        sqlx::query_as::<_, (chrono::DateTime<Utc>, Option<String>)>(
            "SELECT last_seen_at, host(ip) FROM sessions WHERE session_id = 's1'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };

    let outcome = apply(login("shop", "s1", "u1", ms(0))).await;
    assert_eq!(outcome.locked_users, 1, "a login locks its user");
    let outcome = apply(request("shop", "s1", "u1", ms(200))).await;
    assert_eq!(
        (outcome.locked_users, outcome.coalesced, outcome.touched),
        (0, 1, 0)
    );
    assert_eq!(last_seen().await.0, ms(0), "a 200 ms move is not written");

    let outcome = apply(request("shop", "s1", "u1", ms(1500))).await;
    assert_eq!(
        (outcome.locked_users, outcome.coalesced, outcome.touched),
        (0, 0, 1)
    );
    assert_eq!(last_seen().await.0, ms(1500));

    let mut moved = request("shop", "s1", "u1", ms(1600));
    moved["ip"] = "198.51.100.7".into();
    let outcome = apply(moved).await;
    assert_eq!(
        outcome.touched, 1,
        "a new ip is written however small the move"
    );
    assert_eq!(
        last_seen().await,
        (ms(1600), Some("198.51.100.7".to_owned()))
    );

    // An older request arriving late changes nothing.
    let outcome = apply(request("shop", "s1", "u1", ms(100))).await;
    assert_eq!(outcome.touched + outcome.coalesced, 0);
    assert_eq!(last_seen().await.0, ms(1600));
}

/// A request on an ended session of its own user cannot bring it back, so
/// it takes no lock either: it only moves the row's activity, in the
/// lock-free touch. One that repeats a revoke locks its user, so that the
/// pause between repeats holds whoever sees the requests.
#[tokio::test]
async fn requests_on_ended_sessions_touch_without_locks_unless_they_repeat_the_revoke() {
    let app = spawn_app_without_worker(|s| s.limits.repeat_revoke_after = 0).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let apply = |e: Value| apply_one(&app.pool, &enforcement, e);
    let row = |session: &'static str| {
        let pool = &app.pool;
        async move {
            sqlx::query_as::<_, (chrono::DateTime<Utc>, Option<chrono::DateTime<Utc>>, String)>(
                "SELECT last_seen_at, last_revoke_at, end_reason FROM sessions
                 WHERE session_id = $1",
            )
            .bind(session)
            .fetch_one(pool)
            .await
            .unwrap()
        }
    };
    apply(login("shop", "s1", "u1", t(0))).await;
    let outcome = apply(login("shop", "s2", "u1", t(10))).await;
    assert_eq!(outcome.revoked(), 1, "s1 is revoked");
    let (_, revoked_once, reason) = row("s1").await;
    assert_eq!(reason, "session_limit");
    apply(login("shop", "s3", "u2", t(0))).await;
    apply(logout("shop", "s3", t(5))).await;
    let outbox_before = app.outbox_len().await;
    // A revocation is dated by the worker's clock: the app's later requests
    // come after it.
    let later = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);
    let after = |secs: i64| later + chrono::Duration::seconds(secs);

    // The app keeps using the revoked s1: the revoke is repeated, under
    // u1's lock, in the batch's first pass.
    let outcome = apply(request("shop", "s1", "u1", after(0))).await;
    assert_eq!(
        (outcome.locked_users, outcome.relocks, outcome.repeated),
        (1, 0, 1)
    );
    assert_eq!(app.outbox_len().await, outbox_before + 1);
    let (seen, revoked_again, reason) = row("s1").await;
    assert_eq!((seen, reason.as_str()), (after(0), "session_limit"));
    assert!(revoked_again > revoked_once, "the repeat's time is written");

    // A redelivery of that request says nothing new: no second repeat, and
    // no lock.
    let outcome = apply(request("shop", "s1", "u1", after(0))).await;
    assert_eq!((outcome.locked_users, outcome.repeated), (0, 0));
    assert_eq!(app.outbox_len().await, outbox_before + 1);

    // A request on a logged-out session only moves its activity.
    let outcome = apply(request("shop", "s3", "u2", after(1))).await;
    assert_eq!(
        (outcome.locked_users, outcome.touched, outcome.repeated),
        (0, 1, 0)
    );
    assert_eq!(row("s3").await.0, after(1));
    assert_eq!(app.outbox_len().await, outbox_before + 1);

    // Someone else's request on u1's ended session is not a touch.
    let outcome = apply(request("shop", "s1", "u9", after(2))).await;
    assert!(outcome.locked_users >= 1, "it locks its user");
    assert_eq!(app.active("u1", "shop").await, ["s2"]);
}

/// A user whose lock row the batch creates had no sessions, so the batch
/// does not read them again after the lock; its new rows go in only if
/// their keys are still free. Here a logout that did not name its user
/// stores the same session between the batch's read and its insert: the
/// batch runs again, reads that row, and keeps the session ended.
#[tokio::test]
async fn a_new_users_session_stored_meanwhile_sends_the_batch_round_again() {
    let app = spawn_app_without_worker(|_| {}).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let mut other = app.pool.begin().await.unwrap();
    // The logout's row, not committed yet: the batch's read cannot see it.
    sqlx::query(
        "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at,
                               ended_at, end_reason)
         VALUES ('shop', 'k1', NULL, $1, false, $1, $1, 'logout')",
    )
    .bind(t(5))
    .execute(&mut *other)
    .await
    .unwrap();
    // And u1's lock row, in a savepoint: the batch waits for it at its lock.
    sqlx::query("SAVEPOINT held")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("INSERT INTO session_users (user_id) VALUES ('u1')")
        .execute(&mut *other)
        .await
        .unwrap();

    let event =
        SessionEvent::decode(request("shop", "k1", "u1", t(10)).to_string().as_bytes()).unwrap();
    let batch = {
        let pool = app.pool.clone();
        tokio::spawn(async move {
            apply::process_batch(&pool, &enforcement, &[event], Utc::now()).await
        })
    };
    app.wait_for_lock_wait("the batch to wait for u1's lock")
        .await;
    // The lock row goes away, so the batch creates it (and skips the read
    // again); then the logout commits before or while the batch inserts.
    sqlx::query("ROLLBACK TO SAVEPOINT held")
        .execute(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();

    let outcome = batch.await.unwrap().unwrap();
    assert_eq!(outcome.relocks, 1, "the insert found the key taken");
    let (user, reason): (Option<String>, String) =
        sqlx::query_as("SELECT user_id, end_reason FROM sessions WHERE session_id = 'k1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (user.as_deref(), reason.as_str()),
        (Some("u1"), "logout"),
        "the request names the owner of the ended session, which stays ended"
    );
    assert!(app.active("u1", "shop").await.is_empty());
}

/// The operator's override of a user the batch learns of only after taking
/// its locks (the owner of the session a logout without user names, whose
/// login committed meanwhile) applies: it is read then, since the read
/// before the locks could not name the user.
#[tokio::test]
async fn the_override_of_an_owner_found_after_the_locks_applies() {
    let app = spawn_app_without_worker(|_| {}).await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    // ann keeps one ended session in her log, by an operator's override
    // (the configuration keeps every one).
    let one = session_guard::domain::limits::UserOverride {
        log_limit: Some(1),
        ..Default::default()
    };
    session_guard::db::overrides::set_override(&app.pool, "ann", None, &one, "test")
        .await
        .unwrap();
    apply_one(&app.pool, &enforcement, login("shop", "old", "ann", t(1))).await;
    apply_one(&app.pool, &enforcement, logout("shop", "old", t(2))).await;

    let mut other = app.pool.begin().await.unwrap();
    // ann's new session, not committed yet: the batch's first read cannot
    // see it, so its logout names no known user.
    sqlx::query(
        "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at)
         VALUES ('shop', 'k1', 'ann', $1, true, $1)",
    )
    .bind(t(5))
    .execute(&mut *other)
    .await
    .unwrap();
    // And bob's lock row: the batch waits for it at its lock, until both
    // commit together.
    sqlx::query("INSERT INTO session_users (user_id) VALUES ('bob')")
        .execute(&mut *other)
        .await
        .unwrap();

    let events = [
        logout("shop", "k1", t(10)),
        login("shop", "b1", "bob", t(10)),
    ]
    .map(|e| SessionEvent::decode(e.to_string().as_bytes()).unwrap());
    let batch = {
        let pool = app.pool.clone();
        tokio::spawn(
            async move { apply::process_batch(&pool, &enforcement, &events, Utc::now()).await },
        )
    };
    app.wait_for_lock_wait("the batch to wait for bob's lock")
        .await;
    // ann's login commits while the batch waits.
    other.commit().await.unwrap();

    let outcome = batch.await.unwrap().unwrap();
    // The logout ended k1 under ann's lock, and her override pruned the
    // older of her two ended sessions.
    assert_eq!(outcome.pruned, 1);
    let logged: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT session_id, end_reason FROM sessions WHERE user_id = 'ann' ORDER BY session_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(logged, [("k1".to_owned(), Some("logout".to_owned()))]);
    let pruned: Vec<String> =
        sqlx::query_scalar("SELECT session_id FROM session_tombstones WHERE user_id = 'ann'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(pruned, ["old"]);
}
