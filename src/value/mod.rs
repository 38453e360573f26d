//! The `serde_json::Value` paths: the same shapes and rules as the raw-bytes path in
//! [`crate::page`] ([`crate::shape`]), over documents a caller already holds as values.
//!
//! Two ways to answer them, siblings over the same walk: `splice` writes (or serializes) the
//! documents with each user spliced in as its stored bytes, leaving the values alone;
//! `in_place` puts each user in its place as a `Value`, for callers who read or edit them.
//!
//! The rules live in one place, [`Place::search`]: given where a value stands, it says whether
//! the value is a string that may be a reference, or where its members stand; [`Members`] says
//! where a reaction's user stands among the members of the reaction. Every walk of
//! the `Value` path — finding the references, substituting them in place, and writing a page
//! with the users spliced in ([`crate::spliced`]) — follows it, so all of them meet the same
//! references in the same order.

mod in_place;
mod splice;

use serde_json::{Map, Value};

use crate::id::{Ids, is_valid_id};
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
    /// An activity's `latest_reactions` or `own_reactions` (`top`), or a reaction's
    /// `latest_children` or `own_children`: as an object, kind → list of reactions; anything
    /// else is searched as the place of an ordinary member would be.
    Reactions { top: bool },
    /// A list of reactions, under a kind.
    ReactionList,
    /// An element of a list of reactions.
    Reaction,
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
    /// A reaction's user, named by the `user_id` value handed with it: never answered by
    /// [`Place::search`], met by a walk where [`Members`] puts the user.
    User,
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
    /// An object of reactions: kind → list.
    Reactions,
    /// A reaction: its children are reactions, its other members stand at `member`
    /// ([`Place::Plain`] or [`Place::Deep`]), and `user` says whether and how its user is
    /// written.
    Reaction { member: Place, user: UserSlot },
}

/// How a reaction's user is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserSlot {
    /// Its `user_id` is not a valid user id: nothing changes.
    None,
    /// In place of the value of its `user` member.
    Replace,
    /// As a new `user` member, right after `user_id` (or where a map that sorts its keys puts
    /// it).
    Insert,
}

impl Fields {
    /// Whether a reaction's user is written among the members ([`Members`] is needed).
    pub(crate) fn writes_user(self) -> bool {
        matches!(self, Fields::Reaction { user, .. } if user != UserSlot::None)
    }

    /// Where the member under `key` stands.
    pub(crate) fn place(self, key: &str) -> Place {
        match self {
            Fields::Activity(_) if key == "latest_reactions" || key == "own_reactions" => {
                Place::Reactions { top: true }
            }
            Fields::Activity(place) => place,
            Fields::Container { key: items, role } if key == items => Place::Items(role),
            Fields::Container { .. } => Place::Plain,
            Fields::Nested => Place::Deep,
            Fields::Reactions => Place::ReactionList,
            Fields::Reaction { .. } if key == "latest_children" || key == "own_children" => {
                Place::Reactions { top: false }
            }
            Fields::Reaction { member, .. } => member,
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
            (Place::Reactions { .. }, Value::Object(_)) => Search::Fields(Fields::Reactions),
            (Place::ReactionList, Value::Array(_)) => Search::Elements(Place::Reaction),
            (Place::Reaction, Value::Object(reaction)) => Search::Fields(Fields::Reaction {
                member: if depth == Depth::Deep {
                    Place::Deep
                } else {
                    Place::Plain
                },
                user: user_slot(reaction),
            }),
            // Anything else in those places is an ordinary member of the activity.
            (Place::Reactions { .. } | Place::ReactionList | Place::Reaction, value)
                if depth == Depth::Deep =>
            {
                Place::Deep.search(value, depth)
            }
            (Place::Reactions { top: true }, value) => Place::Field.search(value, depth),
            _ => Search::None,
        }
    }
}

/// How a reaction's user is written: only if its `user_id` is a valid user id.
fn user_slot(reaction: &Map<String, Value>) -> UserSlot {
    match reaction.get("user_id").and_then(Value::as_str) {
        Some(id) if is_valid_id(id.as_bytes()) => {
            if reaction.contains_key("user") {
                UserSlot::Replace
            } else {
                UserSlot::Insert
            }
        }
        _ => UserSlot::None,
    }
}

/// Whether a `serde_json::Map` keeps its keys in the order they came (serde_json's
/// `preserve_order`, which any crate of the build may turn on) or sorts them.
fn maps_keep_order() -> bool {
    static KEEP: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        let mut map = Map::new();
        map.insert("b".to_owned(), Value::Null);
        map.insert("a".to_owned(), Value::Null);
        map.keys().next().is_some_and(|key| key == "b")
    });
    *KEEP
}

/// A member of an object as the walks meet it: a field where it stands, or a reaction's user.
pub(crate) enum Member<'v> {
    /// A member, with where it stands.
    Field(&'v str, &'v Value, Place),
    /// A reaction's user (written under the key `user`), named by this `user_id` value.
    User(&'v Value),
}

