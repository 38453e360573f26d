//! The user model: ids, data, timestamps, the size limit, and the one serialized form.
//!
//! A user is stored, cached and embedded as one byte string, [`UserJson`], with Stream's key
//! order: `{"created_at":…,"updated_at":…,"id":…,"data":…}`. Every backend hands those bytes out
//! as they were written, so a read and an enrichment never re-encode a user, and what
//! `enrich users get` prints is byte for byte what enrichment embeds.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::error::{Error, ErrorKind, Result};

/// The longest id Stream accepts.
pub const MAX_ID_LEN: usize = 255;

/// The largest user: the compact JSON of `{"id":…,"data":…}` may take this many bytes.
pub const MAX_USER_BYTES: usize = 10_240;

/// True when `id` is a well-formed user id: 1 to 255 of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A hash of an id, the same for every page and memo of this process (so a page's hashes serve
/// its lookups elsewhere) and seeded at random per process (ids come from outside: a fixed
/// seed could be attacked with colliding ids).
pub(crate) fn id_hash(id: &str) -> u64 {
    static STATE: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(foldhash::fast::RandomState::default);
    std::hash::BuildHasher::hash_one(&*STATE, id)
}

/// A validated user id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Box<str>);

impl UserId {
    /// Checks `id` and names what is wrong with it.
    pub fn parse(id: &str) -> Result<UserId> {
        if is_valid_id(id.as_bytes()) {
            return Ok(UserId(id.into()));
        }
        let shown = shorten(id);
        let reason = if id.is_empty() {
            "must not be empty".to_string()
        } else if id.len() > MAX_ID_LEN {
            format!("is {} bytes long, the limit is {MAX_ID_LEN}", id.len())
        } else {
            let bad = id
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
                .unwrap_or(' ');
            format!("contains {bad:?}; only A-Z, a-z, 0-9, '-' and '_' are allowed")
        };
        Err(Error::invalid(format!(
            "invalid user id {shown:?}: {reason}"
        )))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Keeps error messages one line long whatever the input.
pub(crate) fn shorten(text: &str) -> String {
    const KEEP: usize = 64;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A moment in Stream's format: RFC 3339, UTC, six fractional digits, `Z`. Always 27 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp([u8; Timestamp::LEN]);

const TIMESTAMP_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

impl Timestamp {
    /// The length of every timestamp, `2021-04-13T22:53:19.670051Z`.
    pub const LEN: usize = 27;

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(OffsetDateTime::now_utc()).expect("the clock is within year 9999")
    }

    /// Reads any RFC 3339 time (any offset, any precision) and normalizes it to UTC with six
    /// fractional digits, as a migration from another store needs.
    pub fn parse(text: &str) -> Result<Timestamp> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            Error::invalid(format!(
                "invalid timestamp {:?}: {e}; expected RFC 3339 such as 2021-04-13T22:53:19.670051Z",
                shorten(text)
            ))
        })?;
        Timestamp::from_datetime(parsed)
            .ok_or_else(|| Error::invalid(format!("timestamp {text:?} is out of range")))
    }

    fn from_datetime(at: OffsetDateTime) -> Option<Timestamp> {
        let utc = at.to_offset(time::UtcOffset::UTC);
        if !(0..=9999).contains(&utc.year()) {
            return None;
        }
        let text = utc.format(TIMESTAMP_FORMAT).ok()?;
        let bytes: [u8; Timestamp::LEN] = text.as_bytes().try_into().ok()?;
        Some(Timestamp(bytes))
    }

    /// The timestamp as text.
    pub fn as_str(&self) -> &str {
        // Built only from the ASCII output of `format` above.
        std::str::from_utf8(&self.0).expect("timestamps are ASCII")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks that `data` is a JSON object (or null/absent, which mean `{}`) and returns it.
///
/// An empty array also means `{}`: PHP encodes an empty map, its usual "no data", as `[]`, and
/// Stream's PHP client sends it so. A non-empty array is refused like any other non-object.
pub fn data_from_value(data: Option<Value>) -> Result<Map<String, Value>> {
    match data {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Array(list)) if list.is_empty() => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(Error::invalid(format!(
            "user data must be a JSON object, got {}",
            json_type(&other)
        ))),
    }
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A user about to be written: a valid id and its data, checked against the size limit and
/// encoded once.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    id: UserId,
    data: String,
}

