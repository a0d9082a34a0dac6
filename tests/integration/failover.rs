//! PostgreSQL failing over under load: a pg_auto_failover formation of the
//! test's own (`scripts/pg-failover`: a monitor and two nodes, a
//! synchronous standby, ports and data of its own, stopped and removed
//! however the test ends), two worker processes (the real binary) whose
//! `database.url` lists both nodes, and the app of `load` on the machine's
//! RabbitMQ sending a steady stream of users who log in twice (limit 1: the
//! first login is revoked). The primary goes away (planned: `pg_autoctl
//! perform failover`; unplanned: the whole primary node killed), and then
//! every login the broker confirmed is in the log, every revoke reached the
//! app once (one event id per revoked session), the outbox is empty,
//! nothing was dead-lettered, and neither worker exited. Needs pg_autoctl
//! (Debian's postgresql-NN-auto-failover); about a minute each.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use session_guard::Settings;
use session_guard::configuration::with_database;
use sqlx::Connection as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::create_token;
use crate::helpers::*;
use crate::load::{Load, UNTIL, machine_queue_counts, progress, until};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-failover");

/// A formation of the test's own, in a fresh `mktemp -d` directory;
/// stopped and removed on drop, however the test ends.
pub struct Formation {
    dir: String,
    /// The formation's URL: both nodes, `target_session_attrs=read-write`,
    /// database `postgres`.
    pub url: String,
    /// The two nodes' ports.
    pub nodes: [u16; 2],
    /// The primary's port, as of the last `start`, `failover` or `kill`.
    pub primary: u16,
}

impl Formation {
    /// `scripts/pg-failover start` (with `PG_FAILOVER_QUICK=1` if `quick`:
    /// the monitor gives up on a lost node after seconds, not 50 s).
    pub async fn start(quick: bool) -> Formation {
        let out = std::process::Command::new("mktemp")
            .arg("-d")
            .output()
            .expect("mktemp runs");
        assert!(out.status.success(), "mktemp -d");
        let dir = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        // Stopped on drop from here on, even if the start fails half-way.
        let mut formation = Formation {
            dir,
            url: String::new(),
            nodes: [0, 0],
            primary: 0,
        };
        let mut start = tokio::process::Command::new(SCRIPT);
        start.args(["start", &formation.dir]);
        if quick {
            start.env("PG_FAILOVER_QUICK", "1");
        }
        let began = Instant::now();
        let text = run(start).await;
        formation.url = value(&text, "URL=");
        formation.nodes = [
            value(&text, "NODE_1_PORT=").parse().unwrap(),
            value(&text, "NODE_2_PORT=").parse().unwrap(),
        ];
        formation.primary = value(&text, "PRIMARY=").parse().unwrap();
        eprintln!("formation started in {:?}", began.elapsed());
        formation
    }

    /// The node that is not the primary.
    pub fn standby(&self) -> u16 {
        if self.nodes[0] == self.primary {
            self.nodes[1]
        } else {
            self.nodes[0]
        }
    }

    /// `scripts/pg-failover COMMAND DIR` (`failover` or `kill-primary`):
    /// waits until the standby is the primary and takes writes.
    pub async fn fail_over(&mut self, command: &str) {
        let old = self.primary;
        let mut cmd = tokio::process::Command::new(SCRIPT);
        cmd.args([command, &self.dir]);
        let text = run(cmd).await;
        self.primary = value(&text, "PRIMARY=").parse().unwrap();
        assert_ne!(self.primary, old, "{command}: a new primary");
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .args(["stop", &self.dir])
            .status();
    }
}

