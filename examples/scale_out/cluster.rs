//! A private Redis Cluster on free loopback ports: 3 masters, each with `replicas` replicas,
//! each node its own `redis-server` in a temp dir, all killed when dropped. (The integration
//! tests have their own in `tests/support`; a harness run outside `cargo test` starts its
//! own here.)

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        if port < 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port pair".into())
}

impl Cluster {
    /// One plain `redis-server` (no cluster).
    pub fn single() -> Result<Cluster, String> {
        Cluster::nodes(1, false)
    }

    fn nodes(n: u32, cluster: bool) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
        let mut nodes = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            _dir: dir,
        };
        for i in 0..n {
            let port = free_port()?;
            let node_dir = nodes._dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdout(Stdio::null());
            if cluster {
                command
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--cluster-node-timeout", "2000"]);
            }
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            nodes.nodes.push(child);
            nodes.ports.push(port);
        }
        for &port in &nodes.ports {
            wait(
                || ping(port),
                &format!("redis-server on {port} never answered"),
            )?;
        }
        Ok(nodes)
    }

    /// One plain `redis-server` and its replica (`REPLICAOF`), linked.
    pub fn pair() -> Result<Cluster, String> {
        let pair = Cluster::nodes(2, false)?;
        let (master, replica) = (pair.ports[0], pair.ports[1]);
        let mut conn = connection(replica).ok_or(format!("cannot reach {replica}"))?;
        redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(master)
            .exec(&mut conn)
            .map_err(|e| format!("REPLICAOF on {replica}: {e}"))?;
        wait(
            || {
                query(replica, redis::cmd("INFO").arg("replication"))
                    .contains("master_link_status:up")
            },
            "the replica never linked to its master",
        )?;
        Ok(pair)
    }

    /// Three masters with `replicas` replicas each.
    pub fn start(replicas: u32) -> Result<Cluster, String> {
        let cluster = Cluster::nodes(3 * (1 + replicas), true)?;
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let ports = cluster.ports.clone();
        wait(
            || {
                ports.iter().all(|&p| {
                    let info = cluster_info(p);
                    info.contains("cluster_state:ok") && info.contains("cluster_size:3")
                })
            },
            "the cluster never became ok",
        )?;
        // The cluster is ok before every node knows the replicas as replicas (for a moment
        // they are masters without slots), and a client that reads the map then would not
        // track them as replicas: wait until every node lists them all, each replica linked.
        let want = 3 * replicas as usize;
        wait(
            || {
                ports.iter().all(|&p| {
                    let nodes = query(p, redis::cmd("CLUSTER").arg("NODES"));
                    let linked = query(p, redis::cmd("INFO").arg("replication"));
                    let flags =
                        |l: &str| l.split_whitespace().nth(2).unwrap_or_default().to_string();
                    (nodes.lines())
                        .filter(|l| flags(l).split(',').any(|f| f == "slave"))
                        .count()
                        == want
                        && (linked.contains("role:master")
                            || linked.contains("master_link_status:up"))
                })
            },
            "the replicas never joined",
        )?;
        Ok(cluster)
    }

    /// Kills the node on `port` (SIGKILL): a master dies without a word.
    pub fn kill(&mut self, port: u16) -> Result<(), String> {
        let i = (self.ports.iter().position(|&p| p == port))
            .ok_or_else(|| format!("no node on port {port}"))?;
        self.nodes[i]
            .kill()
            .map_err(|e| format!("cannot kill the node on {port}: {e}"))?;
        let _ = self.nodes[i].wait();
        Ok(())
    }

    /// `CLUSTER FAILOVER` on a replica of the master on `port`: the replica takes over once it
    /// has caught up, and the master becomes its replica.
    pub fn failover(&self, port: u16) -> Result<(), String> {
        let mut master = connection(port).ok_or(format!("cannot reach {port}"))?;
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut master)
            .map_err(|e| e.to_string())?;
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&id)
            .query(&mut master)
            .map_err(|e| e.to_string())?;
        // `<id> <ip>:<port>@<bus port> slave …`
        let replica = (replicas.first())
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|addr| addr.split('@').next())
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or(format!("the master on {port} has no replica"))?;
        let mut conn = connection(replica).ok_or(format!("cannot reach {replica}"))?;
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .exec(&mut conn)
            .map_err(|e| format!("CLUSTER FAILOVER on {replica}: {e}"))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `redis+cluster://127.0.0.1:P1,…` over every node.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait(ready: impl Fn() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if Instant::now() > deadline {
            return Err(what.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn connection(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection()
        .ok()
}

fn ping(port: u16) -> bool {
    connection(port).is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
}

fn cluster_info(port: u16) -> String {
    query(port, redis::cmd("CLUSTER").arg("INFO"))
}

/// A command's text answer, empty if the node does not give one.
fn query(port: u16, command: &redis::Cmd) -> String {
    connection(port)
        .and_then(|mut c| command.query(&mut c).ok())
        .unwrap_or_default()
}
