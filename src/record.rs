//! [`Key`] and [`Record`]: what a source is asked for, a user or a collection entry, and what
//! it answers, the one serialized form a store handed out.

use bytes::Bytes;

use crate::collection::{EntryJson, EntryKey};
use crate::error::Result;
use crate::reference::ReferenceKind;
use crate::user::{UserId, UserJson};

/// What a reference names, as a source is asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    /// A user.
    User(UserId),
    /// A collection entry.
    Entry(EntryKey),
}

impl Key {
    /// The key of a reference: `alice` names a user, `food:burger` an entry.
    pub fn parse(key: &str) -> Result<Key> {
        match ReferenceKind::of_key(key) {
            ReferenceKind::User => UserId::parse(key).map(Key::User),
            ReferenceKind::Object => EntryKey::parse(key).map(Key::Entry),
        }
    }

    /// The key as text: what the L1 caches the record under.
    pub fn as_str(&self) -> &str {
        match self {
            Key::User(id) => id.as_str(),
            Key::Entry(key) => key.as_str(),
        }
    }

    /// The kind of reference that names this key.
    pub fn kind(&self) -> ReferenceKind {
        match self {
            Key::User(_) => ReferenceKind::User,
            Key::Entry(_) => ReferenceKind::Object,
        }
    }
}

/// A stored record of any kind: what the L1 caches and a page splices in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Record {
    /// A user.
    User(UserJson),
    /// A collection entry.
    Entry(EntryJson),
}

impl Record {
    /// The JSON bytes, exactly as stored.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Record::User(user) => user.as_bytes(),
            Record::Entry(entry) => entry.as_bytes(),
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        match self {
            Record::User(user) => user.as_str(),
            Record::Entry(entry) => entry.as_str(),
        }
    }

    /// What kind of reference names this record.
    pub fn kind(&self) -> ReferenceKind {
        match self {
            Record::User(_) => ReferenceKind::User,
            Record::Entry(_) => ReferenceKind::Object,
        }
    }

    /// The user, if it is one.
    pub fn user(&self) -> Option<&UserJson> {
        match self {
            Record::User(user) => Some(user),
            Record::Entry(_) => None,
        }
    }

    /// The entry, if it is one.
    pub fn entry(&self) -> Option<&EntryJson> {
        match self {
            Record::User(_) => None,
            Record::Entry(entry) => Some(entry),
        }
    }

    /// The user, if it is one, by value.
    pub(crate) fn into_user(self) -> Option<UserJson> {
        match self {
            Record::User(user) => Some(user),
            Record::Entry(_) => None,
        }
    }

    /// The entry, if it is one, by value.
    pub(crate) fn into_entry(self) -> Option<EntryJson> {
        match self {
            Record::User(_) => None,
            Record::Entry(entry) => Some(entry),
        }
    }

    /// The same record, held in `copy`: a copy of its bytes in another buffer (so that threads
    /// using the two never contend on one reference count).
    pub(crate) fn held_in(&self, copy: Bytes) -> Record {
        debug_assert_eq!(&copy[..], self.as_bytes(), "a copy of the same record");
        match self {
            Record::User(_) => Record::User(UserJson(copy)),
            Record::Entry(_) => Record::Entry(EntryJson(copy)),
        }
    }
}

impl From<UserJson> for Record {
    fn from(user: UserJson) -> Record {
        Record::User(user)
    }
}

impl From<EntryJson> for Record {
    fn from(entry: EntryJson) -> Record {
        Record::Entry(entry)
    }
}

/// The most bytes a stored record of `kind` takes, as a store hands it out: the limit on its
/// `{"id":…,"data":…}` ([`MAX_USER_BYTES`](crate::user::MAX_USER_BYTES),
/// [`MAX_ENTRY_BYTES`](crate::collection::MAX_ENTRY_BYTES)) and what the stored form adds
/// around it (the timestamps; an entry's collection and foreign id, and its owner's id in
/// front of it), rounded up. What a resolver reserves for a record it has not read yet, and
/// the longest record read back before it is refused as corrupt.
pub(crate) const fn max_stored_len(kind: ReferenceKind) -> usize {
    match kind {
        ReferenceKind::User => UserJson::MAX_STORED_LEN,
        ReferenceKind::Object => EntryJson::MAX_STORED_LEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest user and the largest entry, ids of the longest, as stored (an entry with
    /// its owner in front), fit what a resolver reserves for them.
    #[test]
    fn the_largest_records_fit_their_reservation() {
        use crate::collection::{EntryKey, MAX_ENTRY_BYTES, NewEntry};
        use crate::id::MAX_ID_LEN;
        use crate::user::MAX_USER_BYTES;
        use crate::user::{NewUser, Timestamp};
        let long = "i".repeat(MAX_ID_LEN);
        let fill = |room: usize| serde_json::json!({ "a": "x".repeat(room) });
        let now = Timestamp::now();
        // {"id":"…","data":{"a":"…"}} is 25 bytes and the id around the filling.
        let user = NewUser::new(&long, Some(fill(MAX_USER_BYTES - 25 - MAX_ID_LEN))).unwrap();
        let user = user.to_json(now, now);
        assert!(NewUser::new(&long, Some(fill(MAX_USER_BYTES - 24 - MAX_ID_LEN))).is_err());
        assert!(user.as_bytes().len() <= max_stored_len(ReferenceKind::User));
        let key = EntryKey::new(&long, &long).unwrap();
        let entry = NewEntry::new(key.clone(), Some(fill(MAX_ENTRY_BYTES - 25 - MAX_ID_LEN)));
        let entry = entry.unwrap().to_json(now, now);
        assert!(NewEntry::new(key, Some(fill(MAX_ENTRY_BYTES - 24 - MAX_ID_LEN))).is_err());
        let owner = MAX_ID_LEN + 1;
        assert!(entry.as_bytes().len() + owner <= max_stored_len(ReferenceKind::Object));

        // Read back, they are taken; a record longer than the most one can be is corrupt, even
        // when it is otherwise well formed (white space in its data, as another writer could
        // leave).
        let padded = |text: &str, len: usize| {
            let room = len - text.len();
            text.replacen(
                r#""data":{"#,
                &format!(r#""data":{{{}"#, " ".repeat(room)),
                1,
            )
        };
        let most = max_stored_len(ReferenceKind::User);
        UserJson::from_stored(user.as_str().to_owned()).unwrap();
        UserJson::from_stored(padded(user.as_str(), most)).unwrap();
        let err = UserJson::from_stored(padded(user.as_str(), most + 1)).unwrap_err();
        assert!(err.message().contains("over the 10496 bytes"), "{err}");
        let entry = EntryJson::from_stored_as(&key_of(&long), entry.as_str().to_owned()).unwrap();
        let most = max_stored_len(ReferenceKind::Object);
        let stored = padded(entry.entry.as_str(), most);
        EntryJson::from_stored_as(&key_of(&long), stored).unwrap();
        let stored = padded(entry.entry.as_str(), most + 1);
        let err = EntryJson::from_stored_as(&key_of(&long), stored).unwrap_err();
        assert!(err.message().contains("over the 53248 bytes"), "{err}");
    }

    fn key_of(id: &str) -> crate::collection::EntryKey {
        crate::collection::EntryKey::new(id, id).unwrap()
    }

    #[test]
    fn keys_know_their_kind() {
        assert_eq!(Key::parse("food:x").unwrap().kind(), ReferenceKind::Object);
        assert_eq!(Key::parse("alice").unwrap().kind(), ReferenceKind::User);
        assert!(Key::parse("food:x:y").is_err());
    }
}
