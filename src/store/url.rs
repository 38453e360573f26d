//! Store URLs: which backend a URL names, how it is opened, and how it is shown without its
//! password.

use std::sync::Arc;

#[cfg(feature = "file")]
use super::FileStore;
#[cfg(feature = "redis")]
use super::{ClusterStore, RedisStore};
use super::{MemoryStore, SharedStore, StoreOptions};
use crate::error::{Error, Result};

/// The store URL the CLI uses when none is given.
pub const DEFAULT_STORE_URL: &str = "file:./enrich.db";

/// A parsed store URL. Its `Debug` form shows the Redis URLs without their passwords.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
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
                redact(url)
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

/// Opens the store a URL names ([`StoreUrl`]). A URL of a backend this build was compiled
/// without is [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), naming the feature
/// it needs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> enrich::Result<()> {
/// use std::time::Duration;
///
/// use enrich::{Enricher, StoreOptions, store};
///
/// let options = StoreOptions::new()
///     .namespace("tenant-1")
///     .response_timeout(Duration::from_millis(500));
/// // `redis://host:6379` in production; `memory:` here.
/// let store = store::open("memory:", &options).await?;
/// assert_eq!(store.describe(), "memory:");
/// let enricher = Enricher::new(store);
///
/// // A bad URL is refused with a message that names it, without its password.
/// let err = store::open("postgres://app:secret@db/users", &options).await.unwrap_err();
/// assert!(err.is_invalid_input());
/// assert!(!err.to_string().contains("secret"), "{err}");
/// # Ok(())
/// # }
/// ```
pub async fn open(url: &str, options: &StoreOptions) -> Result<SharedStore> {
    options.validate()?;
    Ok(match StoreUrl::parse(url)? {
        #[cfg(feature = "redis")]
        StoreUrl::Redis(url) => Arc::new(RedisStore::connect(&url, options).await?),
        #[cfg(feature = "redis")]
        StoreUrl::RedisCluster { nodes, describe } => {
            Arc::new(ClusterStore::connect(nodes, describe, options).await?)
        }
        #[cfg(feature = "file")]
        StoreUrl::File(path) => Arc::new(FileStore::open(&path, options).await?),
        StoreUrl::Memory => {
            options.without_replicas("memory:")?;
            Arc::new(MemoryStore::new())
        }
        #[allow(unreachable_patterns)]
        _ => return Err(without_backend(url)),
    })
}

/// The error for a store this build was compiled without.
#[allow(dead_code)]
fn without_backend(url: &str) -> Error {
    let feature = if url.starts_with("file:") {
        "file"
    } else if url.starts_with("rediss") {
        // It brings `redis` with it.
        "tls"
    } else {
        "redis"
    };
    Error::invalid(format!(
        "store URL {:?} needs the `{feature}` feature of enrich, which this build was compiled \
         without",
        redact(url)
    ))
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Redis(url) => f.debug_tuple("Redis").field(&redact(url)).finish(),
            StoreUrl::RedisCluster { nodes, describe } => f
                .debug_struct("RedisCluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
                )
                .field("describe", describe)
                .finish(),
            StoreUrl::File(path) => f.debug_tuple("File").field(path).finish(),
            StoreUrl::Memory => f.write_str("Memory"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        for url in [
            "redis://:hunter2@10.0.0.5:6379/0",
            "rediss://app:hunter2@h:1",
            "redis+cluster://app:hunter2@h:1,h:2",
        ] {
            let shown = format!("{:?}", StoreUrl::parse(url).unwrap());
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("h:1") || shown.contains("10.0.0.5"),
                "{shown}"
            );
        }
    }

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
