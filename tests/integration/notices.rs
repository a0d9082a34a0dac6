//! Notices ("a new device signed in to your account") against the real
//! worker and broker: which sign-ins get one, what it carries, and that a
//! redelivery, shadow mode and the setting that turns them off give none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use serde_json::{Value, json};
use session_guard::Settings;
use session_guard::broker;
use session_guard::configuration::NoticeScope;
use session_guard::domain::notice::Notice;

use crate::helpers::*;

const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

/// A login from `user_agent` at `ip`.
fn login_from(app: &str, session: &str, at: DateTime<Utc>, user_agent: &str, ip: &str) -> Value {
    json!({
        "type": "login", "app": app, "session_id": session, "user_id": "alice",
        "occurred_at": at.to_rfc3339(), "ip": ip, "user_agent": user_agent,
    })
}

/// Notices on, no session limit (nothing revoked to blur the picture).
fn notices_on(s: &mut Settings) {
    s.notices.enabled = true;
    s.limits.max_sessions = 0;
}

/// A notice as an app receives it.
struct Received {
    body: Notice,
    routing_key: String,
    message_id: Option<String>,
    message_type: Option<String>,
    app_id: Option<String>,
    persistent: bool,
}

/// A queue bound to every notice of the test's notices exchange, and the
/// connection it lives on.
struct Tap {
    _connection: Connection,
    consumer: Consumer,
}

async fn notice_tap(settings: &Settings) -> Tap {
    let connection = broker::connect(&settings.amqp, "notice tap").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            settings.amqp.notices_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    Tap {
        _connection: connection,
        consumer,
    }
}

/// Every notice that arrives until none has for a moment. Call after
/// `settle`, which waits until the relay published what the batches wrote.
async fn drain(tap: &mut Tap) -> Vec<Received> {
    let mut got = Vec::new();
    let quiet = Duration::from_millis(500);
    while let Ok(Some(delivery)) = tokio::time::timeout(quiet, tap.consumer.next()).await {
        let delivery = delivery.unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let property = |p: &Option<lapin::types::ShortString>| p.as_ref().map(|s| s.to_string());
        got.push(Received {
            body: serde_json::from_slice(&delivery.data).expect("a notice of v1"),
            routing_key: delivery.routing_key.to_string(),
            message_id: property(delivery.properties.message_id()),
            message_type: property(delivery.properties.kind()),
            app_id: property(delivery.properties.app_id()),
            persistent: *delivery.properties.delivery_mode() == Some(2),
        });
    }
    got
}

/// Publishes `events`, settles, and returns the notices they gave.
async fn notices_of(app: &mut TestApp, tap: &mut Tap, events: &[Value]) -> Vec<Received> {
    for event in events {
        app.publish(event).await;
    }
    app.settle().await;
    drain(tap).await
}

