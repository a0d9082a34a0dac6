//! `session-guard demo`: the whole flow in a few seconds against the local
//! services. A fake app logs one user in from two browsers through the
//! client crate, a worker running in this process revokes the older
//! session, the app ends it, the app gets a notice that the phone was a new
//! device, and the session log is shown. Everything runs
//! under names of the demo's own, removed at the end, also after an error
//! or Ctrl-C.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use session_guard_amqp::url::redact_url;
use session_guard_client::protocol::event::AppName;
use session_guard_client::{
    EventPublisher, ListenerConfig, ListenerError, NoticeListener, PublisherConfig,
    RevocationListener, Revoke, SignInNotice,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::session_listing::{Listing, print_sessions};
use crate::configuration::{Settings, with_database};
use crate::health::Health;
use crate::shutdown::{self, CancellationToken};
use crate::{Worker, broker};

/// Options of `session-guard demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Wait for Enter after each step, to look at the database and the
    /// queues meanwhile (`session-guard sessions` with the demo's database,
    /// whose URL it prints; `rabbitmqctl list_queues`).
    #[arg(long)]
    pub pause: bool,
}

/// The fake app.
const APP: &str = "shop";
/// The user who logs in twice.
const USER: &str = "alice";
/// How long the demo waits for the worker's revoke before giving up.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long each part may take to stop during the clean-up.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// One of the user's browsers.
struct Browser {
    /// The device it runs on.
    device: &'static str,
    /// The browser's name.
    name: &'static str,
    /// The app's session id for it.
    session: &'static str,
    /// The address it connects from (documentation ranges).
    ip: IpAddr,
    /// Its user agent.
    user_agent: &'static str,
}

/// The two browsers, in the order they log in.
const BROWSERS: [Browser; 2] = [
    Browser {
        device: "laptop",
        name: "Firefox",
        session: "s-laptop",
        ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0",
    },
    Browser {
        device: "phone",
        name: "Safari",
        session: "s-phone",
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 54)),
        user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) Safari/604.1",
    },
];

/// A task and what stops it.
type Task<S, T> = (S, JoinHandle<T>);

/// What the demo started, stopped in the clean-up whatever happened.
#[derive(Default)]
struct Parts {
    /// The in-process worker.
    worker: Option<Task<CancellationToken, anyhow::Result<()>>>,
    /// The fake app's revocation listener.
    listener: Option<Task<oneshot::Sender<()>, Result<(), ListenerError>>>,
    /// The fake app's event publisher.
    publisher: Option<EventPublisher>,
    /// The fake app's notice listener.
    notices: Option<Task<oneshot::Sender<()>, Result<(), ListenerError>>>,
    /// The database exists and the worker runs: from then on the clean-up
    /// reports what it cannot remove.
    created: bool,
}

/// The demo's names: a database and exchanges and queues of its own.
struct Demo {
    /// The worker's settings: the configured servers, the demo's names, the
    /// built-in limits.
    settings: Settings,
    /// The fake app's listener configuration.
    listener: ListenerConfig,
    /// The fake app's notice listener configuration.
    notices: ListenerConfig,
    /// The database the demo creates.
    database: String,
    /// What every exchange and queue name starts with.
    prefix: String,
}

impl Demo {
    fn new(configured: &Settings) -> anyhow::Result<Demo> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        // The built-in limits and worker settings, whatever the configuration
        // says, so the demo shows what it says it shows; only the servers
        // and the log format are the configured ones.
        let mut settings = Settings::load_from(None, Vec::new())?;
        let database = format!("sg_demo_{id}");
        let prefix = format!("sg_demo.{id}");
        settings.database.url = with_database(&configured.database.url, &database);
        settings.amqp.url = configured.amqp.url.clone();
        settings.amqp.events_exchange = format!("{prefix}.events");
        settings.amqp.events_queue = format!("{prefix}.events");
        settings.amqp.revocations_exchange = format!("{prefix}.revocations");
        settings.amqp.notices_exchange = format!("{prefix}.notices");
        settings.amqp.dead_letter_exchange = format!("{prefix}.dead");
        settings.amqp.dead_letter_queue = format!("{prefix}.dead");
        settings.http.listen = String::new();
        // The demo's worker serves no sessions API: nothing calls it, and
        // the port may belong to a worker already running here.
        settings.api.listen = String::new();
        settings.log = configured.log.clone();
        // The phone is a new device for alice: the demo shows its notice
        // (whatever the configuration says of notices).
        settings.notices.enabled = true;
        let app = AppName::parse(APP).expect("a valid app name");
        let mut listener = ListenerConfig::new(settings.amqp.url.clone(), app.clone());
        listener.exchange = settings.amqp.revocations_exchange.clone();
        listener.queue = format!("{prefix}.{APP}.revocations");
        let mut notices = ListenerConfig::notices(settings.amqp.url.clone(), app);
        notices.exchange = settings.amqp.notices_exchange.clone();
        notices.queue = format!("{prefix}.{APP}.notices");
        Ok(Demo {
            settings,
            listener,
            notices,
            database,
            prefix,
        })
    }
}

