//! Stream's shapes, the vocabulary both enrichment paths share: how deep references are
//! looked for, what role an object plays in a document, and which arrays make an object a
//! container of others.
//!
//! - A feed response is a document with a `results` array: each result is a group or an
//!   activity.
//! - A group is a document or a result with an `activities` array: each is an activity.
//! - Any other object in those places is an activity: its top-level strings may be references,
//!   or with [`Depth::Deep`] every string within it.
//!
//! - An activity's `latest_reactions` and `own_reactions` objects map kinds to lists of
//!   reactions, and so do a reaction's `latest_children` and `own_children`. A reaction whose
//!   `user_id` is a valid user id gets the user as its `user`: in place of the value of an
//!   existing `user` member, or inserted right after `user_id`. Nothing else in them moves, and
//!   what is not a list of objects there is left as it is.
//!
//! An object with both arrays is a feed response. The own fields of responses and groups are
//! never searched. The raw-bytes path ([`crate::page`] through `scan`) and the `Value`
//! paths (`value`) follow these rules, and nothing else decides them.

/// How deep references are looked for inside an activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    /// Only the activity's top-level fields, as Stream does.
    #[default]
    TopLevel,
    /// Every string value at any depth inside the activity.
    Deep,
}

/// What an object stands for, which decides which of its strings are references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A document: a feed response, a group or an activity.
    Document,
    /// An element of a response's `results`: a group or an activity.
    Result,
    /// An element of a group's `activities`: an activity.
    Activity,
}

/// The deepest nesting accepted: objects and arrays within one another, as many levels as
/// serde_json parses into a `Value` (so both paths take the same documents).
pub const MAX_DEPTH: usize = 127;

/// The role the elements of an object's member `key` play, if an array there makes the object
/// (playing `role`) a container: a document's `results`, a document's or a result's
/// `activities`. An activity contains nothing.
pub(crate) fn container(role: Role, key: &[u8]) -> Option<Role> {
    match (role, key) {
        (Role::Document, b"results") => Some(Role::Result),
        (Role::Document | Role::Result, b"activities") => Some(Role::Activity),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documents_are_responses_and_activities_contain_nothing() {
        assert_eq!(container(Role::Document, b"results"), Some(Role::Result));
        assert_eq!(container(Role::Result, b"results"), None);
        assert_eq!(container(Role::Result, b"activities"), Some(Role::Activity));
        assert_eq!(container(Role::Activity, b"activities"), None);
        assert_eq!(container(Role::Document, b"actor"), None);
    }
}
