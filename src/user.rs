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
pub(crate) use crate::id::id_hash;
pub use crate::id::{MAX_ID_LEN, is_valid_id};

/// The largest user: the compact JSON of `{"id":…,"data":…}` may take this many bytes.
pub const MAX_USER_BYTES: usize = 10_240;

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

    /// True when `text` is a timestamp exactly in this form, `2021-04-13T22:53:19.670051Z`,
    /// and names a real moment (no month 13, no February 30). Reads no further than its 27
    /// bytes, all ASCII.
    pub(crate) fn is_exact(text: &[u8]) -> bool {
        let Ok(text) = <&[u8; Timestamp::LEN]>::try_from(text) else {
            return false;
        };
        let number = |at: std::ops::Range<usize>| {
            text[at].iter().try_fold(0u32, |n, &b| {
                b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
            })
        };
        let separators = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ];
        let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second), Some(_)) = (
            number(0..4),
            number(5..7),
            number(8..10),
            number(11..13),
            number(14..16),
            number(17..19),
            number(20..26),
        ) else {
            return false;
        };
        separators.iter().all(|&(at, b)| text[at] == b)
            && text[26] == b'Z'
            && hour < 24
            && minute < 60
            && second < 60
            && time::Month::try_from(month as u8).is_ok_and(|month| {
                time::Date::from_calendar_date(year as i32, month, day as u8).is_ok()
            })
    }

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
        // The record nests the data one level down, and must itself stay within the nesting
        // every reader takes (it is checked on each read, and parsed into a `Value` by some).
        if crate::scan::check_object(data.as_bytes(), 1).is_err() {
            return Err(Error::invalid(format!(
                "user {id:?}: data is nested too deep; a user's data may nest at most {} levels",
                crate::shape::MAX_DEPTH - 1
            )));
        }
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

    /// Wraps bytes read back from a store, checking that they are exactly what this crate
    /// writes: `{"created_at":"…","updated_at":"…","id":"…","data":{…}}`, both timestamps in
    /// [`Timestamp`]'s form and real, a valid id, the data a JSON object (in the grammar the
    /// raw-bytes path takes, nested no deeper than a document may be), and nothing after it.
    pub fn from_stored(bytes: impl Into<Bytes>) -> Result<UserJson> {
        UserJson::checked(bytes.into(), None)
    }

    /// Like [`UserJson::from_stored`], for a record read under `id`'s key: it must be the
    /// record of that user, not one copied there from another key.
    pub(crate) fn from_stored_as(id: &UserId, bytes: impl Into<Bytes>) -> Result<UserJson> {
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
    fn data_nests_no_deeper_than_a_stored_record_may() {
        let nested = |levels: usize| {
            let text = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
            serde_json::json!({ "k": serde_json::from_str::<Value>(&text).unwrap() })
        };
        // The data object and the arrays in it: 126 levels, 127 with the record's own.
        let user = NewUser::new("u", Some(nested(126))).unwrap();
        let at = Timestamp::now();
        let stored = UserJson::from_stored(user.to_json(at, at).as_bytes().to_vec()).unwrap();
        stored.to_value();
        let err = NewUser::new("u", Some(nested(127))).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("at most 126 levels"), "{err}");
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

    const GOOD: &str = r#"{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-14T08:00:00.000001Z","id":"bob","data":{"name":"Bob","n":[1,2.5e3,{"é":"\u00e9"}]}}"#;

    /// The reason `record` is refused for, or `None` if it is taken.
    fn defect(record: impl AsRef<[u8]>) -> Option<String> {
        match UserJson::from_stored(record.as_ref().to_vec()) {
            Ok(user) => {
                // What is taken can be read at its fixed places and parsed.
                assert_eq!(user.created_at().len(), Timestamp::LEN);
                user.parse().unwrap();
                user.to_value();
                None
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Internal);
                let message = err.to_string();
                assert!(!message.contains('\n'), "one line: {message}");
                assert!(
                    message.starts_with("stored user record is corrupt ("),
                    "{message}"
                );
                Some(message)
            }
        }
    }

    #[test]
    fn a_stored_record_is_taken_only_in_our_exact_shape() {
        assert_eq!(defect(GOOD), None);
        let user = NewUser::new("eric", Some(json!({"a": [1, {"b": null}]}))).unwrap();
        let at = Timestamp::now();
        assert_eq!(defect(user.to_json(at, at).as_bytes()), None);
        // White space inside the data is still a JSON object.
        assert_eq!(defect(GOOD.replace(r#"{"name""#, r#"{ "name" "#)), None);
        // A leap day is a real date.
        assert_eq!(defect(GOOD.replace("2021-04-13", "2024-02-29")), None);

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "does not start with created_at"),
            (Vec::new(), "does not start with created_at"),
            (
                br#"{"created_at":"x"}"#.to_vec(),
                "created_at is not a timestamp",
            ),
            // A character beyond ASCII inside created_at, the record still the same length.
            (
                GOOD.replacen("53:19.6", "53:19é", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("2021-04-13T22", "2021-04-1éT22", 1)
                    .into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen(".670051Z", ".67005Z", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen(".670051Z", ".6700512Z", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("2021-04-13", "2021-13-13", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("2021-04-13", "2021-02-29", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("22:53", "24:53", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("22:53:19", "22:53:60", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("Z\"", "+\"", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replacen("2021-04-13T", "2021-04-13 ", 1).into_bytes(),
                "created_at is not a timestamp",
            ),
            (
                GOOD.replace("2021-04-14T08", "2021-04-14T0\u{7f}")
                    .into_bytes(),
                "updated_at is not a timestamp",
            ),
            (
                GOOD.replace("2021-04-14T08", "2021-00-14T08").into_bytes(),
                "updated_at is not a timestamp",
            ),
            (
                GOOD.replace(r#""updated_at":"2021-04-14T08:00:00.000001Z","#, "")
                    .into_bytes(),
                "updated_at does not follow created_at",
            ),
            (
                GOOD.replace(r#""id":"bob","#, "").into_bytes(),
                "id does not follow updated_at",
            ),
            (
                GOOD.replace(r#""id":"bob""#, r#""id":"""#).into_bytes(),
                "the id is not a valid user id",
            ),
            (
                GOOD.replace(r#""id":"bob""#, r#""id":"b b""#).into_bytes(),
                "data does not follow the id",
            ),
            (
                GOOD.replace(r#""id":"bob""#, &format!(r#""id":"{}""#, "x".repeat(256)))
                    .into_bytes(),
                "the id is not a valid user id",
            ),
            (
                GOOD.replace(r#""id":"bob""#, r#""id":"bob\u0041""#)
                    .into_bytes(),
                "data does not follow the id",
            ),
            (
                GOOD.replace(r#""data":{"#, r#""data": {"#).into_bytes(),
                "data is not an object closing the record",
            ),
            (
                format!("{GOOD} ").into_bytes(),
                "data is not an object closing the record",
            ),
            (
                format!("{GOOD}}}").into_bytes(),
                "data is not a JSON object",
            ),
            (
                format!("{GOOD}\n").into_bytes(),
                "data is not an object closing the record",
            ),
            (
                GOOD.replace("]}}", "]} }").into_bytes(),
                "data is not an object closing the record",
            ),
            (
                GOOD.replace(
                    r#""data":{"name":"Bob","n":[1,2.5e3,{"é":"\u00e9"}]}"#,
                    r#""data":[1]"#,
                )
                .into_bytes(),
                "data is not an object closing the record",
            ),
            (
                GOOD.replace(
                    r#""data":{"name":"Bob","n":[1,2.5e3,{"é":"\u00e9"}]}"#,
                    r#""data":"x""#,
                )
                .into_bytes(),
                "data is not an object closing the record",
            ),
            (
                GOOD.replace("2.5e3", "2.5e400").into_bytes(),
                "data is not a JSON object: not valid JSON: number out of range",
            ),
            (
                GOOD.replace("\\u00e9", "\\ud800").into_bytes(),
                "data is not a JSON object: not valid JSON: unpaired UTF-16 surrogate",
            ),
            (
                GOOD.replace("{\"é\"", "{]").into_bytes(),
                "data is not a JSON object: not valid JSON",
            ),
            (
                GOOD.replace("Bob", "B\u{1}b").into_bytes(),
                "data is not a JSON object: not valid JSON: control character",
            ),
            (
                GOOD.replace(
                    r#""n":[1,2.5e3,{"é":"\u00e9"}]"#,
                    &format!(r#""n":{}{}"#, "[".repeat(126), "]".repeat(126)),
                )
                .into_bytes(),
                "data is not a JSON object: nesting too deep",
            ),
        ];
        for (record, reason) in &cases {
            let shown = String::from_utf8_lossy(record);
            let message = defect(record).unwrap_or_else(|| panic!("taken: {shown}"));
            assert!(message.contains(reason), "{shown}: {message}");
        }
        // Invalid UTF-8, inside the data and inside a timestamp.
        let mut bad = GOOD.as_bytes().to_vec();
        let at = GOOD.find("Bob").unwrap();
        bad[at + 1] = 0xff;
        assert!(
            defect(&bad).unwrap().contains("not UTF-8"),
            "{:?}",
            defect(&bad)
        );
        let mut bad = GOOD.as_bytes().to_vec();
        bad[20] = 0xc3;
        assert!(
            defect(&bad)
                .unwrap()
                .contains("created_at is not a timestamp")
        );
        // Nested as deep as a document may be, with the record's own level.
        let deepest = GOOD.replace(
            r#""n":[1,2.5e3,{"é":"\u00e9"}]"#,
            &format!(r#""n":{}{}"#, "[".repeat(125), "]".repeat(125)),
        );
        assert_eq!(defect(&deepest), None);
    }

    #[test]
    fn a_record_read_for_one_user_must_be_that_users() {
        let bob = UserId::parse("bob").unwrap();
        let alice = UserId::parse("alice").unwrap();
        assert!(UserJson::from_stored_as(&bob, GOOD).is_ok());
        let err = UserJson::from_stored_as(&alice, GOOD).unwrap_err();
        assert!(err.to_string().contains(r#"it holds user "bob""#), "{err}");
        // A prefix of the id is not the id.
        let err = UserJson::from_stored_as(&UserId::parse("bo").unwrap(), GOOD).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn timestamps_in_stored_form_are_checked_exactly() {
        for ok in [
            "2021-04-13T22:53:19.670051Z",
            "0000-01-01T00:00:00.000000Z",
            "9999-12-31T23:59:59.999999Z",
            "2000-02-29T12:00:00.000000Z",
        ] {
            assert!(Timestamp::is_exact(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "2021-04-13T22:53:19.670051",
            "2021-04-13T22:53:19.670051Z ",
            "2021-04-13T22:53:19.67005Z",
            "2021-04-31T22:53:19.670051Z",
            "1900-02-29T22:53:19.670051Z",
            "2021-04-13T22:53:19,670051Z",
            "2021-04-13t22:53:19.670051Z",
            "2021-04-13T22:53:19.67005aZ",
            "+021-04-13T22:53:19.670051Z",
            "2021-04-00T22:53:19.670051Z",
        ] {
            assert!(!Timestamp::is_exact(bad.as_bytes()), "{bad}");
        }
        // Every timestamp we make is in that form.
        assert!(Timestamp::is_exact(Timestamp::now().as_str().as_bytes()));
    }
}
