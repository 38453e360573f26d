//! Where users live: one async trait, [`UserStore`], and its backends.
//!
//! | URL | backend | for |
//! |---|---|---|
//! | `redis://[user:pass@]host:port[/db]`, `rediss://…` | [`RedisStore`] | production, shared by many processes |
//! | `redis+cluster://[user:pass@]host:port[,host:port…]`, `rediss+cluster://…` | [`ClusterStore`] | when one Redis node is not enough |
//! | `file:PATH` | [`FileStore`] | the CLI's zero-setup default, `file:./enrich.db` |
//! | `memory:` | [`MemoryStore`] | library users and tests |
//!
//! Every backend writes and hands out the same [`UserJson`] bytes, and answers
//! [`UserStore::get_many`] in one round trip: that is the call the resolver makes once per page.

mod cluster;
mod fault;
mod file;
mod link;
mod memory;
mod redis;
mod slots;
mod tls;
mod tracking;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::cluster::ClusterStore;
pub use self::file::FileStore;
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::error::{Error, ErrorKind, Result};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// The store URL the CLI uses when none is given.
pub const DEFAULT_STORE_URL: &str = "file:./enrich.db";

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "enrich";

/// A user store with the semantics of Stream's Feeds v2 users API.
///
/// Writes are atomic per user: two racing `add`s never both create, and an `update` never
/// loses `created_at`.
#[async_trait]
pub trait UserStore: Send + Sync + fmt::Debug + 'static {
    /// Creates `user`. If it exists: with `get_or_create`, returns the stored user untouched;
    /// without, fails with [`ErrorKind::Conflict`].
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added>;

    /// Reads many users in one round trip: one answer per id, in order, `None` for a user that
    /// does not exist.
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>>;

    /// Like [`UserStore::get_many`], but with an answer or an error for each id on its own:
    /// a store spread over several servers (Redis Cluster) still answers the ids of the servers
    /// that are up when one is down. One round trip per server; an error is never `Ok(None)`.
    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        match self.get_many(ids).await {
            Ok(found) => found.into_iter().map(Ok).collect(),
            Err(err) => vec![Err(err); ids.len()],
        }
    }

    /// Replaces the data of an existing user, bumps `updated_at` and keeps `created_at`.
    async fn update(&self, user: &NewUser) -> Result<UserJson>;

    /// Removes a user; [`ErrorKind::NotFound`] if there is none.
    async fn delete(&self, id: &UserId) -> Result<()>;

    /// Writes many users in one round trip, in order. An existing user is skipped, or with
    /// `override_existing` replaced (keeping its `created_at` unless the import gives one).
    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>>;

    /// Where the store is, for messages: `redis://127.0.0.1:6379`, `file:./enrich.db`. Never
    /// includes a password.
    fn describe(&self) -> String;

    /// Starts telling `sink` of every write to this store's users, by anyone, for as long as
    /// the returned guard lives. `None` if the store cannot: then a write made outside this
    /// process is seen only when a cached entry's TTL runs out.
    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        let _ = sink;
        None
    }

    /// Reads one user; [`ErrorKind::NotFound`] if there is none.
    async fn get(&self, id: &UserId) -> Result<UserJson> {
        let mut found = self.get_many(std::slice::from_ref(id)).await?;
        found.pop().flatten().ok_or_else(|| not_found(id))
    }
}

/// A shared handle to any store.
pub type SharedStore = Arc<dyn UserStore>;

/// What a watched store says about writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Announcements flow: from now on every write is told. Writes before may have been missed.
    Connected,
    /// These users were written.
    Changed(Vec<Box<str>>),
    /// Any user may have been written (the database was flushed, or announcements overflowed).
    ChangedAll,
    /// Announcements may be missed from now on, until the next [`StoreEvent::Connected`].
    Lost,
}

/// Receives [`StoreEvent`]s; called on the watcher's task, so it must not block.
pub type EventSink = Arc<dyn Fn(StoreEvent) + Send + Sync>;

