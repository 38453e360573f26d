//! The in-memory backend: a concurrent map, for library users and tests.

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{
    Added, BatchError, ImportEntry, ImportOutcome, ImportUser, Stamps, UserSource, UserStore,
    conflict, entry_conflict, entry_not_found, entry_not_owned, not_found,
};
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::Result;
use crate::record::Key;
use crate::record::Record;
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Users and collection entries in this process's memory. Each `memory:` store starts empty
/// and is gone with the process; the maps' entry locks make every write atomic per record.
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: DashMap<UserId, UserJson>,
    entries: DashMap<EntryKey, StoredEntry>,
}

impl MemoryStore {
    fn entry(&self, key: &EntryKey) -> Option<EntryJson> {
        self.entries.get(key).map(|e| e.entry.clone())
    }

    /// `entry` written at `now` with `stamps` over `existing` (whose owner it keeps, and its
    /// `created_at` unless `stamps` gives one), or new.
    fn replacing(
        entry: &NewEntry,
        stamps: Stamps,
        existing: Option<&StoredEntry>,
        now: Timestamp,
    ) -> StoredEntry {
        match existing {
            Some(old) => {
                let kept = Timestamp::parse(old.entry.created_at())
                    .expect("a stored created_at is a timestamp");
                StoredEntry {
                    entry: entry.to_json(stamps.created(Some(kept), now), stamps.updated(now)),
                    owner: old.owner.clone(),
                }
            }
            None => StoredEntry {
                entry: entry.to_json(stamps.fresh(now), stamps.updated(now)),
                owner: entry.owner().cloned(),
            },
        }
    }

    /// Creates or replaces each entry, with its stamps.
    fn upsert<'a>(&self, batch: impl Iterator<Item = (&'a NewEntry, Stamps)>) -> Vec<EntryJson> {
        let now = Timestamp::now();
        batch
            .map(
                |(entry, stamps)| match self.entries.entry(entry.key().clone()) {
                    Entry::Vacant(slot) => {
                        let stored = MemoryStore::replacing(entry, stamps, None, now);
                        slot.insert(stored).entry.clone()
                    }
                    Entry::Occupied(mut existing) => {
                        let stored =
                            MemoryStore::replacing(entry, stamps, Some(existing.get()), now);
                        existing.insert(stored.clone());
                        stored.entry
                    }
                },
            )
            .collect()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

#[async_trait]
impl UserSource for MemoryStore {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        Ok(ids
            .iter()
            .map(|id| self.users.get(id).map(|u| u.clone()))
            .collect())
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        keys.iter().map(|key| Ok(self.entry(key))).collect()
    }

    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        keys.iter()
            .map(|key| {
                Ok(match key {
                    Key::User(id) => self.users.get(id).map(|u| Record::User(u.clone())),
                    Key::Entry(key) => self.entry(key).map(Record::Entry),
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        "memory:".to_string()
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        match self.users.entry(user.id().clone()) {
            Entry::Occupied(existing) if get_or_create => Ok(Added {
                user: existing.get().clone(),
                created: false,
            }),
            Entry::Occupied(_) => Err(conflict(user.id())),
            Entry::Vacant(slot) => {
                let now = Timestamp::now();
                let json = user.to_json(now, now);
                slot.insert(json.clone());
                Ok(Added {
                    user: json,
                    created: true,
                })
            }
        }
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let mut stored = self
            .users
            .get_mut(user.id())
            .ok_or_else(|| not_found(user.id()))?;
        let updated = stored.replace_tail(&user.tail(Timestamp::now()));
        *stored = updated.clone();
        Ok(updated)
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        self.users
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| not_found(id))
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let now = Timestamp::now();
        Ok(users
            .iter()
            .map(
                |import| match self.users.entry(import.user().id().clone()) {
                    Entry::Vacant(slot) => {
                        slot.insert(import.to_json(now));
                        ImportOutcome::Created
                    }
                    Entry::Occupied(mut existing) if override_existing => {
                        let json = import.to_override_json(existing.get(), now);
                        existing.insert(json);
                        ImportOutcome::Overridden
                    }
                    Entry::Occupied(_) => ImportOutcome::Skipped,
                },
            )
            .collect())
    }

    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        match self.entries.entry(entry.key().clone()) {
            Entry::Occupied(_) => Err(entry_conflict(entry.key())),
            Entry::Vacant(slot) => {
                let stored =
                    MemoryStore::replacing(entry, Stamps::default(), None, Timestamp::now());
                Ok(slot.insert(stored).entry.clone())
            }
        }
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        let mut stored =
            (self.entries.get_mut(entry.key())).ok_or_else(|| entry_not_found(entry.key()))?;
        *stored = MemoryStore::replacing(entry, Stamps::default(), Some(&stored), Timestamp::now());
        Ok(stored.entry.clone())
    }

    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        self.entries
            .remove(key)
            .map(|_| ())
            .ok_or_else(|| entry_not_found(key))
    }

    /// The owner is checked under the map's lock of the entry, which the write holds.
    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let mut stored =
            (self.entries.get_mut(entry.key())).ok_or_else(|| entry_not_found(entry.key()))?;
        if stored.owner.as_ref() != Some(owner) {
            return Err(entry_not_owned(entry.key(), owner));
        }
        *stored = MemoryStore::replacing(entry, Stamps::default(), Some(&stored), Timestamp::now());
        Ok(stored.entry.clone())
    }

    /// The owner is checked under the map's lock of the entry, which the removal holds.
    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        match self.entries.entry(key.clone()) {
            Entry::Vacant(_) => Err(entry_not_found(key)),
            Entry::Occupied(stored) if stored.get().owner.as_ref() != Some(owner) => {
                Err(entry_not_owned(key, owner))
            }
            Entry::Occupied(stored) => {
                stored.remove();
                Ok(())
            }
        }
    }

    async fn upsert_entries(&self, entries: &[NewEntry]) -> Result<Vec<EntryJson>> {
        Ok(self.upsert(entries.iter().map(|entry| (entry, Stamps::default()))))
    }

    async fn import_entries(&self, entries: &[ImportEntry]) -> Result<Vec<EntryJson>, BatchError> {
        Ok(self.upsert(entries.iter().map(|i| (i.entry(), i.stamps()))))
    }

    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        Ok(keys
            .iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count() as u64)
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        Ok(self.entries.get(key).map(|e| e.clone()))
    }
}
