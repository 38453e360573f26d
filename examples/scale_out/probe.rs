//! What each node sends one tracking connection: the harness's own bare connection per node,
//! masters and replicas, in `CLIENT TRACKING ON BCAST` on the users' prefix like a reader's,
//! counting the `invalidate` pushes and keys it receives. A reader cannot tell which of its
//! connections a push came from (the engine merges them), so this is where the pushes of a
//! replica are told apart from its master's. It is one more tracker on every node: the nodes
//! push to P + 1 connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fanout::{drain, tracker};

pub struct Probe {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kept open: dropping it would close the connection's write side.
    _writers: Vec<tokio::net::tcp::OwnedWriteHalf>,
    /// Pushes and keys received, per node.
    counts: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

impl Probe {
    /// One tracker on each of `nodes` (`host:port`), on keys under `prefix`.
    pub async fn open(nodes: &[String], prefix: &str) -> Result<Probe, String> {
        let mut probe = Probe {
            tasks: Vec::new(),
            _writers: Vec::new(),
            counts: Vec::new(),
        };
        for node in nodes {
            let (read, write) = tracker(node, Some(prefix)).await?.into_split();
            let (pushes, keys) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            probe
                .tasks
                .push(tokio::spawn(drain(read, pushes.clone(), keys.clone())));
            probe._writers.push(write);
            probe.counts.push((pushes, keys));
        }
        Ok(probe)
    }

    /// (pushes, keys) received so far, per node.
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        (self.counts.iter())
            .map(|(p, k)| (p.load(Ordering::Relaxed), k.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
