//! Which replicas may answer reads: those that have caught up with their master.
//!
//! A replica answers reads whatever the state of its link to its master
//! (`replica-serve-stale-data`, on by default): one that was just restarted and is still
//! syncing holds an empty or old dataset, and one whose master died holds what it had. Even
//! `connected` is not enough: after a full sync a master holds back the writes it took
//! meanwhile until the replica's first acknowledgement, up to a second later (seen on 7.0: a
//! restarted replica served versions a second old while saying `connected`). So when the store
//! reads from replicas, every [`CHECK_EVERY`] each master and then each replica of the map is
//! asked `ROLE`, and a replica may answer reads only if its master lists it (past its sync: not
//! proof of much, as a master lists a replica as soon as its sync is sent, with an acknowledged
//! offset of 0 until its first acknowledgement, seen on 7.0 with a disk-based sync), it says
//! `connected`, and its own replication offset reaches the offset its master gave just before
//! (within [`CATCH_UP_TRIES`] × [`CATCH_UP_WAIT`]): it has applied every write its master had
//! acknowledged at the time of the check. That verdict holds for [`TRUSTED_FOR`] from the
//! moment the round asked the masters, which bounds how far behind a read from a replica can
//! be; a round slowed by a node that does not answer (a failover) lets the verdicts lapse
//! rather than stretch them, and the masters answer meanwhile. A replica that fails a read is
//! off the list until a round says otherwise. The others' reads go to their master.
//!
//! That trust bounds what a read answers, not how long an L1 keeps it: an answer cached from a
//! replica is dropped when the replica announces the write it missed, which it does only once
//! it applies it — seconds later if its stream is held back (as after a full sync) or cut.
//! So a key announced written less than [`TRUSTED_FOR`] ago is read from its master: a replica
//! trusted now was caught up at a round begun less than that ago, so it holds every write
//! announced before, and a write announced after the read began fences the load (see
//! `crate::cache`). The watch of the store tells which keys were written ([`Replicas::heard`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::Value;

use crate::store::StoreEvent;
use crate::store::redis::node_links::NodeLinks;
use crate::store::redis::slot_map::Node;
use crate::store::redis::topology::Topology;

/// How often each replica is asked whether it is in sync, from the start of one round to the
/// start of the next.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a replica's "caught up" is trusted, from the moment its master gave the offset it
/// reached: a read from it answers no older than that, give or take the replication delay.
/// The next round comes [`CHECK_EVERY`] after, and takes a few milliseconds. (Counted from the
/// end of a round and trusted for 600 ms, a round slowed by a failover let replicas be read
/// up to 0.9 s behind: `tests/failover.rs` saw reads 356–883 ms stale.)
const TRUSTED_FOR: Duration = Duration::from_millis(300);

/// How many times a round asks a replica that has not caught up yet, and how long apart: a
/// replica under a stream of writes is always a few behind the instant its master answered,
/// and is counted caught up if it gets there within this.
const CATCH_UP_TRIES: usize = 3;
const CATCH_UP_WAIT: Duration = Duration::from_millis(5);

/// The most ids [`Written`] holds per generation; past it, every key counts as written lately
/// until the generation is over (every read goes to the masters meanwhile).
const MAX_WRITTEN: usize = 1 << 16;

/// The ids announced written lately: each kept at least [`TRUSTED_FOR`] after it was heard, in
/// two generations of that length (the older dropped as a whole).
struct Written {
    current: HashSet<Box<str>>,
    previous: HashSet<Box<str>>,
    /// When `current` began.
    since: Instant,
    /// Every id counts as written lately until then: after a flush, after announcements that
    /// may have been missed, after an overflow.
    all_until: Option<Instant>,
}

impl Written {
    fn new() -> Written {
        Written {
            current: HashSet::new(),
            previous: HashSet::new(),
            since: Instant::now(),
            all_until: None,
        }
    }

    /// Starts a new generation if the current one is [`TRUSTED_FOR`] old.
    fn rotate(&mut self, now: Instant) {
        let age = now.duration_since(self.since);
        if age < TRUSTED_FOR {
            return;
        }
        if age < 2 * TRUSTED_FOR {
            self.previous = std::mem::take(&mut self.current);
        } else {
            // Every id of both was heard more than `TRUSTED_FOR` ago.
            self.previous = HashSet::new();
            self.current = HashSet::new();
        }
        self.since = now;
    }

    fn all(&mut self, now: Instant) {
        self.all_until = Some(now + TRUSTED_FOR);
    }

    fn heard(&mut self, event: &StoreEvent) {
        let now = Instant::now();
        self.rotate(now);
        match event {
            StoreEvent::Changed(ids) => {
                if self.current.len() + ids.len() > MAX_WRITTEN {
                    self.all(now);
                    self.current = HashSet::new();
                } else {
                    self.current.extend(ids.iter().cloned());
                }
            }
            // Writes made while announcements were not heard are not known.
            StoreEvent::ChangedAll | StoreEvent::Connected => self.all(now),
            StoreEvent::Lost => {}
        }
    }

