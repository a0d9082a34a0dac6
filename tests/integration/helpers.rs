//! Test harness: a fresh database and unique RabbitMQ names per test, a worker
//! running in-process (or as a real process), and listeners for revokes and
//! dead letters. Everything a test creates is deleted when its `TestApp` drops,
//! even after a failed assertion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{Value, json};
use session_guard::apply::{self, BatchOutcome, Enforcement};
use session_guard::broker;
use session_guard::configuration::with_database;
use session_guard::domain::event::SessionEvent;
use session_guard::domain::revoke::RevokeMessage;
/// Tests compare the states of `TestApp::states` with it.
pub use session_guard::domain::session::SessionState;
use session_guard::domain::session::{EndReason, state_of};
use session_guard::shutdown::CancellationToken;
use session_guard::{Settings, Worker};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How long a test listens to be sure something does NOT arrive, once the
/// worker has provably processed everything before it (see `settle`).
pub const QUIET: Duration = Duration::from_millis(400);

/// One test's services and workers; everything it made is deleted on drop.
pub struct TestApp {
    /// The settings of this test's workers, in-process and processes alike.
    pub settings: Settings,
    /// The test's own pool on its database, for checking the log.
    pub pool: PgPool,
    /// The test's own connection: publishes events, listens for revokes.
    connection: Connection,
    /// A confirm channel, so `publish` knows the broker has the event.
    pub publisher: Channel,
    /// Every revoke the workers publish, in the order they arrive.
    revokes: Consumer,
    /// The dead-letter queue, consumed so tests can see what was refused.
    dead: Consumer,
    /// The in-process worker, while one runs: its stop token and task.
    worker: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// Health of the in-process worker, while one runs.
    pub health: Option<std::sync::Arc<session_guard::health::Health>>,
    /// Worker processes of this test, by index; killed on drop.
    processes: Vec<Child>,
    /// Where the config files of the processes this test starts are written;
    /// removed with the test.
    config_dir: tempfile::TempDir,
    /// The test's database, to cut it off and restore it.
    db_name: String,
    /// Counter for the marker sessions `settle` uses.
    markers: u32,
}

/// A unique suffix for this test's names.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Settings for one test: the defaults (and the environment, so CI can point
/// at other servers), with a fresh database and unique AMQP names.
pub fn test_settings() -> Settings {
    let mut s = Settings::load(None).expect("default settings load");
    let id = unique();
    s.database.url = with_database(&s.database.url, &format!("sg_test_{id}"));
    s.amqp.events_exchange = format!("sg_test.{id}.events");
    s.amqp.events_queue = format!("sg_test.{id}.events");
    s.amqp.revocations_exchange = format!("sg_test.{id}.revocations");
    s.amqp.notices_exchange = format!("sg_test.{id}.notices");
    s.amqp.dead_letter_exchange = format!("sg_test.{id}.dead");
    s.amqp.dead_letter_queue = format!("sg_test.{id}.dead");
    s.worker.batch_wait_ms = 2;
    s.worker.max_backoff_ms = 1000;
    s.worker.shutdown_timeout = 20;
    s.http.listen = String::new();
    s.api.listen = String::new();
    s
}

/// Starts a test: database, topology, listeners and an in-process worker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut app = spawn_app_without_worker(configure).await;
    app.start_worker().await;
    app
}

