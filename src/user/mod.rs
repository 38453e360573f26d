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

mod record;
mod timestamp;

pub use self::record::UserJson;
pub use self::timestamp::Timestamp;
use crate::error::{Error, Result};
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

    /// The length of [`NewUser::to_json`], whatever the timestamps: known before the user is
    /// written, as an answer holding it must be sized first.
    pub fn stored_len(&self) -> usize {
        // {"created_at":"…","updated_at":"…","id":"…","data":…}
        const AROUND: usize = 15 + 16 + 8 + 9 + 1;
        AROUND + 2 * Timestamp::LEN + self.id.0.len() + self.data.len()
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
    use crate::error::ErrorKind;
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
    fn a_source_builds_records_from_its_rows() {
        let id = UserId::parse("eric").unwrap();
        let at = Timestamp::parse("2021-04-13T22:53:19.670051Z").unwrap();
        let json = UserJson::new(&id, json!({"name": "Eric"}), at, at).unwrap();
        let written = NewUser::new("eric", Some(json!({"name": "Eric"}))).unwrap();
        assert_eq!(json, written.to_json(at, at));
        assert_eq!(json.id(), "eric");
        assert_eq!(
            UserJson::new(&id, Value::Null, at, at).unwrap().id(),
            "eric"
        );
        let err = UserJson::new(&id, json!([1]), at, at).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");

        let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_618_354_399_670_051);
        assert_eq!(Timestamp::try_from(epoch).unwrap(), at);
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_secs(86_400);
        assert_eq!(
            Timestamp::try_from(before).unwrap().as_str(),
            "1969-12-31T00:00:00.000000Z"
        );
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
        assert!(Timestamp::try_from(far).unwrap_err().is_invalid_input());
        // An offset that moves a moment past either end of the years 0 to 9999 is refused,
        // not a panic; one that moves it back within them is taken.
        for text in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            let err = Timestamp::parse(text).unwrap_err();
            assert!(err.message().contains("out of range"), "{err}");
        }
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59+01:00")
                .unwrap()
                .as_str(),
            "9999-12-31T22:59:59.000000Z"
        );
    }

    #[test]
    fn the_stored_length_is_known_before_the_write() {
        for data in [None, Some(json!({"name": "Éric", "n": [1, 2.5, null]}))] {
            let user = NewUser::new("eric-1", data).unwrap();
            let at = Timestamp::now();
            assert_eq!(user.stored_len(), user.to_json(at, at).as_bytes().len());
        }
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