    /// True if one of `ids` was heard less than [`TRUSTED_FOR`] ago (or may have been).
    fn lately<'a>(&mut self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        let now = Instant::now();
        self.rotate(now);
        self.all_until.is_some_and(|until| now < until)
            || ids.any(|id| self.current.contains(id) || self.previous.contains(id))
    }
}

/// The replicas that were last found caught up, and when.
pub(super) struct Replicas {
    in_sync: Mutex<HashMap<Node, Instant>>,
    /// The ids announced written lately, which are read from the masters.
    written: Mutex<Written>,
    links: Arc<NodeLinks>,
    topology: Arc<Topology>,
    response_timeout: Duration,
}

impl Replicas {
    /// Asks every replica of the map once, then keeps asking in the background for as long
    /// as the store is in use.
    pub(super) async fn watch(
        links: Arc<NodeLinks>,
        topology: Arc<Topology>,
        response_timeout: Duration,
    ) -> Arc<Replicas> {
        let replicas = Arc::new(Replicas {
            in_sync: Mutex::new(HashMap::new()),
            written: Mutex::new(Written::new()),
            links,
            topology,
            response_timeout,
        });
        replicas.check().await;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&replicas);
            runtime.spawn(async move {
                let mut rounds = tokio::time::interval(CHECK_EVERY);
                rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is at once: the round above was just made.
                rounds.tick().await;
                loop {
                    rounds.tick().await;
                    let Some(replicas) = weak.upgrade() else {
                        return;
                    };
                    replicas.check().await;
                }
            });
        }
        replicas
    }

    /// True if `node` was found in sync by a round begun less than [`TRUSTED_FOR`] ago.
    pub(super) fn readable(&self, node: &Node) -> bool {
        crate::sync::lock(&self.in_sync)
            .get(node)
            .is_some_and(|at| at.elapsed() < TRUSTED_FOR)
    }

    /// Takes in what the store's watch said, before it is passed on to the L1.
    pub(super) fn heard(&self, event: &StoreEvent) {
        crate::sync::lock(&self.written).heard(event);
    }

    /// True if one of `ids` (keys without their namespace prefix, as announced) was announced
    /// written less than [`TRUSTED_FOR`] ago, or may have been: a replica may not have applied
    /// it yet.
    pub(super) fn written_lately<'a>(&self, ids: impl Iterator<Item = &'a str>) -> bool {
        crate::sync::lock(&self.written).lately(ids)
    }

    /// Takes `node` off the list until it says it is in sync again.
    pub(super) fn failed(&self, node: &Node) {
        crate::sync::lock(&self.in_sync).remove(node);
    }

    /// Asks every master of the map its offset, then every replica its state and offset,
    /// again a few times, [`CATCH_UP_WAIT`] apart, for those not there yet.
    async fn check(&self) {
        // What a replica caught up with is its master's state now, before the masters answer.
        let asked = Instant::now();
        let map = self.topology.current();
        let masters = map.masters();
        let roles: HashMap<&Node, (i64, Vec<Address>)> =
            (join_all(masters.iter().map(|m| self.role(m)))
                .await
                .into_iter())
            .zip(&masters)
            .filter_map(|(role, master)| match role {
                Some(Role::Master { offset, online }) => Some((master, (offset, online))),
                _ => None,
            })
            .collect();
        // Each replica its master counts as online, and the offset its master had just now:
        // everything the master had acknowledged before this round.
        let mut pending: Vec<(&Node, i64)> = Vec::new();
        for shard in map.shards() {
            let Some((offset, online)) = roles.get(&shard.master) else {
                continue;
            };
            for replica in &shard.replicas {
                if listed(online, replica) {
                    pending.push((replica, *offset));
                }
            }
        }
        let mut caught_up = Vec::new();
        for attempt in 0..CATCH_UP_TRIES {
            if attempt > 0 {
                tokio::time::sleep(CATCH_UP_WAIT).await;
            }
            let roles = join_all(pending.iter().map(|(replica, _)| self.role(replica))).await;
            let mut behind = Vec::new();
            for ((replica, wanted), role) in pending.into_iter().zip(roles) {
                match role {
                    Some(Role::Replica {
                        connected: true,
                        offset,
                    }) if offset >= wanted => caught_up.push(replica.clone()),
                    Some(Role::Replica {
                        connected: true, ..
                    }) => behind.push((replica, wanted)),
                    _ => {}
                }
            }
            pending = behind;
            if pending.is_empty() {
                break;
            }
        }
        let mut list = crate::sync::lock(&self.in_sync);
        list.clear();
        list.extend(caught_up.into_iter().map(|node| (node, asked)));
    }

    /// What `node` says it is, or `None` if it does not answer in time.
    async fn role(&self, node: &Node) -> Option<Role> {
        let mut pipe = redis::pipe();
        pipe.cmd("ROLE");
        let answer = tokio::time::timeout(self.response_timeout, self.links.send(node, &pipe));
        match answer.await {
            Ok(Ok(values)) => values.first().and_then(role),
            _ => None,
        }
    }
}

