//! A store of each backend, opened afresh for one test, and [`store_suite!`], which runs each
//! behaviour of a suite once per backend.

use enrich::store::{self, SharedStore, StoreOptions};

use super::{RedisCluster, RedisServer, temp_db};

/// A store and whatever keeps it alive (a server process, a temp dir).
pub struct Backend {
    pub store: SharedStore,
    _guard: Box<dyn std::any::Any + Send>,
}

/// The memory store.
pub async fn memory() -> Backend {
    Backend {
        store: store::open("memory:", &StoreOptions::new()).await.unwrap(),
        _guard: Box::new(()),
    }
}

/// A redb file in a temp dir.
pub async fn file() -> Backend {
    let (dir, path) = temp_db();
    let url = format!("file:{}", path.display());
    Backend {
        store: store::open(&url, &StoreOptions::new()).await.unwrap(),
        _guard: Box::new(dir),
    }
}

/// A private `redis-server`.
pub async fn redis() -> Backend {
    let server = RedisServer::start();
    Backend {
        store: store::open(&server.url(), &StoreOptions::new())
            .await
            .unwrap(),
        _guard: Box::new(server),
    }
}

/// A store over a private three-master Redis Cluster.
pub async fn cluster() -> Backend {
    let (cluster, store) = cluster_store().await;
    Backend {
        store,
        _guard: Box::new(cluster),
    }
}

/// A private three-master Redis Cluster, started off the runtime's threads (it waits for its
/// nodes to agree).
pub async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
}

/// A private three-master Redis Cluster and a store over it.
pub async fn cluster_store() -> (RedisCluster, SharedStore) {
    let cluster = start_cluster().await;
    let store = store::open(&cluster.url(), &StoreOptions::new())
        .await
        .unwrap();
    (cluster, store)
}

/// Generates one test per behaviour and backend, `memory_backend::add_then_get`,
/// `redis_backend::…`: each behaviour is an `async fn(SharedStore)` of the calling file.
#[macro_export]
macro_rules! store_suite {
    ($($behaviour:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                let backend = $crate::support::backends::memory().await;
                super::$behaviour(backend.store.clone()).await
            })*
        }
        mod file_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                let backend = $crate::support::backends::file().await;
                super::$behaviour(backend.store.clone()).await
            })*
        }
        mod redis_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                let backend = $crate::support::backends::redis().await;
                super::$behaviour(backend.store.clone()).await
            })*
        }
        mod cluster_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                let backend = $crate::support::backends::cluster().await;
                super::$behaviour(backend.store.clone()).await
            })*
        }
    };
}
