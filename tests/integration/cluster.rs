//! A three-node RabbitMQ cluster of the test's own
//! (`scripts/rabbitmq-cluster`): the worker and the client crate given its
//! three URLs. (What a node lost does comes in the tests that kill one.)

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use session_guard_client::protocol::event::AppName;
use session_guard_client::{EventPublisher, ListenerConfig, PublisherConfig, RevocationListener};

use crate::helpers::*;
use crate::listening::AppQueues;
use crate::load::{Load, parse_queue_counts, progress, until};
use crate::private_broker::PrivateCluster;

/// The cluster's three URLs.
fn cluster_urls(cluster: &PrivateCluster) -> Vec<&str> {
    cluster.urls().split(',').collect()
}

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

/// `rabbitmqctl ARGS` on the first node that answers.
async fn ctl_any(cluster: &PrivateCluster, args: &[&str]) -> String {
    for n in 1..=3 {
        if let Some(out) = cluster.ctl(n, args).await {
            return out;
        }
    }
    panic!("no node answers rabbitmqctl {args:?}");
}

/// Messages (ready and unacked) of every queue of the cluster, by name.
async fn queue_counts(cluster: &PrivateCluster) -> HashMap<String, u64> {
    parse_queue_counts(
        &ctl_any(
            cluster,
            &[
                "list_queues",
                "name",
                "messages",
                "--no-table-headers",
                "-q",
            ],
        )
        .await,
    )
}

/// The node (1-3) that leads `queue`, and how many of its members are online.
async fn leader_of(cluster: &PrivateCluster, queue: &str) -> (usize, usize) {
    let out = ctl_any(
        cluster,
        &[
            "list_queues",
            "name",
            "leader",
            "online",
            "--no-table-headers",
            "-q",
        ],
    )
    .await;
    let line = out
        .lines()
        .find(|l| l.split('\t').next() == Some(queue))
        .unwrap_or_else(|| panic!("{queue} not in {out}"));
    let mut fields = line.split('\t').skip(1);
    let leader = fields.next().unwrap_or_default().trim();
    let online = fields.next().unwrap_or_default().matches('@').count();
    let n = cluster
        .node_named(leader)
        .unwrap_or_else(|| panic!("leader {leader:?} of {queue}"));
    (n, online)
}

/// Whether every quorum queue of the cluster has its three replicas
/// online: before a node is stopped, so that each queue keeps a majority
/// (a node just back may still be catching up).
async fn all_replicas_online(cluster: &PrivateCluster) -> bool {
    let Some(out) = cluster
        .ctl(
            1,
            &[
                "list_queues",
                "name",
                "type",
                "online",
                "--no-table-headers",
                "-q",
            ],
        )
        .await
    else {
        return false;
    };
    out.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.get(1).map(|t| t.trim()) == Some("quorum"))
        .all(|f| {
            f.get(2)
                .is_some_and(|online| online.matches('@').count() == 3)
        })
}

/// The nodes (1-3) the worker consumers of `queue` are connected to (by
/// the connection name in their client properties).
async fn consumer_nodes(cluster: &PrivateCluster, queue: &str) -> Vec<usize> {
    let name = format!("\"session-guard consumer ({queue})\"");
    ctl_any(
        cluster,
        &[
            "list_connections",
            "port",
            "client_properties",
            "--no-table-headers",
            "-q",
        ],
    )
    .await
    .lines()
    .filter(|l| l.contains(&name))
    .filter_map(|l| l.split('\t').next()?.trim().parse().ok())
    .filter_map(|port| cluster.node_with_port(port))
    .collect()
}

/// Two workers (one in this process, one the real binary) on a
/// three-node cluster; the app logs users in from two devices. The node
/// that leads the events queue is killed (kill -9), then the node a worker
/// consumes from: every confirmed login is in the log, every first login
/// was revoked once and the app received its revoke, nothing was
/// dead-lettered, and the killed nodes rejoin.
#[tokio::test]
async fn killing_the_events_queue_leader_then_a_workers_node_loses_nothing() {
    let cluster = PrivateCluster::start().await;
    let urls = cluster.urls().to_owned();
    let mut test = spawn_app_with(|s| s.amqp.url = urls.clone()).await;
    let process = test
        .command(&["run"])
        .env("SESSION_GUARD__AMQP__URL", &urls)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("session-guard binary starts");
    let process = test.adopt_process(process);
    let queue = test.settings.amqp.events_queue.clone();
    // amqp.quorum_initial_group_size 3: a replica on every node.
    let (_, online) = leader_of(&cluster, &queue).await;
    assert_eq!(online, 3, "replicas of {queue}");
    until("two consumers on the events queue", || async {
        consumer_nodes(&cluster, &queue).await.len() == 2
    })
    .await;

    let load = Load::start(&test, &cluster_urls(&cluster), "ha-shop", 2).await;
    let app = load.app.as_str().to_owned();
    progress(&test, &app, 200).await;

    let (leader, _) = leader_of(&cluster, &queue).await;
    cluster.kill_node(leader).await;
    let back = progress(&test, &app, 200).await;
    eprintln!("node {leader} (the events queue's leader) killed; 200 more logins in {back:?}");
    assert!(test.worker_running() && test.process_running(process));
    cluster.start_node(leader).await;
    until("every quorum queue's three replicas online", || async {
        all_replicas_online(&cluster).await
    })
    .await;

    let worker_node = consumer_nodes(&cluster, &queue).await[0];
    cluster.kill_node(worker_node).await;
    let back = progress(&test, &app, 200).await;
    eprintln!("node {worker_node} (a worker's) killed; 200 more logins in {back:?}");
    assert!(test.worker_running() && test.process_running(process));
    cluster.start_node(worker_node).await;
    progress(&test, &app, 200).await;

    load.finish(&test, async || queue_counts(&cluster).await)
        .await;
    // The killed nodes are back: the queue has its three replicas again.
    until("the events queue's three replicas online", || async {
        leader_of(&cluster, &queue).await.1 == 3
    })
    .await;
    assert!(
        test.process_running(process),
        "the worker process never exits"
    );
    assert_eq!(test.terminate_process(process).await, Some(0));
    test.stop_worker().await;
}

