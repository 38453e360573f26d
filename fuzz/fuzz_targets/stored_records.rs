//! Any bytes, as a record a store hands back: a user record (`UserJson::from_stored` and
//! `from_stored_as`) or a collection entry (`EntryJson::from_stored_as`). A store is outside
//! the process (Redis may hold anything), so a record is checked whole as it comes in; this
//! target fails when
//!
//! - anything panics, on a record refused or taken;
//! - a refusal is not one line;
//! - a record is taken that is not usable: its text is not the bytes stored, `to_value`,
//!   `parse`, `id` or `created_at` disagree (or panic), its timestamps are not real ones in
//!   Stream's form, it is not exactly the keys this crate writes, or it is taken under another
//!   id or key than its own;
//! - an entry's owner does not go back as it came (`to_stored`, then `from_stored_as`);
//! - a document referencing a taken record, enriched by the raw-bytes path or the `Value`
//!   path, is not valid JSON or does not hold the record where the reference was.
//!
//! The first input byte picks the kind: bit 0 a user or an entry; bit 1 the bytes whole, or
//! only the data of a record framed as this crate writes it (so that the fuzzer spends its time
//! on the data, the part a record holds most of); bit 2 an owner in front of a framed entry.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use enrich::collection::StoredEntry;
use enrich::{
    CacheConfig, Depth, Enricher, EntryJson, EntryKey, RawPage, Result, Timestamp, UserId,
    UserJson, UserSource, async_trait,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const AT: &str = "2021-04-13T22:53:19.670051Z";
const LATER: &str = "2021-05-01T08:00:00.000001Z";

/// A source holding the one record of the input at hand.
#[derive(Default, Debug)]
struct One {
    user: Mutex<Option<UserJson>>,
    entry: Mutex<Option<(EntryKey, EntryJson)>>,
}

#[async_trait]
impl UserSource for One {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        let user = self.user.lock().unwrap().clone();
        Ok(ids
            .iter()
            .map(|id| user.clone().filter(|u| u.id() == id.as_str()))
            .collect())
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        let entry = self.entry.lock().unwrap().clone();
        keys.iter()
            .map(|key| {
                Ok(entry
                    .as_ref()
                    .filter(|(k, _)| k == key)
                    .map(|(_, e)| e.clone()))
            })
            .collect()
    }

    fn describe(&self) -> String {
        "fuzz:".into()
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    source: Arc<One>,
    enricher: Enricher<dyn UserSource>,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = Arc::new(One::default());
    // No L1: every input's record is read from the source, never a previous one's.
    let enricher = Enricher::source_builder(source.clone() as Arc<dyn UserSource>)
        .cache(CacheConfig::disabled())
        .build();
    Harness {
        rt,
        source,
        enricher,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let framed = mode & 2 != 0;
    if mode & 1 == 0 {
        let bytes = if framed {
            let mut out =
                format!(r#"{{"created_at":"{AT}","updated_at":"{LATER}","id":"u0","data":"#)
                    .into_bytes();
            out.extend_from_slice(rest);
            out.push(b'}');
            out
        } else {
            rest.to_vec()
        };
        check_user(&bytes);
    } else {
        let key = EntryKey::new("food", "burger").unwrap();
        let bytes = if framed {
            let mut out = Vec::new();
            if mode & 4 != 0 {
                out.extend_from_slice(b"alice\n");
            }
            out.extend_from_slice(
                br#"{"id":"burger","collection":"food","foreign_id":"food:burger","data":"#,
            );
            out.extend_from_slice(rest);
            out.extend_from_slice(
                format!(r#","created_at":"{AT}","updated_at":"{LATER}"}}"#).as_bytes(),
            );
            out
        } else {
            rest.to_vec()
        };
        check_entry(&key, &bytes);
    }
});

fn check_user(bytes: &[u8]) {
    let user = match UserJson::from_stored(bytes.to_vec()) {
        Ok(user) => user,
        Err(err) => {
            assert!(!err.to_string().contains('\n'), "{err}");
            // Under an id, a record refused as it is is refused as well.
            let u0 = UserId::parse("u0").unwrap();
            assert!(UserJson::from_stored_as(&u0, bytes.to_vec()).is_err());
            return;
        }
    };
    assert_eq!(user.as_bytes(), bytes);
    assert_eq!(user.as_str().as_bytes(), bytes);
    let id = UserId::parse(user.id()).expect("a taken record's id is valid");
    assert_eq!(
        UserJson::from_stored_as(&id, bytes.to_vec()).ok().as_ref(),
        Some(&user)
    );
    let other = UserId::parse(if id.as_str() == "u0" { "u1" } else { "u0" }).unwrap();
    assert!(UserJson::from_stored_as(&other, bytes.to_vec()).is_err());

    let value = user.to_value();
    let object = value.as_object().expect("a record is an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["created_at", "data", "id", "updated_at"]);
    assert_eq!(object["id"], user.id());
    assert_eq!(object["created_at"], user.created_at());
    assert!(object["data"].is_object());
    let parsed = user.parse().expect("a taken record parses");
    assert_eq!(parsed.id, user.id());
    assert_eq!(parsed.created_at, user.created_at());
    assert_eq!(Value::Object(parsed.data.clone()), object["data"]);
    assert_eq!(json!(parsed.updated_at), object["updated_at"]);
    for at in [&parsed.created_at, &parsed.updated_at] {
        let stamp = Timestamp::parse(at).expect("a taken record's timestamp is real");
        assert_eq!(stamp.as_str(), at, "a taken timestamp is in Stream's form");
    }

    // An update keeps created_at and writes a tail of its own: still a record.
    let tail = enrich::NewUser::with_id(id.clone(), Some(json!({"k": 1})))
        .unwrap()
        .tail(Timestamp::parse(LATER).unwrap());
    let updated = user.replace_tail(&tail);
    assert_eq!(
        UserJson::from_stored_as(&id, updated.bytes().clone())
            .ok()
            .as_ref(),
        Some(&updated)
    );

    let h = &*HARNESS;
    *h.source.user.lock().unwrap() = Some(user.clone());
    let doc = json!({"actor": format!("SU:{id}"), "to": [format!("SU:{id}")]});
    let expected = json!({"actor": value, "to": [value]});
    enriched_as(&doc, &expected, Depth::Deep);
    *h.source.user.lock().unwrap() = None;
}

fn check_entry(key: &EntryKey, bytes: &[u8]) {
    let stored = match EntryJson::from_stored_as(key, bytes.to_vec()) {
        Ok(stored) => stored,
        Err(err) => {
            assert!(!err.to_string().contains('\n'), "{err}");
            return;
        }
    };
    let StoredEntry { entry, owner } = &stored;
    assert!(bytes.ends_with(entry.as_bytes()));
    assert_eq!(entry.as_str().as_bytes(), entry.as_bytes());
    // What came before the entry is its owner and a newline, and goes back the same.
    assert_eq!(entry.to_stored(owner.as_ref()).as_ref(), bytes);
    let other = EntryKey::new("food", "fries").unwrap();
    assert!(EntryJson::from_stored_as(&other, bytes.to_vec()).is_err());

    let value = entry.to_value();
    let object = value.as_object().expect("an entry is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "collection",
            "created_at",
            "data",
            "foreign_id",
            "id",
            "updated_at"
        ]
    );
    assert_eq!(object["foreign_id"], key.as_str());
    assert_eq!(object["id"], key.id());
    assert_eq!(object["collection"], key.collection());
    assert_eq!(object["created_at"], entry.created_at());
    assert!(object["data"].is_object());
    for at in ["created_at", "updated_at"] {
        let at = object[at].as_str().expect("a timestamp is a string");
        let stamp = Timestamp::parse(at).expect("a taken entry's timestamp is real");
        assert_eq!(stamp.as_str(), at, "a taken timestamp is in Stream's form");
    }

    let h = &*HARNESS;
    *h.source.entry.lock().unwrap() = Some((key.clone(), entry.clone()));
    let doc = json!({"object": format!("SO:{key}"), "list": [format!("SO:{key}")]});
    let expected = json!({"object": value, "list": [value]});
    enriched_as(&doc, &expected, Depth::Deep);
    *h.source.entry.lock().unwrap() = None;
}

/// Enriches `doc` by the raw-bytes path and by the `Value` path: both must be `expected`.
fn enriched_as(doc: &Value, expected: &Value, depth: Depth) {
    let h = &*HARNESS;
    h.rt.block_on(async {
        let mut page = RawPage::new(depth);
        page.push(doc.to_string().as_bytes()).unwrap();
        let enriched = h.enricher.enrich_page(&page).await.unwrap();
        let mut out = Vec::new();
        enriched.write(0, &mut out);
        // A record's data may nest as deep as a document may, and the reference puts it a
        // level or two further down: past serde_json's default limit, which is no rule of JSON.
        let mut reader = serde_json::Deserializer::from_slice(&out);
        reader.disable_recursion_limit();
        let raw = serde::Deserialize::deserialize(&mut reader).and_then(|raw: Value| {
            reader.end()?;
            Ok(raw)
        });
        let raw = raw.unwrap_or_else(|e| {
            panic!(
                "enriched output is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        assert_eq!(&raw, expected, "raw-bytes path");
        let mut docs = vec![doc.clone()];
        h.enricher.enrich_values(&mut docs, depth).await.unwrap();
        assert_eq!(&docs[0], expected, "Value path");
    });
}
