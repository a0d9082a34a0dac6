//! `session-guard demo`: what a newcomer sees, and that it leaves nothing
//! behind, also when interrupted.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use session_guard::Settings;
use session_guard::configuration::with_database;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::helpers::{PATIENCE, rabbitmqctl, signal};

/// The demo's promise: under a minute.
const DEMO_LIMIT: Duration = Duration::from_secs(60);

fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-guard"));
    cmd.arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The demo's id, from the line naming its database.
fn demo_id(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("database  sg_demo_"))
        .unwrap_or_else(|| panic!("no database line in:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap()["sg_demo_".len()..].to_owned()
}

/// Fails if a database, queue or exchange of the demo `id` is left.
async fn assert_nothing_left(id: &str) {
    let settings = Settings::load(None).unwrap();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&settings.database.url, "postgres"))
        .await
        .unwrap();
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(format!("sg_demo_{id}"))
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    assert_eq!(databases, 0, "the demo's database is left");
    for what in ["list_queues", "list_exchanges"] {
        let listing = rabbitmqctl(&[what, "name", "--no-table-headers", "-q"]).await;
        let left: Vec<&str> = listing.lines().filter(|l| l.contains(id)).collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
}

/// The cells of the session log's row for `session`.
fn log_row<'a>(stdout: &'a str, session: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.len() > 2 && cells[0] == "shop" && cells[1] == session)
        .unwrap_or_else(|| panic!("no log row for {session} in:\n{stdout}"))
}

#[tokio::test]
async fn the_demo_shows_the_whole_flow_and_leaves_nothing_behind() {
    let started = Instant::now();
    let child = demo(&[])
        .stdin(Stdio::null())
        .spawn()
        .expect("session-guard demo starts");
    let out = tokio::time::timeout(DEMO_LIMIT, child.wait_with_output())
        .await
        .expect("the demo ends within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(started.elapsed() < DEMO_LIMIT);
    assert_eq!(stderr, "", "no log lines at the default level");

    for line in [
        "   session s-laptop  laptop  Firefox  198.51.100.23",
        "   session s-phone   phone   Safari   203.0.113.54",
        "   received  revoke session s-laptop of alice, reason session_limit (max_sessions 1)",
        "   ended it  alice is logged out on her laptop, and still logged in on her phone",
        "   received  new_device for alice: Safari on iPhone from 203.0.113.54, 1 device(s) \
         known before",
        "   session   sgh_",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let laptop = log_row(&stdout, "s-laptop");
    assert_eq!(laptop[2], "revoked", "{laptop:?}");
    assert!(laptop.contains(&"session_limit"), "{laptop:?}");
    assert!(laptop.contains(&"198.51.100.23"), "{laptop:?}");
    let phone = log_row(&stdout, "s-phone");
    assert_eq!(phone[2], "active", "{phone:?}");

    let id = demo_id(&stdout);
    assert!(
        stdout.contains(&format!(
            "Removed everything the demo created: database sg_demo_{id}, exchanges and queues \
             sg_demo.{id}.*"
        )),
        "{stdout}"
    );
    assert_nothing_left(&id).await;
}

#[tokio::test]
async fn an_interrupted_demo_cleans_up_too() {
    let mut child = demo(&["--pause"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("session-guard demo starts");
    // Kept open: at its end the demo would go on rather than wait.
    let _stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Paused after the set-up: the database, the queues, the worker and the
    // app all exist.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEMO_LIMIT;
    while !seen.iter().any(|l: &String| l.contains("press Enter")) {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => seen.push(line),
            _ => panic!("the demo never paused: {seen:#?}"),
        }
    }
    let id = demo_id(&seen.join("\n"));
    // Ctrl-C, as a person at the terminal would.
    signal(&child, Signal::SIGINT);
    let out = tokio::time::timeout(DEMO_LIMIT, child.wait_with_output())
        .await
        .expect("the demo exits after Ctrl-C")
        .unwrap();
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    while let Ok(Some(line)) = tokio::time::timeout(PATIENCE, lines.recv()).await {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(1), "{seen:#?}");
    assert_eq!(stderr.trim_end(), "error: interrupted");
    let removed = format!("Removed everything the demo created: database sg_demo_{id}");
    assert!(seen.iter().any(|l| l.starts_with(&removed)), "{seen:#?}");
    assert_nothing_left(&id).await;
}
