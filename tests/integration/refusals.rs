//! Refusals by PostgreSQL or RabbitMQ (credentials, permissions): fatal at
//! start-up, retried and reported while running. And a shutdown that never
//! waits out a backoff.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;

use crate::helpers::*;

/// Runs `cmd` until it exits or `limit` passes (then it is killed).
/// Returns its exit code (`None` if it had to be killed) and its stderr.
async fn run_for(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => {
            let out = out.expect("session-guard runs");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => (None, String::new()),
    }
}

/// The lines a child writes to stderr, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn capture(stderr: tokio::process::ChildStderr) -> Lines {
        let lines = Lines::default();
        let sink = lines.0.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    /// The JSON log records (log.format = "json") whose fields match `pick`.
    fn records(&self, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| pick(r))
            .collect()
    }
}

#[tokio::test]
async fn run_exits_at_once_when_rabbitmq_refuses_the_credentials() {
    let app = spawn_app_without_worker(|_| {}).await;
    let mut cmd = app.command(&["run"]);
    cmd.env(
        "SESSION_GUARD__AMQP__URL",
        "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
    );
    let started = Instant::now();
    let (code, stderr) = run_for(cmd, Duration::from_secs(15)).await;
    assert!(code.is_some(), "run kept retrying a refused login for 15 s");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        failure_line(&stderr),
        "RabbitMQ refused the credentials of amqp.url \
         (amqp://guest:***@127.0.0.1:5672/%2f): ACCESS_REFUSED - Login was refused using \
         authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[tokio::test]
async fn run_exits_at_once_when_postgresql_refuses_the_role() {
    let app = spawn_app_without_worker(|_| {}).await;
    let role = format!("sg_no_such_role_{}", uuid::Uuid::new_v4().simple());
    let url = app.settings.database.url.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}@"),
        1,
    );
    assert_ne!(
        url, app.settings.database.url,
        "the test expects user postgres"
    );
    let mut cmd = app.command(&["run"]);
    cmd.env("SESSION_GUARD__DATABASE__URL", &url);
    let (code, stderr) = run_for(cmd, Duration::from_secs(15)).await;
    assert!(code.is_some_and(|c| c != 0), "{code:?} {stderr}");
    assert_eq!(
        failure_line(&stderr),
        format!(
            "PostgreSQL refused the credentials of database.url ({url}): role \
             \\\"{role}\\\" does not exist (SQLSTATE 28000)"
        )
    );
}

/// A batch's error tells the refusal behind it, and `Refusal::find` sees
/// that refusal through the error's causes (refusal.rs knows nothing of
/// batches: it sits below apply). The refusal is a real one: a statement
/// run under a role without rights on the table.
#[tokio::test]
async fn a_batch_refused_by_postgresql_is_a_refusal_through_its_causes() {
    use session_guard::apply::BatchError;
    use session_guard::refusal::{Refusal, Refused, Service};
    use sqlx::Connection as _;

    let app = spawn_app_without_worker(|_| {}).await;
    let denied = || async {
        let mut conn = sqlx::PgConnection::connect(&app.settings.database.url)
            .await
            .unwrap();
        // A built-in role that exists everywhere and may read no table of ours.
        sqlx::query("SET ROLE pg_monitor")
            .execute(&mut conn)
            .await
            .unwrap();
        let error = sqlx::query("SELECT 1 FROM session_users")
            .execute(&mut conn)
            .await
            .unwrap_err();
        let _ = conn.close().await;
        error
    };
    let expected = Refusal {
        service: Service::Database,
        refused: Refused::Access,
        reason: "permission denied for table session_users (SQLSTATE 42501)".to_owned(),
    };
    assert_eq!(
        BatchError::Statement(denied().await).refusal(),
        Some(expected.clone())
    );
    assert_eq!(
        BatchError::Connect(denied().await).refusal(),
        Some(expected.clone())
    );
    for error in [
        BatchError::Statement(denied().await),
        BatchError::Connect(denied().await),
    ] {
        let wrapped = anyhow::Error::new(error).context("batch failed");
        assert_eq!(
            Refusal::find(&wrapped),
            Some(expected.clone()),
            "{wrapped:#}"
        );
    }
    let contention = BatchError::TooManyPasses(8);
    assert_eq!(contention.refusal(), None);
    assert_eq!(Refusal::find(&anyhow::Error::new(contention)), None);
}

