//! Faults injected against the real services: broker connections dropped,
//! the database cut off, workers killed mid-stream, shutdown under load, and
//! three worker processes on one queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::private_broker::PrivateBroker;

/// A deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Checks the revokes received: every session in `expected` got at least
/// one, nothing else got any, and all copies for one session share their
/// event_id (a re-send after a fault, never a second revocation).
fn check_revokes(revokes: &[Revoke], expected: &BTreeSet<String>) -> usize {
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in revokes {
        assert!(!r.body.repeat, "no repeat expected here: {r:?}");
        ids.entry(r.body.session_id.clone())
            .or_default()
            .insert(r.body.event_id.to_string());
    }
    let got: BTreeSet<String> = ids.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(expected).collect();
    assert!(
        missing.is_empty(),
        "sessions revoked without a revoke event: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "revoke events for sessions that should stay: {extra:?}"
    );
    for (session, event_ids) in &ids {
        assert_eq!(
            event_ids.len(),
            1,
            "{session} was revoked more than once: {event_ids:?}"
        );
    }
    revokes.len() - ids.len()
}

async fn wait_logged(app: &TestApp, shop: &str, n: i64) {
    app.wait_for(&format!("{n} sessions in the log"), || async move {
        app.logged(shop).await == n
    })
    .await;
}

/// Starts a fresh worker process, lets it finish the stream of
/// `logins(users, per_user, _)`, and checks that exactly every login but
/// each user's newest was revoked, once each.
async fn restart_and_check_revokes(app: &mut TestApp, users: usize, per_user: i64) {
    app.spawn_process();
    wait_logged(app, "shop", users as i64 * per_user).await;
    app.wait_outbox_empty().await;
    let revokes = app.drain_revokes(Duration::from_secs(2)).await;
    let expected: BTreeSet<String> = (0..users)
        .flat_map(|u| (0..per_user - 1).map(move |i| format!("u{u}-s{i}")))
        .collect();
    check_revokes(&revokes, &expected);
}

