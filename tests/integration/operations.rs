//! The operator's surface: metrics as Prometheus renders them, and retention
//! by age (`retention.max_age`).
//!
//! The metrics recorder is global to this test process and other tests run
//! beside these ones: assertions are on increases, never on totals.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use session_guard::apply::{self, AdminTarget, Enforcement};
use session_guard::db;
use session_guard::domain::event::{AppName, UserId};
use session_guard::metric::{self, Kind};
use session_guard::sweep::Sweep;

use crate::helpers::*;

/// The rendered metrics (the recorder is installed by the first call).
fn scrape() -> String {
    session_guard::telemetry::init_metrics();
    session_guard::telemetry::render_metrics().expect("the recorder is installed")
}

/// The value of one series (`name` or `name{labels}`), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// How much a series grew between two scrapes.
fn growth(before: &str, after: &str, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

#[tokio::test]
async fn metrics_show_latency_histograms_outcomes_reasons_and_the_outbox() {
    let before = scrape();
    let mut app = spawn_app().await;
    let now = Utc::now();
    // Two logins of one user (limit 1): one revoke, reason session_limit.
    app.publish(&login("shop", "m1", "metrics-mia", now)).await;
    app.publish(&login(
        "shop",
        "m2",
        "metrics-mia",
        now + chrono::Duration::seconds(1),
    ))
    .await;
    app.publish(&request(
        "shop",
        "m2",
        "metrics-mia",
        now + chrono::Duration::seconds(2),
    ))
    .await;
    app.publish(&logout("shop", "m2", now + chrono::Duration::seconds(3)))
        .await;
    // Two dead letters: one that is not JSON, one a login missing its user.
    app.publish_raw("login.shop", b"not json").await;
    app.publish(&json!({
        "type": "login", "app": "shop", "session_id": "m3",
        "occurred_at": now.to_rfc3339(),
    }))
    .await;
    app.settle().await;
    let revoked = app.expect_revokes(1).await;
    assert_eq!(revoked[0].body.reason, "session_limit");
    app.next_dead_letter().await;
    app.next_dead_letter().await;

    // An operator's revoke, written while no worker runs: the outbox waits.
    app.publish(&login("shop", "m4", "metrics-max", now)).await;
    app.settle().await;
    app.stop_worker().await;
    let enforcement = Enforcement::from_settings(&app.settings, &[]).unwrap();
    let target = AdminTarget::User {
        app: AppName::parse("shop").unwrap(),
        user_id: UserId::parse("metrics-max").unwrap(),
    };
    apply::admin_revoke(&app.pool, &enforcement, &target, "tester", None)
        .await
        .unwrap();
    let (backlog, oldest) = db::outbox::stats(&app.pool).await.unwrap();
    assert_eq!(backlog, 1);
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
    app.start_worker().await;
    app.settle().await;
    assert_eq!(app.expect_revokes(1).await[0].body.reason, "admin");
    assert_eq!(db::outbox::stats(&app.pool).await.unwrap(), (0, 0.0));

    // Housekeeping refreshes the gauges on its own schedule: wait until
    // every metric has a sample and the histograms count these events.
    let lag = metric::EVENT_LAG.name;
    let delivery = metric::REVOKE_DELIVERY.name;
    let mut after = scrape();
    app.wait_for("housekeeping to refresh the metrics", || {
        after = scrape();
        let ready = metric::ALL.iter().all(|m| {
            let sample = match m.kind {
                Kind::Histogram(_) => format!("{}_bucket{{", m.name),
                _ => m.name.to_owned(),
            };
            after.lines().any(|l| l.starts_with(&sample))
        }) && growth(&before, &after, &format!("{lag}_count")) >= 6.0
            && growth(&before, &after, &format!("{delivery}_count")) >= 2.0;
        async move { ready }
    })
    .await;

    // Latency as histograms, with buckets, counting these events.
    assert!(
        after.contains(&format!("# TYPE {lag} histogram")),
        "{after}"
    );
    assert!(growth(&before, &after, &format!("{lag}_count")) >= 6.0);
    // These events were dated now: a minute covers them.
    assert!(growth(&before, &after, &format!("{lag}_bucket{{le=\"60\"}}")) >= 6.0);
    let batch = metric::BATCH_DURATION.name;
    assert!(growth(&before, &after, &format!("{batch}_count")) >= 2.0);
    assert!(growth(&before, &after, &format!("{batch}_bucket{{le=\"10\"}}")) >= 2.0);
    assert!(growth(&before, &after, &format!("{delivery}_count")) >= 2.0);
    assert!(
        growth(
            &before,
            &after,
            &format!("{delivery}_bucket{{le=\"+Inf\"}}")
        ) >= 2.0
    );

    // Events by type and outcome; revokes by reason.
    let events = |kind: &str, outcome: &str| {
        growth(
            &before,
            &after,
            &format!(
                "{}{{type=\"{kind}\",outcome=\"{outcome}\"}}",
                metric::EVENTS.name
            ),
        )
    };
    assert!(events("login", "applied") >= 3.0);
    assert!(events("request", "applied") >= 1.0);
    assert!(events("logout", "applied") >= 1.0);
    assert!(events("unknown", "invalid") >= 1.0);
    assert!(events("login", "invalid") >= 1.0);
    let reason = |m: &metric::Metric, reason: &str| {
        growth(
            &before,
            &after,
            &format!("{}{{reason=\"{reason}\"}}", m.name),
        )
    };
    assert!(reason(&metric::SESSIONS_REVOKED, "session_limit") >= 1.0);
    assert!(reason(&metric::REVOKES_PUBLISHED, "session_limit") >= 1.0);
    assert!(reason(&metric::REVOKES_PUBLISHED, "admin") >= 1.0);

    // Every metric is described, of its type, and present.
    for m in metric::ALL {
        assert!(
            after.contains(&format!("# HELP {} {}", m.name, m.help)),
            "{} is not described",
            m.name
        );
        assert!(
            after.contains(&format!("# TYPE {} {}", m.name, m.kind.prometheus_type())),
            "{} is missing or not a {}",
            m.name,
            m.kind.prometheus_type()
        );
        let sample = match m.kind {
            Kind::Histogram(_) => format!("{}_bucket{{", m.name),
            _ => m.name.to_owned(),
        };
        assert!(
            after.lines().any(|l| l.starts_with(&sample)),
            "no sample of {}",
            m.name
        );
    }
}

/// Ages a session's end, as if it had ended `by` earlier.
async fn age_end(app: &TestApp, session: &str, by: chrono::Duration) {
    sqlx::query(
        "UPDATE sessions SET ended_at = ended_at - $2, last_revoke_at = last_revoke_at - $2
         WHERE app = 'shop' AND session_id = $1",
    )
    .bind(session)
    .bind(by)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn in_log(app: &TestApp, session: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) = 1 FROM sessions WHERE app = 'shop' AND session_id = $1")
        .bind(session)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn tombstoned(app: &TestApp, session: &str) -> bool {
    sqlx::query_scalar(
        "SELECT count(*) = 1 FROM session_tombstones WHERE app = 'shop' AND session_id = $1",
    )
    .bind(session)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn max_age_moves_old_ended_rows_to_tombstones_and_keeps_the_rest() {
    let mut app = spawn_app_with(|s| {
        s.retention.max_age = Some(Duration::from_secs(30 * 86_400));
        s.retention.sweep_interval = Duration::from_millis(100);
        s.limits.repeat_revoke_after = 0;
    })
    .await;
    let now = Utc::now();
    let long_ago = now - days(60);
    // Ended two months ago: a logout, and a logout of a session never seen
    // (a row with no user).
    app.publish(&login("shop", "old-out", "ann", long_ago))
        .await;
    app.publish(&logout(
        "shop",
        "old-out",
        long_ago + chrono::Duration::seconds(1),
    ))
    .await;
    app.publish(&logout("shop", "ghost", long_ago)).await;
    // Expired seven weeks ago, never logged out.
    let mut expired = login("shop", "old-expired", "cy", long_ago);
    expired["expires_at"] = (now - days(50)).to_rfc3339().into();
    app.publish(&expired).await;
    // Kept: a logout of yesterday, a session live since three months ago,
    // a session that expired yesterday.
    app.publish(&login("shop", "new-out", "ann", now - days(1)))
        .await;
    app.publish(&logout(
        "shop",
        "new-out",
        now - days(1) + chrono::Duration::seconds(1),
    ))
    .await;
    app.publish(&login("shop", "live", "bo", now - days(90)))
        .await;
    let mut recent = login("shop", "recent-expired", "eve", now - days(2));
    recent["expires_at"] = (now - days(1)).to_rfc3339().into();
    app.publish(&recent).await;
    // A session revoked (limit 1), its end then aged by two months.
    app.publish(&login("shop", "r1", "dee", long_ago)).await;
    app.publish(&login(
        "shop",
        "r2",
        "dee",
        long_ago + chrono::Duration::seconds(10),
    ))
    .await;
    app.settle().await;
    assert_eq!(app.expect_revokes(1).await[0].body.session_id, "r1");
    age_end(&app, "r1", days(60)).await;

    for gone in ["old-out", "ghost", "old-expired", "r1"] {
        app.wait_for(&format!("{gone} to be swept"), || async {
            !in_log(&app, gone).await && tombstoned(&app, gone).await
        })
        .await;
    }
    for kept in ["new-out", "live", "recent-expired", "r2"] {
        assert!(in_log(&app, kept).await, "{kept} was swept");
        assert!(!tombstoned(&app, kept).await, "{kept} has a tombstone");
    }

    // The app still uses r1: its tombstone keeps it revoked; the revoke is
    // repeated and r2 stays the one active session.
    app.publish(&request("shop", "r1", "dee", Utc::now())).await;
    app.settle().await;
    let repeat = app.expect_revokes(1).await.remove(0);
    assert!(repeat.body.repeat);
    assert_eq!(repeat.body.session_id, "r1");
    assert_eq!(app.active("dee", "shop").await, ["r2"]);
    assert!(!in_log(&app, "r1").await, "the request brought r1 back");
}

#[tokio::test]
async fn max_age_forgets_claims_with_the_users_last_rows_in_the_app() {
    let app = spawn_app_with(|s| {
        s.retention.max_age = Some(Duration::from_secs(30 * 86_400));
        s.retention.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let long_ago = Utc::now() - days(60);
    let staff = serde_json::json!({"roles": ["staff"]});
    for (session, user) in [("gone-1", "gone"), ("kept-1", "kept")] {
        let mut event = login("shop", session, user, long_ago);
        event["attributes"] = staff.clone();
        app.publish(&event).await;
    }
    // Claims for users who never had a session in the app (an app
    // publishing every user's claims): the old one goes, the recent one
    // stays.
    app.publish(&attributes("shop", "dormant", staff.clone(), long_ago))
        .await;
    app.publish(&attributes("shop", "newcomer", staff.clone(), Utc::now()))
        .await;
    app.publish(&logout(
        "shop",
        "gone-1",
        long_ago + chrono::Duration::seconds(1),
    ))
    .await;
    let claims = |user: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_attributes WHERE user_id = $1")
                .bind(user)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    app.wait_for("gone's last row to be swept", || async {
        !in_log(&app, "gone-1").await && tombstoned(&app, "gone-1").await
    })
    .await;
    app.wait_for("gone's claim to be forgotten", || async {
        claims("gone").await == 0
    })
    .await;
    app.wait_for("dormant's lone claim to be forgotten", || async {
        claims("dormant").await == 0
    })
    .await;
    // kept still has a live session in the app: its claim stands, however old.
    assert_eq!(claims("kept").await, 1);
    assert!(in_log(&app, "kept-1").await);
    assert_eq!(claims("newcomer").await, 1);
}

#[tokio::test]
async fn the_sweep_skips_users_and_rows_other_transactions_hold() {
    // No max_age: the worker does not sweep; the test runs passes itself.
    let mut app = spawn_app().await;
    let long_ago = Utc::now() - days(60);
    for (session, user) in [("h1", "held"), ("f1", "free")] {
        app.publish(&login("shop", session, user, long_ago)).await;
        app.publish(&logout(
            "shop",
            session,
            long_ago + chrono::Duration::seconds(1),
        ))
        .await;
    }
    app.publish(&logout("shop", "ghost-held", long_ago)).await;
    app.publish(&logout("shop", "ghost-free", long_ago)).await;
    app.settle().await;

    // A batch holding held's lock, and a transaction holding a row with no
    // user, both open while the sweep runs.
    let mut batch = app.pool.begin().await.unwrap();
    sqlx::query("SELECT user_id FROM session_users WHERE user_id = 'held' FOR UPDATE")
        .fetch_one(&mut *batch)
        .await
        .unwrap();
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query(
        "SELECT 1 FROM sessions WHERE app = 'shop' AND session_id = 'ghost-held' FOR UPDATE",
    )
    .fetch_one(&mut *other)
    .await
    .unwrap();

    let max_age = Duration::from_secs(30 * 86_400);
    let mut sweep = Sweep::default();
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        sweep.pass(&app.pool, max_age, Utc::now()),
    )
    .await
    .expect("the sweep never waits for a lock")
    .unwrap();
    assert_eq!(report.moved, 2, "{report:?}");
    assert_eq!(report.busy.iter().collect::<Vec<_>>(), ["held"]);
    assert!(!in_log(&app, "f1").await && tombstoned(&app, "f1").await);
    assert!(!in_log(&app, "ghost-free").await && tombstoned(&app, "ghost-free").await);
    assert!(in_log(&app, "h1").await && in_log(&app, "ghost-held").await);

    // Once they let go, the next pass moves the rest.
    batch.rollback().await.unwrap();
    other.rollback().await.unwrap();
    let report = sweep.pass(&app.pool, max_age, Utc::now()).await.unwrap();
    assert_eq!(report.moved, 2, "{report:?}");
    assert!(report.busy.is_empty());
    assert!(!in_log(&app, "h1").await && tombstoned(&app, "h1").await);
    assert!(!in_log(&app, "ghost-held").await && tombstoned(&app, "ghost-held").await);
}

/// The sweep's index leaves the updates of live sessions HOT (no index
/// maintenance): last_seen_at, and the other activity columns a request
/// moves, expires_at included.
#[tokio::test]
async fn updates_of_live_sessions_stay_hot() {
    let mut app = spawn_app().await;
    let mut event = login("shop", "hot", "hal", Utc::now() - days(1));
    event["expires_at"] = (Utc::now() + days(1)).to_rfc3339().into();
    app.publish(&event).await;
    app.settle().await;
    let mut tx = app.pool.begin().await.unwrap();
    let updated = sqlx::query(
        "UPDATE sessions SET last_seen_at = last_seen_at + interval '1 minute',
                             ip = '192.0.2.99', user_agent = 'other/2.0',
                             expires_at = expires_at + interval '1 hour'
         WHERE app = 'shop' AND session_id = 'hot'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let hot: i64 =
        sqlx::query_scalar("SELECT pg_stat_get_xact_tuples_hot_updated('sessions'::regclass)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(hot, 1, "the update was not HOT");
    tx.rollback().await.unwrap();
}