/// The reason `run` gave for failing: `run` reports through its log (one
/// ERROR line, `session-guard failed error="..."`), and exactly once.
fn failure_line(stderr: &str) -> &str {
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("session-guard failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("error: ")),
        "reported twice: {stderr}"
    );
    let line = failures[0];
    let start = line.find("error=\"").expect("an error field") + "error=\"".len();
    line[start..]
        .strip_suffix('"')
        .expect("the field ends the line")
}

/// A worker whose RabbitMQ password changes under it (its connections are
/// then dropped, as a broker would on a restart) keeps running, says it is
/// refused (log and readiness) and comes back once the password is right.
#[tokio::test]
async fn a_refusal_while_running_is_retried_logged_and_reported_by_readiness() {
    let user = BrokerUser::create("first-password", [".*", ".*", ".*"]).await;
    let mut app = spawn_app_without_worker(|_| {}).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = app.command(&["run"]);
    cmd.env("SESSION_GUARD__AMQP__URL", user.url("first-password"))
        .env("SESSION_GUARD__HTTP__LISTEN", &listen)
        .env("SESSION_GUARD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("session-guard starts");
    let log = Lines::capture(child.stderr.take().unwrap());
    let worker = app.adopt_process(child);
    app.wait_for("the worker to be ready", || async {
        http_get(&listen, "/health/ready")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    app.publish(&login("shop", "r1", "rita", t(0))).await;
    app.settle().await;

    user.change_password("second-password").await;
    let (consumers, _) = app.close_worker_connections().await;
    assert_eq!(consumers, 1);
    app.wait_for("readiness to report the refusal", || async {
        http_get(&listen, "/health/ready")
            .await
            .is_some_and(|(status, r)| {
                status == 503
                    && r.contains("not ready: RabbitMQ refused the credentials: ACCESS_REFUSED")
            })
    })
    .await;
    app.wait_for("the refusal to be logged as an error", || async {
        !log.records(|r| {
            r["level"] == "ERROR"
                && r["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("consumer refused"))
                && r["fields"]["refusal"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("RabbitMQ refused the credentials"))
        })
        .is_empty()
    })
    .await;

    user.change_password("first-password").await;
    app.wait_for("the worker to be ready again", || async {
        http_get(&listen, "/health/ready")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    app.publish(&login("shop", "r2", "rita", t(10))).await;
    app.settle().await;
    let revokes = app.expect_revokes(1).await;
    assert_eq!(revokes[0].body.session_id, "r1");
    assert_eq!(app.terminate_process(worker).await, Some(0));
}

/// SIGTERM while the worker waits between two attempts to reach a broker
/// that is not there: it stops at once, whatever the backoff had reached.
#[tokio::test]
async fn sigterm_during_a_backoff_stops_the_worker_at_once() {
    let mut app = spawn_app_without_worker(|_| {}).await;
    // Nothing listens on port 1.
    let mut cmd = app.command(&["run"]);
    cmd.env(
        "SESSION_GUARD__AMQP__URL",
        "amqp://guest:guest@127.0.0.1:1/%2f",
    )
    .env("SESSION_GUARD__WORKER__MAX_BACKOFF_MS", "60000")
    .env("SESSION_GUARD__LOG__FORMAT", "json")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("session-guard starts");
    let log = Lines::capture(child.stderr.take().unwrap());
    let worker = app.adopt_process(child);
    // Both the consumer and the relay are into pauses of seconds.
    app.wait_for("pauses of seconds", || async {
        ["consumer stopped", "outbox relay stopped"]
            .iter()
            .all(|what| {
                !log.records(|r| {
                    r["fields"]["message"] == *what
                        && r["fields"]["retry_in_ms"]
                            .as_u64()
                            .is_some_and(|ms| ms >= 3000)
                })
                .is_empty()
            })
    })
    .await;
    let started = Instant::now();
    assert_eq!(app.terminate_process(worker).await, Some(0));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
}
