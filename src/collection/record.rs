//! [`EntryJson`]: the one serialized form of a collection entry, and the stored form that may
//! carry its owner in front of it.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

use super::EntryKey;
use crate::error::{Error, ErrorKind, Result};
use crate::id::is_valid_id;
use crate::user::{Timestamp, UserId, shorten};

/// A stored collection entry, serialized exactly as Stream returns and embeds it:
/// `{"id":…,"collection":…,"foreign_id":…,"data":{…},"created_at":…,"updated_at":…}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EntryJson(pub(crate) Bytes);

impl EntryJson {
    /// The most bytes a stored entry takes, its owner in front included:
    /// [`MAX_ENTRY_BYTES`](super::MAX_ENTRY_BYTES) for its `{"id":…,"data":…}` and what the
    /// stored form adds (collection, foreign id, timestamps, the owner's id), rounded up. A
    /// longer record is corrupt, refused before its shape is read.
    pub(crate) const MAX_STORED_LEN: usize = super::MAX_ENTRY_BYTES + 2048;

    const CREATED_KEY: &'static str = r#","created_at":""#;
    const UPDATED_KEY: &'static str = r#"","updated_at":""#;
    /// The fixed-length end of every entry: both timestamps and the closing `"}`.
    pub(crate) const TAIL_LEN: usize =
        EntryJson::CREATED_KEY.len() + EntryJson::UPDATED_KEY.len() + 2 * Timestamp::LEN + 2;

    /// The entry `key` with `data` and these timestamps, checked as a written entry is.
    pub fn new(
        key: &EntryKey,
        data: Value,
        created_at: Timestamp,
        updated_at: Timestamp,
    ) -> Result<EntryJson> {
        Ok(super::NewEntry::new(key.clone(), Some(data))?.to_json(created_at, updated_at))
    }

    pub(super) fn push_tail(out: &mut String, created_at: Timestamp, updated_at: Timestamp) {
        out.push_str(EntryJson::CREATED_KEY);
        out.push_str(created_at.as_str());
        out.push_str(EntryJson::UPDATED_KEY);
        out.push_str(updated_at.as_str());
        out.push_str("\"}");
    }

    /// Reads what a store holds under `key`'s name: the entry, maybe preceded by its owner's id
    /// and a newline (`alice\n{"id":…}`). The entry is checked whole, as a user record is: the
    /// shape above, the key it was read under, a data object, and real timestamps.
    pub fn from_stored_as(key: &EntryKey, bytes: impl Into<Bytes>) -> Result<StoredEntry> {
        let bytes = bytes.into();
        if bytes.len() > EntryJson::MAX_STORED_LEN {
            let why = format!(
                "it is {} bytes, over the {} bytes an entry record can be",
                bytes.len(),
                EntryJson::MAX_STORED_LEN
            );
            return Err(corrupt(&why, &bytes));
        }
        let (owner, at) = match bytes.iter().position(|&b| b == b'\n') {
            Some(newline) if bytes.first() != Some(&b'{') => {
                let owner = &bytes[..newline];
                if !is_valid_id(owner) {
                    return Err(corrupt("the owner is not a valid user id", &bytes));
                }
                let owner = std::str::from_utf8(owner).expect("ids are ASCII");
                (Some(UserId::parse(owner)?), newline + 1)
            }
            _ => (None, 0),
        };
        let entry = bytes.slice(at..);
        if let Err(why) = EntryJson::shape(&entry, key) {
            return Err(corrupt(&why, &bytes));
        }
        Ok(StoredEntry {
            entry: EntryJson(entry),
            owner,
        })
    }

