//! Test support shared by the integration tests and the benches: private `redis-server`
//! processes on free loopback ports, never a shared server.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod backends;
#[cfg(feature = "serve")]
pub mod serve;

/// A `redis-server` of this test's own: a free port, no snapshots, its log in a temp dir,
/// killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

impl RedisServer {
    /// A plain server.
    pub fn start() -> RedisServer {
        RedisServer::with_args(&[])
    }

    /// A server that requires `password`.
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::with_args(&["--requirepass", password])
    }

    /// A server with extra `redis-server` arguments.
    pub fn with_args(args: &[&str]) -> RedisServer {
        RedisServer::on_free_port(free_port, args)
    }

    /// A server on a port `pick` chooses, chosen again if another process took it between
    /// the pick and the server's bind (tests run in parallel, each picking ports).
    pub fn on_free_port(pick: fn() -> u16, args: &[&str]) -> RedisServer {
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let mut server = RedisServer {
                child: None,
                port: pick(),
                tls_port: None,
                dir,
                args: args.iter().map(|a| a.to_string()).collect(),
            };
            server.launch();
            match server.try_ready() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("redis-server on port {}:\n{log}", server.port),
            }
        }
        panic!("no free port for redis-server after 10 tries");
    }

    /// A server on `port` with extra `redis-server` arguments.
    pub fn on_port(port: u16, args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port,
            tls_port: None,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server
    }

    /// A server that also speaks TLS, on a port of its own, with the certificate `certs` made
    /// for 127.0.0.1 and localhost (clients need not present one). The plain port stays open
    /// for the test to look at the server.
    pub fn with_tls(certs: &TestCerts, args: &[&str]) -> RedisServer {
        RedisServer::with_tls_on_free_port(free_port, certs, args)
    }

    /// [`RedisServer::with_tls`] with its plain port chosen by `pick`; both ports are chosen
    /// again if another process took one meanwhile.
    pub fn with_tls_on_free_port(
        pick: fn() -> u16,
        certs: &TestCerts,
        args: &[&str],
    ) -> RedisServer {
        for _ in 0..10 {
            let tls_port = free_port();
            let mut all: Vec<String> = vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                certs.server_cert().display().to_string(),
                "--tls-key-file".into(),
                certs.server_key().display().to_string(),
                "--tls-ca-cert-file".into(),
                certs.ca().display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
            all.extend(args.iter().map(|a| a.to_string()));
            let mut server = RedisServer {
                child: None,
                port: pick(),
                tls_port: Some(tls_port),
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
                args: all,
            };
            server.launch();
            match server.try_ready() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("redis-server on port {}:\n{log}", server.port),
            }
        }
        panic!("no free ports for a TLS redis-server after 10 tries");
    }

    /// `rediss://127.0.0.1:TLS_PORT`, for a server started [`RedisServer::with_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port())
    }

    /// The TLS port of a server started [`RedisServer::with_tls`].
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("a server started with_tls")
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; install redis-server or set REDIS_SERVER",
                    server_binary()
                )
            });
        self.child = Some(child);
    }

    /// Waits until the server answers PING (or asks for a password), or panics with its log.
    fn wait_ready(&mut self) {
        if let Err(log) = self.try_ready() {
            panic!("redis-server on port {}:\n{log}", self.port);
        }
    }

    /// Waits until the server answers PING (or asks for a password); its log if it exits or
    /// never answers.
    fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0u8; 64];
                if conn.write_all(b"PING\r\n").is_ok()
                    && matches!(conn.read(&mut reply), Ok(n) if n > 0
                        && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")))
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("never became ready:\n{}", self.log()))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}", self.port)
    }

    /// The directory the server runs in (its log, its append-only file if asked for).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server; [`RedisServer::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new server replicating this one (`--replicaof`), once it has synced (20 s at most).
    pub fn start_replica(&self) -> RedisServer {
        let port = self.port.to_string();
        let replica = RedisServer::with_args(&["--replicaof", "127.0.0.1", &port]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.connection())
                .unwrap();
            if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1")
            {
                return replica;
            }
            assert!(Instant::now() < deadline, "replica never synced: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Adds the Redis user `name`, signed in by `password`, that may read but not write;
    /// the URL that signs in as it.
    pub fn read_only_user(&self, name: &str, password: &str) -> String {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("+@read")
            .arg("+@connection")
            .arg("+client")
            .exec(&mut self.connection())
            .unwrap();
        format!("redis://{name}:{password}@127.0.0.1:{}", self.port)
    }

    /// Caps the server's memory at `max` (`"2mb"`) with `noeviction`: past it, writes are
    /// refused with OOM and reads go on, as at a production `maxmemory`.
    pub fn cap_memory(&self, max: &str) {
        let mut admin = self.connection();
        for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", max)] {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .exec(&mut admin)
                .unwrap();
        }
    }

    /// Zeroes the server's counts of commands run (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self) {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .exec(&mut self.connection())
            .unwrap();
    }

    /// The `INFO commandstats` of the server, and its lines of the commands run since
    /// [`RedisServer::reset_stats`] but the test's own (`INFO`, `CONFIG`) and connection upkeep
    /// (`PING`, `CLIENT`, `HELLO`).
    pub fn commands_run(&self) -> (String, Vec<String>) {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .unwrap();
        let upkeep = ["info", "config", "ping", "client", "hello"];
        let calls = stats
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter(|l| !upkeep.iter().any(|u| l.starts_with(u)))
            .map(|l| format!("cmdstat_{l}"))
            .collect();
        (stats, calls)
    }

    /// A plain synchronous connection, for tests that look at the server directly.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `cluster-node-timeout` of [`RedisCluster::start_replicated`], in milliseconds: how long
