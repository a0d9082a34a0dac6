//! `--cluster-only`: the worker on a three-node RabbitMQ cluster
//! (`scripts/rabbitmq-cluster`, started and stopped here) next to the same
//! worker on the configured broker (the machine's single node), in the same
//! run: the drain rate of one worker on each, and how long a worker is
//! without a broker when the node it consumes from is killed (-9).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use session_guard::Settings;
use session_guard::broker;

use crate::drain::{Drains, side, side_by_side};
use crate::options::BenchArgs;
use crate::report::{Row, median, spread};
use crate::services::reset_log;
use crate::workers::{Progress, WorkerProcess, longest_pause};

/// The script that runs the cluster, in the repository.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq-cluster");

/// A cluster of the bench's own; stopped (its files removed) when dropped.
struct Cluster {
    dir: PathBuf,
    urls: String,
    /// AMQP port of nodes 1-3.
    ports: Vec<u16>,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "sg-bench-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cluster = Cluster {
            dir,
            urls: String::new(),
            ports: Vec::new(),
        };
        let printed = cluster.script(&["start"], None)?;
        for line in printed.lines() {
            if let Some(urls) = line.strip_prefix("URLS=") {
                cluster.urls = urls.to_owned();
            }
            if line.starts_with("NODE_") {
                let port = line
                    .split_whitespace()
                    .find_map(|w| w.split_once('=').filter(|(k, _)| k.starts_with("PORT_")))
                    .and_then(|(_, p)| p.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("no port in {line:?}"))?;
                cluster.ports.push(port);
            }
        }
        anyhow::ensure!(
            !cluster.urls.is_empty() && cluster.ports.len() == 3,
            "rabbitmq-cluster start printed {printed:?}"
        );
        Ok(cluster)
    }

    /// Runs the script's `command` (on node `n`); its standard output.
    fn script(&self, command: &[&str], n: Option<usize>) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(SCRIPT);
        cmd.args(command).arg(&self.dir);
        if let Some(n) = n {
            cmd.arg(n.to_string());
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmq-cluster {command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rabbitmqctl ARGS` on the first node that answers.
    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        for n in 1..=3 {
            let out = std::process::Command::new(SCRIPT)
                .arg("ctl")
                .arg(&self.dir)
                .arg(n.to_string())
                .args(args)
                .output()?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
        }
        anyhow::bail!("no node answers rabbitmqctl {args:?}")
    }

    /// The node (1-3) the connection named `name` is on.
    fn node_of_connection(&self, name: &str) -> anyhow::Result<Option<usize>> {
        let quoted = format!("\"{name}\"");
        let out = self.ctl(&[
            "list_connections",
            "port",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])?;
        Ok(out
            .lines()
            .filter(|l| l.contains(&quoted))
            .filter_map(|l| l.split('\t').next()?.trim().parse::<u16>().ok())
            .find_map(|port| self.ports.iter().position(|p| *p == port).map(|i| i + 1)))
    }

    /// The OS process id of node `n`, from the script's `status`.
    fn pid(&self, n: usize) -> anyhow::Result<i32> {
        let status = self.script(&["status"], None)?;
        let key = format!("PID_{n}=");
        status
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key.as_str()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("node {n} is not running: {status}"))
    }

    /// The node (1-3) that leads `queue`.
    fn leader(&self, queue: &str) -> anyhow::Result<usize> {
        let out = self.ctl(&["list_queues", "name", "leader", "--no-table-headers", "-q"])?;
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .and_then(|(_, leader)| (1..=3).find(|n| leader.contains(&format!("-{n}@"))))
            .ok_or_else(|| anyhow::anyhow!("no leader of {queue} in {out}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// The cluster's rows: 1 worker on the single node and on the cluster,
/// back to back in each run, and the outage after the worker's node is
/// killed.
pub async fn rows(
    single: &Settings,
    args: &BenchArgs,
    worker: &Path,
    events: &[Vec<u8>],
) -> anyhow::Result<Vec<Row>> {
    println!("starting a three-node cluster (scripts/rabbitmq-cluster)");
    let cluster = Cluster::start()?;
    let mut on_cluster = single.clone();
    on_cluster.amqp.url = cluster.urls.clone();

    let pool = session_guard::db::connect_and_migrate(&single.database).await?;
    let runs = args.runs.max(1);
    let (mut rates, mut ratios, mut outages) = ([Vec::new(), Vec::new()], Vec::new(), Vec::new());
    let mut leader_killed = 0;
    let (mut leader_outages, mut worker_on_leader) = (Vec::new(), 0);
    for run in 1..=runs {
        // Connected anew for each drain: a node killed before may have been
        // the one the bench's connection was on.
        let run_rates = side_by_side(
            [
                ("the single node", single, &pool),
                ("the cluster", &on_cluster, &pool),
            ],
            worker,
            events,
            &format!("run {run}/{runs}"),
        )
        .await?;
        for (i, rate) in run_rates.into_iter().enumerate() {
            rates[i].push(rate);
        }
        ratios.push(run_rates[1] / run_rates[0]);

        // The outage: the node the worker consumes from, killed mid-drain.
        let (connection, publisher) = side(&on_cluster).await?;
        let drains = Drains::on(&on_cluster, &pool, worker, events, &connection, &publisher);
        reset_log(&pool).await?;
        drains.fill().await?;
        let (gap, both) = outage(
            &cluster,
            &on_cluster,
            worker,
            events.len() as u64,
            Kill::WorkersNode,
        )
        .await?;
        let _ = connection.close(200, "done".into()).await;
        println!(
            "run {run}/{runs}: worker's node killed{}: {} ms from the kill to its next event",
            if both {
                " (it led the events queue)"
            } else {
                ""
            },
            gap.as_millis()
        );
        outages.push(gap.as_secs_f64() * 1000.0);
        leader_killed += usize::from(both);
        purge(&on_cluster).await?;

        // The events queue's leader killed: a new one elected.
        let (connection, publisher) = side(&on_cluster).await?;
        let drains = Drains::on(&on_cluster, &pool, worker, events, &connection, &publisher);
        reset_log(&pool).await?;
        drains.fill().await?;
        let (gap, both) = outage(
            &cluster,
            &on_cluster,
            worker,
            events.len() as u64,
            Kill::Leader,
        )
        .await?;
        let _ = connection.close(200, "done".into()).await;
        println!(
            "run {run}/{runs}: the events queue's leader killed{}: {} ms from the kill to the worker's next event",
            if both { " (the worker was on it)" } else { "" },
            gap.as_millis()
        );
        leader_outages.push(gap.as_secs_f64() * 1000.0);
        worker_on_leader += usize::from(both);
        purge(&on_cluster).await?;
    }
    broker::delete_topology(&on_cluster.amqp, "bench cleanup").await;
    pool.close().await;
    drop(cluster);

    let ratio_list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    Ok(vec![
        Row {
            what: format!("1 worker, single node ({} mix)", args.mix.name()),
            figure: format!("{:.0} events/s", median(&rates[0])),
            note: format!("the machine's broker; {}", spread(&rates[0])),
        },
        Row {
            what: format!("1 worker, three-node cluster ({} mix)", args.mix.name()),
            figure: format!("{:.0} events/s", median(&rates[1])),
            note: format!(
                "{:.2} of the single node (median of the runs' ratios: {}); quorum queues of 3 \
                 replicas, the nodes on this machine; {}",
                median(&ratios),
                ratio_list.join(", "),
                spread(&rates[1])
            ),
        },
        Row {
            what: "worker without a broker after its node is killed".into(),
            figure: format!("{:.0} ms", median(&outages)),
            note: format!(
                "kill -9 of the node its consumer is on, mid-drain, to the next event it \
                 processes (longest pause in its events_processed, polled every 10 ms); \
                 {leader_killed} of {runs} killed nodes led the events queue; {}",
                spread(&outages)
            ),
        },
        Row {
            what: "worker's pause when the events queue's leader is killed".into(),
            figure: format!("{:.0} ms", median(&leader_outages)),
            note: format!(
                "kill -9 of the node leading the events queue, mid-drain, to the worker's next \
                 event (a new leader elected; the worker reconnects too if it was on that node: \
                 {worker_on_leader} of {runs}); {}",
                spread(&leader_outages)
            ),
        },
    ])
}

/// Which node [`outage`] kills.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// The node the worker's consumer is connected to.
    WorkersNode,
    /// The node leading the events queue.
    Leader,
}

/// Empties the events queue of what a worker left in it, before the next
/// drain.
async fn purge(settings: &Settings) -> anyhow::Result<()> {
    let connection = broker::connect(&settings.amqp, "bench").await?;
    connection
        .create_channel()
        .await?
        .queue_purge(
            settings.amqp.events_queue.as_str().into(),
            lapin::options::QueuePurgeOptions::default(),
        )
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Starts a worker on the filled queue, kills a node (`which`) once it
/// has processed a tenth, and measures the longest pause in
/// its processing from the kill until it has processed a tenth more; the
/// node is started again. Returns the pause and whether the node was both
/// the worker's and the leader.
async fn outage(
    cluster: &Cluster,
    settings: &Settings,
    worker: &Path,
    events: u64,
    which: Kill,
) -> anyhow::Result<(Duration, bool)> {
    let progress = Progress::new()?;
    let process = WorkerProcess::start(worker, settings)?;
    let result = async {
        let started = Instant::now();
        let tenth = events / 10;
        while progress.processed(&process).await.unwrap_or(0) < tenth {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let name = format!("session-guard consumer ({})", settings.amqp.events_queue);
        let workers = cluster
            .node_of_connection(&name)?
            .ok_or_else(|| anyhow::anyhow!("no consumer connection found"))?;
        let leader = cluster.leader(&settings.amqp.events_queue)?;
        let node = if which == Kill::WorkersNode {
            workers
        } else {
            leader
        };
        let both = workers == leader;
        let pid = cluster.pid(node)?;
        // The signal sent here rather than by the script, so that the
        // clock starts at the kill itself.
        let at_kill = progress.processed(&process).await.unwrap_or(0);
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let until = (at_kill + tenth).min(events);
        let (growth, reached) = progress
            .growth(&process, until, Duration::from_secs(300))
            .await;
        anyhow::ensure!(reached >= until, "no progress");
        let longest = longest_pause(&growth, killed);
        cluster.script(&["start-node"], Some(node))?;
        Ok((longest, both))
    }
    .await;
    process.stop().await;
    result
}