/// Runs the script's command; its stdout, or fails the test with both.
async fn run(mut cmd: tokio::process::Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .expect("scripts/pg-failover runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value of `KEY=value` in the script's output.
fn value(text: &str, key: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_owned()
}

/// A test whose database (a name of its own) is on the formation, with
/// no worker yet.
async fn spawn_on(formation: &Formation) -> TestApp {
    let url = formation.url.clone();
    spawn_app_without_worker(move |s| {
        let db = database_name(&s.database.url);
        s.database.url = with_database(&url, &db);
    })
    .await
}

/// A worker process (`session-guard run`) of the test: its index, and the
/// address of its health endpoint.
struct WorkerProcess {
    index: usize,
    health: String,
}

/// Starts `session-guard run` with the test's settings, its health
/// endpoint on a free port and, given `api`, the sessions API there.
fn spawn_worker(test: &mut TestApp, api: Option<&str>) -> WorkerProcess {
    let health = format!("127.0.0.1:{}", free_port());
    let mut settings: Settings = test.settings.clone();
    settings.http.listen = health.clone();
    if let Some(api) = api {
        settings.api.listen = api.to_owned();
    }
    let child = test
        .command_with(&settings, &["run"])
        // What a failover makes it say (warnings, the new primary), not
        // every batch.
        .env("RUST_LOG", "session_guard=info,warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("session-guard binary starts");
    WorkerProcess {
        index: test.adopt_process(child),
        health,
    }
}

/// Whether the worker's `/health/ready` answers 200.
async fn ready(worker: &WorkerProcess) -> bool {
    http_get(&worker.health, "/health/ready")
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// Two workers, both ready and consuming; the first serves the sessions
/// API on `api` too.
async fn two_workers(test: &mut TestApp, api: &str) -> [WorkerProcess; 2] {
    let workers = [spawn_worker(test, Some(api)), spawn_worker(test, None)];
    for worker in &workers {
        until("a worker to be ready", || ready(worker)).await;
    }
    until("two consumers on the events queue", || async {
        test.events_queue_consumers().await == 2
    })
    .await;
    workers
}

/// The time from `since` to the first login of `app` committed on the
/// server at `url` (one node) once it is the primary: polled every 100 ms on a
/// connection of its own, from before the failover; the count seen at the
/// first answer as a primary is the base, and the first count above it is
/// a new row (a batch committed on the new primary).
async fn first_new_row(url: String, app: String, since: Instant) -> Duration {
    let mut conn: Option<sqlx::PgConnection> = None;
    let mut base: Option<i64> = None;
    loop {
        assert!(
            since.elapsed() < UNTIL,
            "no new row on the new primary within {UNTIL:?}"
        );
        if conn.is_none() {
            conn = tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(&url))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(c) = conn.as_mut() {
            let answer: Result<(bool, i64), _> = sqlx::query_as(
                "SELECT pg_is_in_recovery(), (SELECT count(*) FROM sessions WHERE app = $1)",
            )
            .bind(&app)
            .fetch_one(&mut *c)
            .await;
            match answer {
                Ok((false, n)) => match base {
                    None => base = Some(n),
                    Some(b) if n > b => return since.elapsed(),
                    Some(_) => {}
                },
                Ok((true, _)) => {}
                // Restarted or cut off: a new connection next time.
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the clock and, from it, watches the primary stop taking writes
/// and the first new row of `app` appear on the standby that is to take
/// over: (the start, each watcher's task).
fn watch_the_switch(
    test: &TestApp,
    formation: &Formation,
    app: &str,
) -> (Instant, JoinHandle<Duration>, JoinHandle<Duration>) {
    let began = Instant::now();
    let gone = tokio::spawn(stopped_taking_writes(
        node_url(test, formation.primary),
        began,
    ));
    let first_row = tokio::spawn(first_new_row(
        node_url(test, formation.standby()),
        app.to_owned(),
        began,
    ));
    (began, gone, first_row)
}

/// The time from `since` to when the server at `url` stopped taking
/// writes (an error, no answer within 2 s, or read-only), polled every
/// 50 ms: when the old primary went away, after the script's own work.
async fn stopped_taking_writes(url: String, since: Instant) -> Duration {
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("the primary answers before the failover");
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query_scalar::<_, bool>(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean",
            )
            .fetch_one(&mut conn),
        )
        .await;
        if !matches!(answer, Ok(Ok(false))) {
            return since.elapsed();
        }
        assert!(since.elapsed() < UNTIL, "the old primary never went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node's own URL (no list) for the test's database.
fn node_url(test: &TestApp, port: u16) -> String {
    let db = database_name(&test.settings.database.url);
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

/// `session-guard ARGS` with the test's config file: its stdout; fails the
/// test unless it succeeds.
async fn operator(test: &TestApp, args: &[&str]) -> String {
    let out = test
        .command(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "session-guard {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `GET /v1/users/USER/sessions?app=APP&state=all` with `token`: status and body, or
/// `None` while nothing answers.
async fn api_sessions(api: &str, token: &str, user: &str, app: &str) -> Option<(u16, Value)> {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{api}/v1/users/{user}/sessions?app={app}&state=all"
        ))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The sessions API's list of a user's sessions in `app`, once it answers
/// 200 (a failover may still be under way).
async fn api_answers(api: &str, token: &str, user: &str, app: &str) -> Value {
    let since = Instant::now();
    loop {
        let answer = api_sessions(api, token, user, app).await;
        if let Some((200, body)) = answer {
            return body;
        }
        assert!(
            since.elapsed() < UNTIL,
            "the API does not answer 200: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (state, end reason) of each session the API lists, sorted.
fn states(list: &Value) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {list}"))
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap_or("-").to_owned();
            (text("state"), text("end_reason"))
        })
        .collect();
    states.sort();
    states
}

/// The worker processes are still running; then each stops on SIGTERM
/// with exit code 0.
async fn both_still_running_then_stop(test: &mut TestApp, workers: &[WorkerProcess; 2]) {
    for worker in workers {
        assert!(
            test.process_running(worker.index),
            "a worker process exited"
        );
    }
    for worker in workers {
        assert_eq!(test.terminate_process(worker.index).await, Some(0));
    }
}

/// Planned: `pg_autoctl perform failover` while two worker processes drain
/// the stream. Then, with nothing restarted: every confirmed login in the
/// log and every revoke received once, the outbox and queues empty, both
/// workers ready and running; the operator commands (`sessions`,
/// `limits`, `revoke`, `tokens`) work on the new primary (the old one, a
/// standby now, first in the URL's list); and the sessions API of the
/// worker started before the failover answers again, its token cache
/// hearing of a token revoked on the new primary.
#[tokio::test]
async fn a_planned_failover_under_load_loses_nothing_and_the_commands_follow() {
    // Declared first, so stopped last (after the test's processes).
    let mut formation = Formation::start(false).await;
    let mut test = spawn_on(&formation).await;
    let api = format!("127.0.0.1:{}", free_port());
    let workers = two_workers(&mut test, &api).await;
    let token = create_token(&test, "before", "*", "sessions:read").await;

    let load = Load::start(&test, &[test.settings.amqp.url.as_str()], "planned-shop", 2).await;
    let app = load.app.as_str().to_owned();
    progress(&test, app.as_str(), 200).await;
    // The API answers before the failover (and caches the token).
    let (status, before) = api_sessions(&api, &token, "u0", &app).await.unwrap();
    assert_eq!(status, 200, "{before}");

    let new_primary = formation.standby();
    let (began, gone, first_row) = watch_the_switch(&test, &formation, &app);
    formation.fail_over("failover").await;
    let switched = began.elapsed();
    assert_eq!(formation.primary, new_primary);
    let (gone, first_row) = (gone.await.unwrap(), first_row.await.unwrap());
    eprintln!(
        "planned failover: from the script's start, the old primary stopped taking writes \
         at {gone:?}, the first new log row on the new primary at {first_row:?} (no \
         commits for {:?}), the script returned at {switched:?}",
        first_row.saturating_sub(gone)
    );
    let back = progress(&test, &app, 200).await;
    eprintln!("200 more logins {back:?} after the script returned");
    for worker in &workers {
        until("the worker ready after the failover", || ready(worker)).await;
        assert!(test.process_running(worker.index), "a worker exited");
    }

    let listening = load
        .finish_listening(&test, async || machine_queue_counts().await)
        .await;

    // The operator commands, each a new process with the same config file
    // (the old primary listed first, a standby now).
    let sessions = operator(
        &test,
        &["sessions", "--user", "u5", "--app", &app, "--all", "--json"],
    )
    .await;
    let sessions: Vec<Value> = serde_json::from_str(&sessions).unwrap();
    let state_of = |sessions: &[Value], id: &str| {
        sessions
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {sessions:?}"))["state"]
            .clone()
    };
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(state_of(&sessions, "u5-a"), "revoked");
    assert_eq!(state_of(&sessions, "u5-b"), "active");

    operator(
        &test,
        &[
            "limits",
            "set",
            "--user",
            "u5",
            "--app",
            &app,
            "--max",
            "3",
            "--operator",
            "failover-test",
        ],
    )
    .await;
    let limits = operator(
        &test,
        &["limits", "get", "--user", "u5", "--app", &app, "--json"],
    )
    .await;
    let limits: Vec<Value> = serde_json::from_str(&limits).unwrap();
    assert_eq!(limits[0]["limits"]["max_sessions"], 3, "{limits:?}");
    let stored: i32 = sqlx::query_scalar(
        "SELECT max_sessions FROM user_overrides WHERE user_id = 'u5' AND app = $1",
    )
    .bind(&app)
    .fetch_one(&test.pool)
    .await
    .unwrap();
    assert_eq!(stored, 3);

    let revoked = operator(
        &test,
        &[
            "revoke",
            "--app",
            &app,
            "--session",
            "u5-b",
            "--operator",
            "failover-test",
        ],
    )
    .await;
    assert!(revoked.contains("revoked"), "{revoked}");
    until("the operator's revoke to reach the app", || async {
        !listening.deliveries_of("u5-b").is_empty()
    })
    .await;
    let sessions = operator(
        &test,
        &["sessions", "--user", "u5", "--app", &app, "--all", "--json"],
    )
    .await;
    let sessions: Vec<Value> = serde_json::from_str(&sessions).unwrap();
    assert_eq!(state_of(&sessions, "u5-b"), "revoked");
    let row = sessions.iter().find(|s| s["session_id"] == "u5-b").unwrap();
    assert_eq!(row["end_reason"], "admin", "{row}");

    // The API of the worker started before the failover: the same
    // process, the token made before it, the change just made.
    let listed = api_answers(&api, &token, "u5", &app).await;
    assert_eq!(
        states(&listed),
        [
            ("ended".into(), "admin".into()),
            ("ended".into(), "session_limit".into())
        ],
        "{listed}"
    );
    // A token made after the failover, and one revoked after it: the
    // cache hears of the revocation from the new primary (a notification),
    // well before its entries' time to live.
    let after = create_token(&test, "after", "*", "sessions:read").await;
    let (status, body) = api_sessions(&api, &after, "u5", &app).await.unwrap();
    assert_eq!(status, 200, "{body}");
    operator(&test, &["tokens", "revoke", "before"]).await;
    let revoked_at = Instant::now();
    loop {
        let (status, _) = api_sessions(&api, &token, "u5", &app).await.unwrap();
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "a token revoked after the failover still accepted (status {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    listening.stop().await;
    let ids = test.outbox_len().await;
    assert_eq!(ids, 0, "the outbox is empty");
    both_still_running_then_stop(&mut test, &workers).await;
}

/// Unplanned: the whole primary node killed (its pg_autoctl and postgres,
/// `scripts/pg-failover kill-primary`, with the monitor's quick timeouts)
/// while two worker processes drain the stream. Each worker's readiness
/// reports the database down while no primary answers, and ready again
/// once the standby is promoted; the same outcome as the planned test; and
/// the sessions API of a worker answers again.
#[tokio::test]
async fn an_unplanned_failover_under_load_loses_nothing() {
    let mut formation = Formation::start(true).await;
    let mut test = spawn_on(&formation).await;
    let api = format!("127.0.0.1:{}", free_port());
    let workers = two_workers(&mut test, &api).await;
    let token = create_token(&test, "reader", "*", "sessions:read").await;

    let load = Load::start(
        &test,
        &[test.settings.amqp.url.as_str()],
        "unplanned-shop",
        2,
    )
    .await;
    let app = load.app.as_str().to_owned();
    progress(&test, &app, 200).await;

    let new_primary = formation.standby();
    let (began, gone, first_row) = watch_the_switch(&test, &formation, &app);
    // Readiness, watched from the kill on: down (503, the database named)
    // at some point, then ready again.
    let watch = |health: String| async move {
        let mut down: Option<(Duration, String)> = None;
        loop {
            assert!(
                began.elapsed() < UNTIL,
                "readiness at {health}: down {down:?}, never ready again"
            );
            match http_get(&health, "/health/ready").await {
                Some((503, body)) if down.is_none() => down = Some((began.elapsed(), body)),
                Some((200, _)) if down.is_some() => return (down.unwrap(), began.elapsed()),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let watching: Vec<_> = workers
        .iter()
        .map(|w| tokio::spawn(watch(w.health.clone())))
        .collect();
    formation.fail_over("kill-primary").await;
    let switched = began.elapsed();
    assert_eq!(formation.primary, new_primary);
    let (killed, first_row) = (gone.await.unwrap(), first_row.await.unwrap());
    eprintln!(
        "unplanned failover: from the script's start, the primary killed at {killed:?}, the \
         first new log row on the new primary at {first_row:?} ({:?} after the kill), the \
         script returned at {switched:?}",
        first_row.saturating_sub(killed)
    );
    for watching in watching {
        let ((down_at, why), up_at) = watching.await.unwrap();
        assert!(why.contains("database unavailable"), "{why}");
        // While no primary took writes, not only at some point.
        assert!(
            down_at < first_row,
            "readiness went down at {down_at:?}, after the first commit on the new primary \
             ({first_row:?})"
        );
        eprintln!(
            "readiness: 503 ({}) {:?} after the kill, ready {:?} after it",
            why.trim(),
            down_at.saturating_sub(killed),
            up_at.saturating_sub(killed)
        );
    }
    let back = progress(&test, &app, 200).await;
    eprintln!("200 more logins {back:?} after the script returned");
    for worker in &workers {
        assert!(test.process_running(worker.index), "a worker exited");
    }

    load.finish(&test, async || machine_queue_counts().await)
        .await;
    // The API of a worker started before the failover answers again, from
    // the new primary.
    let listed = api_answers(&api, &token, "u5", &app).await;
    assert_eq!(
        states(&listed),
        [
            ("active".into(), "-".into()),
            ("ended".into(), "session_limit".into())
        ],
        "{listed}"
    );
    both_still_running_then_stop(&mut test, &workers).await;
}
