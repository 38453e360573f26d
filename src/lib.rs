//! `enrich` replaces the user references in feed activities (`"actor":"SU:alice"`) with the
//! user objects they name, exactly as Stream's Feeds v2 API returns them.
//!
//! # Layout
//!
//! Data flows one way — bytes → references → L1 → store (one batched call) → substitution →
//! bytes — and each step has its module:
//!
//! - [`page`]: the raw-bytes path. A [`RawPage`] validates and compacts documents and notes
//!   where the references are, using [`mod@reference`] to tell a reference from a look-alike.
//!   (The `Value` path walks the same shapes over `serde_json::Value`s.)
//! - `cache`: the L1, a moka cache bounded by bytes, with the registry of loads in flight that
//!   fences loads racing an invalidation and coalesces loads across pages ([`CacheConfig`]).
//! - `resolver`: one answer per distinct id, through the L1 and at most one
//!   [`UserStore::get_many`] call per page.
//! - [`Enricher`]: the handle a service shares; it splices the answers into the documents.
//!   Three ways in: [`Enricher::enrich_page`] for a [`RawPage`] (bytes in, bytes out);
//!   [`Enricher::enrich_values`] for `serde_json::Value`s, each user put in place as a
//!   `Value` to read or edit; [`Enricher::enrich_value_page`] for `Value`s that are only to
//!   be serialized: [`EnrichedValues`] writes them, or serializes through serde, with each
//!   user spliced in as its stored bytes.
//! - [`store`]: the [`UserStore`] trait and its backends — Redis, an embedded redb file, and
//!   memory — chosen by URL; [`user`] holds the model and [`UserJson`], the one serialized form
//!   of a user that every backend stores and every enrichment embeds.
//! - [`job`]: `enrich run`, the NDJSON batch job; [`import`] bulk-loads users; [`lines`] reads
//!   NDJSON with a length cap; [`commands`] is what the binary runs once its flags are parsed.
//! - [`error`]: the one [`Error`] type, with an [`ErrorKind`].
//! - [`serve`]: `enrich serve`, a Stream-compatible HTTP API (axum) over an [`Enricher`]: the
//!   users API with Stream's bodies, codes and auth, and an endpoint that enriches documents.
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
//! assert_eq!((stats.references, stats.store_calls, stats.missing), (2, 1, 1));
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
pub mod bench;
mod cache;
pub mod commands;
mod enricher;
pub mod error;
mod id;
pub mod page;
pub mod reference;
mod resolver;
mod scan;
pub mod serve;
pub mod shape;
mod stats;
pub mod store;
mod sync;
pub mod user;
mod value;

pub use cache::{CacheConfig, CacheStats};
pub use enricher::{EnrichedPage, Enricher, EnricherBuilder, OnStoreError};
pub use error::{Error, ErrorKind, Result};
pub use page::RawPage;
pub use shape::{Depth, MAX_DEPTH};
pub use stats::EnrichStats;
pub use store::{SharedStore, StoreOptions, UserStore};
pub use user::{NewUser, Timestamp, UserId, UserJson};
pub use value::{EnrichedDoc, EnrichedValues};
