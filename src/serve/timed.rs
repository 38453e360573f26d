//! The store seen by a server that measures it: each call timed, each failure counted by kind,
//! into the server's metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::metrics::Metrics;
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::Result;
use crate::record::Key;
use crate::record::Record;
use crate::store::{
    Added, BatchError, EventSink, ImportEntry, ImportOutcome, ImportUser, SharedStore, UserSource,
    UserStore, WatchGuard,
};
use crate::user::{NewUser, UserId, UserJson};

/// `store` with each call timed into `metrics`.
pub(crate) fn instrument(metrics: &Arc<Metrics>, store: SharedStore) -> SharedStore {
    Arc::new(Timed {
        store,
        metrics: metrics.clone(),
    })
}

/// A store whose calls are timed.
#[derive(Debug)]
struct Timed {
    store: SharedStore,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl UserSource for Timed {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        let started = Instant::now();
        let result = self.store.get_many(ids).await;
        self.metrics.record_store_call("get_many", started, &result);
        result
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        let started = Instant::now();
        let result = self.store.get_many_each(ids).await;
        let first_error = result.iter().find_map(|r| r.as_ref().err());
        match first_error {
            Some(err) => {
                let failed: Result<()> = Err(err.clone());
                self.metrics.record_store_call("get_many", started, &failed);
            }
            None => self.metrics.record_store_call("get_many", started, &Ok(())),
        }
        result
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        let started = Instant::now();
        let result = self.store.get_entries_each(keys).await;
        self.record_each(started, &result);
        result
    }

    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        let started = Instant::now();
        let result = self.store.get_records_each(keys).await;
        self.record_each(started, &result);
        result
    }

    fn describe(&self) -> String {
        self.store.describe()
    }

    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        self.store.watch(sink)
    }
}

#[async_trait]
impl UserStore for Timed {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let started = Instant::now();
        let result = self.store.add(user, get_or_create).await;
        self.metrics.record_store_call("add", started, &result);
        result
    }

    async fn get(&self, id: &UserId) -> Result<UserJson> {
        let started = Instant::now();
        let result = self.store.get(id).await;
        self.metrics.record_store_call("get", started, &result);
        result
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let started = Instant::now();
        let result = self.store.update(user).await;
        self.metrics.record_store_call("update", started, &result);
        result
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let started = Instant::now();
        let result = self.store.delete(id).await;
        self.metrics.record_store_call("delete", started, &result);
        result
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let started = Instant::now();
        let result = self.store.import(users, override_existing).await;
        self.metrics.record_store_call("import", started, &result);
        result
    }

    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let started = Instant::now();
        let result = self.store.add_entry(entry).await;
        self.metrics
            .record_store_call("add_entry", started, &result);
        result
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let started = Instant::now();
        let result = self.store.update_entry(entry).await;
        self.metrics
            .record_store_call("update_entry", started, &result);
        result
    }

    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        let started = Instant::now();
        let result = self.store.delete_entry(key).await;
        self.metrics
            .record_store_call("delete_entry", started, &result);
        result
    }

    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let started = Instant::now();
        let result = self.store.update_owned_entry(entry, owner).await;
        self.metrics
            .record_store_call("update_owned_entry", started, &result);
        result
    }

    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let started = Instant::now();
        let result = self.store.delete_owned_entry(key, owner).await;
        self.metrics
            .record_store_call("delete_owned_entry", started, &result);
        result
    }

    async fn upsert_entries(&self, entries: &[NewEntry]) -> Result<Vec<EntryJson>> {
        let started = Instant::now();
        let result = self.store.upsert_entries(entries).await;
        self.metrics
            .record_store_call("upsert_entries", started, &result);
        result
    }

    async fn import_entries(
        &self,
        entries: &[ImportEntry],
    ) -> std::result::Result<Vec<EntryJson>, BatchError> {
        let started = Instant::now();
        let result = self.store.import_entries(entries).await;
        let recorded = result.as_ref().map(|_| ()).map_err(|e| e.error.clone());
        self.metrics
            .record_store_call("import_entries", started, &recorded);
        result
    }

    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        let started = Instant::now();
        let result = self.store.delete_entries(keys).await;
        self.metrics
            .record_store_call("delete_entries", started, &result);
        result
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        let started = Instant::now();
        let result = self.store.get_stored_entry(key).await;
        self.metrics
            .record_store_call("get_entry", started, &result);
        result
    }
}

impl Timed {
    /// Records a batched read with an answer per key as one call, failed if any answer is.
    fn record_each<T>(&self, started: Instant, answers: &[Result<T>]) {
        match answers.iter().find_map(|r| r.as_ref().err()) {
            Some(err) => {
                let failed: Result<()> = Err(err.clone());
                self.metrics.record_store_call("get_many", started, &failed);
            }
            None => self.metrics.record_store_call("get_many", started, &Ok(())),
        }
    }
}
