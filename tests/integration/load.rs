//! The app of the tests that take a service away under load (a RabbitMQ
//! node in `cluster`, the PostgreSQL primary in `failover`): an
//! `EventPublisher` (confirms) sending a steady stream of users with two
//! logins each (limit 1: the first is revoked), a `RevocationListener`
//! recording every revoke it receives, and the checks of the outcome once
//! the stream stops. Which brokers it talks to and how their queues are
//! counted is the caller's: the cluster's URLs and `rabbitmqctl` on its
//! nodes, or the machine's broker.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_guard_client::protocol::event::AppName;
use session_guard_client::protocol::names;
use session_guard_client::{EventPublisher, ListenerConfig, PublisherConfig, RevocationListener};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::helpers::*;

/// How long [`until`] waits: a leader election, a failover and a
/// reconnection take seconds, on a machine other tests share.
pub const UNTIL: Duration = Duration::from_secs(180);

/// The app: its publisher's stream and its listener.
pub struct Load {
    pub app: AppName,
    publisher: Arc<EventPublisher>,
    stop_sending: tokio::sync::watch::Sender<bool>,
    sending: JoinHandle<u64>,
    /// The listener, recording what it receives.
    listening: Listening,
}

/// The app's listener, still running after [`Load::finish_listening`]:
/// what it received, and how to stop it.
pub struct Listening {
    /// (session, event id) of every revoke delivered to the listener.
    pub received: Arc<Mutex<Vec<(String, uuid::Uuid)>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Result<(), session_guard_client::ListenerError>>,
}

impl Listening {
    /// The event ids of every delivery of a revoke of `session` so far.
    pub fn deliveries_of(&self, session: &str) -> Vec<uuid::Uuid> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == session)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Stops the listener; it must have ended without an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

impl Load {
    /// Starts the listener, then the publisher and its stream: `per_tick`
    /// users every 20 ms, both on the brokers of `urls`, with the exchanges
    /// of `test`'s settings.
    pub async fn start(test: &TestApp, urls: &[&str], name: &str, per_tick: u64) -> Load {
        let app = AppName::parse(name).unwrap();
        let mut listener_config = ListenerConfig::with_urls(urls, app.clone());
        listener_config.exchange = test.settings.amqp.revocations_exchange.clone();
        listener_config.max_backoff = Duration::from_millis(500);
        let listener = RevocationListener::connect(listener_config).await.unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop_listening, stopped) = tokio::sync::oneshot::channel::<()>();
        let record = received.clone();
        let task = tokio::spawn(listener.run(
            move |revoke| {
                record
                    .lock()
                    .unwrap()
                    .push((revoke.message.session_id.clone(), revoke.message.event_id));
                async { Ok::<(), String>(()) }
            },
            async {
                let _ = stopped.await;
            },
        ));

