//! A RabbitMQ node of a test's own (`scripts/rabbitmq-node`), for tests
//! whose broker must go away: the machine's shared broker, which other
//! tests use at the same time, is never stopped; and a three-node cluster
//! of a test's own (`scripts/rabbitmq-cluster`). Removed on drop, also
//! after a failed assertion.

use std::path::PathBuf;

use tokio::process::Command;

/// The script that runs private nodes; the Django suite uses it too.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-node");
/// The script that runs a cluster of three such nodes.
const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster");

/// Runs `script` with `args` (tokio's process: a test's in-process worker
/// shares the runtime and must not be blocked); its standard output, or a
/// failed assertion showing what it printed.
async fn run(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(script)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{script} runs: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private RabbitMQ node on a port of its own; killed and its files
/// removed when dropped.
pub struct PrivateBroker {
    /// The node's AMQP port on 127.0.0.1.
    port: u16,
    /// Where the node keeps everything (data, logs, config, cookie): the
    /// temporary directory's `node`, so that `kill` can remove it and the
    /// `TempDir` still cleans up after it.
    dir: PathBuf,
    /// Held for its Drop, which removes what `kill` left (nothing, normally).
    _base: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts connections (about 5-10 s).
    pub async fn start() -> PrivateBroker {
        let base = tempfile::Builder::new()
            .prefix("sg-rabbitmq-")
            .tempdir()
            .expect("a temporary directory");
        let broker = PrivateBroker {
            port: super::helpers::free_port(),
            dir: base.path().join("node"),
            _base: base,
        };
        // Constructed first: a node that fails halfway is still killed.
        broker.script(&["start"], true).await;
        broker
    }

    /// The AMQP URL of the node, as guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node, keeping its data: an outage. Connections to it drop.
    pub async fn stop(&self) {
        self.script(&["stop"], false).await;
    }

    /// Starts the node again after `stop`, with its durable queues and
    /// persistent messages, and waits until it accepts connections.
    pub async fn restart(&self) {
        self.script(&["start"], true).await;
    }

    /// Runs the script's `command` on this node.
    async fn script(&self, command: &[&str], with_port: bool) {
        let port = self.port.to_string();
        let mut args: Vec<&std::ffi::OsStr> = command.iter().map(|c| c.as_ref()).collect();
        args.push(self.dir.as_os_str());
        if with_port {
            args.push(port.as_ref());
        }
        run(SCRIPT, &args).await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Drop cannot await: a blocking call, at the end of the test.
        let _ = std::process::Command::new(SCRIPT)
            .arg("kill")
            .arg(&self.dir)
            .output();
    }
}

/// A three-node RabbitMQ cluster of the test's own, on free ports, with
/// names, data and an Erlang cookie of its own (`scripts/rabbitmq-cluster`);
/// its nodes killed and their files removed when dropped.
pub struct PrivateCluster {
    /// The three AMQP URLs (guest), comma-separated: `amqp.url`'s
    /// environment form.
    urls: String,
    /// The cluster's directory (the temporary directory's `cluster`).
    dir: PathBuf,
    /// Node names (`sgc-<id>-n@localhost`) and AMQP ports, by node 1-3
    /// (index 0 is node 1).
    nodes: Vec<(String, u16)>,
    /// Held for its Drop, which removes what `stop` left (nothing, normally).
    _base: tempfile::TempDir,
}

impl PrivateCluster {
    /// Starts three nodes and waits until they are clustered (16-25 s on
    /// a 2-core machine).
    pub async fn start() -> PrivateCluster {
        let base = tempfile::Builder::new()
            .prefix("sg-rabbitmq-cluster-")
            .tempdir()
            .expect("a temporary directory");
        let mut cluster = PrivateCluster {
            urls: String::new(),
            dir: base.path().join("cluster"),
            nodes: Vec::new(),
            _base: base,
        };
        // Constructed first: a cluster that fails halfway is still stopped.
        let printed = cluster.script(&["start"], None).await;
        cluster.urls = printed
            .lines()
            .find_map(|line| line.strip_prefix("URLS="))
            .unwrap_or_else(|| panic!("no URLS= line in {printed:?}"))
            .to_owned();
        // "NODE_1=sgc-..@localhost PORT_1=P1 PID_1=..."
        for line in printed.lines().filter(|l| l.starts_with("NODE_")) {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.split_once('=').filter(|(k, _)| k.starts_with(key)))
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            };
            let port = field("PORT_").parse().expect("a port");
            cluster.nodes.push((field("NODE_"), port));
        }
        assert_eq!(cluster.nodes.len(), 3, "{printed}");
        cluster
    }

    /// Node `n`'s (1-3) Erlang node name.
    #[allow(dead_code)]
    pub fn node_name(&self, n: usize) -> &str {
        &self.nodes[n - 1].0
    }

    /// The node (1-3) whose AMQP port is `port`.
    #[allow(dead_code)]
    pub fn node_with_port(&self, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .position(|(_, p)| *p == port)
            .map(|i| i + 1)
    }

    /// The node (1-3) whose name is `name`.
    #[allow(dead_code)]
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i + 1)
    }

    /// `rabbitmqctl ARGS` against node `n`; its output, or `None` if it
    /// failed (the node is down).
    #[allow(dead_code)]
    pub async fn ctl(&self, n: usize, args: &[&str]) -> Option<String> {
        let node = n.to_string();
        let out = Command::new(CLUSTER_SCRIPT)
            .arg("ctl")
            .arg(&self.dir)
            .arg(&node)
            .args(args)
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops node `n` gracefully, keeping its data.
    #[allow(dead_code)]
    pub async fn stop_node(&self, n: usize) {
        self.script(&["stop-node"], Some(n)).await;
    }

    /// The three nodes' AMQP URLs, comma-separated.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// Node `n`'s (1-3) AMQP URL.
    #[allow(dead_code)] // for the node-loss tests
    pub fn url(&self, n: usize) -> &str {
        self.urls.split(',').nth(n - 1).expect("nodes 1 to 3")
    }

    /// Kills node `n` (1-3) with SIGKILL, keeping its data.
    #[allow(dead_code)] // for the node-loss tests
    pub async fn kill_node(&self, n: usize) {
        self.script(&["kill"], Some(n)).await;
    }

    /// Starts node `n` again and waits until it is back in the cluster.
    #[allow(dead_code)] // for the node-loss tests
    pub async fn start_node(&self, n: usize) {
        self.script(&["start-node"], Some(n)).await;
    }

    async fn script(&self, command: &[&str], node: Option<usize>) -> String {
        let node = node.map(|n| n.to_string());
        let mut args: Vec<&std::ffi::OsStr> = command.iter().map(|c| c.as_ref()).collect();
        args.push(self.dir.as_os_str());
        args.extend(node.as_deref().map(std::ffi::OsStr::new));
        run(CLUSTER_SCRIPT, &args).await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Drop cannot await: a blocking call, at the end of the test.
        let _ = std::process::Command::new(CLUSTER_SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
