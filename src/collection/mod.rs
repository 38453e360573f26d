//! Collection entries: the objects an app keeps in named collections and references from
//! activities as `SO:<collection>:<id>`.
//!
//! An entry is stored, cached and embedded as one byte string, [`EntryJson`], with Stream's key
//! order: `{"id":…,"collection":…,"foreign_id":…,"data":…,"created_at":…,"updated_at":…}`. As
//! for users, every backend hands those bytes out as they were written.
//!
//! An entry is found by its [`EntryKey`], `<collection>:<id>`: Stream's `foreign_id`, and the
//! key the L1 caches it under. Collection names and entry ids follow the user-id rule (1 to 255
//! of `[A-Za-z0-9_-]`), so the key never holds a second `:` and never equals a user id.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

mod record;

pub use self::record::{EntryJson, StoredEntry};
use crate::error::{Error, Result};
use crate::id::{MAX_ID_LEN, is_valid_id};
use crate::user::{Timestamp, UserId, json_type, shorten};

/// The largest entry: the compact JSON of `{"id":…,"data":…}` may take this many bytes
/// (Stream's documented 50 kB).
pub const MAX_ENTRY_BYTES: usize = 51_200;

/// The most entries one batch call (upsert, select, delete many) may name.
pub const MAX_BATCH_ENTRIES: usize = 1_000;

/// Names what is wrong with `text` as a collection name or entry id (`what`), or `None`.
fn invalid_name(what: &str, text: &str) -> Option<Error> {
    if is_valid_id(text.as_bytes()) {
        return None;
    }
    let reason = if text.is_empty() {
        "must not be empty".to_string()
    } else if text.len() > MAX_ID_LEN {
        format!("is {} bytes long, the limit is {MAX_ID_LEN}", text.len())
    } else {
        let bad = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            .unwrap_or(' ');
        format!("contains {bad:?}; only A-Z, a-z, 0-9, '-' and '_' are allowed")
    };
    Some(Error::invalid(format!(
        "invalid {what} {:?}: {reason}",
        shorten(text)
    )))
}

/// Checks a collection name alone (an upsert's group may have no entry to check it with),
/// naming what is wrong.
#[cfg(feature = "serve")]
pub(crate) fn check_collection_name(name: &str) -> Result<()> {
    invalid_name("collection name", name).map_or(Ok(()), Err)
}

/// A valid collection name and entry id: `<collection>:<id>`, Stream's `foreign_id`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// `<collection>:<id>`.
    key: Box<str>,
    /// Where the id starts (after the `:`).
    id_at: u16,
}

impl EntryKey {
    /// Checks the collection name and the id, naming what is wrong.
    pub fn new(collection: &str, id: &str) -> Result<EntryKey> {
        if let Some(err) = invalid_name("collection name", collection) {
            return Err(err);
        }
        if let Some(err) = invalid_name("entry id", id) {
            return Err(err);
        }
        Ok(EntryKey::unchecked(collection, id))
    }

    /// Splits and checks a `foreign_id`, `<collection>:<id>`.
    pub fn parse(foreign_id: &str) -> Result<EntryKey> {
        match foreign_id.split_once(':') {
            Some((collection, id)) => EntryKey::new(collection, id),
            None => Err(Error::invalid(format!(
                "invalid foreign id {:?}: expected <collection>:<id>",
                shorten(foreign_id)
            ))),
        }
    }

    /// The key of a `foreign_id` already known to be two valid parts.
    pub(crate) fn unchecked(collection: &str, id: &str) -> EntryKey {
        let mut key = String::with_capacity(collection.len() + 1 + id.len());
        key.push_str(collection);
        key.push(':');
        key.push_str(id);
        EntryKey {
            key: key.into(),
            id_at: u16::try_from(collection.len() + 1).expect("a name is at most 255 bytes"),
        }
    }

    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.key[..usize::from(self.id_at) - 1]
    }

    /// The entry's id within its collection.
    pub fn id(&self) -> &str {
        &self.key[usize::from(self.id_at)..]
    }

    /// `<collection>:<id>`: Stream's `foreign_id`, and the key the L1 caches the entry under.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.key, f)
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// A fresh entry id, for an add that names none: a random UUID, version 4, lowercase (36
/// characters, as Stream's).
pub fn generate_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An entry about to be written: its key, its data (a non-empty JSON object, encoded once and
/// checked against [`MAX_ENTRY_BYTES`]) and maybe its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct NewEntry {
    key: EntryKey,
    data: String,
    owner: Option<UserId>,
}

