//! A RabbitMQ node of a test's own (`scripts/rabbitmq-node`), for tests
//! whose broker must go away: the machine's shared broker, which other
//! tests use at the same time, is never stopped. Removed on drop, also
//! after a failed assertion.

use std::path::PathBuf;

use tokio::process::Command;

/// The script that runs private nodes; the Django suite uses it too.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-node");

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

    /// Runs the script's `command` on this node (tokio's process: a test's
    /// in-process worker shares the runtime and must not be blocked).
    async fn script(&self, command: &[&str], with_port: bool) {
        let mut cmd = Command::new(SCRIPT);
        cmd.args(command).arg(&self.dir);
        if with_port {
            cmd.arg(self.port.to_string());
        }
        let out = cmd.output().await.expect("scripts/rabbitmq-node runs");
        assert!(
            out.status.success(),
            "scripts/rabbitmq-node {command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
