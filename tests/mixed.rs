//! The mixed golden fixture: a page mixing `SU:` and `SO:` references (present, missing,
//! deleted, look-alikes) and reactions, enriched over the memory store and compared with
//! `fixtures/mixed.enriched.ndjson` byte for byte, on the raw path and both `Value` paths.
//!
//! Entries are stamped when they are written, so their timestamps are set to a fixed instant
//! in the output before it is compared; everything else is compared as written. Set
//! `ENRICH_UPDATE_GOLDEN=1` to rewrite the golden file (then check it by hand).

mod support;

use std::sync::Arc;

use enrich::batch::parse_import_line;
use enrich::store::{MemoryStore, SharedStore};
use enrich::{Depth, Enricher, EntryKey, NewEntry, RawPage};
use serde_json::Value;

/// What the golden file shows for every entry's `created_at` and `updated_at`.
const STAMP: &str = "2021-06-01T00:00:00.000000Z";

/// The fixture users, the fixture entries, and `food:deleted` deleted again.
async fn fixture_store() -> SharedStore {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let users = std::fs::read_to_string(support::fixture("users.ndjson")).unwrap();
    let users: Vec<_> = users
        .lines()
        .map(|l| parse_import_line(l.as_bytes()).unwrap())
        .collect();
    store.import(&users, false).await.unwrap();
    let objects = std::fs::read_to_string(support::fixture("objects.ndjson")).unwrap();
    let entries: Vec<NewEntry> = objects
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            let key = EntryKey::new(
                line["collection"].as_str().unwrap(),
                line["id"].as_str().unwrap(),
            )
            .unwrap();
            NewEntry::new(key, Some(line["data"].clone())).unwrap()
        })
        .collect();
    assert_eq!(store.upsert_entries(&entries).await.unwrap().len(), 5);
    store
        .delete_entry(&EntryKey::new("food", "deleted").unwrap())
        .await
        .unwrap();
    store
}

/// `out` with each stored entry's timestamps set to [`STAMP`].
async fn stamped(store: &SharedStore, mut out: String) -> String {
    for key in ["food:burger", "food:fries", "place:home-2", "post:1"] {
        let entry = store
            .get_entry(&EntryKey::parse(key).unwrap())
            .await
            .unwrap();
        let json = entry.as_str();
        // The tail is always `,"created_at":"…","updated_at":"…"}`.
        let head = &json[..json.rfind(r#","created_at":""#).unwrap()];
        let fixed = format!(r#"{head},"created_at":"{STAMP}","updated_at":"{STAMP}"}}"#);
        assert!(out.contains(json), "{key} is in the output");
        out = out.replace(json, &fixed);
    }
    out
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
    let out = stamped(&store, String::from_utf8(out).unwrap()).await;
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
    assert_eq!(
        stamped(&store, String::from_utf8(spliced_out).unwrap()).await,
        out
    );
    assert_eq!(
        stamped(&store, String::from_utf8(in_place_out).unwrap()).await,
        out
    );
}