#[tokio::test]
async fn dropped_broker_connections_lose_nothing() {
    let mut app = spawn_app().await;
    let users = 60;
    let mut expected = BTreeSet::new();
    for u in 0..users {
        app.publish(&login("shop", &format!("u{u}-old"), &format!("u{u}"), t(0)))
            .await;
        app.publish(&login("shop", &format!("u{u}-new"), &format!("u{u}"), t(1)))
            .await;
        expected.insert(format!("u{u}-old"));
        if u % 20 == 10 {
            // Drop the worker's consumer and relay connections mid-stream.
            let (mut consumers, mut relays) = (0, 0);
            let deadline = Instant::now() + PATIENCE;
            while consumers == 0 || relays == 0 {
                assert!(Instant::now() < deadline, "the worker never reconnected");
                let (c, r) = app.close_worker_connections().await;
                consumers += c;
                relays += r;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    wait_logged(&app, "shop", users as i64 * 2).await;
    app.wait_outbox_empty().await;
    let revokes = app.drain_revokes(Duration::from_secs(2)).await;
    let duplicates = check_revokes(&revokes, &expected);
    assert!(
        duplicates <= 5,
        "{duplicates} re-sends for a few dropped connections"
    );
    for u in 0..users {
        assert_eq!(
            app.active(&format!("u{u}"), "shop").await,
            [format!("u{u}-new")]
        );
    }
    assert!(app.health.as_ref().unwrap().ready().is_ok(), "ready again");
}

#[tokio::test]
async fn a_database_outage_stops_acks_and_the_worker_catches_up() {
    let mut app = spawn_app().await;
    app.publish(&login("shop", "before", "ann", t(0))).await;
    app.settle().await;
    let health = app.health.clone().unwrap();
    assert!(health.ready().is_ok(), "{:?}", health.ready());

    app.cut_database().await;
    for u in 0..20 {
        app.publish(&login("shop", &format!("u{u}-a"), &format!("u{u}"), t(1)))
            .await;
        app.publish(&login("shop", &format!("u{u}-b"), &format!("u{u}"), t(2)))
            .await;
    }
    app.wait_for("readiness to report the outage", || {
        let health = health.clone();
        async move {
            health
                .ready()
                .is_err_and(|why| why.contains("database unavailable"))
        }
    })
    .await;
    // Nothing could be committed, so nothing may have been acked: the
    // events are all still in the queue (ready, or held unacked by the
    // worker), and none was dead-lettered.
    // (RabbitMQ refreshes queue statistics every few seconds: poll.)
    app.wait_for("the 40 events to show in the queue", || async {
        app.events_in_queue().await == 40
    })
    .await;
    // Not a wait for anything: the point is that it stays so while the
    // worker keeps retrying (its backoff is capped at 1 s here), which is
    // when an ack without a commit would show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.events_in_queue().await,
        40,
        "an event was acked without a commit"
    );
    app.assert_no_dead_letters(Duration::from_millis(500)).await;

    app.restore_database().await;
    app.settle().await;
    let revokes = app.expect_revokes(20).await;
    let expected: BTreeSet<String> = (0..20).map(|u| format!("u{u}-a")).collect();
    check_revokes(&revokes, &expected);
    assert!(health.ready().is_ok());
    assert_eq!(app.active("ann", "shop").await, ["before"]);
}

/// Logins for `users` users, `per_user` each, session `u{u}-s{i}` at t(i).
fn logins(users: usize, per_user: i64, seed: u64) -> Vec<Value> {
    let mut events = Vec::new();
    for u in 0..users {
        for i in 0..per_user {
            events.push(login("shop", &format!("u{u}-s{i}"), &format!("u{u}"), t(i)));
        }
    }
    shuffle(&mut events, seed);
    events
}

#[tokio::test]
async fn sigkill_mid_stream_then_restart_ends_as_an_uninterrupted_run() {
    let mut app = spawn_app_without_worker(|_| {}).await;
    let (users, per_user) = (500, 6);
    for e in logins(users, per_user, 7) {
        app.publish(&e).await;
    }
    let first = app.spawn_process();
    let total = (users as i64) * per_user;
    // As soon as the first batch is committed: the worker is busy, with
    // deliveries in hand.
    app.wait_for("the stream to be under way", || async {
        app.logged("shop").await > 0
    })
    .await;
    app.kill_process(first).await;
    let done_at_kill = app.logged("shop").await;
    assert!(done_at_kill < total, "killed too late to mean anything");

    restart_and_check_revokes(&mut app, users, per_user).await;
    for u in 0..users {
        assert_eq!(
            app.active(&format!("u{u}"), "shop").await,
            [format!("u{u}-s{}", per_user - 1)]
        );
    }
    app.assert_no_dead_letters(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn graceful_shutdown_under_load_is_bounded_and_loses_nothing() {
    // The bound is generous: CI runs every test at once on two cores, and a
    // debug build finishing up to `prefetch` in-flight events there can be
    // slow. What matters is that it is bounded and that it finishes.
    let mut app = spawn_app_without_worker(|s| s.worker.shutdown_timeout = 60).await;
    let (users, per_user) = (500, 5);
    for e in logins(users, per_user, 11) {
        app.publish(&e).await;
    }
    let worker = app.spawn_process();
    app.wait_for("the worker to be busy", || async {
        app.logged("shop").await > 0
    })
    .await;
    let started = Instant::now();
    assert_eq!(app.terminate_process(worker).await, Some(0));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "shutdown took {took:?}");
    // It finished gracefully: whatever it committed has its revokes out (no
    // worker runs now, so the outbox must already be empty).
    assert_eq!(
        app.outbox_len().await,
        0,
        "revokes left in the outbox after a graceful shutdown that took {took:?}"
    );

    restart_and_check_revokes(&mut app, users, per_user).await;
}

/// The horizontal-scaling promise: three worker processes on one queue,
/// conflicting logins for hundreds of users in a shuffled order, then
/// requests, then logouts; a second round kills one worker mid-stream.
#[tokio::test]
async fn three_workers_agree_with_the_rules_even_when_one_is_killed() {
    for (round, kill) in [(0u64, false), (1, true)] {
        let mut app = spawn_app_without_worker(|s| s.limits.max_sessions = 2).await;
        let workers: Vec<usize> = (0..3).map(|_| app.spawn_process()).collect();
        // All three consuming before the stream, so they share it.
        app.wait_for("three consumers on the events queue", || async {
            app.events_queue_consumers().await == 3
        })
        .await;
        let (users, per_user) = (200usize, 5i64);
        let total = users as i64 * per_user;

        // Logins, shuffled; one worker killed (busy, holding deliveries)
        // and restarted while the stream is still being published.
        let events = logins(users, per_user, 1000 + round);
        for (n, e) in events.iter().enumerate() {
            app.publish(e).await;
            if kill && n == events.len() / 2 {
                app.kill_process(workers[1]).await;
                app.spawn_process();
            }
        }
        wait_logged(&app, "shop", total).await;

        // Requests for every session (revoked ones included: within the
        // repeat pause, they must not bring anything back).
        let mut requests = Vec::new();
        for u in 0..users {
            for i in 0..per_user {
                requests.push(request(
                    "shop",
                    &format!("u{u}-s{i}"),
                    &format!("u{u}"),
                    t(100 + i),
                ));
            }
        }
        shuffle(&mut requests, 77 + round);
        for e in &requests {
            app.publish(e).await;
        }
        // Then every fourth user logs out of their newest session.
        for u in (0..users).step_by(4) {
            app.publish(&logout("shop", &format!("u{u}-s{}", per_user - 1), t(200)))
                .await;
        }
        let logged_out = users.div_ceil(4) as i64;
        app.wait_for("the logouts", || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sessions WHERE app = 'shop' AND end_reason = 'logout'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap()
                == logged_out
        })
        .await;
        // Every request processed too: each session's last event is its request.
        app.wait_for("the requests", || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sessions WHERE app = 'shop' AND last_seen_at >= $1",
            )
            .bind(t(100))
            .fetch_one(&app.pool)
            .await
            .unwrap()
                == total
        })
        .await;
        app.wait_outbox_empty().await;

        let revokes = app.drain_revokes(Duration::from_secs(2)).await;
        let expected: BTreeSet<String> = (0..users)
            .flat_map(|u| (0..per_user - 2).map(move |i| format!("u{u}-s{i}")))
            .collect();
        let resent = check_revokes(&revokes, &expected);
        for u in 0..users {
            let mut want: Vec<String> = (per_user - 2..per_user)
                .map(|i| format!("u{u}-s{i}"))
                .collect();
            if u % 4 == 0 {
                want.pop();
            }
            let active = app.active(&format!("u{u}"), "shop").await;
            assert_eq!(active, want, "round {round}, user u{u}");
            assert!(active.len() <= 2);
        }
        // No deadlock or serialization failure surfaced as a failed event.
        app.assert_no_dead_letters(Duration::from_millis(500)).await;
        eprintln!("round {round}: {} revokes, {resent} re-sent", revokes.len());
    }
}

