//! A page's reads: one `EVAL_RO` per node, all nodes at once, through slot moves,
//! failovers and replicas (see [`super`] for the why).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::future::join_all;
use redis::Value;

use super::ClusterStore;
use crate::error::{Error, ErrorKind, Result};
use crate::store::redis::fault::{key_fault, wrong_type};
use crate::store::redis::slot_map::{Node, Shard, SlotMap};

/// Reads the keys given as arguments, all served by the node that runs it. `no-writes` lets it
/// run as `EVAL_RO`; `allow-cross-slot-keys` lets it read keys of several slots, which Redis
/// allows only for keys not declared as `KEYS` (declared keys must share one slot). A key that
/// holds another type than a string is answered `0` (a string is a bulk string, a missing key
/// nil); any other error fails the read, as `redis.call` would.
const READ: &str = "#!lua flags=no-writes,allow-cross-slot-keys
local out = {}
for i, key in ipairs(ARGV) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    if string.sub(value.err, 1, 9) ~= 'WRONGTYPE' then return value end
    value = 0
  end
  out[i] = value
end
return out
";

/// Why a node did not answer a read.
enum Unread {
    /// It answered with an error: a key it does not serve (a slot that moved), a cluster that
    /// is down, a server still loading, one older than Redis 7.
    Refused(redis::RedisError),
    /// No answer came: the node is down, hung or cut off.
    Unreachable(redis::RedisError),
}

/// What one group of keys read to: an answer or an error per key.
type Answers = Vec<Result<Option<Bytes>>>;

