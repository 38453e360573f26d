//! The mixed golden fixture: a page mixing `SU:` and `SO:` references (present, missing,
//! deleted, look-alikes) and reactions, enriched over the memory store and compared with
//! `fixtures/mixed.enriched.ndjson` byte for byte, on the raw path and both `Value` paths.
//! The fixture users and entries carry their timestamps, so the output is compared exactly as
//! written. Set `ENRICH_UPDATE_GOLDEN=1` to rewrite the golden file (then check it by hand).

mod support;

use std::sync::Arc;

use enrich::batch::{parse_entry_line, parse_import_line};
use enrich::store::{ImportEntry, MemoryStore, SharedStore};
use enrich::{Depth, Enricher, EntryKey, NewEntry, RawPage};
use serde_json::{Value, json};

/// The fixture users and entries, and `food:deleted` created and deleted again: a deleted
/// entry must read as missing, like one never created.
async fn fixture_store() -> SharedStore {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let users = std::fs::read_to_string(support::fixture("users.ndjson")).unwrap();
    let users: Vec<_> = users
        .lines()
        .map(|l| parse_import_line(l.as_bytes()).unwrap())
        .collect();
    store.import(&users, false).await.unwrap();
    let objects = std::fs::read_to_string(support::fixture("objects.ndjson")).unwrap();
    let entries: Vec<ImportEntry> = objects
        .lines()
        .map(|l| parse_entry_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(store.import_entries(&entries).await.unwrap().len(), 4);
    let deleted = EntryKey::new("food", "deleted").unwrap();
    let gone = NewEntry::new(deleted.clone(), Some(json!({"name": "Gone"}))).unwrap();
    store.add_entry(&gone).await.unwrap();
    store.delete_entry(&deleted).await.unwrap();
    store
}

fn lines() -> Vec<String> {
    std::fs::read_to_string(support::fixture("mixed.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_mixed_fixture_comes_out_as_the_golden_file_in_one_store_call() {
    let store = fixture_store().await;
    let enricher = Enricher::new(store.clone());
    let lines = lines();
    let mut page = RawPage::new(Depth::TopLevel);
    for line in &lines {
        page.push(line.as_bytes()).unwrap();
    }
    let enriched = enricher.enrich_page(&page).await.unwrap();
    let stats = enriched.stats();
    // One cold page: users, entries and reaction users in one store round trip.
    assert_eq!(stats.store_calls, 1, "{stats:?}");
    let mut out = Vec::new();
    for i in 0..page.len() {
        enriched.write(i, &mut out);
        out.push(b'\n');
    }
    let out = String::from_utf8(out).unwrap();
    let golden = support::fixture("mixed.enriched.ndjson");
    if std::env::var_os("ENRICH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());

    // The Value paths write the same bytes.
    let docs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let spliced = enricher
        .enrich_value_page(&docs, Depth::TopLevel)
        .await
        .unwrap();
    let mut in_place = docs.clone();
    enricher
        .enrich_values(&mut in_place, Depth::TopLevel)
        .await
        .unwrap();
    let (mut spliced_out, mut in_place_out) = (Vec::new(), Vec::new());
    for (i, doc) in in_place.iter().enumerate() {
        spliced.write(i, &mut spliced_out);
        spliced_out.push(b'\n');
        serde_json::to_writer(&mut in_place_out, doc).unwrap();
        in_place_out.push(b'\n');
    }
    assert_eq!(String::from_utf8(spliced_out).unwrap(), out);
    assert_eq!(String::from_utf8(in_place_out).unwrap(), out);
}
