//! `enrich` replaces the user references in feed activities (`"actor":"SU:alice"`) with the
//! user objects they name, exactly as Stream's Feeds v2 API returns them.
//!
//! # Layout
//!
//! Data flows one way, and each step has its module:
//!
//! - [`user`]: ids, data, timestamps and the size limit; [`UserJson`], the one serialized form
//!   of a user that every backend stores and hands out.
//! - [`store`]: the [`UserStore`] trait and its backends — Redis, an embedded redb file, and
//!   memory — chosen by URL.
//! - [`import`]: bulk NDJSON import of users, streamed in batches, reading through [`lines`].
//! - [`commands`]: what the `enrich` binary runs once its flags are parsed.
//! - [`error`]: the one [`Error`] type, with an [`ErrorKind`].
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> enrich::Result<()> {
//! use enrich::store::{self, StoreOptions};
//! use enrich::{NewUser, UserId};
//! use serde_json::json;
//!
//! let users = store::open("memory:", &StoreOptions::new()).await?;
//! let alice = NewUser::new("alice", Some(json!({"name": "Alice"})))?;
//! users.add(&alice, false).await?;
//! let stored = users.get(&UserId::parse("alice")?).await?;
//! assert!(stored.as_str().ends_with(r#""id":"alice","data":{"name":"Alice"}}"#));
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

mod cache;
pub mod commands;
mod enricher;
pub mod error;
pub mod import;
pub mod lines;
pub mod page;
pub mod reference;
mod resolver;
mod stats;
pub mod store;
pub mod user;
mod values;

pub use cache::CacheConfig;
pub use enricher::{EnrichedPage, Enricher, EnricherBuilder, OnStoreError};
pub use error::{Error, ErrorKind, Result};
pub use page::{Depth, RawPage};
pub use stats::EnrichStats;
pub use store::{SharedStore, StoreOptions, UserStore};
pub use user::{NewUser, Timestamp, UserId, UserJson};
