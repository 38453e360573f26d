//! The Redis backend, the production source of truth.
//!
//! Each user is one string key, `{namespace}:user:{id}`, holding its final [`UserJson`] bytes,
//! so a read hands out what Redis sent without re-encoding; each collection entry likewise,
//! `{namespace}:object:{collection}:{id}` (see [`entries`] for its stored form and its writes).
//! Reads of a page, users and entries together, are one `MGET` (and a `GET` of each key it
//! found missing, which tells a key of another type from none).
//! Every write is one Lua script, which makes it atomic on the server: create-if-absent cannot
//! be won twice, and an update splices the stored `created_at` (always the first 42 bytes of a
//! record) in front of the new tail, so it can never be lost. A record that something else
//! wrote under our key, whose first 42 bytes are not a `created_at` of ours, is never built
//! upon: the write fails naming the user, and the record is left as it was.
//!
//! With a write concern ([`StoreOptions::wait_replicas`]), every write is acknowledged only
//! once enough replicas confirmed it: see [`concern`] for how a write and its `WAIT` travel
//! together, and what an unconfirmed write is reported as.
//!
//! Writes are announced by the server itself: see [`super::tracking`] for how every enricher
//! learns of every write to its namespace, ours or anyone's.

mod cluster;
mod cluster_nodes;
mod concern;
mod entries;
mod fault;
mod link;
mod node_links;
mod scripts;
mod slot_map;
mod tls;
mod topology;
mod tracking;

pub use self::cluster::ClusterStore;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client};

