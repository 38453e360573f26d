//! Collection entries in the file store: a table beside the users', keyed by
//! `<collection>:<id>`, holding each entry's stored form (its JSON, preceded by `{owner}\n` when
//! it has an owner). Every write runs inside a write transaction, so it is atomic per entry: a
//! write made only if a given user owns the entry reads the owner in the transaction that
//! writes, which no other write can interleave with.

use redb::ReadableTable;

use super::{Inner, Table};
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::Result;
use crate::store::{Stamps, entry_conflict, entry_not_found, entry_not_owned, stored_entry};
use crate::user::{Timestamp, UserId};

/// What a write does with an entry that exists, or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Create; a taken key is a conflict.
    Add,
    /// Replace; an absent key is not found.
    Update,
    /// Create or replace.
    Upsert,
}

impl Inner {
    /// The entry stored under `key` in `table`, checked whole.
    pub(super) fn entry_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &EntryKey,
    ) -> Result<Option<StoredEntry>> {
        match table.get(key.as_str()).map_err(|e| self.fail(e))? {
            Some(value) => Ok(Some(stored_entry(key, value.value().to_vec())?)),
            None => Ok(None),
        }
    }

    /// Checks, in the write transaction of `table`, that the entry `key` exists and that
    /// `owner` owns it; a stored record that does not pass the full check is an error.
    pub(super) fn check_owner(
        &self,
        table: &Table<'_>,
        key: &EntryKey,
        owner: &UserId,
    ) -> Result<()> {
        match self.entry_in(table, key)? {
            None => Err(entry_not_found(key)),
            Some(stored) if stored.owner.as_ref() != Some(owner) => {
                Err(entry_not_owned(key, owner))
            }
            Some(_) => Ok(()),
        }
    }

    /// Writes `entry` in `mode` at `now` with `stamps`; a replaced entry keeps its owner, and
    /// its `created_at` unless `stamps` gives one. A stored record that does not pass the full
    /// check is never built upon.
    pub(super) fn write_entry(
        &self,
        table: &mut Table<'_>,
        entry: &NewEntry,
        stamps: Stamps,
        mode: Mode,
        now: Timestamp,
    ) -> Result<EntryJson> {
        let key = entry.key();
        let stored = match (self.entry_in(table, key)?, mode) {
            (Some(_), Mode::Add) => return Err(entry_conflict(key)),
            (None, Mode::Update) => return Err(entry_not_found(key)),
            (None, _) => StoredEntry {
                entry: entry.to_json(stamps.fresh(now), stamps.updated(now)),
                owner: entry.owner().cloned(),
            },
            (Some(old), _) => {
                let kept = Timestamp::parse(old.entry.created_at())?;
                StoredEntry {
                    entry: entry.to_json(stamps.created(Some(kept), now), stamps.updated(now)),
                    owner: old.owner,
                }
            }
        };
        table
            .insert(
                key.as_str(),
                &stored.entry.to_stored(stored.owner.as_ref())[..],
            )
            .map_err(|e| self.fail(e))?;
        Ok(stored.entry)
    }
}