impl NewUser {
    /// Validates the id, the data and the size of the user.
    pub fn new(id: &str, data: Option<Value>) -> Result<NewUser> {
        let id = UserId::parse(id)?;
        NewUser::with_id(id, data)
    }

    /// Validates the data and the size of a user with an already valid id.
    pub fn with_id(id: UserId, data: Option<Value>) -> Result<NewUser> {
        let data = data_from_value(data)?;
        let data = serde_json::to_string(&data).expect("a JSON map always serializes");
        // The compact encoding of {"id":"…","data":…}; ids never need escaping.
        let size = r#"{"id":"","data":}"#.len() + id.as_str().len() + data.len();
        if size > MAX_USER_BYTES {
            return Err(Error::invalid(format!(
                "user {id:?} is {size} bytes, over the limit of {MAX_USER_BYTES} bytes"
            )));
        }
        Ok(NewUser { id, data })
    }

    /// The user's id.
    pub fn id(&self) -> &UserId {
        &self.id
    }

    /// The data as compact JSON text.
    pub fn data_json(&self) -> &str {
        &self.data
    }

    /// The serialized user with these timestamps.
    pub fn to_json(&self, created_at: Timestamp, updated_at: Timestamp) -> UserJson {
        let mut out =
            String::with_capacity(UserJson::TAIL_START + 16 + self.id.0.len() + self.data.len());
        out.push_str(r#"{"created_at":""#);
        out.push_str(created_at.as_str());
        out.push_str(&self.tail(updated_at));
        UserJson(Bytes::from(out))
    }

    /// Everything after the `created_at` value: what an update writes behind the `created_at`
    /// it keeps.
    pub fn tail(&self, updated_at: Timestamp) -> String {
        format!(
            r#"","updated_at":"{updated_at}","id":"{}","data":{}}}"#,
            self.id, self.data
        )
    }
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("data", &self.data)
            .finish()
    }
}

/// A stored user, serialized exactly as Stream returns and embeds it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserJson(Bytes);

impl UserJson {
    const PREFIX: &'static str = r#"{"created_at":""#;
    const CREATED_AT: std::ops::Range<usize> = 15..15 + Timestamp::LEN;
    /// Where the part after `created_at`'s value starts.
    pub(crate) const TAIL_START: usize = 15 + Timestamp::LEN;