#[tokio::test]
async fn a_new_device_a_known_one_and_a_new_network() {
    let mut app = spawn_app_with(notices_on).await;
    let mut tap = notice_tap(&app.settings).await;

    // The first session: nothing to compare with.
    let first = login_from("shop", "s1", t(0), FIREFOX_LINUX, "198.51.100.7");
    assert!(notices_of(&mut app, &mut tap, &[first]).await.is_empty());

    // Chrome on Android: a new device, from a known network.
    let chrome = login_from("shop", "s2", t(10), CHROME_ANDROID, "198.51.100.8");
    let got = notices_of(&mut app, &mut tap, std::slice::from_ref(&chrome)).await;
    assert_eq!(got.len(), 1);
    let notice = &got[0];
    let body = &notice.body;
    assert_eq!(body.kind, "new_device");
    assert_eq!((body.new_device, body.new_network), (true, false));
    assert_eq!((body.known_devices, body.known_networks), (1, 1));
    assert_eq!(
        (body.app.as_str(), body.user_id.as_str()),
        ("shop", "alice")
    );
    assert_eq!(body.device.browser.as_deref(), Some("Chrome"));
    assert_eq!(body.device.os.as_deref(), Some("Android"));
    assert_eq!(body.ip.as_deref(), Some("198.51.100.8"));
    assert_eq!(
        body.signed_in_at,
        t(10).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    // The session's handle, never its id: it opens to the session with the
    // key the sessions API uses.
    assert!(body.session.starts_with("sgh_") && !body.session.contains("s2"));
    let key = session_guard::db::api_key::handle_key(&app.pool)
        .await
        .unwrap();
    let (handle_app, handle_session) = key.open(&body.session).unwrap();
    assert_eq!(
        (handle_app.as_str(), handle_session.as_str()),
        ("shop", "s2")
    );
    let event_id = Notice::event_id_for("shop", "s2");
    assert_eq!(body.event_id, event_id);
    assert_eq!(notice.message_id, Some(event_id.to_string()));
    assert_eq!(notice.message_type.as_deref(), Some("new_device"));
    assert_eq!(notice.app_id.as_deref(), Some("session-guard"));
    assert_eq!(notice.routing_key, "new_device.shop");
    assert!(notice.persistent);

    // The same browser again, from the same /24: nothing new.
    let again = login_from("shop", "s3", t(20), FIREFOX_LINUX, "198.51.100.99");
    assert!(notices_of(&mut app, &mut tap, &[again]).await.is_empty());

    // The same device from another /24: a new network.
    let moved = login_from("shop", "s4", t(30), FIREFOX_LINUX, "203.0.113.5");
    let got = notices_of(&mut app, &mut tap, &[moved]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.kind, "new_network");
    assert_eq!(got[0].routing_key, "new_network.shop");
    assert_eq!(
        (got[0].body.known_devices, got[0].body.known_networks),
        (2, 1)
    );

    // Chrome's login delivered again (a redelivered batch): its row exists,
    // so no second notice, with a new event id or any.
    let request = json!({
        "type": "request", "app": "shop", "session_id": "s2", "user_id": "alice",
        "occurred_at": t(40).to_rfc3339(), "ip": "192.0.2.1", "user_agent": CHROME_ANDROID,
    });
    assert!(
        notices_of(&mut app, &mut tap, &[chrome, request])
            .await
            .is_empty()
    );
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn sign_ins_in_one_batch_compare_with_each_other_in_order() {
    let mut app = spawn_app_with(notices_on).await;
    let mut tap = notice_tap(&app.settings).await;
    // Both logins are published before the worker is likely to batch them:
    // the second compares with the first, as one by one.
    let events = [
        login_from("shop", "s1", t(0), FIREFOX_LINUX, "198.51.100.7"),
        login_from("shop", "s2", t(10), CHROME_ANDROID, "198.51.100.8"),
    ];
    let got = notices_of(&mut app, &mut tap, &events).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.event_id, Notice::event_id_for("shop", "s2"));
}

#[tokio::test]
async fn a_session_older_than_the_lookback_no_longer_counts() {
    let mut app = spawn_app_with(|s| {
        notices_on(s);
        s.notices.lookback = Duration::from_secs(3600);
    })
    .await;
    let mut tap = notice_tap(&app.settings).await;
    let long_ago = Utc::now() - chrono::Duration::hours(3);
    let old = login_from("shop", "s1", long_ago, FIREFOX_LINUX, "198.51.100.7");
    // Chrome compares with nothing within the hour: no notice.
    let chrome = login_from("shop", "s2", t(0), CHROME_ANDROID, "198.51.100.8");
    assert!(notices_of(&mut app, &mut tap, &[old]).await.is_empty());
    assert!(notices_of(&mut app, &mut tap, &[chrome]).await.is_empty());
    // Firefox again is new against Chrome: the old Firefox does not count.
    let firefox = login_from("shop", "s3", t(10), FIREFOX_LINUX, "198.51.100.9");
    let got = notices_of(&mut app, &mut tap, &[firefox]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.kind, "new_device");
    assert_eq!(got[0].body.known_devices, 1);
}

#[tokio::test]
async fn shadow_mode_and_notices_off_give_none() {
    let configs: [fn(&mut Settings); 2] = [
        |s| {
            notices_on(s);
            s.limits.enforce = false;
        },
        |s| {
            notices_on(s);
            s.notices.enabled = false;
        },
    ];
    for configure in configs {
        let mut app = spawn_app_with(configure).await;
        let mut tap = notice_tap(&app.settings).await;
        let events = [
            login_from("shop", "s1", t(0), FIREFOX_LINUX, "198.51.100.7"),
            login_from("shop", "s2", t(10), CHROME_ANDROID, "203.0.113.8"),
        ];
        assert!(
            notices_of(&mut app, &mut tap, &events[..1])
                .await
                .is_empty()
        );
        assert!(
            notices_of(&mut app, &mut tap, &events[1..])
                .await
                .is_empty()
        );
        assert_eq!(app.outbox_len().await, 0);
    }
}

#[tokio::test]
async fn per_app_scope_compares_with_the_same_app_only() {
    let mut app = spawn_app_with(|s| {
        notices_on(s);
        s.notices.scope = NoticeScope::PerApp;
    })
    .await;
    let mut tap = notice_tap(&app.settings).await;
    let shop = login_from("shop", "s1", t(0), FIREFOX_LINUX, "198.51.100.7");
    assert!(notices_of(&mut app, &mut tap, &[shop]).await.is_empty());
    // The blog's first session: the shop's does not count.
    let blog = login_from("blog", "b1", t(10), CHROME_ANDROID, "198.51.100.8");
    assert!(notices_of(&mut app, &mut tap, &[blog]).await.is_empty());
    // Chrome in the shop is new there, though the blog knows it.
    let shop_chrome = login_from("shop", "s2", t(20), CHROME_ANDROID, "198.51.100.8");
    let got = notices_of(&mut app, &mut tap, &[shop_chrome]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key, "new_device.shop");
    assert_eq!(got[0].body.known_devices, 1);
}

/// The worker proves most sign-ins not new without reading the user's
/// history (their very user agent and their network among the latest
/// sessions), and reads it when it cannot: these sign-ins go through both
/// ways, and get the notices the history gives.
#[tokio::test]
async fn sign_ins_proven_known_and_those_the_history_decides() {
    const FIREFOX_121_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    let mut app = spawn_app_with(notices_on).await;
    let mut tap = notice_tap(&app.settings).await;
    // (session, user agent, address, the notice due: its kind and
    // `new_network`).
    type Step = (
        &'static str,
        &'static str,
        &'static str,
        Option<(&'static str, bool)>,
    );
    let steps: [Step; 9] = [
        ("s1", FIREFOX_LINUX, "198.51.100.7", None),
        // A new device from a new network.
        (
            "s2",
            CHROME_ANDROID,
            "203.0.113.5",
            Some(("new_device", true)),
        ),
        // Its device known from s1, its network from s2.
        ("s3", FIREFOX_LINUX, "203.0.113.9", None),
        // A newer Firefox: another user agent, the same device.
        ("s4", FIREFOX_121_LINUX, "198.51.100.20", None),
        // An IPv4-mapped address is its IPv4, both ways.
        (
            "s5",
            CHROME_ANDROID,
            "::ffff:192.0.2.7",
            Some(("new_network", true)),
        ),
        ("s6", FIREFOX_LINUX, "192.0.2.8", None),
        // An IPv6 /48, then another address in it, then another /48.
        (
            "s7",
            FIREFOX_LINUX,
            "2001:db8:1:2::5",
            Some(("new_network", true)),
        ),
        ("s8", FIREFOX_LINUX, "2001:db8:1:ff::9", None),
        (
            "s9",
            FIREFOX_LINUX,
            "2001:db8:2::1",
            Some(("new_network", true)),
        ),
    ];
    for (minute, (session, user_agent, ip, expected)) in steps.into_iter().enumerate() {
        let login = login_from("shop", session, t(minute as i64 * 10), user_agent, ip);
        let got = notices_of(&mut app, &mut tap, &[login]).await;
        let got: Vec<(&str, bool)> = got
            .iter()
            .map(|n| (n.body.kind.as_str(), n.body.new_network))
            .collect();
        assert_eq!(got, Vec::from_iter(expected), "{session} from {ip}");
    }
}
