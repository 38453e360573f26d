//! A page of `serde_json::Value`s written with the users spliced in: the documents stay as the
//! caller holds them, and each reference is written as the user's stored bytes, so no user is
//! ever built as a `Value`.
//!
//! Everything that is not a reference is written by serde_json itself, key by key and value by
//! value, so the output is what `serde_json::to_vec` gives for the same page enriched in place
//! by [`Enricher::enrich_values`](crate::Enricher::enrich_values). Two ways out, one walk:
//! [`EnrichedValues::write`] appends bytes, and the [`Serialize`] impls hand the page to
//! serde_json inside a caller's own response, splicing through [`RawValue`].

use std::borrow::Cow;
use std::cell::Cell;

use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Fields, Member, Members, Place, References, Search, UserSlot, referenced_id};
use crate::answer::Answer;
use crate::shape::Depth;
use crate::stats::EnrichStats;

/// A page of documents held as `serde_json::Value`s, with its references resolved: made by
/// [`Enricher::enrich_value_page`](crate::Enricher::enrich_value_page), it writes each
/// document with the users spliced in as their stored bytes.
///
/// Use it when the enriched page is to be serialized; use
/// [`Enricher::enrich_values`](crate::Enricher::enrich_values) when the enriched values
/// themselves are to be read or edited.
///
/// It serializes as a JSON array of the enriched documents, and [`EnrichedValues::doc`] as
/// one of them, so the page can sit in a service's own response type:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> enrich::Result<()> {
/// use enrich::{Depth, EnrichedValues, Enricher, StoreOptions, store};
/// use serde_json::json;
///
/// #[derive(serde::Serialize)]
/// struct FeedResponse<'a> {
///     results: &'a EnrichedValues<'a>,
///     next: &'a str,
/// }
///
/// let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
/// let page = vec![json!({"actor": "SU:bob", "verb": "like"})];
/// let enriched = enricher.enrich_value_page(&page, Depth::TopLevel).await?;
/// let body = serde_json::to_string(&FeedResponse { results: &enriched, next: "" }).unwrap();
/// assert_eq!(
///     body,
///     r#"{"results":[{"actor":{"error":"ReferenceNotFound","reference":"SU:bob","reference_type":"user","id":"bob"},"verb":"like"}],"next":""}"#
/// );
/// # Ok(())
/// # }
/// ```
///
/// The users are spliced verbatim only by serde_json's serializer (axum's `Json` uses it):
/// each is handed over as a [`RawValue`], which other formats see as a struct. serde_json
/// checks each one again as it builds the `RawValue`; records are already checked to be JSON
/// when they are read from the store.
#[derive(Debug)]
pub struct EnrichedValues<'a> {
    docs: &'a [Value],
    depth: Depth,
    refs: References,
    answers: Vec<Answer>,
    stats: EnrichStats,
}

impl<'a> EnrichedValues<'a> {
    pub(crate) fn new(
        docs: &'a [Value],
        depth: Depth,
        refs: References,
        answers: Vec<Answer>,
        stats: EnrichStats,
    ) -> EnrichedValues<'a> {
        EnrichedValues {
            docs,
            depth,
            refs,
            answers,
            stats,
        }
    }

    /// Appends document `doc` of the page, enriched, to `out` as compact JSON.
    ///
    /// The bytes are those [`EnrichedPage::write`](crate::EnrichedPage::write) gives for the
    /// document pushed compact: a user is written as stored, a missing one as
    /// `{"error":"ReferenceNotFound",…}`, one the store could not answer for as
    /// `{"error":"ReferenceUnavailable",…}`. They are also those `serde_json::to_vec` gives for
    /// the document after [`Enricher::enrich_values`](crate::Enricher::enrich_values) — same
    /// key order, escapes and numbers — since users are stored as serde_json writes them (a
    /// record put into the store by other means is copied as it is, once checked to be JSON).
    ///
    /// # Panics
    ///
    /// If `doc` is not below [`EnrichedValues::len`].
    pub fn write(&self, doc: usize, out: &mut Vec<u8>) {
        let mut writer = Writer {
            page: self,
            sites: self.refs.of_doc(doc).iter(),
            out,
        };
        writer.value(&self.docs[doc], Place::DOCUMENT);
        debug_assert!(writer.sites.next().is_none(), "every reference written");
    }

    /// Document `doc` of the page, enriched, to serialize on its own: it writes the same JSON
    /// as [`EnrichedValues::write`] when serialized by serde_json. Each serialization checks
    /// the users it names; serializing the whole page checks each distinct user once.
    ///
    /// # Panics
    ///
    /// If `doc` is not below [`EnrichedValues::len`].
    pub fn doc(&self, doc: usize) -> EnrichedDoc<'_> {
        assert!(doc < self.len(), "document {doc} of {}", self.len());
        EnrichedDoc { page: self, doc }
    }

    /// Documents in the page.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True if the page has no documents.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// What the enrichment did.
    pub fn stats(&self) -> EnrichStats {
        self.stats
    }
}