/// Runs the demo, then removes what it created (also after an error, a
/// panic or Ctrl-C).
pub(super) async fn run(configured: &Settings, args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let demo = Demo::new(configured)?;
    let mut parts = Parts::default();
    let played = tokio::select! {
        played = AssertUnwindSafe(play(&demo, &mut parts, args.pause)).catch_unwind() => {
            played.unwrap_or_else(|_| Err(anyhow::anyhow!("the demo crashed")))
        }
        () = shutdown::signal() => Err(anyhow::anyhow!("interrupted")),
    };
    println!();
    let cleaned = clean_up(&demo, parts).await;
    match &cleaned {
        None => {}
        Some(Ok(())) => println!(
            "Removed everything the demo created: database {}, exchanges and queues {}.*",
            demo.database, demo.prefix
        ),
        Some(Err(e)) => println!("Could not remove everything the demo created: {e:#}"),
    }
    played?;
    cleaned.transpose()?;
    println!(
        "Done in {:.1} s. To wire your own app: clients/rust/README.md.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The app's session store: session id -> the device it runs on.
type AppSessions = Arc<Mutex<HashMap<String, &'static str>>>;

/// Revokes the app's listener handled, each with the device whose session
/// it ended (if the app still had it).
type Handled = mpsc::UnboundedReceiver<(Revoke, Option<&'static str>)>;

/// Notices the app's notice listener handled.
type Noticed = mpsc::UnboundedReceiver<SignInNotice>;

/// The steps, printed as they happen.
async fn play(demo: &Demo, parts: &mut Parts, pause: bool) -> anyhow::Result<()> {
    introduce(demo);
    if pause {
        // The demo's database is its own, not the configured one: say how
        // to point the commands at it while it waits.
        println!(
            "   To look around meanwhile: SESSION_GUARD__DATABASE__URL='{}' session-guard sessions --user {USER} --all",
            redact_url(&demo.settings.database.url)
        );
    }
    let sessions = AppSessions::default();
    let (mut revokes, mut notices) = set_up(demo, parts, &sessions).await?;
    wait_for_enter(pause).await;
    let publisher = parts.publisher.as_ref().expect("set up");
    log_in_twice(publisher, &sessions).await?;
    wait_for_enter(pause).await;
    show_revoke(demo, &sessions, &mut revokes).await?;
    wait_for_enter(pause).await;
    show_notice(&mut notices).await?;
    wait_for_enter(pause).await;

    println!();
    println!("5. The session log (what `session-guard sessions --user {USER} --all` shows):");
    let listing = Listing {
        user: USER,
        app: Some(APP),
        all: true,
        json: false,
    };
    print_sessions(&demo.settings.database, &listing).await?;
    Ok(())
}

/// The app, the user and the limit the demo shows.
fn introduce(demo: &Demo) {
    let limits = &demo.settings.limits;
    let allowed = limits.max_sessions;
    println!("session-guard demo: the web app {APP:?}, and {USER} logging in from two browsers.");
    println!(
        "Limit: {allowed} session{} per user and app (limits.max_sessions); beyond it, the oldest \
         login goes (limits.policy = {}).",
        if allowed == 1 { "" } else { "s" },
        limits.policy
    );
    println!();
}

/// Step 1: the worker (creating the database and the topology), then the
/// app's listeners and publisher. Returns the revokes and the notices the
/// listeners handle.
async fn set_up(
    demo: &Demo,
    parts: &mut Parts,
    sessions: &AppSessions,
) -> anyhow::Result<(Handled, Noticed)> {
    println!("1. Setting up, under names of the demo's own:");
    // Said at once, rather than by a worker retrying in the background.
    let probe = broker::connect(&demo.settings.amqp, "demo").await?;
    let _ = probe.close(200, "checked".into()).await;
    let worker = Worker::builder(demo.settings.clone())
        .build()
        .await
        .context("cannot start the worker")?;
    let health = worker.health();
    let stop = CancellationToken::new();
    parts.worker = Some((
        stop.clone(),
        tokio::spawn(worker.run(stop.cancelled_owned())),
    ));
    parts.created = true;
    wait_until_ready(&health, parts).await?;
    println!("   database  {} (created, migrated)", demo.database);
    println!("   RabbitMQ  exchanges and queues {}.*", demo.prefix);
    println!("   worker    running in this process");
    let revokes = start_listener(demo, parts, sessions).await?;
    let notices = start_notice_listener(demo, parts).await?;
    let mut config =
        PublisherConfig::new(demo.settings.amqp.url.clone(), demo.listener.app.clone());
    config.exchange = demo.settings.amqp.events_exchange.clone();
    let publisher = EventPublisher::connect(config)
        .await
        .context("the app cannot connect its event publisher")?;
    parts.publisher = Some(publisher);
    println!(
        "   app       {APP:?}, with EventPublisher (sends its events), RevocationListener \
         (receives its revokes) and NoticeListener (its notices)"
    );
    Ok((revokes, notices))
}

/// The app's revocation listener: ends the session in the app's store and
/// passes the revoke on to the demo.
async fn start_listener(
    demo: &Demo,
    parts: &mut Parts,
    sessions: &AppSessions,
) -> anyhow::Result<Handled> {
    let listener = RevocationListener::connect(demo.listener.clone())
        .await
        .context("the app cannot connect its revocation listener")?;
    let (revoked, revokes) = mpsc::unbounded_channel();
    let store = sessions.clone();
    let handler = move |revoke: Revoke| {
        // The app's part: forget the session, so its next request is
        // treated as logged out.
        let device = store.lock().unwrap().remove(&revoke.message.session_id);
        let _ = revoked.send((revoke, device));
        async { Ok::<(), Infallible>(()) }
    };
    let (stop_listener, stopped) = oneshot::channel::<()>();
    parts.listener = Some((
        stop_listener,
        tokio::spawn(listener.run(handler, async move {
            let _ = stopped.await;
        })),
    ));
    Ok(revokes)
}

/// Step 2: the user logs in from both browsers, a second apart.
async fn log_in_twice(publisher: &EventPublisher, sessions: &AppSessions) -> anyhow::Result<()> {
    println!();
    println!(
        "2. {USER} logs in on her {}, then on her {}; the app publishes a login event each time:",
        BROWSERS[0].device, BROWSERS[1].device
    );
    let first_login = chrono::Utc::now() - chrono::Duration::seconds(1);
    for (i, browser) in BROWSERS.iter().enumerate() {
        publisher
            .login(browser.session, USER)
            .ip(browser.ip)
            .user_agent(browser.user_agent)
            .occurred_at(first_login + chrono::Duration::seconds(i as i64))
            .send()
            .context("the app cannot hand the login over")?;
        sessions
            .lock()
            .unwrap()
            .insert(browser.session.to_owned(), browser.device);
        println!(
            "   session {:<9} {:<7} {:<8} {}",
            browser.session, browser.device, browser.name, browser.ip
        );
    }
    publisher
        .flush()
        .await
        .context("the broker did not confirm the logins")?;
    Ok(())
}

/// Step 3: the worker's revoke, as the app's listener handled it.
async fn show_revoke(
    demo: &Demo,
    sessions: &AppSessions,
    revokes: &mut Handled,
) -> anyhow::Result<()> {
    let allowed = demo.settings.limits.max_sessions;
    println!();
    println!(
        "3. The worker counts 2 sessions where {allowed} {} allowed and revokes the older one; the \
         app's listener:",
        if allowed == 1 { "is" } else { "are" }
    );
    let (revoke, device) = tokio::time::timeout(PATIENCE, revokes.recv())
        .await
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "no revoke arrived within {} s (is RabbitMQ healthy? `session-guard check-config` \
                 checks the services)",
                PATIENCE.as_secs()
            )
        })?;
    let m = &revoke.message;
    println!(
        "   received  revoke session {} of {}, reason {} (max_sessions {})",
        m.session_id, m.user_id, m.reason, m.max_sessions
    );
    let left: Vec<&str> = sessions.lock().unwrap().values().copied().collect();
    println!(
        "   ended it  {USER} is logged out on her {}, and still logged in on her {}",
        device.unwrap_or("unknown device"),
        if left.is_empty() {
            "nothing else".to_owned()
        } else {
            left.join(", ")
        }
    );
    Ok(())
}

