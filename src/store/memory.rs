//! The in-memory backend: a concurrent map, for library users and tests.

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{Added, ImportOutcome, ImportUser, UserSource, UserStore, conflict, not_found};
use crate::error::Result;
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Users in this process's memory. Each `memory:` store starts empty and is gone with the
/// process; the map's entry locks make every write atomic per user.
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: DashMap<UserId, UserJson>,
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
}
