//! The Redis Cluster backend: the same keys, records and write scripts as [`RedisStore`],
//! spread over the masters of a cluster.
//!
//! Each user is still one key, `{namespace}:user:{id}`, with no hash tag, so users spread
//! evenly over the slots and every write script touches exactly one key: the scripts of
//! [`super::redis`] run unchanged, routed by that key's slot, and stay atomic per user.
//!
//! # Reads: one command per node, in parallel
//!
//! A page's ids are grouped by the master that serves their slot (our own slot map, read with
//! `CLUSTER NODES`: see [`super::topology`]), and each group is one command to its node over
//! a direct connection, all groups at once; the answers are put back in id order. A cold
//! page therefore costs one round trip per node involved.
//!
//! Which command: Redis refuses any multi-key command whose keys hash to different slots
//! (`CROSSSLOT`), even when one node serves all of them, so a plain `MGET` per node is out.
//! `MGET` per slot would be one command per *slot* — with 16,384 slots, nearly one per id.
//! What Redis 7 does allow is a read-only script flagged `allow-cross-slot-keys` that reads
//! keys it was not given as `KEYS` (they are passed as arguments), provided this node serves
//! them all: that is one `EVAL_RO` per node, whatever the spread of slots. The server counts
//! the script's inner `GET`s in its command statistics too, but the client sends one command
//! and the node answers it in one go.
//!
//! When the node refuses (a slot moved or is migrating, so a key is not local; a server
//! older than 7), that group falls back to the `redis` crate's own cluster `MGET`, which
//! splits per slot and follows `MOVED` and `ASK`, and our slot map is read again. A node that
//! does not answer (down, hung, cut off) is a failover in the making: the map is read again,
//! and if it now names another master for the group's slots the group is read there; a read
//! still out when the map changes that way is not waited for. Otherwise the group is
//! answered with [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) (or
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)) for its ids only (see
//! [`UserStore::get_many_each`]); the other groups' answers are kept. A failure is never a
//! `None`, which would mean "no such user".
//!
//! # Reads from replicas
//!
//! With [`ReadFrom::Replicas`], each group goes to a replica of its master instead, in turn
//! when there are several (its connection says `READONLY`), and to the master when none has
//! caught up with it (see [`replicas`]: a replica just restarted, cut off its master, or held
//! back, would answer from an old dataset) or the replica does not answer, and to the master
//! when one of its keys was announced written lately (an enricher would otherwise cache what a
//! replica held back from its stream answered, until the replica applies the write). A replica
//! applies a write a moment after its master acknowledged it, so what it answers may be a
//! version behind for that moment; but a user it does not have is asked of the master before
//! it is called missing, since a replica that has not yet applied a creation would otherwise
//! deny a user that exists.
//!
//! # Writes
//!
//! Every write goes to the master of its key's slot by our map, over a direct connection
//! (see [`super::node_links`]): a single write (a user's add, update or delete, an entry's)
//! is one script call there, a batch (deletes, and the per-slot scripts of a user import or of
//! a batch of entry writes) one pipeline per master, all masters at once. A script may only
//! touch keys of one slot, so a batch of entry writes, refused whole on one Redis when a stored
//! record of it cannot be kept, is refused whole per slot here: the other slots' entries are
//! written, and [`UserStore::import_entries`] says how many. Either way the `WAIT` of the write
//! concern ([`super::concern`]) ends the same pipeline, on the same connection as the writes
//! it confirms. A command the node refuses because the slot moved was not run, and is sent
//! again alone through the `redis` crate's cluster connection, which follows `MOVED` and
//! `ASK`.
//!
//! Through a failover, writes follow our map as reads do, with one difference: a read still
//! waiting on a master that hangs is sent again to the new master, a write is not — it may
//! still be applied where it was sent, so it waits for its answer (or its timeout, and is
//! then of unknown outcome). A write not yet sent (its connection to a master that hangs not
//! made yet, or refused by one that is down) has nothing to lose: it goes to the new master
//! as soon as our map names one. So after the first write lost on a master that hangs, the
//! next go to its replacement as soon as it is promoted, not to the hung node.
//!
//! Invalidation: see [`super::tracking`], which keeps one tracking connection per node,
//! masters and replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;

mod per_node;
mod reads;
mod replicas;

use super::concern::{self, Answer, WriteConcern};
use super::entries::{self, EntryScript, Mode};
use super::fault::fault;
use super::node_links::NodeLinks;
use super::scripts::{self, Scripts};
use super::slot_map::{NodeUrls, seed_node, slot};
use super::topology::Topology;
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::record::Key;
use crate::record::Record;
use crate::store::{
    Added, BatchError, EventSink, ImportEntry, ImportOutcome, ImportUser, ReadFrom, Stamps,
    StoreOptions, UserSource, UserStore, WatchGuard, batch_written, entries_through_records,
    entry_not_found, stored_entry, users_through_records,
};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Users in a Redis Cluster, under a namespace prefix. Cheap to clone; clones share their
/// connections (each multiplexed, reconnecting by itself): the pages' reads go over direct
/// connections to each node, apart from the writes, so that a write the server holds back
/// (`CLIENT PAUSE WRITE` during a failover) does not hold the reads queued behind it. Which
/// nodes answer reads is [`StoreOptions::read_from`]. The slot map is followed through
/// failovers and slot moves, and every node is watched for writes, replicas included, so a
/// promoted replica is heard from its first write.
#[derive(Clone)]
pub struct ClusterStore {
    conn: ClusterConnection,
    writes: ClusterConnection,
    options: StoreOptions,
    prefix: String,
    entry_prefix: String,
    describe: String,
    nodes: NodeUrls,
    topology: Arc<Topology>,
    scripts: Arc<Scripts>,
    entry_script: Arc<EntryScript>,
    node_links: Arc<NodeLinks>,
    concern: Option<WriteConcern>,
    /// Direct connections for the reads of pages (`READONLY` when reading from replicas).
    read_links: Arc<NodeLinks>,
    /// Turns through each shard's replicas, read after read.
    next_replica: Arc<std::sync::atomic::AtomicUsize>,
    /// With reads from replicas, those that may answer them.
    replicas: Option<Arc<replicas::Replicas>>,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("url", &self.describe)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ClusterStore {
    /// Connects to the cluster through `seeds` (`redis://[user:pass@]host:port` each; any one
    /// that answers is enough), failing fast with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if none can be reached or the
    /// credentials are refused. `describe` is the URL without its password. `rediss://` seeds
    /// need the `tls` feature (see [`RedisStore::connect`](super::RedisStore::connect) for
    /// the certificates trusted); without it they are refused as invalid input.
    pub async fn connect(
        seeds: Vec<String>,
        describe: String,
        options: &StoreOptions,
    ) -> Result<ClusterStore> {
        let first = seeds
            .first()
            .ok_or_else(|| Error::invalid(format!("cluster URL {describe:?} names no node")))?;
        let (scheme, rest) = first.split_once("://").unwrap_or(("redis", first));
        let auth = rest
            .rsplit_once('@')
            .map(|(auth, _)| format!("{auth}@"))
            .unwrap_or_default();
        let insecure = rest.ends_with("#insecure");
        let nodes = NodeUrls {
            scheme: scheme.to_string(),
            auth,
            fragment: if insecure { "#insecure" } else { "" }.to_string(),
        };
        for seed in &seeds {
            super::tls::prepare(seed, &describe)?;
        }
        let verified = nodes.scheme == "rediss" && !insecure;
        let seed_nodes = seeds.iter().filter_map(|seed| seed_node(seed)).collect();
        let client = |response_timeout| -> Result<ClusterClient> {
            super::tls::trusting(ClusterClientBuilder::new(seeds.clone()), verified)?
                .connection_timeout(options.connect_timeout_value())
                .response_timeout(response_timeout)
                // A dead node must turn into "unavailable" quickly, not after a long retry
                // ladder: the resolver and `enrich run` have their own retry policies above us.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(|e| {
                    Error::invalid(format!("invalid cluster URL {describe:?}")).with_cause(e)
                })
        };
        let conn = client(options.response_timeout_value())?
            .get_async_connection()
            .await
            .map_err(|e| fault(&describe, e))?;
        // Writes may wait for replicas on top of the answer's time.
        let writes = client(options.write_response_timeout())?
            .get_async_connection()
            .await
            .map_err(|e| fault(&describe, e))?;
        let read_links = Arc::new(NodeLinks::for_reads(
            nodes.clone(),
            options,
            options.read_from_value() == ReadFrom::Replicas,
        ));
        // Reading the slot map also proves the credentials and that the nodes are in cluster
        // mode, so a wrong URL fails here with a clear message.
        let topology = Topology::connect(
            seed_nodes,
            read_links.clone(),
            options.response_timeout_value(),
        )
        .await
        .map_err(|e| fault(&describe, e))?;
        topology.follow(conn.clone());
        topology.follow(writes.clone());
        let topology = Arc::new(topology);
        topology.keep_current();
        let replicas = match options.read_from_value() {
            ReadFrom::Masters => None,
            ReadFrom::Replicas => Some(
                replicas::Replicas::watch(
                    read_links.clone(),
                    topology.clone(),
                    options.response_timeout_value(),
                )
                .await,
            ),
        };
        let ns = options.namespace_str();
        Ok(ClusterStore {
            conn,
            writes,
            options: options.clone(),
            prefix: format!("{ns}:user:"),
            entry_prefix: format!("{ns}:object:"),
            describe,
            node_links: Arc::new(NodeLinks::new(nodes.clone(), options)),
            read_links,
            next_replica: Arc::default(),
            replicas,
            nodes,
            topology,
            scripts: Arc::new(Scripts::new()),
            entry_script: Arc::new(EntryScript::new()),
            concern: WriteConcern::new(options),
        })
    }

    /// The key that holds a user.
    pub fn key(&self, id: &UserId) -> String {
        format!("{}{id}", self.prefix)
    }

    fn fault(&self, err: redis::RedisError) -> Error {
        fault(&self.describe, err)
    }

    /// Runs one write command on `key`, and the `WAIT` of the write concern behind it, as one
    /// pipeline to the master of the key's slot: a batch of one, by the path every write takes
    /// (see [`ClusterStore::write_keys`]).
    async fn write_one(&self, key: &str, cmd: redis::Cmd) -> Answer {
        let keys = [key.to_string()];
        let answers = self.write_keys(&keys, None, |_| cmd.clone(), |_| cmd.clone());
        concern::one(answers.await)
    }

    /// The key that holds a collection entry.
    pub fn entry_key(&self, key: &EntryKey) -> String {
        format!("{}{key}", self.entry_prefix)
    }

    /// The key that holds the record `key` names.
    fn record_key(&self, key: &Key) -> String {
        match key {
            Key::User(id) => self.key(id),
            Key::Entry(key) => self.entry_key(key),
        }
    }
}