/// Writes one document, taking the page's references in the order the walk meets them.
struct Writer<'w, 'a> {
    page: &'w EnrichedValues<'a>,
    sites: std::slice::Iter<'w, u32>,
    out: &'w mut Vec<u8>,
}

impl Writer<'_, '_> {
    fn value(&mut self, value: &Value, place: Place) {
        match (place.search(value, self.page.depth), value) {
            (Search::Candidate, value) if referenced_id(value).is_some() => self.answer(),
            (Search::Elements(place), Value::Array(items)) => {
                self.out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.value(item, place);
                }
                self.out.push(b']');
            }
            (Search::Fields(fields), Value::Object(object)) if !fields.writes_user() => {
                // Every object but a reaction with a user: its members as they are.
                self.out.push(b'{');
                for (i, (key, member)) in object.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.plain(key.as_str());
                    self.out.push(b':');
                    self.value(member, fields.place(key));
                }
                self.out.push(b'}');
            }
            (Search::Fields(fields), Value::Object(object)) => {
                self.out.push(b'{');
                for (i, member) in Members::new(object, fields).enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    match member {
                        Member::Field(key, member, place) => {
                            self.plain(key);
                            self.out.push(b':');
                            self.value(member, place);
                        }
                        Member::User(_) => {
                            self.out.extend_from_slice(b"\"user\":");
                            self.answer();
                        }
                    }
                }
                self.out.push(b'}');
            }
            (_, value) => self.plain(value),
        }
    }

    /// Writes the answer to the next reference.
    fn answer(&mut self) {
        let id = *self
            .sites
            .next()
            .expect("the same walk finds the same references") as usize;
        let name = &self.page.refs.ids[id];
        self.page.answers[id].write(|| name, self.out);
    }

    /// Writes a key or a value that holds no reference: serde_json's own escaping and number
    /// formatting.
    fn plain<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        serde_json::to_writer(&mut *self.out, value)
            .expect("a JSON value or key always serializes into a Vec");
    }
}

/// One document of an [`EnrichedValues`], enriched, to serialize: see [`EnrichedValues::doc`].
#[derive(Debug, Clone, Copy)]
pub struct EnrichedDoc<'e> {
    page: &'e EnrichedValues<'e>,
    doc: usize,
}

impl Serialize for EnrichedDoc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sites = self.page.refs.of_doc(self.doc);
        let splices = self.page.splices(sites).map_err(S::Error::custom)?;
        let cx = Cx {
            depth: self.page.depth,
            sites,
            next: Cell::new(0),
            splices: &splices,
        };
        Node {
            value: &self.page.docs[self.doc],
            place: Place::DOCUMENT,
            cx: &cx,
        }
        .serialize(serializer)
    }
}

/// The page as a JSON array of its documents, enriched.
impl Serialize for EnrichedValues<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let splices = self.splices(&self.refs.sites).map_err(S::Error::custom)?;
        // The documents take the page's references in turn.
        let cx = Cx {
            depth: self.depth,
            sites: &self.refs.sites,
            next: Cell::new(0),
            splices: &splices,
        };
        let mut seq = serializer.serialize_seq(Some(self.docs.len()))?;
        for doc in self.docs {
            seq.serialize_element(&Node {
                value: doc,
                place: Place::DOCUMENT,
                cx: &cx,
            })?;
        }
        seq.end()
    }
}

