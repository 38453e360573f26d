//! What `CLUSTER NODES` says, and the slot map several nodes' answers make together.
//!
//! Nodes learn of a failover by gossip, one after the other: for a moment after a replica is
//! promoted, some nodes still say its old master serves the slots. Counting views would
//! follow the nodes that have not heard yet; Redis itself settles such conflicts by config
//! epoch — a promotion takes a new, higher epoch — so the map does the same: each slot goes to
//! the master that claims it with the highest epoch in any of the views. `CLUSTER NODES`
//! carries the epochs (`CLUSTER SLOTS` does not), and each node's role and failure flags.

use std::collections::HashMap;

use super::slot_map::{Node, SLOTS, Shard, SlotMap};

/// One line of `CLUSTER NODES`: a node as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    id: String,
    node: Node,
    /// The line is the answering node's own.
    myself: bool,
    master: bool,
    /// Flagged `fail` (by agreement of the masters, not a single node's `fail?`).
    failed: bool,
    /// In handshake, or without an address: not usable yet.
    unusable: bool,
    /// The id of its master, for a replica.
    of: Option<String>,
    epoch: u64,
    /// Slot ranges it serves, inclusive; slots being imported or migrated (`[…]`) are left
    /// out, they still belong to the node that serves them.
    slots: Vec<(u16, u16)>,
}

/// Reads a `CLUSTER NODES` answer:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.
pub(super) fn parse(text: &str) -> Result<Vec<Seen>, String> {
    let mut seen = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("CLUSTER NODES line {line:?}"));
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("CLUSTER NODES address {address:?}"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("CLUSTER NODES address {address:?}"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let has = |flag: &str| flags.contains(&flag);
        let mut slots = Vec::new();
        for range in fields[8..].iter().filter(|r| !r.starts_with('[')) {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            let bound = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|s| usize::from(*s) < SLOTS)
                    .ok_or_else(|| format!("CLUSTER NODES slots {range:?}"))
            };
            let (start, end) = (bound(start)?, bound(end)?);
            if start > end {
                return Err(format!("CLUSTER NODES slots {range:?}"));
            }
            slots.push((start, end));
        }
        seen.push(Seen {
            id: fields[0].to_string(),
            node: Node {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            },
            myself: has("myself"),
            master: has("master"),
            failed: has("fail"),
            unusable: has("handshake") || has("noaddr") || host.is_empty() || port == 0,
            of: (fields[3] != "-").then(|| fields[3].to_string()),
            epoch: fields[6]
                .parse()
                .map_err(|_| format!("CLUSTER NODES epoch {:?}", fields[6]))?,
            slots,
        });
    }
    Ok(seen)
}

