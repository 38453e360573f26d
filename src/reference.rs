//! References: their kinds, which strings are references, the key each names, and what stands
//! in for a reference to a record that is missing.
//!
//! A reference's **key** is its text after the three-character prefix: `alice` for
//! `SU:alice`, `food:burger` for `SO:food:burger`. Ids and collection names are
//! `[A-Za-z0-9_-]`, so a key holds a `:` exactly when it names a collection entry: pages, the
//! L1, loads in flight and memos keep keys of every kind side by side without ever confusing
//! two, and a page's misses of all kinds go to the store in one call.

use crate::id::is_valid_id;

/// The prefix of a user reference.
pub const USER_PREFIX: &str = "SU:";

/// The prefix of a collection entry reference, `SO:<collection>:<id>`.
pub const OBJECT_PREFIX: &str = "SO:";

/// What a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReferenceKind {
    /// A user, `SU:<id>`.
    User,
    /// A collection entry, `SO:<collection>:<id>`.
    Object,
}

impl ReferenceKind {
    /// The prefix of a reference of this kind: `SU:` or `SO:`.
    pub const fn prefix(self) -> &'static str {
        match self {
            ReferenceKind::User => USER_PREFIX,
            ReferenceKind::Object => OBJECT_PREFIX,
        }
    }

    /// Stream's name for the kind, the `reference_type` of an error object: `user` or
    /// `object`.
    pub const fn name(self) -> &'static str {
        match self {
            ReferenceKind::User => "user",
            ReferenceKind::Object => "object",
        }
    }

    /// The kind of reference a key belongs to.
    pub(crate) fn of_key(key: &str) -> ReferenceKind {
        if key.contains(':') {
            ReferenceKind::Object
        } else {
            ReferenceKind::User
        }
    }
}

/// The id named by a well-formed user reference `SU:<id>`, or `None` for anything else
/// (`SU:`, `su:x`, `SU:bad id`, `SU:a:b` are ordinary data).
pub fn user_ref(text: &str) -> Option<&str> {
    let id = text.strip_prefix(USER_PREFIX)?;
    is_valid_id(id.as_bytes()).then_some(id)
}

/// The collection and id named by a well-formed entry reference `SO:<collection>:<id>`, or
/// `None` for anything else (`SO:food`, `SO::x`, `SO:food:`, `SO:food:x:y`, `so:food:x`,
/// `SO:bad name:x` are ordinary data).
pub fn object_ref(text: &str) -> Option<(&str, &str)> {
    let (collection, id) = text.strip_prefix(OBJECT_PREFIX)?.split_once(':')?;
    (is_valid_id(collection.as_bytes()) && is_valid_id(id.as_bytes())).then_some((collection, id))
}

/// The key of a well-formed reference of any kind (its text after the prefix), or `None`.
pub fn reference_key(text: &str) -> Option<&str> {
    // The key is ASCII after an ASCII prefix: slicing at 3 is on a character boundary.
    reference_key_bytes(text.as_bytes()).map(|_| &text[3..])
}

/// Like [`reference_key`], for the bytes between the quotes of a JSON string without escapes
/// (a key is ASCII, so the bytes alone decide).
#[inline]
pub(crate) fn reference_key_bytes(text: &[u8]) -> Option<&[u8]> {
    // Most strings are not references: one look at the `S?:` of both prefixes turns them
    // away before anything else is read.
    let [b'S', kind, b':', key @ ..] = text else {
        return None;
    };
    match kind {
        b'U' => is_valid_id(key).then_some(key),
        b'O' => object_key(key),
        _ => None,
    }
}

/// The `<collection>:<id>` after `SO:`, if both are valid.
fn object_key(key: &[u8]) -> Option<&[u8]> {
    let colon = key.iter().position(|&b| b == b':')?;
    (is_valid_id(&key[..colon]) && is_valid_id(&key[colon + 1..])).then_some(key)
}

/// Appends Stream's inline object for a reference whose record does not exist. For a user:
/// `{"error":"ReferenceNotFound","reference":"SU:x","reference_type":"user","id":"x"}`; for an
/// entry:
/// `{"collection":"food","id":"x","error":"ReferenceNotFound","reference":"SO:food:x","reference_type":"object"}`.
pub fn write_not_found(out: &mut Vec<u8>, key: &str) {
    write_error(out, "ReferenceNotFound", key);
}