/// The app's notice listener: passes each notice on to the demo.
async fn start_notice_listener(demo: &Demo, parts: &mut Parts) -> anyhow::Result<Noticed> {
    let listener = NoticeListener::connect(demo.notices.clone())
        .await
        .context("the app cannot connect its notice listener")?;
    let (noticed, notices) = mpsc::unbounded_channel();
    let handler = move |notice: SignInNotice| {
        let _ = noticed.send(notice);
        async { Ok::<(), Infallible>(()) }
    };
    let (stop_listener, stopped) = oneshot::channel::<()>();
    parts.notices = Some((
        stop_listener,
        tokio::spawn(listener.run(handler, async move {
            let _ = stopped.await;
        })),
    ));
    Ok(notices)
}

/// Step 4: the notice the app got about the phone's sign-in.
async fn show_notice(notices: &mut Noticed) -> anyhow::Result<()> {
    println!();
    println!(
        "4. The phone was a device {USER} had not signed in from: the app gets a notice, to email her:"
    );
    let notice = tokio::time::timeout(PATIENCE, notices.recv())
        .await
        .ok()
        .flatten()
        .with_context(|| format!("no notice arrived within {} s", PATIENCE.as_secs()))?;
    let notice = &notice.message;
    let device = &notice.device;
    println!(
        "   received  {} for {}: {} on {} from {}, {} device(s) known before",
        notice.kind,
        notice.user_id,
        device.browser.as_deref().unwrap_or("an unknown browser"),
        device.os.as_deref().unwrap_or("an unknown system"),
        notice.ip.as_deref().unwrap_or("an unknown address"),
        notice.known_devices
    );
    println!(
        "   session   {} (its handle: the sessions API ends it, no session id travels)",
        notice.session
    );
    Ok(())
}