use self::concern::{Answer, WriteConcern, Writes};
use self::entries::{EntryScript, Mode, Write, Written};
use self::fault::{fault, key_fault, write_fault};
use self::link::WriteLink;
use self::scripts::Scripts;
use super::url::redact;
use super::{
    Added, BatchError, EventSink, ImportEntry, ImportOutcome, ImportUser, Stamps, StoreOptions,
    UserSource, UserStore, WatchGuard, batch_written, entry_not_found, stored_entry, stored_user,
};
use super::{entries_through_records, users_through_records};
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::record::Key;
use crate::record::Record;
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Users in Redis, under a namespace prefix. Cheap to clone; clones share two multiplexed,
/// self-reconnecting connections: one for reads, one for writes, so that a write the server
/// holds back (`CLIENT PAUSE WRITE`, as in a failover) never holds up the reads.
#[derive(Clone)]
pub struct RedisStore {
    reads: ConnectionManager,
    writes: std::sync::Arc<WriteLink>,
    client: Client,
    options: StoreOptions,
    prefix: String,
    entry_prefix: String,
    describe: String,
    scripts: std::sync::Arc<Scripts>,
    entry_script: std::sync::Arc<EntryScript>,
    concern: Option<WriteConcern>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.describe)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://` or `rediss://`), failing fast with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if it cannot be reached, [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied) if
    /// it refuses the credentials. A `rediss://` server must present a certificate that
    /// chains to a trusted CA: Mozilla's roots, the system's store, or those of `SSL_CERT_FILE`
    /// or `SSL_CERT_DIR` when set; `#insecure` at the end of the URL skips the check. A build
    /// without the `tls` feature refuses `rediss://` as invalid input.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<RedisStore> {
        let describe = redact(url);
        let client = tls::client(url, &describe)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout_value()))
            .set_response_timeout(Some(options.response_timeout_value()))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let reads = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| fault(&describe, e))?;
        // A server that wants a password accepts the connection and refuses the first
        // command: ask now, so a wrong URL fails here with a clear message.
        redis::cmd("PING")
            .exec_async(&mut reads.clone())
            .await
            .map_err(|e| fault(&describe, e))?;
        let writes = WriteLink::new(
            client.clone(),
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout_value()))
                .set_response_timeout(Some(options.write_response_timeout())),
        );
        let ns = options.namespace_str();
        Ok(RedisStore {
            reads,
            writes: std::sync::Arc::new(writes),
            client,
            options: options.clone(),
            prefix: format!("{ns}:user:"),
            entry_prefix: format!("{ns}:object:"),
            describe,
            scripts: std::sync::Arc::new(Scripts::new()),
            entry_script: std::sync::Arc::new(EntryScript::new()),
            concern: WriteConcern::new(options),
        })
    }

    /// The key that holds a user.
    pub fn key(&self, id: &UserId) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The prefix of every user key of this namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key that holds a collection entry.
    pub fn entry_key(&self, key: &EntryKey) -> String {
        format!("{}{key}", self.entry_prefix)
    }

    fn record_key(&self, key: &Key) -> String {
        match key {
            Key::User(id) => self.key(id),
            Key::Entry(key) => self.entry_key(key),
        }
    }

    /// Runs the write commands `cmds` as one pipeline on the write connection, behind
    /// `prelude` (whose answers are dropped) and before the `WAIT` of the write concern; each
    /// command's answer on its own.
    async fn write(
        &self,
        prelude: Option<redis::Cmd>,
        cmds: impl IntoIterator<Item = redis::Cmd>,
    ) -> Result<Vec<Answer>> {
        use redis::aio::ConnectionLike;
        let writes = Writes::new(prelude, cmds, self.concern.as_ref());
        let conn = &mut self.writer().await?;
        let values = conn
            .req_packed_commands(writes.pipe(), 0, writes.len())
            .await
            .map_err(|e| write_fault(&self.describe, e))?;
        Ok(writes.answers(&self.describe, values))
    }

    /// Runs one write command; its answer.
    async fn write_one(&self, cmd: redis::Cmd) -> Result<Answer> {
        Ok(concern::one(self.write(None, [cmd]).await?))
    }

    /// Writes `batch`, each entry with its stamps, in `mode`: one script call, in one round
    /// trip, which writes nothing if a stored record of the batch cannot be kept.
    async fn write_entries(&self, batch: &[Write<'_>], mode: Mode) -> Result<Written> {
        if batch.is_empty() {
            return Ok(Written {
                each: Vec::new(),
                refused: None,
            });
        }
        let now = Timestamp::now();
        let keys: Vec<String> = (batch.iter())
            .map(|(entry, _)| self.entry_key(entry.key()))
            .collect();
        let writes: Vec<(&str, Write<'_>)> = keys
            .iter()
            .map(String::as_str)
            .zip(batch.iter().copied())
            .collect();
        let call = self.entry_script.call(&writes, mode, now, false);
        let answer = self.write_one(call).await?;
        Ok(entries::written(&self.describe, batch, now, answer))
    }

    fn fault(&self, err: redis::RedisError) -> Error {
        fault(&self.describe, err)
    }

    /// What `MGET` found under `names`, with each nil asked again with `GET`: `MGET` answers
    /// nil for a key that holds another type than a string (a hash or a list something else
    /// wrote under our namespace) as for one that does not exist, and that must be an error,
    /// never a missing user. `GET` refuses it (`WRONGTYPE`). A second round trip, then, but
    /// only for a read that found some key missing (the L1 remembers missing users), and it
    /// needs no permission beyond the `GET` a read-only ACL grants. A key created in between
    /// is taken as `GET` read it.
    async fn confirm_misses(
        &self,
        names: &[String],
        found: Vec<Option<Bytes>>,
    ) -> Vec<Result<Option<Bytes>>> {
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        let mut answers: Vec<Result<Option<Bytes>>> = found.into_iter().map(Ok).collect();
        if missing.is_empty() {
            return answers;
        }
        let mut pipe = redis::pipe();
        for &i in &missing {
            pipe.cmd("GET").arg(&names[i]);
        }
        let checked: redis::RedisResult<Vec<redis::RedisResult<Option<Bytes>>>> = pipe
            .ignore_errors()
            .query_async(&mut self.reads.clone())
            .await;
        match checked {
            Ok(checked) if checked.len() == missing.len() => {
                for (i, answer) in missing.into_iter().zip(checked) {
                    answers[i] = answer.map_err(|err| key_fault(&self.describe, &names[i], err));
                }
            }
            other => {
                let err = match other {
                    Err(err) => self.fault(err),
                    Ok(checked) => Error::new(
                        ErrorKind::Internal,
                        format!("{} GETs answered {}", missing.len(), checked.len()),
                    ),
                };
                for i in missing {
                    answers[i] = Err(err.clone());
                }
            }
        }
        answers
    }

    /// The write connection; an error here means nothing was sent.
    async fn writer(&self) -> Result<link::Recorded<'_>> {
        self.writes.connection().await.map_err(|e| self.fault(e))
    }
}