/// What stands in for a reference, as serde_json's raw JSON.
type Splice<'s> = Cow<'s, RawValue>;

impl EnrichedValues<'_> {
    /// The JSON of each distinct id that `sites` name, indexed by id. A user borrows its stored
    /// bytes: serde_json offers no way to make a [`RawValue`] without checking the text, and
    /// the check borrows rather than copies. The stand-in objects are made here, small.
    fn splices(&self, sites: &[u32]) -> Result<Vec<Option<Splice<'_>>>, String> {
        let mut splices: Vec<Option<Splice<'_>>> = vec![None; self.refs.ids.len()];
        for &site in sites {
            let site = site as usize;
            if splices[site].is_some() {
                continue;
            }
            let id = &self.refs.ids[site];
            splices[site] = Some(match &self.answers[site] {
                Answer::Found(user) => serde_json::from_str::<&RawValue>(user.as_str())
                    .map(Cow::Borrowed)
                    .map_err(|e| format!("stored user {id:?} is not valid JSON: {e}"))?,
                stand_in => {
                    let mut bytes = Vec::new();
                    stand_in.write(|| id, &mut bytes);
                    let json = String::from_utf8(bytes).expect("ids are ASCII");
                    Cow::Owned(
                        RawValue::from_string(json).expect("the stand-in objects are valid JSON"),
                    )
                }
            });
        }
        Ok(splices)
    }
}

/// What every node of one serialization shares: the references in the order the walk meets
/// them, how far it has got, and what each distinct id is written as.
struct Cx<'s> {
    depth: Depth,
    sites: &'s [u32],
    next: Cell<usize>,
    splices: &'s [Option<Splice<'s>>],
}

impl Cx<'_> {
    /// What stands in for the next reference.
    fn splice(&self) -> &RawValue {
        let at = self.next.get();
        self.next.set(at + 1);
        let id = self.sites[at] as usize;
        self.splices[id].as_deref().expect("made for every site")
    }
}

/// A value within a document, serialized with the users spliced in: the same walk as
/// [`Writer::value`], through serde's API.
struct Node<'s> {
    value: &'s Value,
    place: Place,
    cx: &'s Cx<'s>,
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Node { value, place, cx } = *self;
        match (place.search(value, cx.depth), value) {
            (Search::Candidate, value) if referenced_id(value).is_some() => {
                cx.splice().serialize(serializer)
            }
            (Search::Elements(place), Value::Array(items)) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Node {
                        value: item,
                        place,
                        cx,
                    })?;
                }
                seq.end()
            }
            (Search::Fields(fields), Value::Object(object)) => {
                let members = Members::new(object, fields);
                let inserted = matches!(
                    fields,
                    Fields::Reaction {
                        user: UserSlot::Insert,
                        ..
                    }
                );
                let mut map =
                    serializer.serialize_map(Some(object.len() + usize::from(inserted)))?;
                for member in members {
                    match member {
                        Member::Field(key, value, place) => {
                            map.serialize_entry(key, &Node { value, place, cx })?
                        }
                        Member::User(_) => map.serialize_entry("user", cx.splice())?,
                    }
                }
                map.end()
            }
            (_, value) => value.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::UserJson;

    /// A page of one activity naming `bob`, answered with `stored` as bob's record.
    fn page_with<'a>(docs: &'a [Value], stored: &'static str) -> EnrichedValues<'a> {
        let refs = References::collect(docs, Depth::TopLevel);
        let answers = vec![Answer::Found(UserJson::from_stored(stored).unwrap().into())];
        EnrichedValues::new(docs, Depth::TopLevel, refs, answers, EnrichStats::default())
    }

    #[test]
    fn a_stored_user_is_spliced_by_serialize() {
        let docs = [serde_json::json!({"actor": "SU:bob"})];
        let valid = r#"{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"bob","data":{}}"#;
        let page = page_with(&docs, valid);
        let json = serde_json::to_string(&page).unwrap();
        assert_eq!(json, format!(r#"[{{"actor":{valid}}}]"#));
    }
}