/// Waits until the worker consumes: it has declared the exchanges, the
/// revocations exchange the app's listener binds to among them.
async fn wait_until_ready(health: &Health, parts: &mut Parts) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((_, task)) = parts.worker.take_if(|(_, task)| task.is_finished()) {
            task.await??;
            anyhow::bail!("the worker stopped");
        }
        match health.ready() {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() > deadline => {
                anyhow::bail!(
                    "the worker is not ready after {} s: {why}",
                    PATIENCE.as_secs()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// With `--pause`, waits for a line on stdin (returns at once at its end).
async fn wait_for_enter(pause: bool) {
    if !pause {
        return;
    }
    println!("   -- press Enter to go on (Ctrl-C stops the demo and cleans up) --");
    let (tx, rx) = oneshot::channel();
    // A thread of its own, not spawn_blocking: a read that never returns
    // must not keep the runtime from shutting down after Ctrl-C.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Stops what runs, then deletes the queues, the exchanges and the
/// database. The first failure is returned, after every step was tried;
/// `None` if the demo stopped before it had created anything for sure.
async fn clean_up(demo: &Demo, parts: Parts) -> Option<anyhow::Result<()>> {
    if let Some(publisher) = parts.publisher {
        let _ = tokio::time::timeout(STOP_WAIT, publisher.close()).await;
    }
    for (stop, mut task) in [parts.listener, parts.notices].into_iter().flatten() {
        let _ = stop.send(());
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            task.abort();
        }
    }
    // Stopped before its queues go: a running worker would declare them again.
    if let Some((stop, mut task)) = parts.worker {
        stop.cancel();
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            task.abort();
        }
    }
    use sqlx::migrate::MigrateDatabase as _;
    let drop_database = || async {
        sqlx::Postgres::force_drop_database(&demo.settings.database.url)
            .await
            .with_context(|| format!("cannot drop database {}", demo.database))
    };
    if !parts.created {
        // Only a database a failed migration left can exist: nothing was
        // declared on the broker yet.
        let _ = drop_database().await;
        return None;
    }
    let broker = delete_broker_objects(demo).await;
    let database = drop_database().await;
    Some(broker.and(database))
}

/// Deletes the worker's and the app's exchanges and queues.
async fn delete_broker_objects(demo: &Demo) -> anyhow::Result<()> {
    let amqp = &demo.settings.amqp;
    let connection = broker::connect(amqp, "demo clean-up")
        .await
        .with_context(|| format!("cannot delete the exchanges and queues {}.*", demo.prefix))?;
    let dead = demo.listener.dead_letter_queue();
    let notices_dead = demo.notices.dead_letter_queue();
    let queues = [
        &amqp.events_queue,
        &amqp.dead_letter_queue,
        &demo.listener.queue,
        &dead,
        &demo.notices.queue,
        &notices_dead,
    ];
    let exchanges = [
        &amqp.events_exchange,
        &amqp.revocations_exchange,
        &amqp.notices_exchange,
        &amqp.dead_letter_exchange,
        &dead,
        &notices_dead,
    ];
    let mut failed = Vec::new();
    // A channel each: a failed deletion closes its channel.
    for queue in queues {
        let deleted = async {
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            channel.close(200, "deleted".into()).await
        };
        if let Err(e) = deleted.await {
            failed.push(format!("queue {queue}: {e}"));
        }
    }
    for exchange in exchanges {
        let deleted = async {
            let channel = connection.create_channel().await?;
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
            channel.close(200, "deleted".into()).await
        };
        if let Err(e) = deleted.await {
            failed.push(format!("exchange {exchange}: {e}"));
        }
    }
    let _ = connection.close(200, "demo done".into()).await;
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cannot delete {}", failed.join("; "))
    }
}