/// A rolling restart of the three nodes, one at a time, each stopped
/// gracefully and waited for until it is back with its replicas, while
/// the app publishes: nothing lost, and the worker never exits.
#[tokio::test]
async fn a_rolling_restart_of_the_cluster_loses_nothing_and_the_worker_stays() {
    let cluster = PrivateCluster::start().await;
    let urls = cluster.urls().to_owned();
    let mut test = spawn_app_with(|s| s.amqp.url = urls.clone()).await;
    let load = Load::start(&test, &cluster_urls(&cluster), "rolling-shop", 2).await;
    let app = load.app.as_str().to_owned();
    progress(&test, &app, 200).await;
    for n in 1..=3 {
        cluster.stop_node(n).await;
        progress(&test, &app, 100).await;
        assert!(
            test.worker_running(),
            "the worker exited with node {n} down"
        );
        cluster.start_node(n).await;
        // Its replicas back before the next goes: a majority of each
        // queue stays up.
        until("every quorum queue's three replicas online", || async {
            all_replicas_online(&cluster).await
        })
        .await;
        progress(&test, &app, 100).await;
        assert!(test.worker_running(), "the worker exited after node {n}");
    }
    load.finish(&test, async || queue_counts(&cluster).await)
        .await;
    test.stop_worker().await;
}

/// `x-quorum-initial-group-size` on the machine's single node: declaring
/// with 3 works (one replica: the node it has), and a queue that exists
/// with another size, or none (declared before the setting), does not stop
/// a worker or a listener from starting: RabbitMQ refuses the redeclare
/// (PRECONDITION_FAILED), and the queue is kept as it is.
#[tokio::test]
async fn an_existing_queue_with_another_group_size_is_kept_and_startup_goes_on() {
    let mut test = spawn_app_without_worker(|s| s.amqp.quorum_initial_group_size = 3).await;
    let members =
        rabbitmqctl(&["list_queues", "name", "members", "--no-table-headers", "-q"]).await;
    let line = members
        .lines()
        .find(|l| l.split('\t').next() == Some(test.settings.amqp.events_queue.as_str()))
        .unwrap_or_else(|| panic!("the events queue in {members}"));
    assert_eq!(
        line.matches('@').count(),
        1,
        "one replica on one node: {line}"
    );

    // The dead-letter queue as an older version declared it: no group size.
    let connection = session_guard::broker::connect(&test.settings.amqp, "tests")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dead = test.settings.amqp.dead_letter_queue.clone();
    channel
        .queue_delete(dead.as_str().into(), Default::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            dead.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            session_guard_amqp::quorum::quorum_arguments(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            dead.as_str().into(),
            test.settings.amqp.dead_letter_exchange.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();

    // A worker asking for 5: the events queue has 3, the dead-letter queue none.
    test.settings.amqp.quorum_initial_group_size = 5;
    test.start_worker().await;
    let shop = AppName::parse("regroup-shop").unwrap();
    let mut config = ListenerConfig::new(test.settings.amqp.url.clone(), shop.clone());
    config.exchange = test.settings.amqp.revocations_exchange.clone();
    let _queues = AppQueues::of(&config);
    RevocationListener::connect(config.clone()).await.unwrap();
    config.quorum_initial_group_size = 1;
    RevocationListener::connect(config)
        .await
        .expect("a listener asking for another group size connects");
    test.publish(&login(shop.as_str(), "s1", "u1", t(0))).await;
    test.publish(&login(shop.as_str(), "s2", "u1", t(1))).await;
    test.wait_for("both logins in the log", || async {
        test.logged(shop.as_str()).await == 2
    })
    .await;
    assert!(test.worker_running());
    let _ = connection.close(200, "done".into()).await;
    test.stop_worker().await;
}
