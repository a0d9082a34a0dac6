//! session-guard-client's NoticeListener against the real broker and the
//! real worker: the worker's notice of a login from a new device reaches the
//! handler; notices published by hand arrive typed and are acked, a failing
//! handler's notice is retried then dead-lettered to `<app>.notices.dead`, a
//! body that is not a notice is dead-lettered at once, a kind added later
//! still reaches the handler.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use session_guard_client::protocol::api::{Device, DeviceKind};
use session_guard_client::protocol::event::AppName;
use session_guard_client::protocol::notice::{Notice, NoticeKind};
use session_guard_client::{ListenerConfig, NoticeListener};

use crate::helpers::*;
use crate::listening::{AppQueues, AppUser, handled, next_dead_letter, no_more, ready, unique_app};

/// The notice listener running in a task of the test.
type Running = crate::listening::Running<NoticeListener>;

/// The test's notices exchange (`amqp.notices_exchange`), declared as the
/// worker declares it (durable topic) for the tests that run none, deleted
/// when dropped.
struct NoticesExchange {
    url: String,
    name: String,
}

impl NoticesExchange {
    async fn declare(test: &TestApp) -> NoticesExchange {
        let name = test.settings.amqp.notices_exchange.clone();
        test.publisher
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        NoticesExchange {
            url: test.settings.amqp.url.clone(),
            name,
        }
    }
}

impl Drop for NoticesExchange {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // As AppQueues' drop: the test's runtime is blocked.
        on_own_runtime(async move {
            let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "test cleanup".into()).await;
        });
    }
}

/// The notice defaults for `app`, on the test's broker and `exchange`.
fn config(test: &TestApp, app: &AppName, exchange: &NoticesExchange) -> ListenerConfig {
    let mut config = ListenerConfig::notices(test.settings.amqp.url.clone(), app.clone());
    config.exchange = exchange.name.clone();
    config.max_backoff = Duration::from_millis(500);
    config
}

/// A notice of kind `kind` for `user` of `app`, as the worker writes one.
fn notice(app: &AppName, kind: &str, user: &str, session: &str) -> Notice {
    Notice {
        kind: kind.to_owned(),
        event_id: Notice::event_id_for(app.as_str(), session),
        app: app.to_string(),
        user_id: user.to_owned(),
        session: format!("sgh_{session}"),
        signed_in_at: "2026-12-07T16:00:00.000000Z".to_owned(),
        device: Device {
            browser: Some("Chrome".to_owned()),
            os: Some("Android".to_owned()),
            kind: DeviceKind::Phone,
        },
        ip: Some("203.0.113.7".to_owned()),
        new_device: true,
        new_network: false,
        known_devices: 1,
        known_networks: 1,
    }
}

/// Publishes `body` to the notices exchange with `routing_key`, with the
/// properties the worker gives a notice, and waits for the confirm.
async fn publish(test: &TestApp, exchange: &NoticesExchange, routing_key: &str, body: &[u8]) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_app_id("session-guard".into())
        .with_content_type("application/json".into());
    test.publish_to(&exchange.name, routing_key, body, properties)
        .await;
}

async fn publish_notice(test: &TestApp, exchange: &NoticesExchange, notice: &Notice) {
    let body = serde_json::to_vec(notice).unwrap();
    publish(test, exchange, &notice.routing_key(), &body).await;
}

/// What most tests here start from: a test without a worker, its notices
/// exchange, a unique app, its notice defaults, and its queues (deleted, as
/// guest, when dropped).
async fn set_up() -> (TestApp, NoticesExchange, AppName, ListenerConfig, AppQueues) {
    let test = spawn_app_without_worker(|_| {}).await;
    let exchange = NoticesExchange::declare(&test).await;
    let app = unique_app();
    let config = config(&test, &app, &exchange);
    let queues = AppQueues::of(&config);
    (test, exchange, app, config, queues)
}