impl ClusterStore {
    /// Runs the read script on `node` over its direct connection.
    async fn eval_ro(&self, node: &Node, keys: &[&str]) -> Result<Answers, Unread> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL_RO").arg(READ).arg(0).arg(keys);
        match self.read_links.send(node, &pipe).await {
            Ok(mut values) => match values.pop() {
                Some(Value::ServerError(err)) => Err(Unread::Refused(err.into())),
                Some(Value::Array(found)) if found.len() == keys.len() => (keys.iter().zip(found))
                    .map(|(key, value)| match value {
                        Value::Int(0) => Ok(Err(wrong_type(&self.describe, key))),
                        value => redis::from_redis_value::<Option<Bytes>>(value).map(Ok),
                    })
                    .collect::<Result<Answers, _>>()
                    .map_err(|err| {
                        Unread::Refused(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "unexpected read answer",
                            err.to_string(),
                        )))
                    }),
                Some(other) => Err(Unread::Refused(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "unexpected read answer",
                    format!("{other:?}"),
                )))),
                None => Err(Unread::Refused(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a read answered nothing",
                )))),
            },
            Err(err) => Err(Unread::Unreachable(err)),
        }
    }

    /// The node of `shard` a read of `keys` goes to: its master, or in turn each of its
    /// replicas that is in sync when reading from replicas, unless one of the keys was written
    /// lately (see [`super::replicas`]).
    fn reader<'m>(&self, shard: &'m Shard, keys: &[&str]) -> &'m Node {
        let Some(replicas) = &self.replicas else {
            return &shard.master;
        };
        let ids = keys.iter().map(|key| {
            (key.strip_prefix(self.prefix.as_str()))
                .or_else(|| key.strip_prefix(self.entry_prefix.as_str()))
                .unwrap_or(key)
        });
        if replicas.written_lately(ids) {
            return &shard.master;
        }
        let in_sync: Vec<&Node> = (shard.replicas.iter())
            .filter(|node| replicas.readable(node))
            .collect();
        if in_sync.is_empty() {
            return &shard.master;
        }
        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed);
        in_sync[turn % in_sync.len()]
    }

    /// Reads `keys`, all of shard `index` of `map`: one `EVAL_RO` on the shard's reader. A
    /// replica's misses are asked of the master, and a replica that does not answer or
    /// refuses is replaced by the master. A master that refuses sends the keys through the
    /// `redis` crate's redirect-following `MGET`; one that does not answer (down, hung) has
    /// its keys read again once if a fresh map says another master now serves them (a
    /// failover), and fails them otherwise.
    async fn read_shard(&self, map: &SlotMap, index: usize, keys: &[&str], retry: bool) -> Answers {
        let shard = map.shard(index);
        let node = self.reader(shard, keys);
        let mut read = if retry {
            match self.eval_ro_unless_moved(node, &shard.master, keys).await {
                Some(read) => read,
                None => return self.read_on(self.topology.current(), keys, false).await,
            }
        } else {
            self.eval_ro(node, keys).await
        };
        let mut node = node;
        if node != &shard.master {
            match read {
                Ok(found) => return self.confirm_misses(shard, keys, found, retry).await,
                Err(Unread::Unreachable(ref err) | Unread::Refused(ref err)) => {
                    // Down, hung, loading, out of sync: its master answers instead.
                    tracing::debug!(%node, "replica did not answer, reading the master: {err}");
                    if let Some(replicas) = &self.replicas {
                        replicas.failed(node);
                    }
                    if matches!(read, Err(Unread::Unreachable(_))) {
                        self.topology.trouble();
                    }
                    node = &shard.master;
                    read = self.eval_ro(node, keys).await;
                }
            }
        }
        match read {
            Ok(found) => found,
            Err(Unread::Refused(err)) => {
                tracing::debug!(%node, "read refused, following the cluster: {err}");
                let _ = self.topology.refresh().await;
                self.mget(keys).await
            }
            Err(Unread::Unreachable(err)) => {
                tracing::debug!(%node, "read unanswered: {err}");
                self.topology.trouble();
                if retry
                    && let Ok(fresh) = self.topology.refresh().await
                    && fresh.elsewhere(keys, &shard.master)
                {
                    return self.read_on(fresh, keys, false).await;
                }
                let err = self.fault(err);
                keys.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }

    /// [`ClusterStore::eval_ro`], unless the map changes while the read is out so that
    /// `master` no longer serves all of `keys` (a failover of a master that hangs): then
    /// `None`, and the keys are to be read again where they are now, without waiting for the
    /// old node's response timeout.
    async fn eval_ro_unless_moved(
        &self,
        node: &Node,
        master: &Node,
        keys: &[&str],
    ) -> Option<Result<Answers, Unread>> {
        (self.topology)
            .unless_moved(self.eval_ro(node, keys), keys, master)
            .await
    }

    /// What replica reads found, with each miss asked of the master: a replica that has not
    /// yet applied a creation (or a restarted one still syncing) would say a user is missing
    /// that exists. A miss the master cannot confirm is a fault, never "missing" (unless a
    /// fresh map names a new master, which is then asked).
    async fn confirm_misses(
        &self,
        shard: &Shard,
        keys: &[&str],
        found: Answers,
        retry: bool,
    ) -> Answers {
        let missing: Vec<usize> = (0..keys.len())
            .filter(|&i| matches!(found[i], Ok(None)))
            .collect();
        let mut answers = found;
        if missing.is_empty() {
            return answers;
        }
        let asked: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let confirmed = match self.eval_ro(&shard.master, &asked).await {
            Ok(confirmed) => confirmed,
            Err(Unread::Refused(_)) => self.mget(&asked).await,
            Err(Unread::Unreachable(err)) => {
                self.topology.trouble();
                match self.topology.refresh().await {
                    Ok(fresh) if retry && fresh.elsewhere(&asked, &shard.master) => {
                        self.read_on(fresh, &asked, false).await
                    }
                    _ => {
                        let err = self.fault(err);
                        asked.iter().map(|_| Err(err.clone())).collect()
                    }
                }
            }
        };
        for (i, answer) in missing.into_iter().zip(confirmed) {
            answers[i] = answer;
        }
        answers
    }

    /// Reads `keys` through the `redis` crate's cluster `MGET`, which splits them by slot and
    /// follows `MOVED` and `ASK`; each key it found missing is asked again with `GET`, which
    /// tells a key of another type (nil to `MGET`) from none, as the read script does.
    async fn mget(&self, keys: &[&str]) -> Answers {
        let found: Result<Vec<Option<Bytes>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fault(e));
        let found = match found {
            Ok(found) if found.len() == keys.len() => found,
            Ok(found) => {
                let err = Error::new(
                    ErrorKind::Internal,
                    format!("MGET answered {} of {} keys", found.len(), keys.len()),
                );
                return keys.iter().map(|_| Err(err.clone())).collect();
            }
            Err(err) => return keys.iter().map(|_| Err(err.clone())).collect(),
        };
        let confirm = (keys.iter().zip(found)).map(|(key, found)| async move {
            if found.is_some() {
                return Ok(found);
            }
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|err| key_fault(&self.describe, key, err))
        });
        join_all(confirm).await
    }

    /// Reads `keys` with one command per node, all nodes at once; an answer or an error per
    /// key (a node that cannot be reached fails its keys only).
    pub(super) async fn read_keys(&self, keys: &[String]) -> Answers {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.read_on(self.topology.current(), &keys, true).await
    }

    /// [`ClusterStore::read_keys`] by `map`; `retry` allows one more pass after a failover.
    fn read_on<'a>(
        &'a self,
        map: Arc<SlotMap>,
        keys: &'a [&'a str],
        retry: bool,
    ) -> futures::future::BoxFuture<'a, Answers> {
        Box::pin(async move {
            let groups = map.group(keys);
            let map = &map;
            let reads = groups.into_iter().map(|(shard, positions)| async move {
                let group: Vec<&str> = positions.iter().map(|&i| keys[i]).collect();
                let answers = match shard {
                    Some(index) => self.read_shard(map, index, &group, retry).await,
                    None => self.mget(&group).await,
                };
                (positions, answers)
            });
            let mut answers: Vec<Option<Result<Option<Bytes>>>> = vec![None; keys.len()];
            for (positions, found) in join_all(reads).await {
                for (i, answer) in positions.into_iter().zip(found) {
                    answers[i] = Some(answer);
                }
            }
            (answers.into_iter())
                .map(|a| a.expect("every key is in one group"))
                .collect()
        })
    }
}