#[async_trait]
impl UserSource for RedisStore {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.get_many_each(ids).await.into_iter().collect()
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        users_through_records(self, ids).await
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        entries_through_records(self, keys).await
    }

    /// One `MGET` over the keys of every kind.
    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = keys.iter().map(|key| self.record_key(key)).collect();
        let mget = redis::cmd("MGET").arg(&names).to_owned();
        let mut found = mget.query_async(&mut self.reads.clone()).await;
        // A connection the server dropped while it was idle (a restart, an idle timeout) is
        // found out by the first read after it, which the manager then replaces: a read, asked
        // again once on the new connection, is not an outage.
        if found
            .as_ref()
            .is_err_and(redis::RedisError::is_connection_dropped)
        {
            found = mget.query_async(&mut self.reads.clone()).await;
        }
        let found: Result<Vec<Option<Bytes>>> = found.map_err(|e| self.fault(e));
        match found {
            Ok(found) if found.len() == keys.len() => {
                let found = self.confirm_misses(&names, found).await;
                (keys.iter().zip(found))
                    .map(|(key, bytes)| bytes?.map(|bytes| record(key, bytes)).transpose())
                    .collect()
            }
            Ok(found) => {
                let err = Error::new(
                    ErrorKind::Internal,
                    format!("MGET answered {} of {} keys", found.len(), keys.len()),
                );
                vec![Err(err); keys.len()]
            }
            Err(err) => vec![Err(err); keys.len()],
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        tracking::watch(
            self.client.clone(),
            vec![self.prefix.clone(), self.entry_prefix.clone()],
            self.describe.clone(),
            &self.options,
            sink,
        )
    }
}

#[async_trait]
impl UserStore for RedisStore {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let now = Timestamp::now();
        let json = user.to_json(now, now);
        let answer = (self.write_one(self.scripts.add(&self.key(user.id()), &json))).await?;
        scripts::added(&self.describe, user, json, get_or_create, answer)
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let update = self
            .scripts
            .update(&self.key(user.id()), user, Timestamp::now());
        let answer = self.write_one(update).await?;
        scripts::updated(&self.describe, user, answer)
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let answer = self.write_one(Scripts::delete(&self.key(id))).await?;
        scripts::deleted(&self.describe, id, answer)
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let keys: Vec<String> = users.iter().map(|u| self.key(u.user().id())).collect();
        let batch: Vec<(&str, &ImportUser)> = keys.iter().map(String::as_str).zip(users).collect();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let import = (self.scripts).import(&batch, override_existing, Timestamp::now(), false);
        let answer = self.write_one(import).await?;
        scripts::imported(&self.describe, &batch, answer)
    }

    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let batch = [(entry, Stamps::default())];
        single(self.write_entries(&batch, Mode::Add).await?.each)
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let batch = [(entry, Stamps::default())];
        single(self.write_entries(&batch, Mode::Update).await?.each)
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
        single(self.write_entries(&batch, Mode::Owned).await?.each)
    }

    /// One script call reads the owner and removes.
    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let delete = self.entry_script.delete_owned(&self.entry_key(key), owner);
        let answer = self.write_one(delete).await?;
        entries::deleted_owned(&self.describe, key, owner, answer)
    }

    /// One script call: the batch is written whole, or not at all.
    async fn upsert_entries(&self, batch: &[NewEntry]) -> Result<Vec<EntryJson>> {
        let batch: Vec<_> = batch.iter().map(|e| (e, Stamps::default())).collect();
        let written = self.write_entries(&batch, Mode::Upsert).await?;
        batch_written(written.each, written.refused).map_err(|stopped| stopped.error)
    }

    /// One script call: the batch is written whole, or not at all.
    async fn import_entries(&self, batch: &[ImportEntry]) -> Result<Vec<EntryJson>, BatchError> {
        let batch: Vec<_> = batch.iter().map(|i| (i.entry(), i.stamps())).collect();
        let written = (self.write_entries(&batch, Mode::Upsert).await).map_err(|error| {
            // Never sent, or its answer lost: nothing of it is known written.
            BatchError {
                error,
                at: None,
                written: 0,
            }
        })?;
        batch_written(written.each, written.refused)
    }

    /// One `DEL` of every key: each key is removed on its own, atomically.
    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let names: Vec<String> = keys.iter().map(|key| self.entry_key(key)).collect();
        let answer = self
            .write_one(redis::cmd("DEL").arg(&names).clone())
            .await?;
        entries::removed(&self.describe, answer)
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        let found: Option<Bytes> = redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async(&mut self.reads.clone())
            .await
            .map_err(|e| self.fault(e))?;
        found.map(|bytes| stored_entry(key, bytes)).transpose()
    }
}

/// A record read under `key`, checked whole; a corrupt one is an error naming it.
pub(super) fn record(key: &Key, bytes: Bytes) -> Result<Record> {
    match key {
        Key::User(id) => stored_user(id, bytes).map(Record::User),
        Key::Entry(key) => stored_entry(key, bytes).map(|stored| Record::Entry(stored.entry)),
    }
}

/// The one answer of a batch of one.
fn single<T>(mut answers: Vec<Result<T>>) -> Result<T> {
    answers
        .pop()
        .unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "a write answered nothing")))
}
