//! [`Record`]: what a reference resolves to, a user or a collection entry, as the one
//! serialized form a store handed out.

use bytes::Bytes;

use crate::collection::EntryJson;
use crate::reference::ReferenceKind;
use crate::user::UserJson;

/// A stored record of any kind: what the L1 caches and a page splices in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
