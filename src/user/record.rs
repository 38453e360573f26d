//! [`UserJson`]: the one serialized form of a user, written once and handed out as it is by
//! every store, cache and enrichment; a record read back from a store is checked whole before
//! it is trusted.

use std::fmt;

use bytes::Bytes;

use serde_json::Value;

use super::{Timestamp, User, UserId, shorten};
use crate::error::{Error, ErrorKind, Result};
use crate::id::is_valid_id;

/// A stored user, serialized exactly as Stream returns and embeds it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserJson(pub(crate) Bytes);

impl UserJson {
    const PREFIX: &'static [u8] = br#"{"created_at":""#;
    const CREATED_AT: std::ops::Range<usize> = 15..15 + Timestamp::LEN;
    /// Where the part after `created_at`'s value starts.
    pub(crate) const TAIL_START: usize = 15 + Timestamp::LEN;
    const UPDATED_KEY: &'static [u8] = br#"","updated_at":""#;
    const UPDATED_AT: std::ops::Range<usize> = {
        let start = UserJson::TAIL_START + UserJson::UPDATED_KEY.len();
        start..start + Timestamp::LEN
    };
    const ID_KEY: &'static [u8] = br#"","id":""#;
    const ID_START: usize = UserJson::UPDATED_AT.end + UserJson::ID_KEY.len();
    const DATA_KEY: &'static [u8] = br#"","data":"#;
    /// The most bytes a stored user takes: [`MAX_USER_BYTES`](super::MAX_USER_BYTES) for its
    /// `{"id":…,"data":…}` and the two timestamps around it, rounded up. A longer record is
    /// corrupt, refused before its shape is read.
    pub(crate) const MAX_STORED_LEN: usize = super::MAX_USER_BYTES + 256;

    /// The user `id` with `data` and these timestamps, checked as a written user is (`data` an
    /// object, or null for `{}`; within [`MAX_USER_BYTES`](super::MAX_USER_BYTES)): what a
    /// [`UserSource`](crate::UserSource) over a service's own rows returns. The same as
    /// [`NewUser::to_json`](super::NewUser::to_json).
    pub fn new(
        id: &UserId,
        data: Value,
        created_at: Timestamp,
        updated_at: Timestamp,
    ) -> Result<UserJson> {
        Ok(super::NewUser::with_id(id.clone(), Some(data))?.to_json(created_at, updated_at))
    }

    /// Wraps bytes read back from a store, checking that they are exactly what this crate
    /// writes: `{"created_at":"…","updated_at":"…","id":"…","data":{…}}`, both timestamps in
    /// [`Timestamp`]'s form and real, a valid id, the data a JSON object (in the grammar the
    /// raw-bytes path takes, nested no deeper than a document may be), and nothing after it.
    pub fn from_stored(bytes: impl Into<Bytes>) -> Result<UserJson> {
        UserJson::checked(bytes.into(), None)
    }

    /// Like [`UserJson::from_stored`], for a record read under `id`'s key: it must be the
    /// record of that user, not one copied there from another key.
    pub fn from_stored_as(id: &UserId, bytes: impl Into<Bytes>) -> Result<UserJson> {
        UserJson::checked(bytes.into(), Some(id))
    }

    fn checked(bytes: Bytes, expected: Option<&UserId>) -> Result<UserJson> {
        // Checked whole, once, as it comes in: the bytes are then spliced into output as they
        // are, and read at fixed places (`created_at`, an update's kept prefix), so a record
        // that is not exactly our shape must never get further than this.
        let defect = match UserJson::shape(&bytes) {
            Ok(id) => match expected {
                Some(expected) if id != expected.as_str().as_bytes() => {
                    Some(format!("it holds user {:?}", String::from_utf8_lossy(id)))
                }
                _ => None,
            },
            Err(why) => Some(why),
        };
        match defect {
            None => Ok(UserJson(bytes)),
            Some(why) => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "stored user record is corrupt ({why}): {:?}",
                    shorten(&String::from_utf8_lossy(&bytes))
                ),
            )),
        }
    }

    /// Checks a stored record's shape piece by piece; returns its id, or what is wrong.
    fn shape(bytes: &[u8]) -> std::result::Result<&[u8], String> {
        if bytes.len() > UserJson::MAX_STORED_LEN {
            return Err(format!(
                "it is {} bytes, over the {} bytes a user record can be",
                bytes.len(),
                UserJson::MAX_STORED_LEN
            ));
        }
        let field = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or_default();
        if !bytes.starts_with(UserJson::PREFIX) {
            return Err("it does not start with created_at".into());
        }
        if !Timestamp::is_exact(field(UserJson::CREATED_AT)) {
            return Err("created_at is not a timestamp".into());
        }
        if !bytes[UserJson::TAIL_START..].starts_with(UserJson::UPDATED_KEY) {
            return Err("updated_at does not follow created_at".into());
        }
        if !Timestamp::is_exact(field(UserJson::UPDATED_AT)) {
            return Err("updated_at is not a timestamp".into());
        }
        if !bytes[UserJson::UPDATED_AT.end..].starts_with(UserJson::ID_KEY) {
            return Err("id does not follow updated_at".into());
        }
        let rest = &bytes[UserJson::ID_START..];
        let id_len = rest
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .unwrap_or(rest.len());
        let (id, rest) = rest.split_at(id_len);
        if !is_valid_id(id) {
            return Err("the id is not a valid user id".into());
        }
        let Some(data) = rest.strip_prefix(UserJson::DATA_KEY) else {
            return Err("data does not follow the id".into());
        };
        // The data ends at the record's last byte, the `}` that closes the record.
        let data = match data.split_last() {
            Some((b'}', data)) if data.first() == Some(&b'{') && data.last() == Some(&b'}') => data,
            _ => return Err("data is not an object closing the record".into()),
        };
        // One level is the record's own object.
        crate::scan::check_object(data, 1)
            .map_err(|e| format!("data is not a JSON object: {}", e.message()))?;
        Ok(id)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Checked in `from_stored`, or built from `String`s.
        std::str::from_utf8(&self.0).expect("user JSON is UTF-8")
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON bytes as a cheaply cloned buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The user's id, read straight from its place in the record.
    pub fn id(&self) -> &str {
        let rest = &self.as_str()[UserJson::ID_START..];
        // Ids are [A-Za-z0-9_-]: the id ends at its closing quote.
        &rest[..rest.find('"').expect("a record's id is quoted")]
    }

    /// The `created_at` timestamp, read straight from its fixed place (every record is built
    /// by us or checked by [`UserJson::from_stored`], so that place holds ASCII digits).
    pub fn created_at(&self) -> &str {
        &self.as_str()[UserJson::CREATED_AT]
    }

    /// This user with its `created_at` kept and everything after it replaced: an update.
    pub fn replace_tail(&self, tail: &str) -> UserJson {
        let mut out = Vec::with_capacity(UserJson::TAIL_START + tail.len());
        out.extend_from_slice(&self.0[..UserJson::TAIL_START]);
        out.extend_from_slice(tail.as_bytes());
        UserJson(Bytes::from(out))
    }

    /// Parses the user into its fields.
    pub fn parse(&self) -> Result<User> {
        serde_json::from_slice(&self.0).map_err(|e| {
            Error::new(ErrorKind::Internal, "stored user record is not valid JSON").with_cause(e)
        })
    }

    /// The user as a JSON value, keys in Stream's order.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).expect("stored user records are valid JSON")
    }
}

impl fmt::Debug for UserJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for UserJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
