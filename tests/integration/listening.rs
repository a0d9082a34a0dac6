//! What the client crate's listener tests share (client_listener.rs for
//! the RevocationListener, client_notices.rs for the NoticeListener): the
//! app's names and queues, a listener running in a task, what it handled,
//! its dead letters, the documented permissions.

use std::marker::PhantomData;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use session_guard_client::protocol::event::AppName;
use session_guard_client::{
    ListenerConfig, ListenerError, NoticeListener, RevocationListener, Revoke, SignInNotice,
};
use tokio::sync::{mpsc, oneshot};

use crate::helpers::*;

/// A unique app name, so that the app's revoke queues are the test's own.
pub fn unique_app() -> AppName {
    let id = uuid::Uuid::new_v4().simple().to_string();
    AppName::parse(&format!("lt_{}", &id[..12])).unwrap()
}

/// Deletes the queues and the exchange a listener declares for `app` when
/// dropped, even after a failed assertion.
pub struct AppQueues {
    url: String,
    queue: String,
}

impl AppQueues {
    pub fn of(config: &ListenerConfig) -> AppQueues {
        AppQueues {
            url: config.url.clone(),
            queue: config.queue.clone(),
        }
    }
}

impl Drop for AppQueues {
    fn drop(&mut self) {
        let (url, queue) = (self.url.clone(), self.queue.clone());
        // The test's runtime is blocked here (and with it any listener
        // still running on it).
        on_own_runtime(async move {
            let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            else {
                return;
            };
            let dead = format!("{queue}.dead");
            if let Ok(channel) = connection.create_channel().await {
                for q in [&queue, &dead] {
                    let _ = channel
                        .queue_delete(q.as_str().into(), Default::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(dead.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "test cleanup".into()).await;
        });
    }
}

/// A listener of the client crate, as [`Running`] drives it: connects, and
/// runs a handler until told to stop.
pub trait Listens: Sized + Send + 'static {
    /// What its handler gets: a [`Revoke`] or a [`SignInNotice`].
    type Message: Send + 'static;
    /// How long the test's handler waits before it answers.
    const PAUSE: Duration;

    fn connect_to(config: ListenerConfig) -> BoxFuture<'static, Result<Self, ListenerError>>;

    /// The listener's `run`, until `stopped` resolves.
    fn run_until(
        self,
        handler: Handler<Self::Message>,
        stopped: oneshot::Receiver<()>,
    ) -> BoxFuture<'static, Result<(), ListenerError>>;
}

/// A test's handler, boxed so that [`Listens`] can name it.
pub type Handler<M> = Box<dyn FnMut(M) -> BoxFuture<'static, Result<(), String>> + Send>;

impl Listens for RevocationListener {
    type Message = Revoke;
    /// Long enough for the broker to hand the next revoke to the other
    /// instance, if there is one.
    const PAUSE: Duration = Duration::from_millis(5);

    fn connect_to(config: ListenerConfig) -> BoxFuture<'static, Result<Self, ListenerError>> {
        Box::pin(RevocationListener::connect(config))
    }

    fn run_until(
        self,
        handler: Handler<Revoke>,
        stopped: oneshot::Receiver<()>,
    ) -> BoxFuture<'static, Result<(), ListenerError>> {
        Box::pin(self.run(handler, async move {
            let _ = stopped.await;
        }))
    }
}

impl Listens for NoticeListener {
    type Message = SignInNotice;
    const PAUSE: Duration = Duration::ZERO;

    fn connect_to(config: ListenerConfig) -> BoxFuture<'static, Result<Self, ListenerError>> {
        Box::pin(NoticeListener::connect(config))
    }

    fn run_until(
        self,
        handler: Handler<SignInNotice>,
        stopped: oneshot::Receiver<()>,
    ) -> BoxFuture<'static, Result<(), ListenerError>> {
        Box::pin(self.run(handler, async move {
            let _ = stopped.await;
        }))
    }
}

/// A listener running in a task of the test: every message it handles is
/// sent to `handled` with the listener's number, and `decide` chooses the
/// handler's answer.
pub struct Running<L> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ListenerError>>,
    listener: PhantomData<fn() -> L>,
}

