//! `enrich` replaces the references in feed activities — users (`"actor":"SU:alice"`) and
//! collection entries (`"object":"SO:food:burger"`) — with the objects they name, exactly as
//! Stream's Feeds v2 API returns them.
//!
//! # Layout
//!
//! Read from the top down, the modules follow a reference on its way: bytes → references →
//! L1 → store (one batched call) → answers → bytes.
//!
//! - [`shape`]: Stream's shapes — depth, the role of an object, which arrays make a container,
//!   where reactions stand — the vocabulary both enrichment paths share;
//!   [`reference`](mod@reference) (with its kinds, [`ReferenceKind`]), `id` and `answer`: what
//!   a reference looks like (`SU:<id>`, `SO:<collection>:<id>`, a reaction's `user_id`), the
//!   key it names, a page's distinct keys, and what stands in a document for an answer.
//! - `scan`: the one JSON grammar. [`page`] (the raw-bytes path: a [`RawPage`] checks,
//!   compacts and finds references in one pass) and `value` (the `serde_json::Value` paths:
//!   [`EnrichedValues`] splices records' bytes, or [`Enricher::enrich_values`] puts them in
//!   place) are siblings over it.
//! - `resolver`: one answer per distinct key of a page, of every kind, through the L1 and one
//!   [`UserSource::get_records_each`] call per batch of misses (a page's, up to
//!   [`EnricherBuilder::max_batch_size`]); `cache`: the L1 (bounded by bytes), the fence
//!   and coalescing of loads in flight, the memos, and the write-through store
//!   ([`CacheConfig`]).
//! - [`store`]: [`UserSource`], what an enricher reads from (a service may implement it over
//!   its own database), and [`UserStore`], a source that also writes users and collection
//!   entries, with its backends — memory, an embedded redb file (feature `file`), Redis and
//!   Redis Cluster (feature `redis`) — chosen by URL; [`record`]: the [`Key`] a source is asked
//!   for and the [`Record`] it answers; [`collection`] and [`user`]: the two models, with
//!   [`EntryJson`] and [`UserJson`], the one serialized form every backend stores and every
//!   enrichment embeds.
//! - `enricher`: the [`Enricher`] a service shares, over all of the above — its lookups and L1
//!   controls, its builder, and its pages.
//! - [`batch`]: the NDJSON job behind `enrich run`, the user import, and the line reader.
//! - [`error`]: the one [`Error`] type, with an [`ErrorKind`]; `prefetch`: the cache hints the
//!   memo's lookups and the rendering of users give the processor (x86-64; none elsewhere).
//! - `serve` (feature `serve`): a Stream-compatible HTTP API over an [`Enricher`]; `bench`
//!   (feature `bench`): the benchmarks' workload. The `enrich` binary (feature `cli`, the
//!   default) lives in `src/bin/enrich/`: it parses flags and calls the library.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | `store::RedisStore`, `store::ClusterStore`, over plain TCP |
//! | `tls` | `rediss://` and `rediss+cluster://` for them (rustls, ring) |
//! | `file` | `store::FileStore` (redb) |
//! | `serve` | `enrich::serve`, the HTTP server (axum, hyper) |
//! | `bench` | `enrich::bench`, the benchmark workload |
//! | `preserve-order` | serde_json's `preserve_order`: user data built from a `Value` keeps its key order |
//! | `mimalloc`, `cli` (default) | the `enrich` binary and all of the above |
//!
//! A service that enriches from Redis depends on
//! `enrich = { version = "0.1", default-features = false, features = ["redis"] }`, and on
//! `features = ["redis", "tls"]` if it reaches Redis by `rediss://`.
//!
//! # Example: a feed-read handler
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> enrich::Result<()> {
//! use enrich::{Depth, Enricher, NewUser, StoreOptions, store};
//! use serde_json::json;
//!
//! // At start-up: one enricher, cloned into every handler.
//! let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
//! let alice = NewUser::new("alice", Some(json!({"name": "Alice"})))?;
//! enricher.users().add(&alice, false).await?;
//!
//! // Per request: the whole page, one store call at most.
//! let mut page = vec![
//!     json!({"actor": "SU:alice", "verb": "post", "object": "SO:post:1"}),
//!     json!({"actor": "SU:bob", "verb": "like"}),
//! ];
//! let stats = enricher.enrich_values(&mut page, Depth::TopLevel).await?;
//! assert_eq!(page[0]["actor"]["data"]["name"], "Alice");
//! assert_eq!(page[1]["actor"]["error"], "ReferenceNotFound");
//! assert_eq!(page[0]["object"]["reference_type"], "object"); // no entry post:1 yet
//! assert_eq!((stats.references, stats.store_calls, stats.missing), (3, 1, 2));
//! # Ok(())
//! # }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod answer;
pub mod batch;
#[cfg(feature = "bench")]
pub mod bench;
mod cache;
pub mod collection;
mod enricher;
pub mod error;
mod id;
pub mod page;
mod prefetch;
pub mod record;
pub mod reference;
mod resolver;
pub mod retry;
mod scan;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shape;
mod stats;
pub mod store;
mod sync;
pub mod user;
mod value;

pub use async_trait::async_trait;
pub use cache::{CacheConfig, CacheStats, DEFAULT_L1_BYTES};
pub use collection::{EntryJson, EntryKey, NewEntry};
pub use enricher::{EnrichedPage, Enricher, EnricherBuilder, OnStoreError, TooLarge};
pub use error::{Error, ErrorKind, Result};
pub use page::RawPage;
pub use record::{Key, Record};
pub use reference::ReferenceKind;
pub use shape::{Depth, MAX_DEPTH};
pub use stats::EnrichStats;
pub use store::{SharedSource, SharedStore, StoreOptions, UserSource, UserStore};
pub use user::{NewUser, Timestamp, UserId, UserJson};
pub use value::{EnrichedDoc, EnrichedValues};
