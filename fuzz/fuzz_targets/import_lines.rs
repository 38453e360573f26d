//! Any bytes, as one line of an import file: of users (`enrich::batch::parse_import_line`) or of
//! collection entries (`parse_entry_line`). A line comes from a file anyone may have written;
//! this target fails when
//!
//! - anything panics;
//! - a line is refused with anything but one line saying it is bad input;
//! - a line is taken that breaks a documented limit: the id (and an entry's collection name) 1
//!   to 255 of `[A-Za-z0-9_-]`, a user's `{"id":…,"data":…}` within `MAX_USER_BYTES` (10 kB) and
//!   an entry's within `MAX_ENTRY_BYTES` (50 kB), data an object (empty for a user with no data,
//!   `null` or `[]`; never empty for an entry);
//! - what is taken is not what the line says: another id, other data, other timestamps than
//!   the line's (normalized to Stream's form), `updated_at` before `created_at`;
//! - the record the import writes (and, for a user, the record an override writes over an
//!   existing user) is refused when read back from the store (`UserJson::from_stored_as`,
//!   `EntryJson::from_stored_as`), or reads back as other data.
//!
//! The first input byte picks the kind: bit 0 clear a user line, set an entry line. With bit 1
//! set, the next two bytes (little-endian) are a length, and a key `"~"` holding a string of
//! that many bytes is put first in the line's data (after its first `"data":{`): so that a
//! short input reaches the size limits, which lie past libFuzzer's default input length.
#![no_main]

use enrich::batch::{parse_entry_line, parse_import_line};
use enrich::collection::MAX_ENTRY_BYTES;
use enrich::user::MAX_USER_BYTES;
use enrich::{EntryJson, Timestamp, UserJson};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, line)) = data.split_first() else {
        return;
    };
    let padded;
    let line = match line.split_first_chunk::<2>() {
        Some((len, rest)) if mode & 2 != 0 => {
            padded = pad(rest, usize::from(u16::from_le_bytes(*len)));
            &padded[..]
        }
        _ => line,
    };
    if mode & 1 == 0 {
        check_user_line(line);
    } else {
        check_entry_line(line);
    }
});

/// `line` with `"~":"xx…x"` (`len` x's) first in its data, if it has a `"data":{`.
fn pad(line: &[u8], len: usize) -> Vec<u8> {
    const DATA: &[u8] = br#""data":{"#;
    let Some(at) = line.windows(DATA.len()).position(|w| w == DATA) else {
        return line.to_vec();
    };
    let (head, tail) = line.split_at(at + DATA.len());
    let mut out = Vec::with_capacity(line.len() + len + 8);
    out.extend_from_slice(head);
    out.extend_from_slice(br#""~":""#);
    out.resize(out.len() + len, b'x');
    out.push(b'"');
    if tail.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(tail);
    out
}

const EARLY: &str = "2000-01-01T00:00:00.000000Z";
const LATE: &str = "2030-01-01T00:00:00.000000Z";

/// The line as serde_json reads it: an object, once the line is taken.
fn fields(line: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(line) {
        Ok(Value::Object(map)) => map,
        other => panic!("a line taken is not an object to serde_json: {other:?}"),
    }
}

/// The timestamp a line gives under `name`, normalized, if it gives one.
fn given(fields: &Map<String, Value>, name: &str) -> Option<Timestamp> {
    match fields.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(Timestamp::parse(at).expect("a taken timestamp parses")),
        Some(other) => panic!("{name} taken as {other}"),
    }
}

fn valid_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn refused(err: &enrich::Error) {
    assert!(err.is_invalid_input(), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

fn check_user_line(line: &[u8]) {
    let user = match parse_import_line(line) {
        Ok(user) => user,
        Err(err) => return refused(&err),
    };
    let fields = fields(line);
    let new = user.user();
    let id = new.id().as_str();
    assert!(valid_id(id), "id {id:?}");
    assert_eq!(fields["id"], id);
    let size = r#"{"id":"","data":}"#.len() + id.len() + new.data_json().len();
    assert!(size <= MAX_USER_BYTES, "a user of {size} bytes");
    let data: Value = serde_json::from_str(new.data_json()).expect("data is JSON");
    let expected = match fields.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Array(items)) if items.is_empty() => Value::Object(Map::new()),
        Some(object @ Value::Object(_)) => object.clone(),
        Some(other) => panic!("data taken as {other}"),
    };
    assert_eq!(data, expected);
    assert_eq!(serde_json::to_string(&data).unwrap(), new.data_json());

    let (created, updated) = (given(&fields, "created_at"), given(&fields, "updated_at"));
    for now in [EARLY, LATE] {
        let now = Timestamp::parse(now).unwrap();
        let record = user.to_json(now);
        let back = UserJson::from_stored_as(new.id(), record.bytes().clone())
            .unwrap_or_else(|e| panic!("an imported user is unreadable: {e}"));
        let value = back.to_value();
        assert_eq!(value["data"], expected);
        let created_at = created.or(updated).unwrap_or(now);
        let updated_at = updated.or(created).unwrap_or(now);
        assert!(created_at <= updated_at);
        assert_eq!(back.created_at(), created_at.as_str());
        assert_eq!(value["updated_at"], updated_at.as_str());
        // Over an existing user (here, itself as of another time).
        let existing = new.to_json(now, now);
        let over = user.to_override_json(&existing, now);
        let back = UserJson::from_stored_as(new.id(), over.bytes().clone())
            .unwrap_or_else(|e| panic!("an overriding user is unreadable: {e}"));
        assert_eq!(back.to_value()["data"], expected);
    }
}

fn check_entry_line(line: &[u8]) {
    let entry = match parse_entry_line(line) {
        Ok(entry) => entry,
        Err(err) => return refused(&err),
    };
    let fields = fields(line);
    let new = entry.entry();
    let key = new.key();
    assert!(
        valid_id(key.collection()),
        "collection {:?}",
        key.collection()
    );
    assert!(valid_id(key.id()), "id {:?}", key.id());
    assert_eq!(fields["collection"], key.collection());
    match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() => assert_eq!(id, key.id()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            // Generated: a lowercase v4 UUID.
            assert_eq!(key.id().len(), 36);
        }
        Some(other) => panic!("id taken as {other}"),
    }
    let size = r#"{"id":"","data":}"#.len() + key.id().len() + new.data_json().len();
    assert!(size <= MAX_ENTRY_BYTES, "an entry of {size} bytes");
    let data: Value = serde_json::from_str(new.data_json()).expect("data is JSON");
    assert!(data.as_object().is_some_and(|d| !d.is_empty()), "{data}");
    assert_eq!(Some(&data), fields.get("data"));

    let (created, updated) = (given(&fields, "created_at"), given(&fields, "updated_at"));
    assert_eq!((entry.created_at(), entry.updated_at()), (created, updated));
    if let (Some(c), Some(u)) = (created, updated) {
        assert!(c <= u);
    }
    let now = Timestamp::parse(LATE).unwrap();
    let created_at = created.or(updated).unwrap_or(now);
    let updated_at = updated.or(created).unwrap_or(now);
    let record = new.to_json(created_at, updated_at);
    for owner in [None, Some(enrich::UserId::parse("alice").unwrap())] {
        let back = EntryJson::from_stored_as(key, record.to_stored(owner.as_ref()))
            .unwrap_or_else(|e| panic!("an imported entry is unreadable: {e}"));
        assert_eq!(back.owner, owner);
        assert_eq!(back.entry, record);
        assert_eq!(back.entry.to_value()["data"], data);
        assert_eq!(back.entry.created_at(), created_at.as_str());
    }
}