#[tokio::test]
async fn a_notice_reaches_the_handler_typed_and_is_acked() {
    let (test, exchange, app, config, _queues) = set_up().await;
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;

    let sent = notice(&app, "new_device", "42", "s1");
    publish_notice(&test, &exchange, &sent).await;
    // Another app's notice does not reach this app's queue.
    let other = unique_app();
    publish_notice(&test, &exchange, &notice(&other, "new_device", "42", "s2")).await;
    let got = handled(&mut rx, 1).await;
    let n = &got[0].1;
    assert_eq!(n.delivery_count, 0);
    assert_eq!(n.message, sent);
    assert_eq!(n.message.kind(), NoticeKind::NewDevice);
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0, "acked");
    assert_eq!(ready(&config.url, &config.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn a_notice_the_handler_keeps_failing_on_is_dead_lettered_to_the_apps_notices_dead() {
    let (test, exchange, app, mut config, _queues) = set_up().await;
    config.max_attempts = 3;
    assert_eq!(
        config.dead_letter_queue(),
        format!("{}.notices.dead", app.as_str())
    );
    let (listener, mut rx) =
        Running::alone(
            config.clone(),
            |_| Err("the mail server is down".to_owned()),
        )
        .await;

    let sent = notice(&app, "new_network", "42", "s1");
    publish_notice(&test, &exchange, &sent).await;
    let got = handled(&mut rx, 3).await;
    let counts: Vec<u32> = got.iter().map(|(_, n)| n.delivery_count).collect();
    assert_eq!(counts, [0, 1, 2]);
    let dead = next_dead_letter(&test, &config).await;
    let body: Notice = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!(body, sent);
    assert_eq!(dead.error.as_deref(), Some("the mail server is down"));
    assert_eq!(dead.kind.as_deref(), Some("failed"));
    assert_eq!(dead.routing_key, format!("new_network.{}", app.as_str()));
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_a_notice_is_dead_lettered_at_once() {
    let (test, exchange, app, config, _queues) = set_up().await;
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;

    let body = b"{\"type\": \"new_device\", \"user_id\": 42}";
    publish(
        &test,
        &exchange,
        &format!("new_device.{}", app.as_str()),
        body,
    )
    .await;
    let dead = next_dead_letter(&test, &config).await;
    assert_eq!(dead.body, body);
    let error = dead.error.unwrap();
    assert!(error.starts_with("not a notice: "), "{error}");
    assert_eq!(dead.kind.as_deref(), Some("invalid"));
    no_more(&mut rx).await;
    listener.stop().await;
}

#[tokio::test]
async fn a_notice_of_a_kind_added_later_still_reaches_the_handler() {
    let (test, exchange, app, config, _queues) = set_up().await;
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;

    // A later worker's kind, with a field this version does not know.
    let mut body = serde_json::to_value(notice(&app, "new_country", "42", "s1")).unwrap();
    body["country"] = "NL".into();
    let routing_key = format!("new_country.{}", app.as_str());
    publish(&test, &exchange, &routing_key, body.to_string().as_bytes()).await;
    let got = handled(&mut rx, 1).await;
    let n = &got[0].1.message;
    assert_eq!(
        (n.kind(), n.kind.as_str()),
        (NoticeKind::Other, "new_country")
    );
    assert_eq!(n.user_id, "42");
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0, "acked");
}

#[tokio::test]
async fn connect_says_when_the_notices_exchange_is_missing() {
    let test = spawn_app_without_worker(|_| {}).await;
    let app = unique_app();
    let mut config = ListenerConfig::notices(test.settings.amqp.url.clone(), app);
    config.exchange = format!(
        "{}.missing-notices",
        test.settings.amqp.revocations_exchange
    );
    let _queues = AppQueues::of(&config);
    let err = NoticeListener::connect(config.clone()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "exchange {} does not exist: start session-guard first (it declares it), or set the \
             listener's exchange to the worker's amqp.notices_exchange",
            config.exchange
        )
    );
}

const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

/// A login of user 42 from `user_agent` at `ip`.
fn login_from(
    app: &AppName,
    session: &str,
    at: i64,
    user_agent: &str,
    ip: &str,
) -> serde_json::Value {
    serde_json::json!({
        "type": "login", "app": app.as_str(), "session_id": session, "user_id": "42",
        "occurred_at": t(at).to_rfc3339(), "ip": ip, "user_agent": user_agent,
    })
}

#[tokio::test]
async fn the_workers_notice_of_a_new_device_reaches_the_listener_once() {
    let mut test = spawn_app_with(|s| {
        s.notices.enabled = true;
        // No session limit: nothing revoked to blur the picture.
        s.limits.max_sessions = 0;
    })
    .await;
    let exchange = NoticesExchange::declare(&test).await;
    let app = unique_app();
    let config = config(&test, &app, &exchange);
    let _queues = AppQueues::of(&config);
    let (listener, mut rx) = Running::alone(config.clone(), |_| Ok(())).await;

    // The user's first session gives none (nothing to compare with); Chrome
    // on Android after Firefox on Linux gives one; Firefox on Linux again,
    // from the same /24, gives none.
    test.publish(&login_from(&app, "s1", 0, FIREFOX_LINUX, "192.0.2.10"))
        .await;
    test.publish(&login_from(&app, "s2", 10, CHROME_ANDROID, "192.0.2.11"))
        .await;
    test.publish(&login_from(&app, "s3", 20, FIREFOX_LINUX, "192.0.2.12"))
        .await;
    let got = handled(&mut rx, 1).await;
    let n = &got[0].1.message;
    assert_eq!(n.kind(), NoticeKind::NewDevice);
    assert_eq!((n.app.as_str(), n.user_id.as_str()), (app.as_str(), "42"));
    assert_eq!(
        (n.device.browser.as_deref(), n.device.os.as_deref()),
        (Some("Chrome"), Some("Android"))
    );
    assert_eq!(n.ip.as_deref(), Some("192.0.2.11"));
    assert_eq!(n.event_id, Notice::event_id_for(app.as_str(), "s2"));
    assert_ne!(n.session, "s2", "the handle, never the session id");
    assert_eq!(
        (n.new_device, n.new_network, n.known_devices),
        (true, false, 1)
    );
    test.settle().await;
    no_more(&mut rx).await;
    listener.stop().await;
    assert_eq!(ready(&config.url, &config.queue).await, 0, "acked");
}

#[tokio::test]
async fn the_permissions_security_md_documents_are_enough_for_the_notice_listener() {
    // The queues are deleted as guest: the app's user may not delete.
    let (test, exchange, app, mut config, _queues) = set_up().await;
    let user = AppUser::as_documented(&test, &app).await;
    config.max_attempts = 2;
    config.url = user.url();
    let (listener, mut rx) = Running::alone(config.clone(), |n| {
        if n.message.user_id == "refused" {
            Err("refused on purpose".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    publish_notice(&test, &exchange, &notice(&app, "new_device", "42", "s1")).await;
    assert_eq!(handled(&mut rx, 1).await[0].1.message.user_id, "42");
    // Dead-lettering publishes to the app's own exchange.
    publish_notice(
        &test,
        &exchange,
        &notice(&app, "new_device", "refused", "s2"),
    )
    .await;
    handled(&mut rx, 2).await;
    let mut dead_config = config.clone();
    dead_config.url = test.settings.amqp.url.clone();
    let dead = next_dead_letter(&test, &dead_config).await;
    assert_eq!(dead.error.as_deref(), Some("refused on purpose"));
    listener.stop().await;
}
