//! The Redis backend, the production source of truth.
//!
//! Each user is one string key, `{namespace}:user:{id}`, holding its final [`UserJson`] bytes,
//! so a read hands out what Redis sent without re-encoding. Reads of a page are one `MGET`.
//! Every write is one Lua script, which makes it atomic on the server: create-if-absent cannot
//! be won twice, and an update splices the stored `created_at` (always the first 42 bytes of a
//! record) in front of the new tail, so it can never be lost. A record that something else
//! wrote under our key, whose first 42 bytes are not a `created_at` of ours, is never built
//! upon: the write fails naming the user, and the record is left as it was.
//!
//! Writes are announced by the server itself: see [`super::tracking`] for how every enricher
//! learns of every write to its namespace, ours or anyone's.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Script};

use super::fault::{fault, write_fault};
use super::link::WriteLink;
use super::{
    Added, EventSink, ImportOutcome, ImportUser, StoreOptions, UserStore, WatchGuard, conflict,
    not_found, stored_user,
};
use crate::error::{Error, ErrorKind, Result};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Returns the existing record, or writes ARGV[1] and returns nil.
pub(super) const ADD: &str = r"
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1])
return false
";

/// A Lua function, `keeps(record)`: true when the record's first 42 bytes are
/// `{"created_at":"<timestamp>` with a real timestamp in [`Timestamp`]'s form, the part an
/// update or an import keeps.
///
/// The scripts run on whatever the key holds, and a record written there by something else may
/// not have our shape: one whose kept part is not ours is never built upon (the client's
/// check of every record it reads would refuse the result, but it would be stored by then).
/// Only the kept part is checked here, which is all the new record takes from the old one; the
/// client checks the rest of whatever it reads. This is the rule of `Timestamp::is_exact`.
macro_rules! keeps_lua {
    () => {
        r#"
local function keeps(record)
  local y, mo, d, h, mi, s = string.match(record,
    '^{"created_at":"([0-9][0-9][0-9][0-9])%-([0-9][0-9])%-([0-9][0-9])T([0-9][0-9]):([0-9][0-9]):([0-9][0-9])%.[0-9][0-9][0-9][0-9][0-9][0-9]Z')
  if not y then return false end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local days = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
  if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then days[2] = 29 end
  return mo >= 1 and mo <= 12 and d >= 1 and d <= days[mo]
    and tonumber(h) < 24 and tonumber(mi) < 60 and tonumber(s) < 60
end
"#
    };
}

/// Keeps the stored created_at (bytes 1..42) and writes ARGV[1] behind it: answers
/// `{1, new record}`; `{0, old record}` and writes nothing if the stored record's created_at
/// is not one to keep; nil if absent.
pub(super) const UPDATE: &str = concat!(
    keeps_lua!(),
    r"
local old = redis.call('GET', KEYS[1])
if not old then return false end
if not keeps(old) then return {0, old} end
local new = string.sub(old, 1, 42) .. ARGV[1]
redis.call('SET', KEYS[1], new)
return {1, new}
"
);

/// ARGV[1]: override flag, then per key a record and a keep-created_at flag. Answers per key:
/// 0 created, 1 skipped, 2 overridden. If a record whose created_at is to be kept has none to
/// keep, nothing is written: that key is answered 3, the others 4.
pub(super) const IMPORT: &str = concat!(
    keeps_lua!(),
    r"
local override = ARGV[1] == '1'
local out = {}
if override then
  local corrupt = false
  for i, key in ipairs(KEYS) do
    out[i] = 4
    if ARGV[2 * i + 1] == '1' then
      local old = redis.call('GET', key)
      if old and not keeps(old) then
        out[i] = 3
        corrupt = true
      end
    end
  end
  if corrupt then return out end
end
for i, key in ipairs(KEYS) do
  local json = ARGV[2 * i]
  local old = redis.call('GET', key)
  if not old then
    redis.call('SET', key, json)
    out[i] = 0
  elseif override then
    if ARGV[2 * i + 1] == '1' then json = string.sub(old, 1, 42) .. string.sub(json, 43) end
    redis.call('SET', key, json)
    out[i] = 2
  else
    out[i] = 1
  end
end
return out
"
);

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
    describe: String,
    scripts: std::sync::Arc<Scripts>,
}

