//! References: their kinds, which strings name a user, and what stands in for one that is
//! missing.

use crate::id::is_valid_id;

/// The prefix of a user reference.
pub const USER_PREFIX: &str = "SU:";

/// What a reference names. Each kind is resolved through a source, an L1 and loads in flight
/// of its own, so the same id under two kinds never meets in a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReferenceKind {
    /// A user, `SU:<id>`, read from a [`UserSource`](crate::UserSource).
    User,
}

impl ReferenceKind {
    /// The prefix of a reference of this kind: `SU:`.
    pub const fn prefix(self) -> &'static str {
        match self {
            ReferenceKind::User => USER_PREFIX,
        }
    }

    /// Stream's name for the kind, the `reference_type` of an error object: `user`.
    pub const fn name(self) -> &'static str {
        match self {
            ReferenceKind::User => "user",
        }
    }
}

/// The id named by a well-formed user reference `SU:<id>`, or `None` for anything else
/// (`SU:`, `su:x`, `SU:bad id`, `SU:a:b` are ordinary data).
pub fn user_ref(text: &str) -> Option<&str> {
    let id = text.strip_prefix(USER_PREFIX)?;
    is_valid_id(id.as_bytes()).then_some(id)
}

/// Appends Stream's inline object for a reference to a user that does not exist:
/// `{"error":"ReferenceNotFound","reference":"SU:x","reference_type":"user","id":"x"}`.
pub fn write_not_found(out: &mut Vec<u8>, id: &str) {
    write_error(out, "ReferenceNotFound", ReferenceKind::User, id);
}

/// Appends the object that stands in for a reference the store could not answer for, when the
/// caller asked to be served from L1 through a store fault. Same shape as `ReferenceNotFound`,
/// with `"error":"ReferenceUnavailable"`, so it is never mistaken for a missing user.
pub fn write_unavailable(out: &mut Vec<u8>, id: &str) {
    write_error(out, "ReferenceUnavailable", ReferenceKind::User, id);
}

/// The length of what [`write_not_found`] or [`write_unavailable`] appends for `id`.
pub(crate) fn error_len(answer_is_missing: bool, id: &str) -> usize {
    let error = if answer_is_missing {
        "ReferenceNotFound"
    } else {
        "ReferenceUnavailable"
    };
    let kind = ReferenceKind::User;
    r#"{"error":"","reference":"","reference_type":"","id":""}"#.len()
        + error.len()
        + kind.prefix().len()
        + kind.name().len()
        + 2 * id.len()
}

fn write_error(out: &mut Vec<u8>, error: &str, kind: ReferenceKind, id: &str) {
    // Ids are [A-Za-z0-9_-]: nothing to escape.
    out.extend_from_slice(br#"{"error":""#);
    out.extend_from_slice(error.as_bytes());
    out.extend_from_slice(br#"","reference":""#);
    out.extend_from_slice(kind.prefix().as_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#"","reference_type":""#);
    out.extend_from_slice(kind.name().as_bytes());
    out.extend_from_slice(br#"","id":""#);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#""}"#);
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
    }
}
