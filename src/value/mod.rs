//! The `serde_json::Value` paths: the same shapes and rules as the raw-bytes path in
//! [`crate::page`] ([`crate::shape`]), over documents a caller already holds as values.
//!
//! Two ways to answer them, siblings over the same walk: `splice` writes (or serializes) the
//! documents with each user spliced in as its stored bytes, leaving the values alone;
//! `in_place` puts each user in its place as a `Value`, for callers who read or edit them.
//!
//! The rules live in one place, [`Place::search`]: given where a value stands, it says whether
//! the value is a string that may be a reference, or where its members stand. Every walk of
//! the `Value` path — finding the references, substituting them in place, and writing a page
//! with the users spliced in ([`crate::spliced`]) — follows it, so all of them meet the same
//! references in the same order.

mod in_place;
mod splice;

use serde_json::{Map, Value};

use crate::id::Ids;
use crate::reference::reference_key;
use crate::shape::{Depth, Role, container};

/// Where a value stands in a document, which decides how it is searched for references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Where an object plays `Role`: a document, a response's result, a group's activity.
    /// Anything but an object here is copied as it is.
    Object(Role),
    /// The array of a response's `results` or a group's `activities`: its elements stand at
    /// `Object(Role)`.
    Items(Role),
    /// A top-level field of an activity, with [`Depth::TopLevel`]: only a string counts.
    Field,
    /// Anywhere inside an activity, with [`Depth::Deep`]: every string counts.
    Deep,
    /// Copied as it is: the own fields of responses and groups.
    Plain,
}

/// How a value is searched, given where it stands. Borrows nothing, so a walk can decide and
/// then take the value mutably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// Nothing in it can be a reference.
    None,
    /// A string that is a reference if it reads as one.
    Candidate,
    /// An array whose elements stand at this place.
    Elements(Place),
    /// An object whose members stand as [`Fields::place`] says.
    Fields(Fields),
}

/// Where the members of an object stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fields {
    /// An activity: every field stands at [`Place::Field`] or [`Place::Deep`].
    Activity(Place),
    /// A feed response or a group: the array under `key` holds its children, and its other
    /// fields are its own, never searched.
    Container { key: &'static str, role: Role },
    /// An object inside an activity, with [`Depth::Deep`].
    Nested,
}

impl Fields {
    /// Where the member under `key` stands.
    pub(crate) fn place(self, key: &str) -> Place {
        match self {
            Fields::Activity(place) => place,
            Fields::Container { key: items, role } if key == items => Place::Items(role),
            Fields::Container { .. } => Place::Plain,
            Fields::Nested => Place::Deep,
        }
    }
}

impl Place {
    /// Where documents stand.
    pub(crate) const DOCUMENT: Place = Place::Object(Role::Document);

    /// How `value`, standing here, is searched.
    ///
    /// Stream's shapes: a feed response (an object with a `results` array, as a document) holds
    /// groups and activities; a group (an object with an `activities` array, unless it is
    /// itself a group's activity) holds activities; any other object is an activity, whose
    /// top-level strings are references, or with [`Depth::Deep`] all strings within it.
    pub(crate) fn search(self, value: &Value, depth: Depth) -> Search {
        match (self, value) {
            (Place::Object(role), Value::Object(object)) => {
                Search::Fields(shape(object, role, depth))
            }
            (Place::Items(role), Value::Array(_)) => Search::Elements(Place::Object(role)),
            (Place::Field | Place::Deep, Value::String(_)) => Search::Candidate,
            (Place::Deep, Value::Array(_)) => Search::Elements(Place::Deep),
            (Place::Deep, Value::Object(_)) => Search::Fields(Fields::Nested),
            _ => Search::None,
        }
    }
}