/// Keeps a watch running; dropping it stops the watch.
#[derive(Debug)]
pub struct WatchGuard(tokio::task::AbortHandle);

impl WatchGuard {
    pub(crate) fn new(task: tokio::task::AbortHandle) -> Self {
        WatchGuard(task)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`UserStore::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The user as stored now.
    pub user: UserJson,
    /// True if this call created it, false if it existed (get-or-create only).
    pub created: bool,
}

/// What an import did with one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportOutcome {
    /// The user did not exist and was written.
    Created,
    /// The user existed and was left as it was.
    Skipped,
    /// The user existed and was replaced.
    Overridden,
}

/// A user to import, maybe with the timestamps it had in another store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportUser {
    user: NewUser,
    created_at: Option<Timestamp>,
    updated_at: Option<Timestamp>,
}

impl ImportUser {
    /// A user to import. Missing timestamps are filled at write time: a given one stands for
    /// both, and with neither the time of the write is used (an overridden user keeps its
    /// `created_at`).
    pub fn new(
        user: NewUser,
        created_at: Option<Timestamp>,
        updated_at: Option<Timestamp>,
    ) -> Result<ImportUser> {
        if let (Some(c), Some(u)) = (created_at, updated_at)
            && u < c
        {
            return Err(Error::invalid(format!(
                "user {:?}: updated_at {u} is before created_at {c}",
                user.id()
            )));
        }
        Ok(ImportUser {
            user,
            created_at,
            updated_at,
        })
    }

    /// The user being imported.
    pub fn user(&self) -> &NewUser {
        &self.user
    }

    /// True when an overridden user keeps the `created_at` it has in the store.
    pub fn keeps_created_at(&self) -> bool {
        self.created_at.is_none()
    }

    /// The record to write, with `now` standing in for missing timestamps.
    pub fn to_json(&self, now: Timestamp) -> UserJson {
        let created = self.created_at.or(self.updated_at).unwrap_or(now);
        let updated = self.updated_at.or(self.created_at).unwrap_or(now);
        self.user.to_json(created, updated)
    }

    /// The record that replaces `existing` under override.
    pub fn to_override_json(&self, existing: &UserJson, now: Timestamp) -> UserJson {
        let json = self.to_json(now);
        if self.keeps_created_at() {
            existing.replace_tail(&json.as_str()[UserJson::TAIL_START..])
        } else {
            json
        }
    }
}

/// The error for a user that does not exist.
pub(crate) fn not_found(id: &UserId) -> Error {
    Error::new(ErrorKind::NotFound, format!("user {id:?} does not exist"))
}

/// The error for a user that exists already.
pub(crate) fn conflict(id: &UserId) -> Error {
    Error::new(ErrorKind::Conflict, format!("user {id:?} already exists"))
}

/// How to open a store: the namespace and the time limits.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    namespace: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    create_if_missing: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::new()
    }
}

impl StoreOptions {
    /// The defaults: namespace `enrich`, 2 s to connect, 2 s for an answer, a file store
    /// created if missing.
    pub fn new() -> Self {
        StoreOptions {
            namespace: DEFAULT_NAMESPACE.to_string(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            create_if_missing: true,
        }
    }

    /// Whether opening a file store that does not exist creates it (the default) or fails
    /// with [`ErrorKind::InvalidInput`] naming the path. Off for work that only reads, so that a
    /// mistyped path or another working directory is an error, not an empty store. Other
    /// backends ignore it.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    pub(crate) fn create_if_missing_value(&self) -> bool {
        self.create_if_missing
    }

    /// Keeps users apart from those of other namespaces in the same store.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long to wait for a connection before the store counts as unavailable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for an answer before a command fails with a timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    pub(crate) fn namespace_str(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn response_timeout_value(&self) -> Duration {
        self.response_timeout
    }

    fn validate(&self) -> Result<()> {
        let ns = &self.namespace;
        let ok = !ns.is_empty()
            && ns.len() <= 64
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "invalid namespace {ns:?}: use 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'"
            )))
        }
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `redis://…` or `rediss://…`, kept whole for the Redis client.
    Redis(String),
    /// `redis+cluster://…` or `rediss+cluster://…`: one node URL per seed (credentials
    /// included), and the URL as it may be shown (without them).
    RedisCluster {
        /// `redis://[user:pass@]host:port` (or `rediss://…`) for each seed, in order.
        nodes: Vec<String>,
        /// The URL without its password.
        describe: String,
    },
    /// `file:PATH`.
    File(std::path::PathBuf),
    /// `memory:`.
    Memory,
}

impl StoreUrl {
    /// Reads a store URL and names what is wrong with a bad one.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(StoreUrl::Redis(url.to_string()))
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            parse_cluster("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            parse_cluster("rediss", rest)
        } else if let Some(path) = url.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::invalid(format!(
                    "store URL {url:?} names no file; write file:PATH"
                )));
            }
            Ok(StoreUrl::File(path.into()))
        } else if url == "memory:" || url == "memory://" {
            Ok(StoreUrl::Memory)
        } else {
            Err(Error::invalid(format!(
                "unknown store URL {:?}; use redis://host:port[/db], rediss://…, \
                 redis+cluster://host:port[,host:port…], file:PATH or memory:",
                self::redis::redact(url)
            )))
        }
    }
}