    /// Wraps bytes read back from a store, checking that they have the shape this crate writes.
    pub fn from_stored(bytes: impl Into<Bytes>) -> Result<UserJson> {
        let bytes = bytes.into();
        // Checked whole, once, as it comes in: the bytes are then spliced into output as they
        // are, so a record that is not JSON must never get further than this.
        let ok = bytes.len() > UserJson::TAIL_START
            && bytes.starts_with(UserJson::PREFIX.as_bytes())
            && bytes.ends_with(b"}")
            && std::str::from_utf8(&bytes).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
        if ok {
            Ok(UserJson(bytes))
        } else {
            Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "stored user record is corrupt: {:?}",
                    shorten(&String::from_utf8_lossy(&bytes))
                ),
            ))
        }
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

    /// The same record, held in `copy`: a copy of its bytes in another buffer (so that threads
    /// using the two never contend on one reference count).
    pub(crate) fn held_in(&self, copy: Bytes) -> UserJson {
        debug_assert_eq!(copy, self.0, "a copy of the same record");
        UserJson(copy)
    }

    /// The JSON bytes as a cheaply cloned buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The `created_at` timestamp, read straight from its fixed place.
    pub fn created_at(&self) -> &str {
        &self.as_str()[UserJson::CREATED_AT]
    }

    /// This user with its `created_at` kept and everything after it replaced: an update.
    pub fn replace_tail(&self, tail: &str) -> UserJson {
        let mut out = String::with_capacity(UserJson::TAIL_START + tail.len());
        out.push_str(&self.as_str()[..UserJson::TAIL_START]);
        out.push_str(tail);
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

/// A user's fields, for callers that want them apart rather than as [`UserJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// When the user was created.
    pub created_at: String,
    /// When the user's data was last written.
    pub updated_at: String,
    /// The user's id.
    pub id: String,
    /// The user's data.
    pub data: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_accept_the_stream_alphabet() {
        for ok in ["a", "A-z_09", "john-doe", &"x".repeat(255)] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a:b", "a*", "{a}", "a/b", "é", &"x".repeat(256)] {
            let err = UserId::parse(bad).unwrap_err();
            assert!(err.is_invalid_input(), "{bad}");
            assert!(err.to_string().contains("invalid user id"), "{err}");
        }
        let err = UserId::parse("a b").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        let err = UserId::parse(&"x".repeat(256)).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
    }

    #[test]
    fn data_must_be_an_object() {
        assert_eq!(data_from_value(None).unwrap(), Map::new());
        assert_eq!(data_from_value(Some(Value::Null)).unwrap(), Map::new());
        assert_eq!(data_from_value(Some(json!([]))).unwrap(), Map::new());
        let err = data_from_value(Some(json!([1]))).unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
    }

    #[test]
    fn serialized_user_has_stream_key_order() {
        let user = NewUser::new("eric", Some(json!({"name": "Eric", "a": 1}))).unwrap();
        let at = Timestamp::parse("2021-04-13T22:53:19.670051Z").unwrap();
        let json = user.to_json(at, at);
        assert_eq!(
            json.as_str(),
            r#"{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"eric","data":{"name":"Eric","a":1}}"#
        );
        assert_eq!(json.created_at(), "2021-04-13T22:53:19.670051Z");
        let parsed = json.parse().unwrap();
        assert_eq!(parsed.id, "eric");
        assert_eq!(parsed.data["name"], "Eric");
    }

    #[test]
    fn replace_tail_keeps_created_at() {
        let user = NewUser::new("eric", None).unwrap();
        let t0 = Timestamp::parse("2021-04-13T22:53:19Z").unwrap();
        let t1 = Timestamp::parse("2022-01-01T00:00:00.5+01:00").unwrap();
        let updated = user.to_json(t0, t0).replace_tail(
            &NewUser::new("eric", Some(json!({"x": true})))
                .unwrap()
                .tail(t1),
        );
        assert_eq!(
            updated.as_str(),
            r#"{"created_at":"2021-04-13T22:53:19.000000Z","updated_at":"2021-12-31T23:00:00.500000Z","id":"eric","data":{"x":true}}"#
        );
    }

    #[test]
    fn size_limit_is_measured_on_id_and_data() {
        // {"id":"u","data":{"k":"…"}} is 26 + n bytes.
        let fits = "v".repeat(MAX_USER_BYTES - 26);
        assert!(NewUser::new("u", Some(json!({ "k": fits }))).is_ok());
        let over = "v".repeat(MAX_USER_BYTES - 25);
        let err = NewUser::new("u", Some(json!({ "k": over }))).unwrap_err();
        assert!(err.to_string().contains("10241 bytes"), "{err}");
        assert!(err.to_string().contains("10240"), "{err}");
    }

    #[test]
    fn timestamps_are_normalized_to_utc_micros() {
        let now = Timestamp::now();
        assert_eq!(now.as_str().len(), 27);
        assert!(now.as_str().ends_with('Z'));
        assert!(
            Timestamp::parse("yesterday")
                .unwrap_err()
                .is_invalid_input()
        );
        assert_eq!(
            Timestamp::parse("2021-04-13T22:53:19.1234567-02:00")
                .unwrap()
                .as_str(),
            "2021-04-14T00:53:19.123456Z"
        );
    }

    #[test]
    fn corrupt_records_are_refused() {
        assert!(UserJson::from_stored(&b"garbage"[..]).is_err());
        assert!(UserJson::from_stored(&b"{\"created_at\":\"x\"}"[..]).is_err());
        // The right shape at both ends, but not JSON in between.
        let corrupt = r#"{"created_at":"2021-04-13T22:53:19.670051Z","id":"bob","data":{]}"#;
        assert!(UserJson::from_stored(corrupt).is_err());
        let valid = r#"{"created_at":"2021-04-13T22:53:19.670051Z","id":"bob","data":{}}"#;
        assert!(UserJson::from_stored(valid).is_ok());
    }
}