impl<L: Listens> Running<L> {
    pub async fn start(
        config: ListenerConfig,
        number: usize,
        handled: mpsc::UnboundedSender<(usize, L::Message)>,
        decide: impl Fn(&L::Message) -> Result<(), String> + Send + 'static,
    ) -> Running<L> {
        let listener = L::connect_to(config)
            .await
            .expect("the listener connects and declares its queues");
        let (stop, stopped) = oneshot::channel::<()>();
        let handler: Handler<L::Message> = Box::new(move |message| {
            let answer = decide(&message);
            let _ = handled.send((number, message));
            Box::pin(async move {
                if !L::PAUSE.is_zero() {
                    tokio::time::sleep(L::PAUSE).await;
                }
                answer
            })
        });
        Running {
            stop: Some(stop),
            task: tokio::spawn(listener.run_until(handler, stopped)),
            listener: PhantomData,
        }
    }

    /// One listener, number 1, and what it handles.
    pub async fn alone(
        config: ListenerConfig,
        decide: impl Fn(&L::Message) -> Result<(), String> + Send + 'static,
    ) -> (Running<L>, mpsc::UnboundedReceiver<(usize, L::Message)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Running::start(config, 1, tx, decide).await, rx)
    }

    /// Stops the listener and checks that `run` returned `Ok`.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("run returns after the shutdown")
            .expect("listener task")
            .expect("run returns Ok");
    }
}

/// The next `n` handled revokes (or notices).
pub async fn handled<M: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<(usize, M)>,
    n: usize,
) -> Vec<(usize, M)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(r)) => got.push(r),
            _ => panic!("expected {n} handled revokes, got {}: {got:#?}", got.len()),
        }
    }
    got
}

/// Fails if the handler sees another revoke (or notice) within `QUIET`.
pub async fn no_more<M: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<(usize, M)>) {
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("one revoke too many: {extra:#?}");
    }
}

/// A dead letter of an app: the body, the error headers, the delivery count.
#[derive(Debug)]
pub struct AppDeadLetter {
    pub body: Vec<u8>,
    pub error: Option<String>,
    pub kind: Option<String>,
    pub routing_key: String,
}

/// The next message in the app's dead-letter queue.
pub async fn next_dead_letter(test: &TestApp, config: &ListenerConfig) -> AppDeadLetter {
    let connection = Connection::connect(&config.url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            config.dead_letter_queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("nothing in {}: {other:?}", config.dead_letter_queue()),
    };
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let header = |name: &str| {
        delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name).cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
    };
    let dead = AppDeadLetter {
        body: delivery.data.clone(),
        error: header("x-session-guard-error"),
        kind: header("x-session-guard-error-kind"),
        routing_key: delivery.routing_key.to_string(),
    };
    let _ = connection.close(200, "done".into()).await;
    let _ = test;
    dead
}

/// Messages ready in `queue` (not counting those delivered and unacked).
pub async fn ready(url: &str, queue: &str) -> u32 {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    q.message_count()
}

/// A RabbitMQ user of the test's own for an app, and its password.
pub struct AppUser {
    user: BrokerUser,
    password: String,
}

impl AppUser {
    /// A user with the permissions docs/SECURITY.md gives the app `shop`
    /// (publisher, revoke and notice subscriber), for `app` and the test's
    /// exchanges.
    pub async fn as_documented(test: &TestApp, app: &AppName) -> AppUser {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SECURITY.md"))
            .unwrap();
        let line = doc
            .lines()
            .find(|l| l.starts_with("rabbitmqctl set_permissions -p / shop "))
            .expect("SECURITY.md gives the app's permissions");
        let escape = |name: &str| name.replace('.', "\\.");
        let amqp = &test.settings.amqp;
        let line = line
            .replace(
                "session_guard\\.revocations",
                &escape(&amqp.revocations_exchange),
            )
            .replace("session_guard\\.events", &escape(&amqp.events_exchange))
            .replace("session_guard\\.notices", &escape(&amqp.notices_exchange))
            .replace("shop", app.as_str());
        let regexps: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        let permissions: [&str; 3] = regexps.try_into().unwrap_or_else(|_| panic!("{line}"));
        let password = uuid::Uuid::new_v4().simple().to_string();
        AppUser {
            user: BrokerUser::create(&password, permissions).await,
            password,
        }
    }

    pub fn url(&self) -> String {
        self.user.url(&self.password)
    }
}