/// The map several nodes' views make together: each slot's master is the one that claims it
/// with the highest config epoch in any view; a node's role is what it says of itself when it
/// answered, or else what the first view that names it says; a replica is left out while
/// some view flags it failed (unless it answered), or it cannot be used yet.
pub(super) fn merge(views: &[Vec<Seen>]) -> SlotMap {
    let mut owner: Vec<Option<(u64, &str)>> = vec![None; SLOTS];
    for line in views.iter().flatten() {
        if !line.master || line.unusable {
            continue;
        }
        for &(start, end) in &line.slots {
            for claim in &mut owner[usize::from(start)..=usize::from(end)] {
                if claim.is_none_or(|(epoch, _)| line.epoch > epoch) {
                    *claim = Some((line.epoch, line.id.as_str()));
                }
            }
        }
    }
    // Each node as it is best known: its own line first.
    let mut known: HashMap<&str, &Seen> = HashMap::new();
    for line in views.iter().flatten() {
        let better = known
            .get(line.id.as_str())
            .is_none_or(|k| line.myself && !k.myself);
        if better {
            known.insert(&line.id, line);
        }
    }
    let answered = |id: &str| known.get(id).is_some_and(|k| k.myself);
    let failed =
        |id: &str| !answered(id) && (views.iter().flatten()).any(|l| l.id == id && l.failed);
    let mut shards: Vec<Shard> = Vec::new();
    let mut index: HashMap<&str, u16> = HashMap::new();
    let mut map_owner = vec![None; SLOTS];
    for (slot, claim) in owner.iter().enumerate() {
        let Some((_, id)) = claim else { continue };
        let Some(master) = known.get(id) else {
            continue;
        };
        let i = *index.entry(id).or_insert_with(|| {
            shards.push(Shard {
                master: master.node.clone(),
                replicas: Vec::new(),
            });
            (shards.len() - 1) as u16
        });
        map_owner[slot] = Some(i);
    }
    for (id, line) in &known {
        let Some(of) = &line.of else { continue };
        if line.master || line.unusable || failed(id) {
            continue;
        }
        if let Some(&i) = index.get(of.as_str()) {
            shards[usize::from(i)].replicas.push(line.node.clone());
        }
    }
    for shard in &mut shards {
        shard.replicas.sort();
    }
    SlotMap::from_parts(map_owner, shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaa";
    const B: &str = "bbbb";
    const C: &str = "cccc";

    /// Node `a` master of every slot at epoch 1, `b` its replica, as `me` sees it.
    fn before(me: &str) -> String {
        let mine = |id: &str| if id == me { "myself," } else { "" };
        format!(
            "{A} 127.0.0.1:7000@17000 {}master - 0 0 1 connected 0-16383\n\
             {B} 127.0.0.1:7001@17001,b.local {}slave {A} 0 0 1 connected\n\
             {C} 127.0.0.1:7002@17002 {}master - 0 0 2 connected\n",
            mine(A),
            mine(B),
            mine(C)
        )
    }

    /// After `a` failed and `b` was promoted at epoch 3, as `b` sees it.
    fn after_b() -> String {
        format!(
            "{A} 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected\n\
             {B} 127.0.0.1:7001@17001 myself,master - 0 0 3 connected 0-100 101-16383\n\
             {C} 127.0.0.1:7002@17002 master - 0 0 2 connected [7->-{A}]\n"
        )
    }

    #[test]
    fn lines_read() {
        let seen = parse(&before(B)).unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].master && !seen[0].myself && seen[0].slots == [(0, 16383)]);
        assert_eq!(seen[1].node.to_string(), "127.0.0.1:7001");
        assert!(seen[1].myself && seen[1].of.as_deref() == Some(A));
        assert!(seen[2].slots.is_empty());
        assert!(parse("x y").is_err());
        assert!(parse(&format!("{A} h:1@2 master - 0 0 1 connected 9-3")).is_err());
        let noaddr = parse(&format!("{A} :0@0 master,noaddr - 0 0 1 connected")).unwrap();
        assert!(noaddr[0].unusable);
    }

    #[test]
    fn the_highest_epoch_wins_whoever_has_not_heard() {
        // Two nodes still say `a` serves every slot; `b`, promoted, says it does.
        let views = [
            parse(&before(A)).unwrap(),
            parse(&before(C)).unwrap(),
            parse(&after_b()).unwrap(),
        ];
        let map = merge(&views);
        assert_eq!(map.masters().len(), 1);
        assert_eq!(map.shard(map.shard_of(0).unwrap()).master.port, 7001);
        assert_eq!(map.shard(map.shard_of(16383).unwrap()).master.port, 7001);
        // `a` is a failed master without slots now: in no shard.
        assert_eq!(map.nodes().len(), 1);
    }

    #[test]
    fn replicas_are_listed_unless_failed() {
        let map = merge(&[parse(&before(C)).unwrap()]);
        let shard = map.shard(map.shard_of(5).unwrap());
        assert_eq!(shard.master.port, 7000);
        assert_eq!(
            shard.replicas.iter().map(|n| n.port).collect::<Vec<_>>(),
            [7001]
        );
        let failed = before(C).replace("slave", "slave,fail");
        let map = merge(&[parse(&failed).unwrap()]);
        assert!(map.shard(map.shard_of(5).unwrap()).replicas.is_empty());
        // A node that answers is not failed, whatever others say of it.
        let map = merge(&[parse(&failed).unwrap(), parse(&before(B)).unwrap()]);
        assert_eq!(map.shard(map.shard_of(5).unwrap()).replicas.len(), 1);
    }
}