/// a master may be silent before it is failed over. Small, so failover tests stay short, and
/// not so small that a busy test machine fails a master that is only slow.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A port free for a cluster node: the node listens on it and on it + 10000 (the cluster bus).
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn cli_binary() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_string())
}

/// A Redis Cluster of this test's own: three masters, no replicas, each node its own process,
/// port and temp dir, all killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Nodes stopped by [`RedisCluster::freeze`]: running, but answering nothing.
    frozen: Vec<usize>,
}

impl RedisCluster {
    /// Starts three masters, joins them with `redis-cli --cluster create` and waits until every
    /// node says `cluster_state:ok` and sees all three masters.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(None)
    }

    /// A cluster whose nodes also speak TLS (clients, and the cluster bus between nodes) with
    /// certificates from `certs`; [`RedisCluster::tls_url`] reaches it over TLS.
    pub fn start_tls(certs: &TestCerts) -> RedisCluster {
        RedisCluster::start_with(Some(certs))
    }

    fn start_with(certs: Option<&TestCerts>) -> RedisCluster {
        RedisCluster::create(certs, 0, &[])
    }

    /// Three masters each with one replica (six nodes), failure detection after
    /// [`NODE_TIMEOUT_MS`]: a killed master's replica is promoted within about two seconds.
    pub fn start_replicated() -> RedisCluster {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let extra = [
            "--cluster-node-timeout",
            timeout.as_str(),
            // Replicas start syncing at once instead of waiting for more replicas to batch.
            "--repl-diskless-sync-delay",
            "0",
            // Any replica may be promoted, however long its link was down.
            "--cluster-replica-validity-factor",
            "0",
        ];
        let cluster = RedisCluster::create(None, 1, &extra);
        cluster.wait_replicas_synced();
        cluster
    }

    fn create(certs: Option<&TestCerts>, replicas: usize, extra: &[&str]) -> RedisCluster {
        // Full coverage off: when a master dies, the others keep serving their own slots.
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-require-full-coverage",
            "no",
            "--appendonly",
            "no",
        ];
        if certs.is_some() {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        args.extend(extra);
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| match certs {
                Some(certs) => RedisServer::with_tls_on_free_port(cluster_port, certs, &args),
                None => RedisServer::on_free_port(cluster_port, &args),
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli_binary()));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            frozen: Vec::new(),
        };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node says the cluster is ok and sees three masters.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.running().into_iter().all(|i| {
                let mut conn = self.node_connection(i);
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut conn)
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && self.masters_seen_by(i) == 3
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became ok:\n{}",
                self.nodes
                    .iter()
                    .map(|n| n.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn masters_seen_by(&self, node: usize) -> usize {
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.node_connection(node))
            .unwrap_or(redis::Value::Nil);
        match slots {
            redis::Value::Array(ranges) => ranges.len(),
            _ => 0,
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `rediss+cluster://127.0.0.1:T1,…` over the TLS ports, for a cluster
    /// [`RedisCluster::start_tls`].
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port()))
            .collect();
        format!("rediss+cluster://{}", seeds.join(","))
    }

    /// The ports of the nodes, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port()).collect()
    }

    /// A plain connection to node `i` (not cluster-aware), for its own stats.
    pub fn node_connection(&self, i: usize) -> redis::Connection {
        self.nodes[i].connection()
    }

    /// The cluster's id of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node_connection(i))
            .unwrap()
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node_connection(0))
            .unwrap()
    }

    /// The index of the node that serves `slot` by its own account.
    pub fn owner_of(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|i| {
                let slots: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut self.node_connection(*i))
                    .unwrap();
                let redis::Value::Array(ranges) = slots else {
                    return false;
                };
                ranges.iter().any(|r| match r {
                    redis::Value::Array(items) => match (&items[0], &items[1], &items[2]) {
                        (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(n)) => {
                            (*a..=*b).contains(&i64::from(slot))
                                && n.get(1)
                                    == Some(&redis::Value::Int(i64::from(self.nodes[*i].port())))
                        }
                        _ => false,
                    },
                    _ => false,
                })
            })
            .expect("some node serves the slot")
    }

    /// Resets the command and keyspace statistics of every node.
    pub fn reset_stats(&self) {
        for i in 0..self.nodes.len() {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec(&mut self.node_connection(i))
                .unwrap();
        }
    }

    /// One line of node `i`'s `INFO all`, as a number: `stat("keyspace_hits:")`,
    /// `stat("cmdstat_eval_ro:calls=")`; 0 when absent.
    pub fn stat(&self, i: usize, name: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("all")
            .query(&mut self.node_connection(i))
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Moves `slot` from node `from` to node `to` the way `redis-cli --cluster reshard` does:
    /// IMPORTING/MIGRATING, the keys one `MIGRATE` at a time with `pause` between, then the
    /// new owner on both sides.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize, pause: Duration) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let mut src = self.node_connection(from);
        let mut dst = self.node_connection(to);
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .exec(&mut dst)
            .unwrap();
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .exec(&mut src)
            .unwrap();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query(&mut src)
                .unwrap();
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut src)
                .unwrap();
            std::thread::sleep(pause);
        }
        for conn in [&mut dst, &mut src] {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .exec(conn)
                .unwrap();
        }
    }

    /// Kills node `i` (SIGKILL): without replicas its slots stay unserved; with them, its
    /// replica is promoted after [`NODE_TIMEOUT_MS`] and an election.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
        self.frozen.retain(|&f| f != i);
    }

    /// Starts killed node `i` again on its port and directory: it rejoins the cluster (its
    /// `nodes.conf`), as a replica if it was failed over.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
    }

    /// Freezes node `i` (SIGSTOP): its connections stay open and nothing answers, as when a
    /// host hangs or a network partition cuts it off. Its replica is promoted as after a kill.
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.frozen.push(i);
    }

    /// Lets frozen node `i` go on (SIGCONT).
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.frozen.retain(|&f| f != i);
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].pid().expect("a running node").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The indices of the nodes that are running and not frozen.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some() && !self.frozen.contains(&i))
            .collect()
    }

    /// Node `i`'s own account of its role: `"master"` or `"slave"`.
    pub fn role(&self, i: usize) -> String {
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut self.node_connection(i))
            .unwrap();
        match role.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("ROLE answered {other:?}"),
        }
    }

    /// The running nodes that are masters, in start order.
    pub fn masters(&self) -> Vec<usize> {
        (self.running().into_iter())
            .filter(|&i| self.role(i) == "master")
            .collect()
    }

    /// The running replica of master `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        (self.replicas_of(master).first().copied())
            .unwrap_or_else(|| panic!("master {master} has no running replica"))
    }

    /// The running replicas of master `master`.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let port = format!("master_port:{}", self.nodes[master].port());
        (self.running().into_iter())
            .filter(|&i| {
                i != master && {
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut self.node_connection(i))
                        .unwrap();
                    info.lines().any(|l| l.trim() == port)
                }
            })
            .collect()
    }

    /// Waits until every running replica's link to its master is up and caught up.
    pub fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self.running().into_iter().all(|i| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut self.node_connection(i))
                    .unwrap_or_default();
                info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && !info.contains("master_sync_in_progress:1"))
            });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas never synced:\n{}",
                self.running()
                    .into_iter()
                    .map(|i| self.nodes[i].log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` is a master and every running node says `cluster_state:ok` and
    /// sees three masters serving slots; how long that took.
    pub fn wait_promoted(&self, i: usize) -> Duration {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        while self.role(i) != "master" {
            assert!(Instant::now() < deadline, "node {i} was never promoted");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_ok();
        start.elapsed()
    }

    /// A manual failover: replica `replica` takes over from its master, which becomes its
    /// replica, with no write lost (`CLUSTER FAILOVER` without `FORCE`); waits until done.
    pub fn failover(&self, replica: usize) {
        let old = (self.masters().into_iter())
            .find(|&m| self.replicas_of(m).contains(&replica))
            .unwrap_or_else(|| panic!("node {replica} replicates no running master"));
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .exec(&mut self.node_connection(replica))
            .unwrap();
        self.wait_promoted(replica);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.role(old) != "slave" {
            assert!(
                Instant::now() < deadline,
                "node {old} never became a replica"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A CA, and a certificate it signed for 127.0.0.1 and localhost, made by `openssl` in a temp
/// dir of their own. The certificate serves both ends of TLS: nodes of a cluster present it to
/// each other as clients too.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes them (P-256 keys, valid for two days).
    pub fn generate() -> TestCerts {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: Vec<Vec<String>> = vec![
            [
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=enrich test CA"],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .chain([
                "-keyout".into(),
                path("ca.key"),
                "-out".into(),
                path("ca.crt"),
            ])
            .collect(),
            [&["req"][..], &ec, &["-subj", "/CN=localhost"]]
                .concat()
                .iter()
                .map(|s| s.to_string())
                .chain([
                    "-keyout".into(),
                    path("server.key"),
                    "-out".into(),
                    path("server.csr"),
                ])
                .collect(),
            ["x509", "-req", "-days", "2", "-CAcreateserial"]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    "-in".into(),
                    path("server.csr"),
                    "-CA".into(),
                    path("ca.crt"),
                    "-CAkey".into(),
                    path("ca.key"),
                    "-extfile".into(),
                    path("server.ext"),
                    "-out".into(),
                    path("server.crt"),
                ])
                .collect(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TestCerts { dir }
    }

    /// The CA's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server's certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A temp dir holding a file store path.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.db");
    (dir, path)
}

/// The built `enrich` binary, run in `dir` with none of the shell's `ENRICH_*` settings.
pub fn enrich_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enrich"));
    command.current_dir(dir);
    without_settings(&mut command);
    command
}

/// `command` without the shell's settings of `enrich` (every `ENRICH_*` variable: the store,
/// the namespace, the threads, the limits, the keys…), which a test gives as flags or sets
/// again when it means them.
pub fn without_settings(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENRICH_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `enrich ARGS` in `dir`, feeding it `stdin`, and waits for its output.
pub fn run_enrich(dir: &Path, args: &[&str], stdin: impl AsRef<[u8]>) -> std::process::Output {
    let mut child = enrich_command(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run enrich");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_ref())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What a command printed on stdout.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// What a command printed on stderr.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A command's exit code.
pub fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exit code")
}

/// Checks that a command succeeded and printed one compact JSON line, exactly what `want`
/// makes of its `created_at` and `updated_at` (each `YYYY-MM-DDTHH:MM:SS.ffffffZ`); the line
/// parsed.
pub fn printed_record(
    out: &std::process::Output,
    want: impl FnOnce(&str, &str) -> String,
) -> serde_json::Value {
    assert_eq!(code(out), 0, "stderr: {}", stderr(out));
    let text = stdout(out);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let created = record["created_at"].as_str().unwrap();
    let updated = record["updated_at"].as_str().unwrap();
    assert_eq!(text.trim_end(), want(created, updated));
    for ts in [created, updated] {
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    }
    record
}

/// The path of a file in `fixtures/`.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// An enricher over the store at `url`, once its watch of the store is up.
pub async fn watched_enricher(url: &str, wait: Duration) -> enrich::Enricher {
    let store = enrich::store::open(url, &enrich::StoreOptions::new())
        .await
        .unwrap();
    let enricher = enrich::Enricher::new(store);
    assert!(enricher.wait_for_cache(wait).await, "watch never came up");
    enricher
}

/// What `enricher` puts in place of `SU:id` as an activity's actor.
pub async fn actor(enricher: &enrich::Enricher, id: &str) -> serde_json::Value {
    let mut docs = vec![serde_json::json!({ "actor": format!("SU:{id}") })];
    enricher
        .enrich_values(&mut docs, enrich::Depth::TopLevel)
        .await
        .unwrap();
    docs.remove(0)["actor"].take()
}

/// Runs `enrich ARGS` in `dir` with standard input closed and returns its output with its peak
/// resident memory in KiB: as `/usr/bin/time` reports it where that exists, otherwise the
/// largest `VmHWM` read from `/proc/PID/status` while it ran.
pub fn run_enrich_measured(dir: &Path, args: &[&str]) -> (std::process::Output, u64) {
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let report = dir.join(format!("peak-{}.txt", free_port()));
        let mut command = Command::new(time);
        command
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&report)
            .arg(env!("CARGO_BIN_EXE_enrich"))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null());
        without_settings(&mut command);
        let out = command.output().expect("run enrich under /usr/bin/time");
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        let _ = std::fs::remove_file(&report);
        let peak = text
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no peak memory in {text:?}"));
        return (out, peak);
    }
    let mut child = enrich_command(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run enrich");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_kib(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait().expect("wait for enrich") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (out, peak)
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in KiB; `None` once it is gone.
pub fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// True once process `pid` catches signal `number` (its bit in `SigCgt` of its status).
pub fn catches(pid: u32, number: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
}

/// Reads a child's pipe to its end on a thread of its own.
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// How `child` exits, which it must within `limit` from now (`what`: since what, for the
/// message).
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let since = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(since.elapsed() < limit, "still running {limit:?} {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
