//! Runs `tests/support/balancer.mjs` (a round-robin balancer with no affinity: every request
//! to the next replica) in front of some replicas. Killed on drop; its stdin is a pipe, so it
//! also ends when the test process does.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Time allowed for node to print its listening line.
const BALANCER_STARTUP: Duration = Duration::from_secs(20);

/// A running balancer.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Balancer {
    /// Starts the balancer in front of `replicas` (client listeners).
    pub async fn start(replicas: &[SocketAddr]) -> Balancer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/balancer.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .args(replicas.iter().map(SocketAddr::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the balancer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            let mut line_tx = Some(line_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = line_tx.take() {
                    let _ = tx.send(line);
                }
            }
        });
        let line = tokio::time::timeout(BALANCER_STARTUP, line_rx)
            .await
            .expect("balancer started in time")
            .expect("balancer printed its listening line");
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected balancer line {line:?}"))
            .parse()
            .expect("balancer address");
        Balancer {
            addr,
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