/// The scripts, and the single-key writes both Redis backends make with them. The connection
/// routes each write (on a cluster, to the node of the key's slot).
pub(super) struct Scripts {
    add: Script,
    update: Script,
    import: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            add: Script::new(ADD),
            update: Script::new(UPDATE),
            import: Script::new(IMPORT),
        }
    }

    /// Creates the user at `key` unless it exists (then: conflict, or with `get_or_create`
    /// the stored user).
    pub(super) async fn add(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        user: &NewUser,
        get_or_create: bool,
    ) -> Result<Added> {
        let now = Timestamp::now();
        let json = user.to_json(now, now);
        let existing: Option<Bytes> = self
            .add
            .key(key)
            .arg(json.as_bytes())
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        match existing {
            None => Ok(Added {
                user: json,
                created: true,
            }),
            Some(bytes) if get_or_create => Ok(Added {
                user: stored_user(user.id(), bytes)?,
                created: false,
            }),
            Some(_) => Err(conflict(user.id())),
        }
    }

    /// Replaces the data of the user at `key`, keeping its `created_at`.
    pub(super) async fn update(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        user: &NewUser,
    ) -> Result<UserJson> {
        let updated: Option<(u8, Bytes)> = self
            .update
            .key(key)
            .arg(user.tail(Timestamp::now()))
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        match updated {
            Some((1, bytes)) => stored_user(user.id(), bytes),
            // Left as it was: the full check says what is wrong with it.
            Some((_, old)) => Err(stored_user(user.id(), old)
                .err()
                .unwrap_or_else(|| kept_part_corrupt(user.id()))),
            None => Err(not_found(user.id())),
        }
    }

    /// Writes `batch` (each user with its key) in one script call, each user one atomic write;
    /// the outcomes in batch order. The keys must be of one slot where the server is a cluster.
    pub(super) async fn import(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        batch: &[(&str, &ImportUser)],
        override_existing: bool,
        now: Timestamp,
    ) -> Result<Vec<ImportOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.import.prepare_invoke();
        call.arg(if override_existing { "1" } else { "0" });
        for (key, import) in batch {
            call.key(*key)
                .arg(import.to_json(now).as_bytes())
                .arg(if import.keeps_created_at() { "1" } else { "0" });
        }
        let codes: Vec<u8> = call
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        if codes.len() != batch.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("import script answered {} of {}", codes.len(), batch.len()),
            ));
        }
        if let Some(i) = codes.iter().position(|&code| code == 3) {
            let id = batch[i].1.user().id();
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "user {id}: stored user record is corrupt (created_at is not a timestamp); \
                     nothing of this batch was written"
                ),
            ));
        }
        codes.into_iter().map(import_outcome).collect()
    }

    /// Deletes the user at `key`.
    pub(super) async fn delete(
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        id: &UserId,
    ) -> Result<()> {
        let removed: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        if removed == 1 {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }
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
    /// [`ErrorKind::Unavailable`] if it cannot be reached, [`ErrorKind::PermissionDenied`] if
    /// it refuses the credentials. A `rediss://` server must present a certificate that
    /// chains to a trusted CA: Mozilla's roots, the system's store, or those of `SSL_CERT_FILE`
    /// or `SSL_CERT_DIR` when set; `#insecure` at the end of the URL skips the check.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<RedisStore> {
        let describe = redact(url);
        let client = super::tls::client(url, &describe)?;
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
                .set_response_timeout(Some(options.response_timeout_value())),
        );
        let ns = options.namespace_str();
        Ok(RedisStore {
            reads,
            writes: std::sync::Arc::new(writes),
            client,
            options: options.clone(),
            prefix: format!("{ns}:user:"),
            describe,
            scripts: std::sync::Arc::new(Scripts::new()),
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

    fn fault(&self, err: redis::RedisError) -> Error {
        fault(&self.describe, err)
    }

    /// The write connection; an error here means nothing was sent.
    async fn writer(&self) -> Result<super::link::Recorded<'_>> {
        self.writes.connection().await.map_err(|e| self.fault(e))
    }
}

/// The URL without its password, for messages. Anything up to the last `@` of the part after
/// `scheme://` is dropped, so a password that was not URL-encoded (holding a `/`, a `#` or an
/// `@`) is dropped too.
pub(super) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => url.to_string(),
        },
    }
}

/// The error for a stored record whose `created_at` a write was to keep but could not.
fn kept_part_corrupt(id: &UserId) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("user {id}: stored user record is corrupt (created_at is not a timestamp)"),
    )
}

/// What the import script's answer for one key means.
fn import_outcome(code: u8) -> Result<ImportOutcome> {
    match code {
        0 => Ok(ImportOutcome::Created),
        1 => Ok(ImportOutcome::Skipped),
        2 => Ok(ImportOutcome::Overridden),
        other => Err(Error::new(
            ErrorKind::Internal,
            format!("import script answered {other}"),
        )),
    }
}

#[async_trait]
impl UserStore for RedisStore {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let key = self.key(user.id());
        let conn = &mut self.writer().await?;
        self.scripts
            .add(conn, &self.describe, key, user, get_or_create)
            .await
    }

    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.get_many_each(ids).await.into_iter().collect()
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        if ids.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let found: Result<Vec<Option<Bytes>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.reads.clone())
            .await
            .map_err(|e| self.fault(e));
        match found {
            // A corrupt record fails its own id only.
            Ok(found) => (ids.iter().zip(found))
                .map(|(id, bytes)| bytes.map(|bytes| stored_user(id, bytes)).transpose())
                .collect(),
            Err(err) => vec![Err(err); ids.len()],
        }
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let key = self.key(user.id());
        let conn = &mut self.writer().await?;
        self.scripts.update(conn, &self.describe, key, user).await
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let conn = &mut self.writer().await?;
        Scripts::delete(conn, &self.describe, self.key(id), id).await
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let keys: Vec<String> = users.iter().map(|u| self.key(u.user().id())).collect();
        let batch: Vec<(&str, &ImportUser)> = keys.iter().map(String::as_str).zip(users).collect();
        let conn = &mut self.writer().await?;
        (self.scripts)
            .import(
                conn,
                &self.describe,
                &batch,
                override_existing,
                Timestamp::now(),
            )
            .await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        super::tracking::watch(
            self.client.clone(),
            self.prefix.clone(),
            self.describe.clone(),
            &self.options,
            sink,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("redis://:secret@127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(redact("rediss://u:p@h:1"), "rediss://h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact("rediss://:pw@h:1/#insecure"),
            "rediss://h:1/#insecure"
        );
        // Not URL-encoded: still nothing of the password is shown.
        assert_eq!(redact("redis://u:p/w#x@h:1/0"), "redis://h:1/0");
        assert_eq!(redact("redis://:a@b@h:1"), "redis://h:1");
        assert_eq!(redact("redis:/u:pw@h:1"), "…@h:1");
    }
}