        let mut publisher_config = PublisherConfig::with_urls(urls, app.clone());
        publisher_config.exchange = test.settings.amqp.events_exchange.clone();
        publisher_config.max_backoff = Duration::from_millis(200);
        let publisher = Arc::new(EventPublisher::connect(publisher_config).await.unwrap());
        let (stop_sending, mut stop) = tokio::sync::watch::channel(false);
        let sender = publisher.clone();
        let sending = tokio::spawn(async move {
            let mut users = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !*stop.borrow() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                for _ in 0..per_tick {
                    let user = format!("u{users}");
                    for device in ["a", "b"] {
                        let session = format!("{user}-{device}");
                        // A full buffer (the broker away a while): wait, as
                        // an app that must not lose a login would.
                        while let Err(e) = sender.login(&session, &user).send() {
                            assert!(
                                matches!(e, session_guard_client::SendError::BufferFull(_)),
                                "{e}"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    users += 1;
                }
            }
            users
        });
        Load {
            app,
            publisher,
            stop_sending,
            sending,
            listening: Listening {
                received,
                stop: stop_listening,
                task,
            },
        }
    }

    /// [`Load::finish_listening`], then stops the listener.
    pub async fn finish<F>(self, test: &TestApp, queue_counts: F)
    where
        F: AsyncFn() -> HashMap<String, u64>,
    {
        self.finish_listening(test, queue_counts).await.stop().await;
    }

    /// Stops the stream, waits until the broker confirmed every login
    /// sent, then checks the outcome: every login in the log, every first
    /// login revoked once and its revoke received by the listener (each
    /// revoked session with one event id, however many deliveries), nothing
    /// else revoked, the outbox empty, and the worker's and the app's
    /// queues empty (nothing dead-lettered, nothing left), as
    /// `queue_counts` gives them (messages ready or unacked, by queue name).
    /// The listener keeps running, for checks of later revokes.
    pub async fn finish_listening<F>(self, test: &TestApp, queue_counts: F) -> Listening
    where
        F: AsyncFn() -> HashMap<String, u64>,
    {
        let _ = self.stop_sending.send(true);
        let users = self.sending.await.unwrap();
        let Ok(publisher) = Arc::try_unwrap(self.publisher) else {
            panic!("the sender is done with the publisher");
        };
        tokio::time::timeout(Duration::from_secs(90), publisher.close())
            .await
            .expect("the publisher's events confirmed in time")
            .expect("every login sent was confirmed");
        let app = self.app.as_str();
        eprintln!("{users} users, {} logins confirmed", 2 * users);

        until("every confirmed login in the log", || async {
            logged(test, app).await == Some(2 * users as i64)
        })
        .await;
        until("the outbox to drain", || async {
            outbox_len(test).await == Some(0)
        })
        .await;
        // Per user: the two logins, one active, one revoked for the limit.
        let as_expected: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT user_id FROM sessions WHERE app = $1 GROUP BY user_id
               HAVING count(*) = 2
                  AND count(*) FILTER (WHERE end_reason IS NULL) = 1
                  AND count(*) FILTER (WHERE end_reason = 'session_limit') = 1) u",
        )
        .bind(app)
        .fetch_one(&test.pool)
        .await
        .unwrap();
        assert_eq!(
            as_expected, users as i64,
            "users with one active, one revoked"
        );
        let revoked: Vec<String> = sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE app = $1 AND end_reason = 'session_limit'",
        )
        .bind(app)
        .fetch_all(&test.pool)
        .await
        .unwrap();
        let revoked: HashSet<String> = revoked.into_iter().collect();

        let received = self.listening.received.clone();
        until("the listener to receive every revoke", || async {
            let got: HashSet<String> = received
                .lock()
                .unwrap()
                .iter()
                .map(|(s, _)| s.clone())
                .collect();
            got.len() >= revoked.len()
        })
        .await;
        // Every revoked session has one revoke (one event id), however many
        // times the broker delivered it; and nothing else was revoked.
        let deliveries = received.lock().unwrap().clone();
        let mut ids: HashMap<String, HashSet<uuid::Uuid>> = HashMap::new();
        for (session, id) in &deliveries {
            ids.entry(session.clone()).or_default().insert(*id);
        }
        let received_sessions: HashSet<String> = ids.keys().cloned().collect();
        assert_eq!(
            received_sessions, revoked,
            "revokes received = sessions revoked"
        );
        let twice: Vec<_> = ids.iter().filter(|(_, ids)| ids.len() != 1).collect();
        assert!(
            twice.is_empty(),
            "sessions revoked more than once: {twice:?}"
        );
        eprintln!(
            "{} revokes received, {} deliveries (redeliveries: {})",
            ids.len(),
            deliveries.len(),
            deliveries.len() - ids.len()
        );

        // Nothing dead-lettered, nothing left: the worker's queues and the
        // app's (ready and unacked; the counts of a quorum queue lag its
        // acks by a few seconds).
        let dead_letters = format!("{}.dead", names::revoke_queue(&self.app));
        let revokes = names::revoke_queue(&self.app);
        let queues = [
            test.settings.amqp.dead_letter_queue.as_str(),
            dead_letters.as_str(),
            test.settings.amqp.events_queue.as_str(),
            revokes.as_str(),
        ];
        until("every queue empty", || async {
            let counts = queue_counts().await;
            queues.iter().all(|q| counts.get(*q) == Some(&0))
        })
        .await;
        self.listening
    }
}

/// Rows of `app` in the test's log, or `None` while the database does not
/// answer (a failover).
pub async fn logged(test: &TestApp, app: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM sessions WHERE app = $1")
        .bind(app)
        .fetch_one(&test.pool)
        .await
        .ok()
}

/// Rows in the outbox, or `None` while the database does not answer.
async fn outbox_len(test: &TestApp) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&test.pool)
        .await
        .ok()
}

/// Polls `condition` every 50 ms until it holds, or fails the test after
/// [`UNTIL`].
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + UNTIL;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until at least `more` more logins of `app` are in the log than
/// when it is called: the workers are processing again. How long that took.
pub async fn progress(test: &TestApp, app: &str, more: i64) -> Duration {
    let start = Instant::now();
    let deadline = start + UNTIL;
    let from = loop {
        if let Some(n) = logged(test, app).await {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the log to answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    until(&format!("{more} more logins in the log"), || async {
        logged(test, app).await.is_some_and(|n| n >= from + more)
    })
    .await;
    start.elapsed()
}

/// Messages (ready and unacked) of every queue, by name, from `rabbitmqctl
/// list_queues name messages --no-table-headers -q`.
pub fn parse_queue_counts(list: &str) -> HashMap<String, u64> {
    list.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(name, n)| Some((name.to_owned(), n.trim().parse().ok()?)))
        .collect()
}

/// [`parse_queue_counts`] of the machine's broker (127.0.0.1:5672).
pub async fn machine_queue_counts() -> HashMap<String, u64> {
    parse_queue_counts(
        &rabbitmqctl(&[
            "list_queues",
            "name",
            "messages",
            "--no-table-headers",
            "-q",
        ])
        .await,
    )
}
