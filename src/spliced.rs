//! A page of `serde_json::Value`s written with the users spliced in: the documents stay as the
//! caller holds them, and each reference is written as the user's stored bytes, so no user is
//! ever built as a `Value`.
//!
//! Everything that is not a reference is written by serde_json itself, key by key and value by
//! value, so the output is what `serde_json::to_vec` gives for the same page enriched in place
//! by [`Enricher::enrich_values`](crate::Enricher::enrich_values).

use serde_json::Value;

use crate::page::Depth;
use crate::reference::{write_not_found, write_unavailable};
use crate::resolver::Answer;
use crate::stats::EnrichStats;
use crate::values::{Place, References, Search, referenced_id};

/// A page of documents held as `serde_json::Value`s, with its references resolved: made by
/// [`Enricher::enrich_value_page`](crate::Enricher::enrich_value_page), it writes each
/// document with the users spliced in as their stored bytes.
///
/// Use it when the enriched page is to be serialized; use
/// [`Enricher::enrich_values`](crate::Enricher::enrich_values) when the enriched values
/// themselves are to be read or edited.
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
    /// The bytes are those `serde_json::to_vec` gives for the document after
    /// [`Enricher::enrich_values`](crate::Enricher::enrich_values) — same key order, escapes
    /// and numbers — and those [`EnrichedPage::write`](crate::EnrichedPage::write) gives for
    /// the document pushed compact: a user is written as stored, a missing one as
    /// `{"error":"ReferenceNotFound",…}`, one the store could not answer for as
    /// `{"error":"ReferenceUnavailable",…}`.
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
            (Search::Candidate, value) if referenced_id(value).is_some() => {
                let id = *self
                    .sites
                    .next()
                    .expect("the same walk finds the same references")
                    as usize;
                let name = &self.page.refs.ids[id];
                match &self.page.answers[id] {
                    Answer::Found(user) => self.out.extend_from_slice(user.as_bytes()),
                    Answer::Missing => write_not_found(self.out, name),
                    Answer::Unavailable(_) => write_unavailable(self.out, name),
                }
            }
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
            (Search::Fields(fields), Value::Object(object)) => {
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
            (_, value) => self.plain(value),
        }
    }

    /// Writes a key or a value that holds no reference: serde_json's own escaping and number
    /// formatting.
    fn plain<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        serde_json::to_writer(&mut *self.out, value)
            .expect("a JSON value or key always serializes into a Vec");
    }
}
