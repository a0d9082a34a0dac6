//! Worker processes: the real `session-guard run` binary, so their memory
//! is the production binary's, read from /proc; progress from their
//! metrics endpoint, and what their batches did from the same metrics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use session_guard::Settings;
use session_guard::metric::{
    BATCH_LOCKED_USERS, BATCH_RELOCKS, EVENTS_PROCESSED, LAST_SEEN_WRITES_SKIPPED,
    REVOKES_REPEATED, ROWS_TOUCHED, SESSIONS_REVOKED,
};
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
    /// Its sessions API, host:port; empty when it serves none.
    api_listen: String,
}

/// Asks the workers' metrics endpoints how far they got.
pub struct Progress {
    /// Plain HTTP, a connection per request: the endpoint closes each one.
    http: reqwest::Client,
}

/// What the workers' own metrics say about their batches, summed over the
/// workers of a drain: how much each batch locked, and what it wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BatchMetrics {
    /// Committed batches (the `_count` of [`BATCH_LOCKED_USERS`]).
    pub batches: f64,
    /// Users locked, all batches together (its `_sum`): locks are what
    /// serialises batches and costs round trips.
    pub locked_users: f64,
    /// Batches run again with more users locked ([`BATCH_RELOCKS`]): a
    /// pass thrown away.
    pub relocks: f64,
    /// Rows of users not locked written by the lock-free touch
    /// ([`ROWS_TOUCHED`]).
    pub touched: f64,
    /// Rows left unwritten because only `last_seen_at` moved, by less than
    /// the resolution ([`LAST_SEEN_WRITES_SKIPPED`]): writes saved.
    pub skipped: f64,
    /// Sessions revoked, every reason ([`SESSIONS_REVOKED`]): each one is a
    /// locked user, an outbox row and a message.
    pub revoked: f64,
    /// Revoke messages repeated for ended sessions still in use
    /// ([`REVOKES_REPEATED`]).
    pub repeated: f64,
}

impl BatchMetrics {
    /// The figures in one worker's `/metrics` text.
    pub fn parse(text: &str) -> BatchMetrics {
        let locked = BATCH_LOCKED_USERS.name;
        BatchMetrics {
            batches: series_sum(text, &format!("{locked}_count")).unwrap_or(0.0),
            locked_users: series_sum(text, &format!("{locked}_sum")).unwrap_or(0.0),
            relocks: series_sum(text, BATCH_RELOCKS.name).unwrap_or(0.0),
            touched: series_sum(text, ROWS_TOUCHED.name).unwrap_or(0.0),
            skipped: series_sum(text, LAST_SEEN_WRITES_SKIPPED.name).unwrap_or(0.0),
            revoked: series_sum(text, SESSIONS_REVOKED.name).unwrap_or(0.0),
            repeated: series_sum(text, REVOKES_REPEATED.name).unwrap_or(0.0),
        }
    }

    /// These figures and `other`'s, added up.
    pub fn plus(self, other: BatchMetrics) -> BatchMetrics {
        BatchMetrics {
            batches: self.batches + other.batches,
            locked_users: self.locked_users + other.locked_users,
            relocks: self.relocks + other.relocks,
            touched: self.touched + other.touched,
            skipped: self.skipped + other.skipped,
            revoked: self.revoked + other.revoked,
            repeated: self.repeated + other.repeated,
        }
    }
}