/// Like `spawn_app_with`, but no worker yet: `start_worker` or `spawn_process`.
pub async fn spawn_app_without_worker(configure: impl FnOnce(&mut Settings)) -> TestApp {
    // Logs of the in-process worker, shown for failing tests (RUST_LOG to tune).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "session_guard=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
    let mut settings = test_settings();
    configure(&mut settings);
    let db_name = database_name(&settings.database.url);
    let pool = session_guard::db::connect_and_migrate(&settings.database)
        .await
        .expect("test database");

    let connection = broker::connect(&settings.amqp, "tests")
        .await
        .expect("RabbitMQ is running on 127.0.0.1:5672");
    broker::declare_topology(&connection, &settings.amqp)
        .await
        .expect("topology");
    let revokes = revoke_listener(&connection, &settings.amqp.revocations_exchange).await;
    let dead_channel = connection.create_channel().await.unwrap();
    let dead = dead_channel
        .basic_consume(
            settings.amqp.dead_letter_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = broker::confirm_channel(&connection).await.unwrap();
    TestApp {
        settings,
        pool,
        connection,
        publisher,
        revokes,
        dead,
        worker: None,
        health: None,
        processes: Vec::new(),
        config_dir: tempfile::Builder::new()
            .prefix("sg-test-")
            .tempdir()
            .expect("a temporary directory"),
        db_name,
        markers: 0,
    }
}

/// A received revoke, with the AMQP properties that matter.
#[derive(Debug, Clone)]
pub struct Revoke {
    /// The body, parsed as apps parse it.
    pub body: RevokeMessage,
    /// The body as it came, as JSON (for the contract's schema).
    pub json: Value,
    /// The AMQP `type` property.
    pub message_type: Option<String>,
    /// The AMQP `app_id` property.
    pub app_id: Option<String>,
    /// `revoke.<app>`: how apps subscribe to their own.
    pub routing_key: String,
    /// The AMQP `message_id` property.
    pub message_id: Option<String>,
    /// The AMQP `content_type` property.
    pub content_type: Option<String>,
    /// Delivery mode 2: the revoke survives a broker restart.
    pub persistent: bool,
}

/// A message found in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The refused message's body, unchanged.
    pub body: Vec<u8>,
    /// The `x-session-guard-error` header.
    pub error: Option<String>,
    /// The `x-session-guard-error-kind` header.
    pub kind: Option<String>,
    /// Every AMQP header, as a JSON object (for the contract's schema).
    pub headers: Value,
    /// The events queue's `x-delivery-count` when it was dead-lettered: 0
    /// for a first delivery.
    pub delivery_count: u32,
}