impl NewEntry {
    /// Validates the data and the size of the entry `key`.
    ///
    /// `data` must be a JSON object with at least one key (Stream refuses a string and `{}`;
    /// a missing or `null` data is refused too).
    pub fn new(key: EntryKey, data: Option<Value>) -> Result<NewEntry> {
        let data = match data {
            Some(Value::Object(map)) if !map.is_empty() => map,
            Some(Value::Object(_)) => {
                return Err(Error::invalid(format!(
                    "entry {key}: data must not be empty"
                )));
            }
            None | Some(Value::Null) => {
                return Err(Error::invalid(format!("entry {key}: data is missing")));
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "entry {key}: data must be a JSON object, got {}",
                    json_type(&other)
                )));
            }
        };
        let data = serde_json::to_string(&data).expect("a JSON map always serializes");
        if crate::scan::check_object(data.as_bytes(), 1).is_err() {
            return Err(Error::invalid(format!(
                "entry {key}: data is nested too deep; an entry's data may nest at most {} levels",
                crate::shape::MAX_DEPTH - 1
            )));
        }
        // The compact encoding of {"id":"…","data":…}; ids never need escaping.
        let size = r#"{"id":"","data":}"#.len() + key.id().len() + data.len();
        if size > MAX_ENTRY_BYTES {
            return Err(Error::invalid(format!(
                "entry {key} is {size} bytes, over the limit of {MAX_ENTRY_BYTES} bytes"
            )));
        }
        Ok(NewEntry {
            key,
            data,
            owner: None,
        })
    }

    /// The user the entry belongs to: kept beside the entry (never in it) for the rule that
    /// only its owner may change or delete it through a user token.
    pub fn owned_by(mut self, owner: Option<UserId>) -> NewEntry {
        self.owner = owner;
        self
    }

    /// The entry's key.
    pub fn key(&self) -> &EntryKey {
        &self.key
    }

    /// The data as compact JSON text.
    pub fn data_json(&self) -> &str {
        &self.data
    }

    /// The entry's owner, if any.
    pub fn owner(&self) -> Option<&UserId> {
        self.owner.as_ref()
    }

    /// The serialized entry with these timestamps.
    pub fn to_json(&self, created_at: Timestamp, updated_at: Timestamp) -> EntryJson {
        let mut out = String::with_capacity(self.head_len() + EntryJson::TAIL_LEN);
        self.write_head(&mut out);
        EntryJson::push_tail(&mut out, created_at, updated_at);
        EntryJson(Bytes::from(out))
    }

    /// Everything before `,"created_at"`: what an update writes in front of the `created_at` it
    /// keeps.
    pub fn head(&self) -> String {
        let mut out = String::with_capacity(self.head_len());
        self.write_head(&mut out);
        out
    }

    fn head_len(&self) -> usize {
        r#"{"id":"","collection":"","foreign_id":"","data":"#.len()
            + 2 * self.key.as_str().len()
            + self.data.len()
    }

    fn write_head(&self, out: &mut String) {
        // Names and ids are [A-Za-z0-9_-]: nothing to escape.
        out.push_str(r#"{"id":""#);
        out.push_str(self.key.id());
        out.push_str(r#"","collection":""#);
        out.push_str(self.key.collection());
        out.push_str(r#"","foreign_id":""#);
        out.push_str(self.key.as_str());
        out.push_str(r#"","data":"#);
        out.push_str(&self.data);
    }
}

impl fmt::Debug for NewEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEntry")
            .field("key", &self.key)
            .field("data", &self.data)
            .field("owner", &self.owner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_split_and_refuse_look_alikes() {
        let key = EntryKey::parse("food:burger").unwrap();
        assert_eq!((key.collection(), key.id()), ("food", "burger"));
        assert_eq!(key.as_str(), "food:burger");
        for bad in [
            "food",
            ":x",
            "food:",
            "food:x:y",
            "bad name:x",
            "food:bad id",
            "",
        ] {
            assert!(EntryKey::parse(bad).is_err(), "{bad:?}");
        }
        let err = EntryKey::new("food", "!abcdee!").unwrap_err();
        assert!(err.to_string().contains("entry id"), "{err}");
    }

    #[test]
    fn data_rules() {
        let key = EntryKey::new("food", "x").unwrap();
        assert!(NewEntry::new(key.clone(), Some(json!("text"))).is_err());
        assert!(NewEntry::new(key.clone(), Some(json!({}))).is_err());
        assert!(NewEntry::new(key.clone(), None).is_err());
        assert!(NewEntry::new(key.clone(), Some(Value::Null)).is_err());
        let big = "x".repeat(MAX_ENTRY_BYTES);
        let err = NewEntry::new(key.clone(), Some(json!({ "a": big }))).unwrap_err();
        assert!(err.to_string().contains("51200"), "{err}");
        // Exactly at the limit: {"id":"x","data":{"a":"…"}}.
        let fits = "x".repeat(MAX_ENTRY_BYTES - r#"{"id":"x","data":{"a":""}}"#.len());
        assert!(NewEntry::new(key, Some(json!({ "a": fits }))).is_ok());
    }

    #[test]
    fn generated_ids_are_uuids() {
        let id = generate_id();
        assert_eq!(id.len(), 36);
        assert!(is_valid_id(id.as_bytes()));
        assert_eq!(id, id.to_lowercase());
    }
}