/// The sum of every series of the metric `name` (all label sets) in a
/// Prometheus text exposition; `None` if it has none.
fn series_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The exact name: labels or the value follow it, not more name.
        let value = if let Some(labels) = rest.strip_prefix('{') {
            labels.rsplit_once('}').map(|(_, v)| v)
        } else {
            rest.starts_with(' ').then_some(rest)
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

impl WorkerProcess {
    /// Starts `session-guard run` on the bench's names, with its metrics
    /// endpoint on a free port.
    pub fn start(binary: &Path, settings: &Settings) -> anyhow::Result<WorkerProcess> {
        Self::spawn(binary, settings, String::new())
    }

    /// Starts `session-guard run` as [`WorkerProcess::start`] does, also
    /// serving the sessions API on a free port of its own.
    pub fn start_with_api(binary: &Path, settings: &Settings) -> anyhow::Result<WorkerProcess> {
        Self::spawn(binary, settings, format!("127.0.0.1:{}", free_port()?))
    }

    fn spawn(
        binary: &Path,
        settings: &Settings,
        api_listen: String,
    ) -> anyhow::Result<WorkerProcess> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let child = command(binary, settings, &listen, &api_listen)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(WorkerProcess {
            child,
            listen,
            api_listen,
        })
    }

    /// Its health and metrics endpoint, host:port.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    /// Its sessions API, host:port (empty unless started with it).
    pub fn api_listen(&self) -> &str {
        &self.api_listen
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

    /// How it ended, if it has exited (it should not have: the bench stops
    /// it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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

    /// A worker's `/metrics` text; `None` until it answers.
    async fn metrics(&self, worker: &WorkerProcess) -> Option<String> {
        let url = format!("http://{}/metrics", worker.listen);
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    /// [`EVENTS_PROCESSED`] of a worker, from its endpoint; `None` until it
    /// answers.
    pub async fn processed(&self, worker: &WorkerProcess) -> Option<u64> {
        let text = self.metrics(worker).await?;
        series_sum(&text, EVENTS_PROCESSED.name).map(|v| v as u64)
    }

    /// What the workers' batches did, summed over the workers; an error if
    /// one does not answer (the figures would be short).
    pub async fn batches(&self, workers: &[WorkerProcess]) -> anyhow::Result<BatchMetrics> {
        let mut sum = BatchMetrics::default();
        for worker in workers {
            let text = self
                .metrics(worker)
                .await
                .with_context(|| format!("no metrics from the worker at {}", worker.listen))?;
            sum = sum.plus(BatchMetrics::parse(&text));
        }
        Ok(sum)
    }

    /// The events all the workers have processed.
    pub async fn total(&self, workers: &[WorkerProcess]) -> u64 {
        let mut done = 0;
        for worker in workers {
            done += self.processed(worker).await.unwrap_or(0);
        }
        done
    }

    /// Polls the worker's [`EVENTS_PROCESSED`] every 10 ms until it has
    /// processed `until` events, or for `limit` at most: the instants at
    /// which it was seen to grow, and the count it reached.
    pub async fn growth(
        &self,
        worker: &WorkerProcess,
        until: u64,
        limit: Duration,
    ) -> (Vec<Instant>, u64) {
        let started = Instant::now();
        let mut last = self.processed(worker).await.unwrap_or(0);
        let mut grew = Vec::new();
        while last < until && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.processed(worker).await.unwrap_or(last);
            if now > last {
                last = now;
                grew.push(Instant::now());
            }
        }
        (grew, last)
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

/// The longest pause in a worker's processing from `from` on, given the
/// instants at which its count of processed events was seen to grow
/// ([`Progress::growth`]): the first pause counts from `from` (a kill, a
/// failover started), each later one from the growth before it.
pub fn longest_pause(growth: &[Instant], from: Instant) -> Duration {
    let (mut last, mut longest) = (from, Duration::ZERO);
    for &at in growth.iter().filter(|at| **at > from) {
        longest = longest.max(at - last);
        last = at;
    }
    longest
}

/// `session-guard tokens create NAME --apps '*' --scopes SCOPES` against the
/// bench's database, as an operator makes one: the token it prints.
pub async fn create_token(
    binary: &Path,
    settings: &Settings,
    name: &str,
    scopes: &str,
) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .args(["tokens", "create", name, "--apps", "*", "--scopes", scopes])
        .env("SESSION_GUARD__DATABASE__URL", &settings.database.url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {} tokens create", binary.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "tokens create failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn command(binary: &Path, settings: &Settings, listen: &str, api_listen: &str) -> Command {
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
        // No sessions API unless the run measures it: the other workers
        // only consume, as before it existed (several on one host would
        // also race for its default port).
        .env("SESSION_GUARD__API__LISTEN", api_listen)
        .env("SESSION_GUARD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Said either way: notices are on by default, and `--notices-only`
    // compares them off and on. (A worker binary from before notices,
    // issue 25, refuses these keys: this bench cannot measure one.)
    cmd.env(
        "SESSION_GUARD__NOTICES__ENABLED",
        settings.notices.enabled.to_string(),
    )
    .env(
        "SESSION_GUARD__AMQP__NOTICES_EXCHANGE",
        &amqp.notices_exchange,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pause_counts_the_first_from_the_start() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let growth = [at(5), at(20), at(90), at(100), at(400), at(410)];
        assert_eq!(longest_pause(&growth, at(50)), Duration::from_millis(300));
        assert_eq!(longest_pause(&growth, at(0)), Duration::from_millis(300));
        // A first pause longer than any later one.
        assert_eq!(
            longest_pause(&growth[4..], at(0)),
            Duration::from_millis(400)
        );
        assert_eq!(longest_pause(&growth, at(500)), Duration::ZERO);
    }

    #[test]
    fn batch_metrics_add_up_label_sets_and_take_exact_names() {
        let locked = BATCH_LOCKED_USERS.name;
        let revoked = SESSIONS_REVOKED.name;
        let text = format!(
            "# TYPE {locked} histogram\n\
             {locked}_bucket{{le=\"1\"}} 4\n\
             {locked}_sum 30\n\
             {locked}_count 10\n\
             {revoked}{{reason=\"session_limit\"}} 5\n\
             {revoked}{{reason=\"logout_all\"}} 2\n\
             {} 7\n\
             {} 1e3\n",
            BATCH_RELOCKS.name, LAST_SEEN_WRITES_SKIPPED.name
        );
        let m = BatchMetrics::parse(&text);
        assert_eq!(m.batches, 10.0);
        assert_eq!(m.locked_users, 30.0);
        assert_eq!(m.revoked, 7.0);
        assert_eq!(m.relocks, 7.0);
        assert_eq!(m.skipped, 1000.0);
        assert_eq!(m.touched, 0.0);
        assert_eq!(m.plus(m).revoked, 14.0);
        assert_eq!(
            series_sum(&text, locked),
            None,
            "only _sum, _count, _bucket"
        );
        assert_eq!(series_sum(&text, EVENTS_PROCESSED.name), None);
    }
}