impl TestApp {
    /// Starts a worker in this process (the test's tokio runtime).
    pub async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "a worker is already running");
        let worker = Worker::builder(self.settings.clone())
            .build()
            .await
            .expect("worker builds");
        self.health = Some(worker.health());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
        self.worker = Some((stop, handle));
    }

    /// Runs a worker built by the test (e.g. with hooks of its own).
    pub fn run_worker(&mut self, worker: Worker) {
        assert!(self.worker.is_none(), "a worker is already running");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
        self.worker = Some((stop, handle));
    }

    /// Stops the in-process worker gracefully and waits for it.
    pub async fn stop_worker(&mut self) {
        let (stop, handle) = self.worker.take().expect("no worker running");
        stop.cancel();
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("worker stops in time")
            .expect("worker task")
            .expect("worker returns Ok");
    }

    /// Writes `settings` to a config file of its own for one process, so
    /// that every setting the test made (rules included, which have no
    /// environment variable) reaches it; returns the file's path.
    pub fn config_file(&self, settings: &Settings) -> PathBuf {
        let mut table = toml::Table::try_from(settings).expect("settings serialize to TOML");
        // Settings serialize their URLs redacted (they are printed); the
        // process needs the real ones.
        for (section, url) in [
            ("database", &settings.database.url),
            ("amqp", &settings.amqp.url),
        ] {
            table[section]
                .as_table_mut()
                .expect("a section")
                .insert("url".into(), url.clone().into());
        }
        let path = self.config_dir.path().join(format!("{}.toml", unique()));
        std::fs::write(&path, toml::to_string(&table).expect("TOML")).expect("config file written");
        path
    }

    /// A `session-guard` command with this test's settings.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.settings, args)
    }

    /// A `session-guard` command with `settings`, given in a config file
    /// (environment variables the command is given override them).
    pub fn command_with(&self, settings: &Settings, args: &[&str]) -> Command {
        let config = self.config_file(settings);
        let mut cmd = bare_command(&[]);
        cmd.arg("--config").arg(config).args(args);
        cmd
    }

    /// Starts `session-guard run` as a child process; returns its index.
    pub fn spawn_process(&mut self) -> usize {
        let child = self
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("session-guard binary starts");
        self.adopt_process(child)
    }

    /// Takes charge of a process the test started itself (killed on drop).
    pub fn adopt_process(&mut self, child: Child) -> usize {
        self.processes.push(child);
        self.processes.len() - 1
    }

    /// Kills a child process with SIGKILL, as a crash would, and reaps it.
    pub async fn kill_process(&mut self, index: usize) {
        self.processes[index].kill().await.expect("SIGKILL");
    }

    /// Closes the RabbitMQ connections of this test's workers (in-process or
    /// processes), as a network fault would; the test's own stay. Returns
    /// how many consumer and relay connections were closed.
    pub async fn close_worker_connections(&self) -> (usize, usize) {
        let queue = &self.settings.amqp.events_queue;
        let mut closed = [0, 0];
        for (n, role) in closed.iter_mut().zip(["consumer", "relay"]) {
            for pid in connections_named(&format!("session-guard {role} ({queue})")).await {
                if close_connection(&pid).await {
                    *n += 1;
                }
            }
        }
        (closed[0], closed[1])
    }

    /// Messages in the events queue, ready or delivered and not yet acked.
    pub async fn events_in_queue(&self) -> u64 {
        rabbitmqctl(&[
            "list_queues",
            "name",
            "messages",
            "--no-table-headers",
            "-q",
        ])
        .await
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == self.settings.amqp.events_queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
    }

    /// Consumers on the events queue, as the broker counts them.
    pub async fn events_queue_consumers(&self) -> u32 {
        // A channel of its own: a failed passive declare would close it.
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                self.settings.amqp.events_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the events queue exists");
        let _ = channel.close(200, "done".into()).await;
        queue.consumer_count()
    }

    /// Fails if a dead letter arrives within `wait`.
    pub async fn assert_no_dead_letters(&mut self, wait: Duration) {
        if let Some(d) = self.dead_letter_within(wait).await {
            panic!(
                "unexpected dead letter: {:?} {:?}",
                String::from_utf8_lossy(&d.body),
                d.headers
            );
        }
    }

    /// Cuts this test's database off: its connections are terminated and new
    /// ones refused until `restore_database`. The test's own pool is cut too.
    pub async fn cut_database(&self) {
        let admin = self.admin_pool().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.db_name
        )))
        .execute(&admin)
        .await
        .unwrap();
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.db_name)
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }

    pub async fn restore_database(&self) {
        let admin = self.admin_pool().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.db_name
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }

    async fn admin_pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&with_database(&self.settings.database.url, "postgres"))
            .await
            .expect("admin connection")
    }

    /// Every revoke that arrives until none has for `quiet`.
    pub async fn drain_revokes(&mut self, quiet: Duration) -> Vec<Revoke> {
        let mut got = Vec::new();
        while let Some(r) = self.next_revoke(quiet).await {
            got.push(r);
        }
        got
    }

    /// Rows in the session log for `app`.
    pub async fn logged(&self, app: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE app = $1")
            .bind(app)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Whether child process `index` is still running (not exited).
    pub fn process_running(&mut self, index: usize) -> bool {
        matches!(self.processes[index].try_wait(), Ok(None))
    }

    /// Whether the in-process worker's task is still running.
    pub fn worker_running(&self) -> bool {
        self.worker.as_ref().is_some_and(|(_, h)| !h.is_finished())
    }

    /// Sends SIGTERM to a child process and waits for its exit code.
    pub async fn terminate_process(&mut self, index: usize) -> Option<i32> {
        let child = &mut self.processes[index];
        signal(child, Signal::SIGTERM);
        tokio::time::timeout(PATIENCE, child.wait())
            .await
            .expect("process did not exit after SIGTERM")
            .expect("reaped")
            .code()
    }

    /// Publishes one event (any JSON) as an app would, and waits for the confirm.
    pub async fn publish(&self, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("unknown");
        let app = event["app"].as_str().unwrap_or("unknown");
        self.publish_raw(&format!("{kind}.{app}"), event.to_string().as_bytes())
            .await;
    }

    /// Publishes raw bytes to the events exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .publisher
            .basic_publish(
                self.settings.amqp.events_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused the event");
    }

    /// Publishes `body` to `exchange` with `properties` on the test's
    /// channel, and checks that the broker confirms it.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Waits until the worker has handled everything published before this
    /// call, and the relay has published every revoke that produced. Works
    /// with one worker, which handles deliveries in order.
    pub async fn settle(&mut self) {
        self.markers += 1;
        let session = format!("marker-{}", self.markers);
        self.publish(&json!({
            "type": "logout", "app": "settle-marker", "session_id": session,
            "occurred_at": Utc::now().to_rfc3339(),
        }))
        .await;
        self.wait_for("the marker event to be processed", || {
            let pool = self.pool.clone();
            let session = session.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM sessions WHERE app = 'settle-marker' AND session_id = $1",
                )
                .bind(session)
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            }
        })
        .await;
        self.wait_outbox_empty().await;
    }

    /// Waits until the relay has published (and deleted) every revoke in the
    /// outbox.
    pub async fn wait_outbox_empty(&self) {
        self.wait_for("the outbox to drain", || async {
            self.outbox_len().await == 0
        })
        .await;
    }

    /// Polls `condition` until it holds, or fails the test.
    pub async fn wait_for<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !condition().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until some connection to the test's database waits for a lock
    /// (a batch held up by a transaction the test keeps open), or fails the
    /// test: `what` says whose.
    pub async fn wait_for_lock_wait(&self, what: &str) {
        self.wait_for(what, || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            waiting > 0
        })
        .await;
    }

    /// The next revoke, or `None` if none arrives within `wait`.
    pub async fn next_revoke(&mut self, wait: Duration) -> Option<Revoke> {
        let delivery = match tokio::time::timeout(wait, self.revokes.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("revoke listener failed: {other:?}"),
            Err(_) => return None,
        };
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let property = |p: &Option<lapin::types::ShortString>| p.as_ref().map(|s| s.to_string());
        Some(Revoke {
            body: serde_json::from_slice(&delivery.data).expect("revoke body is JSON of v1"),
            json: serde_json::from_slice(&delivery.data).expect("revoke body is JSON"),
            message_type: property(delivery.properties.kind()),
            app_id: property(delivery.properties.app_id()),
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.to_string()),
            persistent: *delivery.properties.delivery_mode() == Some(2),
        })
    }

    /// Exactly `n` revokes: waits for them, then makes sure no more come.
    /// Call `settle` first so that "no more" means something.
    pub async fn expect_revokes(&mut self, n: usize) -> Vec<Revoke> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_revoke(PATIENCE).await {
                Some(r) => got.push(r),
                None => panic!("expected {n} revokes, got {}: {got:#?}", got.len()),
            }
        }
        if let Some(extra) = self.next_revoke(QUIET).await {
            panic!("expected {n} revokes, got one more: {extra:#?} after {got:#?}");
        }
        got
    }

    /// The next dead-lettered message.
    pub async fn next_dead_letter(&mut self) -> DeadLetter {
        self.dead_letter_within(PATIENCE)
            .await
            .expect("a dead letter within PATIENCE")
    }

    /// The next dead-lettered message, or `None` if none arrives within `wait`.
    pub async fn dead_letter_within(&mut self, wait: Duration) -> Option<DeadLetter> {
        let delivery = match tokio::time::timeout(wait, self.dead.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("dead-letter listener failed: {other:?}"),
            Err(_) => return None,
        };
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let headers = delivery.properties.headers().as_ref().map_or_else(
            || json!({}),
            |h| amqp_to_json(&AMQPValue::FieldTable(h.clone())),
        );
        let text = |name: &str| headers.get(name).and_then(Value::as_str).map(str::to_owned);
        Some(DeadLetter {
            delivery_count: session_guard_amqp::quorum::delivery_count(&delivery.properties),
            body: delivery.data,
            error: text(broker::ERROR_HEADER),
            kind: text(broker::ERROR_KIND_HEADER),
            headers,
        })
    }

    /// The state of each of a user's sessions in an app, by session id, as
    /// the domain (and so `session-guard sessions`) tells it.
    pub async fn states(&self, user: &str, app: &str) -> HashMap<String, SessionState> {
        let rows: Vec<(String, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT session_id, end_reason, expires_at FROM sessions WHERE user_id = $1 AND app = $2",
        )
        .bind(user)
        .bind(app)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let now = Utc::now();
        rows.into_iter()
            .map(|(id, reason, expires)| {
                let reason = reason.as_deref().and_then(EndReason::parse);
                (id, state_of(reason, expires, now))
            })
            .collect()
    }

    /// Session ids of a user's active sessions in an app, sorted.
    pub async fn active(&self, user: &str, app: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .states(user, app)
            .await
            .into_iter()
            .filter(|(_, s)| *s == SessionState::Active)
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Drop cannot wait for an in-process worker's tasks: they stop only once
/// the test's runtime runs again. A test that goes on after dropping a
/// `TestApp` calls `stop_worker` first, or those tasks reconnect and
/// declare the deleted topology again.
impl Drop for TestApp {
    fn drop(&mut self) {
        // Killed and reaped before the topology is deleted, or a worker
        // would declare it again. Drop cannot await: a short blocking poll.
        for child in &mut self.processes {
            let _ = child.start_kill();
            let deadline = std::time::Instant::now() + PATIENCE;
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some((stop, handle)) = self.worker.take() {
            stop.cancel();
            handle.abort();
        }
        let settings = self.settings.clone();
        on_own_runtime(async move {
            broker::delete_topology(&settings.amqp, "test cleanup").await;
            // Ends the test pool's connections too (they live on the
            // test's runtime, which is blocked here).
            use sqlx::migrate::MigrateDatabase as _;
            let _ = sqlx::Postgres::force_drop_database(&settings.database.url).await;
        });
        let _ = &self.connection;
    }
}

/// Runs `cleanup` to its end on a thread with a runtime of its own: for
/// Drop, which cannot await, while the test's runtime is blocked in it.
pub fn on_own_runtime(cleanup: impl Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cleanup);
    })
    .join()
    .ok();
}

