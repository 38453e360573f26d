//! `enrich collections`.

use std::path::Path;

use enrich::batch::{EntryImportSummary, ImportEvent, import_entries_until};
use enrich::collection::{EntryJson, EntryKey, NewEntry, generate_id};
use enrich::error::Result;

use super::progress::ImportProgress;
use super::{StoreSpec, first_stop, open_input, read_data};

/// `collections add`: creates an entry, with a generated id if none is given.
pub(crate) async fn entries_add(
    spec: &StoreSpec,
    name: &str,
    id: Option<&str>,
    data: &str,
) -> Result<EntryJson> {
    let id = id.map_or_else(generate_id, str::to_string);
    let key = EntryKey::new(name, &id)?;
    let entry = NewEntry::new(key, Some(read_data(data).await?))?;
    spec.open().await?.add_entry(&entry).await
}

/// `collections get`.
pub(crate) async fn entries_get(spec: &StoreSpec, name: &str, id: &str) -> Result<EntryJson> {
    let key = EntryKey::new(name, id)?;
    spec.open_existing().await?.get_entry(&key).await
}

/// `collections update`: replaces the data of an existing entry.
pub(crate) async fn entries_update(
    spec: &StoreSpec,
    name: &str,
    id: &str,
    data: &str,
) -> Result<EntryJson> {
    let key = EntryKey::new(name, id)?;
    let entry = NewEntry::new(key, Some(read_data(data).await?))?;
    spec.open_existing().await?.update_entry(&entry).await
}

/// `collections delete`.
pub(crate) async fn entries_delete(spec: &StoreSpec, name: &str, id: &str) -> Result<()> {
    let key = EntryKey::new(name, id)?;
    spec.open_existing().await?.delete_entry(&key).await
}

/// `collections import`: NDJSON entries from a file or `-` (standard input), upserted.
/// Rejected lines are reported on standard error as `FILE:LINE: reason` as they are met; the
/// summary says how many. An import stopped by a store fault prints the summary of what it
/// committed before returning the error.
pub(crate) async fn entries_import(
    spec: &StoreSpec,
    file: Option<&Path>,
) -> Result<EntryImportSummary> {
    let input = open_input(file).await?;
    let store = spec.open().await?;
    let (display, input) = ImportProgress::start("entries", file, input);
    let events = |event: ImportEvent<'_>| display.event(event);
    let imported = import_entries_until(&*store, input, events, first_stop()).await;
    display.finish(imported.map_err(|stopped| (stopped.committed, stopped.error)))
}