#[async_trait]
impl UserSource for ClusterStore {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.get_many_each(ids).await.into_iter().collect()
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        users_through_records(self, ids).await
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        entries_through_records(self, keys).await
    }

    /// Users and entries together: one command per node.
    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        let names: Vec<String> = keys.iter().map(|key| self.record_key(key)).collect();
        (keys.iter().zip(self.read_keys(&names).await))
            .map(|(key, found)| {
                found.and_then(|bytes| bytes.map(|b| super::record(key, b)).transpose())
            })
            .collect()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        // With reads from replicas, the keys written lately are read from their masters (see
        // `replicas`): the list of them hears of every write before the L1 does.
        let sink: EventSink = match &self.replicas {
            Some(replicas) => {
                let replicas = replicas.clone();
                Arc::new(move |event| {
                    replicas.heard(&event);
                    sink(event)
                })
            }
            None => sink,
        };
        super::tracking::watch_cluster(
            self.topology.clone(),
            self.nodes.clone(),
            vec![self.prefix.clone(), self.entry_prefix.clone()],
            &self.options,
            sink,
        )
    }
}

#[async_trait]
impl UserStore for ClusterStore {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let now = Timestamp::now();
        let json = user.to_json(now, now);
        let key = self.key(user.id());
        let answer = self.write_one(&key, self.scripts.add(&key, &json)).await;
        scripts::added(&self.describe, user, json, get_or_create, answer)
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let key = self.key(user.id());
        let update = self.scripts.update(&key, user, Timestamp::now());
        let answer = self.write_one(&key, update).await;
        scripts::updated(&self.describe, user, answer)
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let key = self.key(id);
        let answer = self.write_one(&key, Scripts::delete(&key)).await;
        scripts::deleted(&self.describe, id, answer)
    }

    /// One import script per slot of the batch (a script may only touch keys of one slot, and
    /// each user stays one atomic write), sent as one pipeline per node, all nodes at once.
    /// Outcomes come back in batch order.
    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let now = Timestamp::now();
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        let keys: Vec<String> = users.iter().map(|u| self.key(u.user().id())).collect();
        for (i, key) in keys.iter().enumerate() {
            by_slot.entry(slot(key.as_bytes())).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
        let batches: Vec<Vec<(&str, &ImportUser)>> = (groups.iter())
            .map(|positions| {
                (positions.iter())
                    .map(|&i| (keys[i].as_str(), &users[i]))
                    .collect()
            })
            .collect();
        // Each group is routed by its first key: all of its keys are of that slot.
        let firsts: Vec<String> = groups.iter().map(|g| keys[g[0]].clone()).collect();
        let call =
            |g: usize, loaded| (self.scripts).import(&batches[g], override_existing, now, loaded);
        let answers = self
            .write_keys(
                &firsts,
                Some(self.scripts.import_load()),
                |g| call(g, true),
                |g| call(g, false),
            )
            .await;
        let mut outcomes = vec![ImportOutcome::Skipped; users.len()];
        for ((positions, batch), answer) in groups.iter().zip(&batches).zip(answers) {
            let done = scripts::imported(&self.describe, batch, answer)?;
            for (&i, outcome) in positions.iter().zip(done) {
                outcomes[i] = outcome;
            }
        }
        Ok(outcomes)
    }
    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let batch = [(entry, Stamps::default())];
        single(self.write_entries(&batch, Mode::Add).await.each)
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let batch = [(entry, Stamps::default())];
        single(self.write_entries(&batch, Mode::Update).await.each)
    }

    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        match self.delete_entries(std::slice::from_ref(key)).await? {
            0 => Err(entry_not_found(key)),
            _ => Ok(()),
        }
    }

    /// One script call reads the owner and writes.
    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let entry = entry.clone().owned_by(Some(owner.clone()));
        let batch = [(&entry, Stamps::default())];
        single(self.write_entries(&batch, Mode::Owned).await.each)
    }

    /// One script call reads the owner and removes.
    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let name = self.entry_key(key);
        let delete = self.entry_script.delete_owned(&name, owner);
        let answer = self.write_one(&name, delete).await;
        entries::deleted_owned(&self.describe, key, owner, answer)
    }

    /// One script call per slot: the entries of each slot are written whole, or not at all.
    async fn upsert_entries(&self, batch: &[NewEntry]) -> Result<Vec<EntryJson>> {
        let batch: Vec<_> = batch.iter().map(|e| (e, Stamps::default())).collect();
        let written = self.write_entries(&batch, Mode::Upsert).await;
        batch_written(written.each, written.refused).map_err(|stopped| stopped.error)
    }

    /// One script call per slot: the entries of each slot are written whole, or not at all.
    /// The slots refused, or not answered, are counted out of what was written; the others'
    /// entries are written all the same.
    async fn import_entries(&self, batch: &[ImportEntry]) -> Result<Vec<EntryJson>, BatchError> {
        let batch: Vec<_> = batch.iter().map(|i| (i.entry(), i.stamps())).collect();
        let written = self.write_entries(&batch, Mode::Upsert).await;
        batch_written(written.each, written.refused)
    }

    /// One pipeline of single-key `DEL`s per node: a `DEL` of several keys would have to stay
    /// within one slot.
    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        let names: Vec<String> = keys.iter().map(|key| self.entry_key(key)).collect();
        let del = |i: usize| redis::cmd("DEL").arg(&names[i]).clone();
        let answers = self.write_keys(&names, None, del, del).await;
        let mut removed = 0;
        for answer in answers {
            removed += entries::removed(&self.describe, answer)?;
        }
        Ok(removed)
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        let found = self.read_keys(&[self.entry_key(key)]).await.pop();
        match found {
            Some(found) => found?.map(|bytes| stored_entry(key, bytes)).transpose(),
            None => Ok(None),
        }
    }
}

/// The one answer of a batch of one.
fn single<T>(mut answers: Vec<Result<T>>) -> Result<T> {
    answers
        .pop()
        .unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "a write answered nothing")))
}