/// A fresh, migrated database of its own, without a broker or a worker, for
/// tests that call the store directly; dropped with the value.
pub struct TestDatabase {
    /// Settings naming the database (no broker is set up).
    pub settings: Settings,
    /// A pool on the database.
    pub pool: PgPool,
}

impl TestDatabase {
    pub async fn new() -> TestDatabase {
        let settings = test_settings();
        let pool = session_guard::db::connect_and_migrate(&settings.database)
            .await
            .expect("test database");
        TestDatabase { settings, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let url = self.settings.database.url.clone();
        // As in TestApp's drop: a runtime of its own, the test's is blocked.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::migrate::MigrateDatabase as _;
                let _ = sqlx::Postgres::force_drop_database(&url).await;
            });
        })
        .join()
        .ok();
    }
}

/// An AMQP header value as JSON: strings (long strings read as UTF-8, as
/// an app would), numbers, booleans, tables as objects, arrays as arrays.
pub fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

/// The broker's ids of the connections whose client properties (their
/// client-provided name, among others) contain `name`. tokio's Command: a
/// blocking wait would freeze an in-process worker sharing the test's runtime.
pub async fn connections_named(name: &str) -> Vec<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .map(|line| line.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// Closes a connection from the broker's side, as an operator, a failing
/// node or a network fault would; whether the broker did.
pub async fn close_connection(pid: &str) -> bool {
    tokio::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "injected fault"])
        .output()
        .await
        .expect("rabbitmqctl runs")
        .status
        .success()
}

