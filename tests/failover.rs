//! Redis Cluster with replicas: a master killed or failed over under reads and writes.

mod support;

use std::time::Duration;

use support::RedisCluster;

#[test]
fn replicated_cluster_fails_over() {
    let mut cluster = RedisCluster::start_replicated();
    assert_eq!(cluster.masters().len(), 3);
    let m = cluster.masters()[0];
    let r = cluster.replica_of(m);
    cluster.kill(m);
    let took = cluster.wait_promoted(r);
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("promoted after {took:?}");
    let r2 = cluster.replica_of(cluster.masters()[1]);
    cluster.failover(r2);
    assert_eq!(cluster.masters().len(), 3);
    cluster.restart(m);
    cluster.wait_replicas_synced();
}
