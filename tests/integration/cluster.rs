//! A three-node RabbitMQ cluster of the test's own
//! (`scripts/rabbitmq-cluster`): the worker and the client crate given its
//! three URLs. (What a node lost does comes in the tests that kill one.)

use std::time::Duration;

use session_guard_client::protocol::event::AppName;
use session_guard_client::{EventPublisher, ListenerConfig, PublisherConfig, RevocationListener};

use crate::helpers::*;
use crate::private_broker::PrivateCluster;

#[tokio::test]
async fn the_worker_and_the_client_given_three_nodes_carry_a_login_and_its_revoke() {
    // Declared before the app, so dropped after it (the app's cleanup
    // still finds the nodes), and stopped even if an assertion fails.
    let cluster = PrivateCluster::start().await;
    let urls: Vec<&str> = cluster.urls().split(',').collect();
    assert_eq!(urls.len(), 3, "{}", cluster.urls());
    // The worker in-process, with amqp.url the three nodes.
    let mut app = spawn_app_with(|s| s.amqp.url = cluster.urls().to_owned()).await;

    // The binary reads the environment's comma-separated form, connects to
    // one node, says which, and shows no password.
    let out = app
        .command(&["check-config"])
        .env("SESSION_GUARD__AMQP__URL", cluster.urls())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("(one of the 3 brokers of amqp.url)"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "{text}");

    let shop = AppName::parse("cluster-shop").unwrap();
    let mut listener_config = ListenerConfig::with_urls(&urls, shop.clone());
    listener_config.exchange = app.settings.amqp.revocations_exchange.clone();
    listener_config.max_backoff = Duration::from_millis(500);
    let listener = RevocationListener::connect(listener_config).await.unwrap();
    let (revoked_tx, mut revoked) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listening = tokio::spawn(listener.run(
        move |revoke| {
            let _ = revoked_tx.send(revoke.message.session_id.clone());
            async { Ok::<(), String>(()) }
        },
        async {
            let _ = stopped.await;
        },
    ));

    let mut publisher_config = PublisherConfig::with_urls(&urls, shop.clone());
    publisher_config.exchange = app.settings.amqp.events_exchange.clone();
    publisher_config.max_backoff = Duration::from_millis(200);
    let publisher = EventPublisher::connect(publisher_config).await.unwrap();
    // Two logins of one user, limit 1: the first session is revoked.
    publisher.login("laptop", "u1").send().unwrap();
    publisher.login("phone", "u1").send().unwrap();
    publisher.flush().await.unwrap();

    app.wait_for("both logins in the log", || async {
        app.logged(shop.as_str()).await == 2
    })
    .await;
    assert_eq!(app.active("u1", shop.as_str()).await, ["phone"]);
    app.wait_outbox_empty().await;
    let session = tokio::time::timeout(Duration::from_secs(30), revoked.recv())
        .await
        .expect("the app's listener receives the revoke")
        .unwrap();
    assert_eq!(session, "laptop");
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "laptop");

    publisher.close().await.unwrap();
    let _ = stop.send(());
    listening.await.unwrap().unwrap();
    app.stop_worker().await;
}