fn shape(object: &Map<String, Value>, role: Role, depth: Depth) -> Fields {
    if role != Role::Activity {
        // One look at the keys rather than a hash of each name: every walk of the object goes
        // through all its members anyway. A feed response's `results` wins over `activities`.
        let mut found: Option<(&'static str, Role)> = None;
        for (key, value) in object {
            if let Some(items) = container(role, key.as_bytes())
                && value.is_array()
            {
                let key = if items == Role::Result {
                    "results"
                } else {
                    "activities"
                };
                if items == Role::Result || found.is_none() {
                    found = Some((key, items));
                }
            }
        }
        if let Some((key, role)) = found {
            return Fields::Container { key, role };
        }
    }
    if depth == Depth::Deep {
        Fields::Activity(Place::Deep)
    } else {
        Fields::Activity(Place::Field)
    }
}

/// The references of a page of values, in the order every walk meets them.
#[derive(Debug, Default)]
pub(crate) struct References {
    /// The page's distinct ids, in order of first appearance.
    pub(crate) ids: Vec<Box<str>>,
    /// For each reference of the page, in document order, the number of the id it names.
    pub(crate) sites: Vec<u32>,
    /// Where each document's references end in `sites`.
    ends: Vec<usize>,
    /// Activities found (a group counts its activities).
    pub(crate) activities: u64,
}

impl References {
    /// Finds the references of `docs`: one walk, one hash lookup per reference.
    pub(crate) fn collect(docs: &[Value], depth: Depth) -> References {
        // Sized for a few references per activity, so that a page rarely grows them.
        let mut refs = References {
            ids: Vec::new(),
            sites: Vec::with_capacity(docs.len() * 4),
            ends: Vec::with_capacity(docs.len()),
            activities: 0,
        };
        let mut ids = Ids::default();
        for doc in docs {
            walk(
                doc,
                Place::DOCUMENT,
                depth,
                &mut |value, search| match search {
                    Search::Candidate => {
                        if let Some(id) = referenced_id(value) {
                            let i = ids.intern(id);
                            refs.sites.push(i);
                        }
                    }
                    Search::Fields(Fields::Activity(_)) => refs.activities += 1,
                    _ => {}
                },
            );
            refs.ends.push(refs.sites.len());
        }
        refs.ids = ids.into_ids();
        refs
    }

    /// The references of document `doc`, in document order.
    pub(crate) fn of_doc(&self, doc: usize) -> &[u32] {
        let start = if doc == 0 { 0 } else { self.ends[doc - 1] };
        &self.sites[start..self.ends[doc]]
    }
}

/// Calls `visit` on `value` and every value within it that the rules search, in document
/// order, with how each is searched.
fn walk<'v>(
    value: &'v Value,
    place: Place,
    depth: Depth,
    visit: &mut impl FnMut(&'v Value, Search),
) {
    let search = place.search(value, depth);
    visit(value, search);
    match (search, value) {
        (Search::Elements(place), Value::Array(items)) => {
            for item in items {
                walk(item, place, depth, visit);
            }
        }
        (Search::Fields(fields), Value::Object(object)) => {
            for (key, member) in object {
                walk(member, fields.place(key), depth, visit);
            }
        }
        _ => {}
    }
}

pub(crate) use self::in_place::enrich_in_place;
pub use self::splice::{EnrichedDoc, EnrichedValues};

/// Calls `visit` on every string in `value` that sits where a reference counts, in document
/// order, for substituting it in place.
fn walk_mut(value: &mut Value, place: Place, depth: Depth, visit: &mut impl FnMut(&mut Value)) {
    match (place.search(value, depth), value) {
        (Search::Candidate, value) => visit(value),
        (Search::Elements(place), Value::Array(items)) => {
            for item in items {
                walk_mut(item, place, depth, visit);
            }
        }
        (Search::Fields(fields), Value::Object(object)) => {
            for (key, member) in object.iter_mut() {
                walk_mut(member, fields.place(key), depth, visit);
            }
        }
        _ => {}
    }
}

/// The key a string value refers to, if it is a reference (`alice` for `SU:alice`,
/// `food:x` for `SO:food:x`).
pub(crate) fn referenced_id(value: &Value) -> Option<&str> {
    value.as_str().and_then(reference_key)
}