/// A replica as its master names it: the address it connected from, and its port.
type Address = (String, u16);

/// A node's `ROLE`, as far as reads from replicas care.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// `["master", offset, [[ip, port, offset]…]]`: its replication offset and the address of
    /// each replica it lists (past its sync; not necessarily acknowledging yet).
    Master { offset: i64, online: Vec<Address> },
    /// `["slave", host, port, state, offset]`; `connected` once linked and past the sync.
    Replica { connected: bool, offset: i64 },
}

/// Reads a `ROLE` answer.
fn role(answer: &Value) -> Option<Role> {
    let Value::Array(items) = answer else {
        return None;
    };
    let said =
        |i: usize, what: &[u8]| matches!(items.get(i), Some(Value::BulkString(s)) if s == what);
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    if said(0, b"master") {
        let text = |v: &Value| match v {
            Value::BulkString(s) => Some(String::from_utf8_lossy(s).into_owned()),
            Value::Int(n) => Some(n.to_string()),
            _ => None,
        };
        let online = match items.get(2) {
            Some(Value::Array(replicas)) => (replicas.iter())
                .filter_map(|r| match r {
                    Value::Array(r) if r.len() >= 2 => {
                        Some((text(&r[0])?, text(&r[1])?.parse().ok()?))
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        return int(1).map(|offset| Role::Master { offset, online });
    }
    if said(0, b"slave") {
        return int(4).map(|offset| Role::Replica {
            connected: said(3, b"connected"),
            offset,
        });
    }
    None
}

/// True if `replica` is among the replicas a master counts as `online`: the same port, and
/// the same host, or the only one on that port (the master names a replica by the address it
/// connected from, which need not be the one the cluster announces).
fn listed(online: &[Address], replica: &Node) -> bool {
    let same_port: Vec<&Address> = online
        .iter()
        .filter(|(_, port)| *port == replica.port)
        .collect();
    same_port.iter().any(|(ip, _)| *ip == replica.host) || same_port.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_ids_are_kept_for_the_trust_then_dropped() {
        let mut written = Written::new();
        written.heard(&StoreEvent::Changed(vec!["a".into()]));
        assert!(written.lately(["a"].into_iter()));
        assert!(!written.lately(["b"].into_iter()));
        // One generation later, still kept; two later, gone.
        written.since -= TRUSTED_FOR;
        assert!(written.lately(["a"].into_iter()));
        written.since -= TRUSTED_FOR;
        assert!(!written.lately(["a"].into_iter()));
        // Announcements that may have been missed: every id, for the trust's length.
        written.heard(&StoreEvent::Connected);
        assert!(written.lately(["b"].into_iter()));
        written.all_until = Some(Instant::now());
        assert!(!written.lately(["b"].into_iter()));
        // More ids than it keeps: every id.
        let many: Vec<Box<str>> = (0..=MAX_WRITTEN).map(|i| i.to_string().into()).collect();
        written.heard(&StoreEvent::Changed(many));
        assert!(written.lately(["b"].into_iter()));
        assert!(written.current.is_empty());
    }

    #[test]
    fn roles_read() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let replica = |state: &str| {
            Value::Array(vec![
                text("slave"),
                text("h"),
                Value::Int(1),
                text(state),
                Value::Int(9),
            ])
        };
        assert_eq!(
            role(&replica("connected")),
            Some(Role::Replica {
                connected: true,
                offset: 9
            })
        );
        for state in ["connect", "connecting", "sync", "handshake"] {
            assert_eq!(
                role(&replica(state)),
                Some(Role::Replica {
                    connected: false,
                    offset: 9
                }),
                "{state}"
            );
        }
        let master = Value::Array(vec![
            text("master"),
            Value::Int(42),
            Value::Array(vec![Value::Array(vec![
                text("10.0.0.2"),
                text("6379"),
                text("40"),
            ])]),
        ]);
        let online = vec![("10.0.0.2".to_string(), 6379)];
        assert_eq!(
            role(&master),
            Some(Role::Master {
                offset: 42,
                online: online.clone()
            })
        );
        assert_eq!(role(&Value::Nil), None);
        let node = |host: &str, port| Node {
            host: host.to_string(),
            port,
        };
        assert!(listed(&online, &node("10.0.0.2", 6379)));
        // Seen from another address, but the only replica on that port.
        assert!(listed(&online, &node("replica-1.internal", 6379)));
        assert!(!listed(&online, &node("10.0.0.2", 6380)));
        let two = vec![
            ("10.0.0.2".to_string(), 6379),
            ("10.0.0.3".to_string(), 6379),
        ];
        assert!(listed(&two, &node("10.0.0.3", 6379)));
        assert!(!listed(&two, &node("10.0.0.4", 6379)));
    }
}