/// A message that keeps killing workers (here: delivered and returned to the
/// queue, as a crash would) is dead-lettered by the broker after
/// `amqp.max_redeliveries`, thanks to the queue's `x-delivery-limit`.
#[tokio::test]
async fn the_queue_dead_letters_a_message_that_keeps_coming_back() {
    let mut app = spawn_app_without_worker(|s| s.amqp.max_redeliveries = 2).await;
    let event = login("shop", "crasher", "cy", t(0));
    app.publish(&event).await;
    let channel = app.publisher.clone();
    let queue = app.settings.amqp.events_queue.clone();
    let mut deliveries = 0;
    let deadline = Instant::now() + PATIENCE;
    // A message returned with a nack is either back in the queue or, over
    // the limit, in the dead-letter queue: take whichever shows first.
    let dead = loop {
        assert!(Instant::now() < deadline, "the message went nowhere");
        let got = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions::default(),
            )
            .await
            .unwrap();
        let Some(message) = got else {
            match app.dead_letter_within(Duration::from_millis(20)).await {
                Some(dead) => break dead,
                None => continue,
            }
        };
        deliveries += 1;
        assert!(deliveries <= 10, "the delivery limit did not apply");
        message
            .delivery
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    };
    assert_eq!(
        deliveries, 3,
        "delivered once, then redelivered max_redeliveries times"
    );
    assert_eq!(dead.body, event.to_string().into_bytes());
}

