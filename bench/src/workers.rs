//! Worker processes: the real `session-guard run` binary, so their memory
//! is the production binary's, read from /proc; progress from their
//! metrics endpoint.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use session_guard::Settings;
use session_guard::metric::EVENTS_PROCESSED;
use tokio::process::{Child, Command};

/// Where the worker binary is looked for unless `--worker` says: beside
/// this one, where cargo puts every binary of the workspace.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("cannot find this executable")?;
    Ok(bench.with_file_name("session-guard"))
}

/// Refuses a missing worker binary, before anything is set up.
pub fn check_binary(worker: &Path) -> anyhow::Result<()> {
    if worker.is_file() {
        return Ok(());
    }
    anyhow::bail!(
        "no worker binary at {} (build it: `cargo build --release`, or give --worker)",
        worker.display()
    )
}

/// A running worker process.
pub struct WorkerProcess {
    /// The process.
    child: Child,
    /// Its metrics endpoint, host:port.
    listen: String,
}

/// Asks the workers' metrics endpoints how far they got.
pub struct Progress {
    /// Plain HTTP, a connection per request: the endpoint closes each one.
    http: reqwest::Client,
}

impl WorkerProcess {
    /// Starts `session-guard run` on the bench's names, with its metrics
    /// endpoint on a free port.
    pub fn start(binary: &Path, settings: &Settings) -> anyhow::Result<WorkerProcess> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let child = command(binary, settings, &listen)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(WorkerProcess { child, listen })
    }

    /// Its peak resident set (VmHWM), in KiB.
    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        procfs::process::Process::new(pid as i32)
            .ok()?
            .status()
            .ok()?
            .vmhwm
    }

    /// Its CPU time so far (utime + stime, all threads), ms.
    pub fn cpu_ms(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let stat = procfs::process::Process::new(pid as i32)
            .ok()?
            .stat()
            .ok()?;
        Some((stat.utime + stat.stime) as f64 * 1000.0 / procfs::ticks_per_second() as f64)
    }

    /// Stops it as an operator would (SIGTERM) and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let _ = self.child.wait().await;
    }
}

impl Progress {
    pub fn new() -> anyhow::Result<Progress> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Progress { http })
    }

    /// [`EVENTS_PROCESSED`] of a worker, from its endpoint; `None` until it
    /// answers.
    pub async fn processed(&self, worker: &WorkerProcess) -> Option<u64> {
        let url = format!("http://{}/metrics", worker.listen);
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        let series = format!("{} ", EVENTS_PROCESSED.name);
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// The events all the workers have processed.
    pub async fn total(&self, workers: &[WorkerProcess]) -> u64 {
        let mut done = 0;
        for worker in workers {
            done += self.processed(worker).await.unwrap_or(0);
        }
        done
    }

    /// Waits until the worker's endpoint answers (10 s at most).
    pub async fn wait_until_up(&self, worker: &WorkerProcess) {
        for _ in 0..100 {
            if self.processed(worker).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn command(binary: &Path, settings: &Settings, listen: &str) -> Command {
    let amqp = &settings.amqp;
    let mut cmd = Command::new(binary);
    cmd.arg("run")
        .env("SESSION_GUARD__DATABASE__URL", &settings.database.url)
        .env("SESSION_GUARD__AMQP__URL", &amqp.url)
        .env(
            "SESSION_GUARD__AMQP__EVENTS_EXCHANGE",
            &amqp.events_exchange,
        )
        .env("SESSION_GUARD__AMQP__EVENTS_QUEUE", &amqp.events_queue)
        .env(
            "SESSION_GUARD__AMQP__REVOCATIONS_EXCHANGE",
            &amqp.revocations_exchange,
        )
        .env(
            "SESSION_GUARD__AMQP__DEAD_LETTER_EXCHANGE",
            &amqp.dead_letter_exchange,
        )
        .env(
            "SESSION_GUARD__AMQP__DEAD_LETTER_QUEUE",
            &amqp.dead_letter_queue,
        )
        .env("SESSION_GUARD__LIMITS__MAX_SESSIONS", "1")
        .env("SESSION_GUARD__HTTP__LISTEN", listen)
        .env("SESSION_GUARD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // To look inside a worker during a run: SESSION_GUARD_BENCH_WORKER_LOG=debug
    if let Ok(filter) = std::env::var("SESSION_GUARD_BENCH_WORKER_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