/// The members of an object standing under `fields`, in the order a serialization of the
/// object enriched in place would have them: a reaction's user takes the place of its `user`
/// member, or is inserted right after `user_id` (before the first key that sorts after `user`
/// if maps sort their keys).
pub(crate) struct Members<'v> {
    iter: serde_json::map::Iter<'v>,
    fields: Fields,
    /// The `user_id` value of a reaction whose user is written.
    user_id: Option<&'v Value>,
    /// The user is still to be inserted.
    pending: bool,
    /// The user is inserted next.
    now: bool,
    /// A member held back for the inserted user to come first.
    held: Option<(&'v String, &'v Value)>,
}

impl<'v> Members<'v> {
    pub(crate) fn new(object: &'v Map<String, Value>, fields: Fields) -> Members<'v> {
        let (user_id, pending) = match fields {
            Fields::Reaction { user, .. } if user != UserSlot::None => {
                (object.get("user_id"), user == UserSlot::Insert)
            }
            _ => (None, false),
        };
        Members {
            iter: object.iter(),
            fields,
            user_id,
            pending,
            now: false,
            held: None,
        }
    }

    fn user(&mut self) -> Option<Member<'v>> {
        self.pending = false;
        self.user_id.map(Member::User)
    }
}

impl<'v> Iterator for Members<'v> {
    type Item = Member<'v>;

    fn next(&mut self) -> Option<Member<'v>> {
        if self.user_id.is_none() {
            // No user to write (every object but a reaction's): nothing is pending, held or
            // due, and each member stands where `fields` says.
            let (key, value) = self.iter.next()?;
            return Some(Member::Field(key, value, self.fields.place(key)));
        }
        if self.now {
            self.now = false;
            return self.user();
        }
        let (key, value) = match self.held.take() {
            Some(held) => held,
            None => match self.iter.next() {
                Some(member) => member,
                None if self.pending => return self.user(),
                None => return None,
            },
        };
        if self.pending {
            if maps_keep_order() {
                self.now = key == "user_id";
            } else if key.as_str() > "user" {
                self.held = Some((key, value));
                return self.user();
            }
        }
        if self.user_id.is_some() && !self.pending && !self.now && key == "user" {
            return self.user();
        }
        Some(Member::Field(key, value, self.fields.place(key)))
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
                            let i = ids.intern(id.as_bytes());
                            refs.sites.push(i);
                        }
                    }
                    Search::User => {
                        if let Some(id) = value.as_str() {
                            refs.sites.push(ids.intern(id.as_bytes()));
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
        (Search::Fields(fields), Value::Object(object)) if !fields.writes_user() => {
            // Every object but a reaction with a user: its members as they are.
            for (key, member) in object {
                walk(member, fields.place(key), depth, visit);
            }
        }
        (Search::Fields(fields), Value::Object(object)) => {
            for member in Members::new(object, fields) {
                match member {
                    Member::Field(_, member, place) => walk(member, place, depth, visit),
                    Member::User(user_id) => visit(user_id, Search::User),
                }
            }
        }
        _ => {}
    }
}

pub(crate) use self::in_place::enrich_in_place;
pub use self::splice::{EnrichedDoc, EnrichedValues};

/// Calls `visit` on every string in `value` that sits where a reference counts
/// ([`Search::Candidate`]) and on every reaction's `user` that is written ([`Search::User`],
/// a `null` put in place first if the reaction had none), in document order, for substituting
/// them in place.
fn walk_mut(
    value: &mut Value,
    place: Place,
    depth: Depth,
    visit: &mut impl FnMut(&mut Value, Search),
) {
    match (place.search(value, depth), value) {
        (Search::Candidate, value) => visit(value, Search::Candidate),
        (Search::Elements(place), Value::Array(items)) => {
            for item in items {
                walk_mut(item, place, depth, visit);
            }
        }
        (Search::Fields(fields), Value::Object(object)) => {
            let user = match fields {
                Fields::Reaction { user, .. } => user,
                _ => UserSlot::None,
            };
            if user == UserSlot::Insert {
                insert_user(object);
            }
            for (key, member) in object.iter_mut() {
                if user != UserSlot::None && key == "user" {
                    visit(member, Search::User);
                } else {
                    walk_mut(member, fields.place(key), depth, visit);
                }
            }
        }
        _ => {}
    }
}

/// Puts a `user` member (`null`, to be replaced) right after `user_id`, where a map that keeps
/// its order shows it; a map that sorts its keys puts it in its place anyway.
fn insert_user(object: &mut Map<String, Value>) {
    let members = std::mem::take(object);
    for (key, value) in members {
        let after = key == "user_id";
        object.insert(key, value);
        if after {
            object.insert("user".to_owned(), Value::Null);
        }
    }
}

/// The key a string value refers to, if it is a reference (`alice` for `SU:alice`,
/// `food:x` for `SO:food:x`).
pub(crate) fn referenced_id(value: &Value) -> Option<&str> {
    value.as_str().and_then(reference_key)
}