/// Appends the object that stands in for a reference the store could not answer for, when the
/// caller asked to be served from L1 through a store fault. Same shape as `ReferenceNotFound`,
/// with `"error":"ReferenceUnavailable"`, so it is never mistaken for a missing record.
pub fn write_unavailable(out: &mut Vec<u8>, key: &str) {
    write_error(out, "ReferenceUnavailable", key);
}

/// The length of what [`write_not_found`] or [`write_unavailable`] appends for `key`.
pub(crate) fn error_len(answer_is_missing: bool, key: &str) -> usize {
    let error = if answer_is_missing {
        "ReferenceNotFound"
    } else {
        "ReferenceUnavailable"
    };
    match key.split_once(':') {
        None => {
            let kind = ReferenceKind::User;
            r#"{"error":"","reference":"","reference_type":"","id":""}"#.len()
                + error.len()
                + kind.prefix().len()
                + kind.name().len()
                + 2 * key.len()
        }
        Some((collection, id)) => {
            let kind = ReferenceKind::Object;
            r#"{"collection":"","id":"","error":"","reference":"","reference_type":""}"#.len()
                + collection.len()
                + id.len()
                + error.len()
                + kind.prefix().len()
                + key.len()
                + kind.name().len()
        }
    }
}

fn write_error(out: &mut Vec<u8>, error: &str, key: &str) {
    // Keys are [A-Za-z0-9_-] and one `:`: nothing to escape.
    match key.split_once(':') {
        None => {
            let kind = ReferenceKind::User;
            out.extend_from_slice(br#"{"error":""#);
            out.extend_from_slice(error.as_bytes());
            out.extend_from_slice(br#"","reference":""#);
            out.extend_from_slice(kind.prefix().as_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(br#"","reference_type":""#);
            out.extend_from_slice(kind.name().as_bytes());
            out.extend_from_slice(br#"","id":""#);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(br#""}"#);
        }
        Some((collection, id)) => {
            let kind = ReferenceKind::Object;
            out.extend_from_slice(br#"{"collection":""#);
            out.extend_from_slice(collection.as_bytes());
            out.extend_from_slice(br#"","id":""#);
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(br#"","error":""#);
            out.extend_from_slice(error.as_bytes());
            out.extend_from_slice(br#"","reference":""#);
            out.extend_from_slice(kind.prefix().as_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(br#"","reference_type":""#);
            out.extend_from_slice(kind.name().as_bytes());
            out.extend_from_slice(br#""}"#);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_references_count() {
        assert_eq!(user_ref("SU:alice"), Some("alice"));
        assert_eq!(user_ref("SU:john-doe_2"), Some("john-doe_2"));
        for text in [
            "SU:",
            "su:alice",
            "SU:bad id",
            "SU:a:b",
            "SO:food:x",
            "alice",
            " SU:a",
            "SU:é",
        ] {
            assert_eq!(user_ref(text), None, "{text}");
        }
        assert_eq!(user_ref(&format!("SU:{}", "a".repeat(256))), None);
        assert_eq!(object_ref("SO:food:x"), Some(("food", "x")));
        for text in [
            "SO:food",
            "SO::x",
            "SO:food:",
            "SO:food:x:y",
            "so:food:x",
            "SO:bad name:x",
            "SO:food:bad id",
            " SO:food:x",
        ] {
            assert_eq!(object_ref(text), None, "{text}");
            assert_eq!(reference_key(text), None, "{text}");
        }
        assert_eq!(reference_key("SO:food:x"), Some("food:x"));
        assert_eq!(reference_key("SU:alice"), Some("alice"));
    }

    #[test]
    fn not_found_has_stream_shape() {
        let mut out = Vec::new();
        write_not_found(&mut out, "bob");
        assert_eq!(
            out,
            br#"{"error":"ReferenceNotFound","reference":"SU:bob","reference_type":"user","id":"bob"}"#
        );
        assert_eq!(error_len(true, "bob"), out.len());
        out.clear();
        write_unavailable(&mut out, "bob");
        assert_eq!(error_len(false, "bob"), out.len());
        out.clear();
        write_not_found(&mut out, "food:x");
        assert_eq!(
            out,
            br#"{"collection":"food","id":"x","error":"ReferenceNotFound","reference":"SO:food:x","reference_type":"object"}"#
        );
        assert_eq!(error_len(true, "food:x"), out.len());
        out.clear();
        write_unavailable(&mut out, "food:x");
        assert_eq!(error_len(false, "food:x"), out.len());
    }
}
