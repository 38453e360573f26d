//! The store seen through an enricher: writes reach the store and invalidate the L1.

use std::sync::Arc;

use async_trait::async_trait;

use super::L1;
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::Result;
use crate::record::Key;
use crate::record::Record;
use crate::store::{
    Added, BatchError, ImportEntry, ImportOutcome, ImportUser, SharedStore, UserSource, UserStore,
};
use crate::user::{NewUser, UserId, UserJson};

/// The store seen through an enricher: every write also invalidates the enricher's L1, whatever
/// its outcome (a write that timed out may still have happened).
#[derive(Debug)]
pub(crate) struct WriteThrough {
    pub(crate) store: SharedStore,
    pub(crate) l1: Arc<L1>,
}

#[async_trait]
impl UserSource for WriteThrough {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.store.get_many(ids).await
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        self.store.get_many_each(ids).await
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        self.store.get_entries_each(keys).await
    }

    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        self.store.get_records_each(keys).await
    }

    fn describe(&self) -> String {
        self.store.describe()
    }
}

#[async_trait]
impl UserStore for WriteThrough {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let added = self.store.add(user, get_or_create).await;
        self.l1.invalidate(user.id().as_str());
        added
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let updated = self.store.update(user).await;
        self.l1.invalidate(user.id().as_str());
        updated
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let deleted = self.store.delete(id).await;
        self.l1.invalidate(id.as_str());
        deleted
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let outcomes = self.store.import(users, override_existing).await;
        for user in users {
            self.l1.invalidate(user.user().id().as_str());
        }
        outcomes
    }

    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let added = self.store.add_entry(entry).await;
        self.l1.invalidate(entry.key().as_str());
        added
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let updated = self.store.update_entry(entry).await;
        self.l1.invalidate(entry.key().as_str());
        updated
    }

    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        let deleted = self.store.delete_entry(key).await;
        self.l1.invalidate(key.as_str());
        deleted
    }

    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let updated = self.store.update_owned_entry(entry, owner).await;
        self.l1.invalidate(entry.key().as_str());
        updated
    }

    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let deleted = self.store.delete_owned_entry(key, owner).await;
        self.l1.invalidate(key.as_str());
        deleted
    }

    async fn upsert_entries(&self, entries: &[NewEntry]) -> Result<Vec<EntryJson>> {
        let written = self.store.upsert_entries(entries).await;
        for entry in entries {
            self.l1.invalidate(entry.key().as_str());
        }
        written
    }

    async fn import_entries(
        &self,
        entries: &[ImportEntry],
    ) -> std::result::Result<Vec<EntryJson>, BatchError> {
        let written = self.store.import_entries(entries).await;
        for import in entries {
            self.l1.invalidate(import.entry().key().as_str());
        }
        written
    }

    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        let deleted = self.store.delete_entries(keys).await;
        for key in keys {
            self.l1.invalidate(key.as_str());
        }
        deleted
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        self.store.get_stored_entry(key).await
    }
}