/// Reads the part of a cluster URL after `scheme+cluster://`: optional credentials, then a
/// comma-separated list of `host:port` seeds. The messages never repeat the credentials.
fn parse_cluster(scheme: &str, rest: &str) -> Result<StoreUrl> {
    // `#insecure` (TLS without checking the certificate) applies to every node.
    let (rest, fragment) = match rest.strip_suffix("#insecure") {
        Some(rest) if scheme == "rediss" => (rest, "#insecure"),
        _ => (rest, ""),
    };
    let shown = |hosts: &str| format!("{scheme}+cluster://{hosts}{fragment}");
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, rest),
    };
    let bad = |why: String| {
        Err(Error::invalid(format!(
            "invalid cluster URL {:?}: {why}; write {scheme}+cluster://[user:pass@]host:port[,host:port…]",
            shown(hosts)
        )))
    };
    if let Some((_, path)) = hosts.split_once('/')
        && !path.is_empty()
    {
        return bad(format!(
            "a cluster has only database 0, so it takes no path (got /{path})"
        ));
    }
    let hosts = hosts.trim_end_matches('/');
    if hosts.is_empty() {
        return bad("it names no node".to_string());
    }
    let mut nodes = Vec::new();
    for seed in hosts.split(',') {
        let Some((host, port)) = seed.rsplit_once(':') else {
            return bad(format!("node {seed:?} has no port"));
        };
        if host.is_empty() {
            return bad(format!("node {seed:?} has no host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return bad(format!("node {seed:?} has an invalid port {port:?}")),
        }
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        nodes.push(format!("{scheme}://{auth}{host}:{port}{fragment}"));
    }
    Ok(StoreUrl::RedisCluster {
        nodes,
        describe: shown(hosts),
    })
}

/// Opens the store a URL names.
pub async fn open(url: &str, options: &StoreOptions) -> Result<SharedStore> {
    options.validate()?;
    Ok(match StoreUrl::parse(url)? {
        StoreUrl::Redis(url) => Arc::new(RedisStore::connect(&url, options).await?),
        StoreUrl::RedisCluster { nodes, describe } => {
            Arc::new(ClusterStore::connect(nodes, describe, options).await?)
        }
        StoreUrl::File(path) => Arc::new(FileStore::open(&path, options).await?),
        StoreUrl::Memory => Arc::new(MemoryStore::new()),
    })
}

/// A record read back from a store for `id`, checked whole (one copied from another user's key
/// is as corrupt as one cut short); a corrupt one is an error naming the user.
pub(crate) fn stored_user(id: &UserId, bytes: impl Into<bytes::Bytes>) -> Result<UserJson> {
    UserJson::from_stored_as(id, bytes).map_err(|e| e.context(format!("user {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            StoreUrl::parse("file:./enrich.db").unwrap(),
            StoreUrl::File("./enrich.db".into())
        );
        assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
        assert!(matches!(
            StoreUrl::parse("rediss://:pw@h:1/2").unwrap(),
            StoreUrl::Redis(_)
        ));
        let err = StoreUrl::parse("postgres://x").unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("postgres://x"), "{err}");
        assert!(StoreUrl::parse("file:").is_err());
        let err = StoreUrl::parse("postgres://u:pw-9@x").unwrap_err();
        assert!(!err.to_string().contains("pw-9"), "{err}");
    }

    #[test]
    fn cluster_urls_parse() {
        assert_eq!(
            StoreUrl::parse("redis+cluster://u:pw@10.0.0.1:7000,h2:7001").unwrap(),
            StoreUrl::RedisCluster {
                nodes: vec![
                    "redis://u:pw@10.0.0.1:7000".to_string(),
                    "redis://u:pw@h2:7001".to_string()
                ],
                describe: "redis+cluster://10.0.0.1:7000,h2:7001".to_string(),
            }
        );
        assert_eq!(
            StoreUrl::parse("rediss+cluster://:pw@h:1,h:2/#insecure").unwrap(),
            StoreUrl::RedisCluster {
                nodes: vec![
                    "rediss://:pw@h:1#insecure".to_string(),
                    "rediss://:pw@h:2#insecure".to_string()
                ],
                describe: "rediss+cluster://h:1,h:2#insecure".to_string(),
            }
        );
        assert_eq!(
            StoreUrl::parse("rediss+cluster://h:1/").unwrap(),
            StoreUrl::RedisCluster {
                nodes: vec!["rediss://h:1".to_string()],
                describe: "rediss+cluster://h:1".to_string(),
            }
        );
        for (url, says) in [
            ("redis+cluster://", "names no node"),
            ("redis+cluster://:pw@h", "\"h\" has no port"),
            ("redis+cluster://h:1,:2", "\":2\" has no host"),
            ("redis+cluster://h:1,h:x", "invalid port \"x\""),
            ("redis+cluster://h:1,h:70000", "invalid port"),
            ("redis+cluster://h:1/2", "only database 0"),
        ] {
            let err = StoreUrl::parse(url).unwrap_err();
            assert!(err.is_invalid_input(), "{url}");
            assert!(err.to_string().contains(says), "{url}: {err}");
            assert!(!err.to_string().contains("pw"), "{url}: {err}");
        }
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(
            StoreOptions::new()
                .namespace("tenant-1.a")
                .validate()
                .is_ok()
        );
        assert!(StoreOptions::new().namespace("a b").validate().is_err());
        assert!(StoreOptions::new().namespace("").validate().is_err());
    }

    #[test]
    fn import_timestamps_fill_in() {
        let user = NewUser::new("a", None).unwrap();
        let t1 = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
        let t2 = Timestamp::parse("2021-01-01T00:00:00Z").unwrap();
        let now = Timestamp::parse("2022-01-01T00:00:00Z").unwrap();
        let only_created = ImportUser::new(user.clone(), Some(t1), None).unwrap();
        assert_eq!(only_created.to_json(now), user.to_json(t1, t1));
        let both = ImportUser::new(user.clone(), Some(t1), Some(t2)).unwrap();
        assert_eq!(both.to_json(now), user.to_json(t1, t2));
        let none = ImportUser::new(user.clone(), None, None).unwrap();
        let existing = user.to_json(t1, t1);
        assert_eq!(none.to_override_json(&existing, now), user.to_json(t1, now));
        assert!(ImportUser::new(user, Some(t2), Some(t1)).is_err());
    }
}