    /// Checks a stored entry's shape piece by piece against `key`; says what is wrong.
    fn shape(bytes: &[u8], key: &EntryKey) -> std::result::Result<(), String> {
        let mut head = String::with_capacity(64 + 2 * key.as_str().len());
        head.push_str(r#"{"id":""#);
        head.push_str(key.id());
        head.push_str(r#"","collection":""#);
        head.push_str(key.collection());
        head.push_str(r#"","foreign_id":""#);
        head.push_str(key.as_str());
        head.push_str(r#"","data":"#);
        let Some(rest) = bytes.strip_prefix(head.as_bytes()) else {
            return Err(format!("it is not the record of entry {key}"));
        };
        let Some(data_len) = rest.len().checked_sub(EntryJson::TAIL_LEN) else {
            return Err("it is cut short".into());
        };
        let (data, tail) = rest.split_at(data_len);
        let created = EntryJson::CREATED_KEY.len();
        let updated = created + Timestamp::LEN + EntryJson::UPDATED_KEY.len();
        if !tail.starts_with(EntryJson::CREATED_KEY.as_bytes())
            || !tail[created + Timestamp::LEN..].starts_with(EntryJson::UPDATED_KEY.as_bytes())
            || !tail.ends_with(b"\"}")
        {
            return Err("it does not end with created_at and updated_at".into());
        }
        if !Timestamp::is_exact(&tail[created..created + Timestamp::LEN])
            || !Timestamp::is_exact(&tail[updated..updated + Timestamp::LEN])
        {
            return Err("a timestamp is not one".into());
        }
        if data.first() != Some(&b'{') {
            return Err("data is not an object".into());
        }
        crate::scan::check_object(data, 1)
            .map_err(|e| format!("data is not a JSON object: {}", e.message()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Checked in `from_stored_as`, or built from `String`s.
        std::str::from_utf8(&self.0).expect("entry JSON is UTF-8")
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// When the entry was created: the text of `created_at`.
    pub fn created_at(&self) -> &str {
        let start = self.0.len() - EntryJson::TAIL_LEN + EntryJson::CREATED_KEY.len();
        &self.as_str()[start..start + Timestamp::LEN]
    }

    /// The entry as a `Value`.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).expect("entry JSON is valid")
    }

    /// What a store writes: the owner's id and a newline, if there is an owner, then the entry.
    pub fn to_stored(&self, owner: Option<&UserId>) -> Bytes {
        match owner {
            None => self.0.clone(),
            Some(owner) => {
                let mut out = Vec::with_capacity(owner.as_str().len() + 1 + self.0.len());
                out.extend_from_slice(owner.as_str().as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&self.0);
                Bytes::from(out)
            }
        }
    }
}

fn corrupt(why: &str, bytes: &[u8]) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "stored entry record is corrupt ({why}): {:?}",
            shorten(&String::from_utf8_lossy(bytes))
        ),
    )
}

impl fmt::Debug for EntryJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EntryJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry as a store holds it: the entry and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The entry, as every read hands it out.
    pub entry: EntryJson,
    /// The user it belongs to, if it was written with one.
    pub owner: Option<UserId>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::NewEntry;
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn written_in_streams_order_and_read_back() {
        let key = EntryKey::new("food", "burger").unwrap();
        let entry = NewEntry::new(key.clone(), Some(json!({"name": "Burger"}))).unwrap();
        let t = at("2018-12-20T16:07:14.726306Z");
        let json = entry.to_json(t, t);
        assert_eq!(
            json.as_str(),
            r#"{"id":"burger","collection":"food","foreign_id":"food:burger","data":{"name":"Burger"},"created_at":"2018-12-20T16:07:14.726306Z","updated_at":"2018-12-20T16:07:14.726306Z"}"#
        );
        assert_eq!(json.created_at(), "2018-12-20T16:07:14.726306Z");
        let back = EntryJson::from_stored_as(&key, json.to_stored(None)).unwrap();
        assert_eq!(back.entry, json);
        assert_eq!(back.owner, None);
        let alice = UserId::parse("alice").unwrap();
        let back = EntryJson::from_stored_as(&key, json.to_stored(Some(&alice))).unwrap();
        assert_eq!(back.entry, json);
        assert_eq!(back.owner, Some(alice));
        // The head an update writes in front of a kept created_at.
        assert!(json.as_str().starts_with(&entry.head()));
    }

    #[test]
    fn corrupt_records_are_refused() {
        let key = EntryKey::new("food", "burger").unwrap();
        let good = NewEntry::new(key.clone(), Some(json!({"a": 1})))
            .unwrap()
            .to_json(Timestamp::now(), Timestamp::now());
        let other = EntryKey::new("food", "fries").unwrap();
        assert!(EntryJson::from_stored_as(&other, good.to_stored(None)).is_err());
        let text = good.as_str();
        for bad in [
            &text[..text.len() - 1],
            &text.replacen("\"a\":1", "\"a\":", 1),
            &text.replacen(".", "é", 1),
            &format!("bad id\n{text}"),
            "",
            "{}",
        ] {
            assert!(
                EntryJson::from_stored_as(&key, bad.as_bytes().to_vec()).is_err(),
                "{bad:?}"
            );
        }
    }
}