/// A `session-guard` command without this test's settings, for tests that
/// give their own `--config`. The test process's `SESSION_GUARD__*`
/// variables are not passed on: `test_settings` already applied them, and
/// they would override the config file of `TestApp::command`.
pub fn bare_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-guard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SESSION_GUARD__") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .env("RUST_LOG", "session_guard=debug,warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Sends `signal` to a child process that has not been reaped yet.
pub fn signal(child: &Child, signal: Signal) {
    let pid = child.id().expect("the process has not been reaped");
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"));
    nix::sys::signal::kill(pid, signal).expect("the signal is sent");
}

/// An exclusive queue, gone with `connection`, bound like an app that wants
/// every app's revokes, and a consumer on it.
pub async fn revoke_listener(connection: &Connection, revocations_exchange: &str) -> Consumer {
    let channel = connection.create_channel().await.unwrap();
    let queue = broker::declare_revoke_tap(&channel, revocations_exchange)
        .await
        .unwrap();
    channel
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// Runs `rabbitmqctl` with `args`, failing the test if it fails; its stdout.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A RabbitMQ user of the test's own, deleted on drop (even after a failed
/// assertion). The shared `guest` user is never touched: other tests use it.
pub struct BrokerUser {
    /// A unique user name, `sg_test_...`.
    pub name: String,
}

impl BrokerUser {
    /// Creates the user with `password` and the vhost permissions
    /// (configure, write, read regular expressions).
    pub async fn create(password: &str, permissions: [&str; 3]) -> BrokerUser {
        let name = format!("sg_test_{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_user", &name, password]).await;
        let user = BrokerUser { name };
        let [configure, write, read] = permissions;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            configure,
            write,
            read,
        ])
        .await;
        user
    }

    pub async fn change_password(&self, password: &str) {
        rabbitmqctl(&["change_password", &self.name, password]).await;
    }

    /// The broker's URL, logged in as this user.
    pub fn url(&self, password: &str) -> String {
        format!("amqp://{}:{password}@127.0.0.1:5672/%2f", self.name)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        // Drop cannot await: a blocking call, at the end of the test.
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// A free local port, for a worker's health endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on a worker's health endpoint at `listen` (host:port): the
/// status code and the body, or `None` while nothing answers there.
pub async fn http_get(listen: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{listen}{path}")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The hooks of the default chain, and `superuser_unlimited` between them.
pub fn with_superusers(s: &mut Settings) {
    s.limits.hooks = vec![
        "rules".into(),
        "superuser_unlimited".into(),
        "user_overrides".into(),
    ];
}

/// Event builders: the JSON an app would publish.
pub fn login(app: &str, session: &str, user: &str, at: DateTime<Utc>) -> Value {
    json!({
        "type": "login", "app": app, "session_id": session, "user_id": user,
        "occurred_at": at.to_rfc3339(), "ip": "192.0.2.10", "user_agent": "test-agent/1.0",
    })
}

pub fn request(app: &str, session: &str, user: &str, at: DateTime<Utc>) -> Value {
    json!({
        "type": "request", "app": app, "session_id": session, "user_id": user,
        "occurred_at": at.to_rfc3339(),
    })
}

/// An `attributes` event: what `app` now claims for `user`.
pub fn attributes(app: &str, user: &str, claim: Value, at: DateTime<Utc>) -> Value {
    json!({
        "type": "attributes", "app": app, "user_id": user,
        "occurred_at": at.to_rfc3339(), "attributes": claim,
    })
}

pub fn logout(app: &str, session: &str, at: DateTime<Utc>) -> Value {
    json!({
        "type": "logout", "app": app, "session_id": session,
        "occurred_at": at.to_rfc3339(),
    })
}

/// A time `secs` seconds after a fixed base ten minutes in the past, so tests
/// can order events by event time without waiting.
pub fn t(secs: i64) -> DateTime<Utc> {
    thread_local! {
        static BASE: DateTime<Utc> = (Utc::now() - chrono::Duration::seconds(600)).trunc_subsecs(6);
    }
    BASE.with(|b| *b + chrono::Duration::seconds(secs))
}

/// Applies `event` as a batch of its own, straight through the batch engine
/// (no broker, no worker), at the worker's clock now.
pub async fn apply_one(pool: &PgPool, enforcement: &Enforcement, event: Value) -> BatchOutcome {
    let event = SessionEvent::decode(event.to_string().as_bytes()).unwrap();
    apply::process_batch(pool, enforcement, &[event], Utc::now())
        .await
        .unwrap()
}

/// A file of the repository (docs, deploy/, docker-compose.yml), as text.
pub fn repository_file(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The database a one-database URL names (its last path segment, without
/// the query).
pub fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}