/// The health endpoint of a real worker process: ready, metrics, and not
/// ready once the database is cut off.
#[tokio::test]
async fn the_health_endpoint_reports_readiness_and_metrics() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut app = spawn_app_without_worker(|s| s.http.listen = listen.clone()).await;
    app.spawn_process();
    let get = |path: &'static str| http_get(&listen, path);
    app.wait_for("the worker to be ready", || async {
        get("/health/ready")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    app.publish(&login("shop", "m1", "mo", t(0))).await;
    app.publish(&login("shop", "m2", "mo", t(1))).await;
    let revoked = format!(
        "{}{{reason=\"session_limit\"}} 1",
        session_guard::metric::SESSIONS_REVOKED.name
    );
    app.wait_for("the revocation to be counted", || async {
        get("/metrics")
            .await
            .is_some_and(|(status, m)| status == 200 && m.contains(&revoked))
    })
    .await;
    assert_eq!(
        get("/health/live").await.map(|(status, _)| status),
        Some(200)
    );

    app.cut_database().await;
    app.wait_for("readiness to report the outage", || async {
        get("/health/ready")
            .await
            .is_some_and(|(status, r)| status == 503 && r.contains("database unavailable"))
    })
    .await;
    app.restore_database().await;
    app.wait_for("the worker to be ready again", || async {
        get("/health/ready")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
}

/// A full RabbitMQ stop and start, not only dropped connections: the node
/// goes down, with every connection, while a batch is in the database, and
/// comes back with its durable queues. A node of the test's own
/// (`scripts/rabbitmq-node`), so the broker the other tests share is never
/// stopped.
#[tokio::test]
async fn a_broker_restart_loses_nothing() {
    // Declared before the app, so dropped after it: the app's cleanup
    // still finds the node.
    let broker = PrivateBroker::start().await;
    let mut app = spawn_app_without_worker(|s| s.amqp.url = broker.url()).await;
    let (users, per_user) = (100, 4);
    for e in logins(users, per_user, 5) {
        app.publish(&e).await;
    }
    // u0's lock row, inserted and not committed: the first batch waits for
    // it, holding its deliveries unacked, so the outage finds work in
    // flight and not a worker that already finished.
    let mut held = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO session_users (user_id) VALUES ('u0')")
        .execute(&mut *held)
        .await
        .unwrap();
    app.spawn_process();
    app.wait_for_lock_wait("the first batch to wait for u0's lock")
        .await;
    broker.stop().await;
    // The batch goes on while the broker is down: its acks and its revokes
    // have nowhere to go until the node is back.
    held.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = users as i64 * per_user;
    assert!(
        app.logged("shop").await < total || app.outbox_len().await > 0,
        "work is left for after the restart"
    );
    broker.restart().await;
    // The test's own listener died with the broker: judge by the log and the
    // outbox, which the worker empties only with publisher confirms.
    wait_logged(&app, "shop", total).await;
    app.wait_outbox_empty().await;
    for u in 0..users {
        assert_eq!(
            app.active(&format!("u{u}"), "shop").await,
            [format!("u{u}-s{}", per_user - 1)]
        );
    }
}
