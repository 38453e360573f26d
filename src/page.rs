//! The raw-bytes path: a page of JSON documents is validated, compacted and scanned for
//! references in one pass each, and written out by splicing the users' stored bytes into the
//! gaps. No document is ever turned into a DOM.
//!
//! Which strings are references follows Stream's shapes:
//! - a feed response (an object with a `results` array): each result is a group or an activity;
//! - a group (an object with an `activities` array): each of its activities;
//! - an activity: each top-level string value, or with [`Depth::Deep`] every string value
//!   within it.
//!
//! The own fields of responses and groups are never touched, and everything else is copied
//! byte for byte (numbers and string escapes as they were), minus insignificant white space.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;

use serde::de::IgnoredAny;

use crate::error::{Error, Result};
use crate::reference::{USER_PREFIX, user_ref, write_not_found, write_unavailable};
use crate::resolver::Answer;
use crate::user::is_valid_id;

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

/// The deepest nesting accepted, as serde_json's own limit.
pub const MAX_DEPTH: usize = 128;

/// A reference found in a page: where its string token is in the compacted buffer, and which
/// distinct id it names.
#[derive(Debug, Clone, Copy)]
struct Site {
    start: usize,
    end: usize,
    /// The token has escapes: the id is read by decoding it.
    escaped: bool,
    /// Set once the site is known to count.
    id: u32,
}

#[derive(Debug, Clone)]
struct Doc {
    start: usize,
    end: usize,
    sites: std::ops::Range<usize>,
}

/// A page of documents on the raw-bytes path: push documents, resolve the page's distinct ids
/// in one go, then write.
#[derive(Debug, Default)]
pub struct RawPage {
    depth: Depth,
    buf: Vec<u8>,
    docs: Vec<Doc>,
    sites: Vec<Site>,
    ids: Vec<Box<str>>,
    index: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    activities: u64,
}

impl RawPage {
    /// An empty page.
    pub fn new(depth: Depth) -> RawPage {
        RawPage {
            depth,
            ..RawPage::default()
        }
    }

    /// An empty page with room for about `bytes` of documents and `docs` documents.
    pub fn with_capacity(depth: Depth, bytes: usize, docs: usize) -> RawPage {
        RawPage {
            depth,
            buf: Vec::with_capacity(bytes),
            docs: Vec::with_capacity(docs),
            sites: Vec::with_capacity(docs * 4),
            ..RawPage::default()
        }
    }

    /// Adds one JSON object (a response, a group or an activity). A document that is not valid
    /// JSON, not an object, or nested too deep is refused with an error naming the problem, and
    /// the page is left as it was.
    pub fn push(&mut self, doc: &[u8]) -> Result<()> {
        self.push_checked(doc, false)
    }

    /// Like [`RawPage::push`], but also takes a JSON array of such objects.
    pub fn push_any(&mut self, doc: &[u8]) -> Result<()> {
        self.push_checked(doc, true)
    }

    fn push_checked(&mut self, doc: &[u8], allow_array: bool) -> Result<()> {
        validate(doc)?;
        let first = doc.iter().find(|b| !b.is_ascii_whitespace()).copied();
        match first {
            Some(b'{') => {}
            Some(b'[') if allow_array => {}
            _ => {
                let what = if allow_array {
                    "an object or an array"
                } else {
                    "an object"
                };
                return Err(Error::invalid(format!(
                    "not {what}: a document must be an activity, a group or a feed response"
                )));
            }
        }
        let start = self.buf.len();
        let first_site = self.sites.len();
        let activities_before = self.activities;
        // Most documents are compact: scan without copying, then copy the whole document at
        // once. One with white space to drop is scanned again, copying as it goes.
        for copy in [false, true] {
            // The scanner borrows the page; the sites vector travels beside it.
            let mut sites = std::mem::take(&mut self.sites);
            let mut scanner = Scanner {
                src: doc,
                pos: 0,
                page: self,
                level: 0,
                too_deep: false,
                copy,
                base: start,
                saw_ws: false,
            };
            scanner.ws();
            if first == Some(b'[') {
                scanner.array(|s, sites| s.element(Role::Document, sites), &mut sites);
            } else {
                scanner.object(Role::Document, &mut sites);
            }
            let (too_deep, saw_ws) = (scanner.too_deep, scanner.saw_ws);
            self.sites = sites;
            if too_deep {
                self.buf.truncate(start);
                self.sites.truncate(first_site);
                self.activities = activities_before;
                return Err(Error::invalid(format!(
                    "nesting too deep: more than {MAX_DEPTH} levels"
                )));
            }
            if !copy && saw_ws {
                self.sites.truncate(first_site);
                self.activities = activities_before;
                continue;
            }
            if !copy {
                self.buf.extend_from_slice(doc);
            }
            break;
        }
        // Only the references that counted name ids the page must resolve.
        for site in &mut self.sites[first_site..] {
            let token = &self.buf[site.start..site.end];
            let decoded;
            let id = if site.escaped {
                decoded = serde_json::from_slice::<String>(token).expect("checked as a reference");
                user_ref(&decoded).expect("checked as a reference")
            } else {
                // "SU:<id>" without escapes: the id is the token less `"SU:` and `"`.
                std::str::from_utf8(&token[4..token.len() - 1]).expect("checked as a reference")
            };
            site.id = intern(&mut self.index, &mut self.ids, id);
        }
        self.docs.push(Doc {
            start,
            end: self.buf.len(),
            sites: first_site..self.sites.len(),
        });
        Ok(())
    }

    /// Documents in the page.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Bytes held: the compacted documents.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True if no document was pushed.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The page's distinct user ids.
    pub(crate) fn ids(&self) -> &[Box<str>] {
        &self.ids
    }

    /// References found.
    pub(crate) fn references(&self) -> u64 {
        self.sites.len() as u64
    }

    /// Activities found (a group counts its activities).
    pub(crate) fn activities(&self) -> u64 {
        self.activities
    }

    /// How many references name each distinct id.
    pub(crate) fn site_counts(&self) -> Vec<u64> {
        let mut counts = vec![0; self.ids.len()];
        for site in &self.sites {
            counts[site.id as usize] += 1;
        }
        counts
    }

    /// Writes document `doc` with every reference replaced by its answer.
    pub(crate) fn write_doc(&self, doc: usize, answers: &[Answer], out: &mut Vec<u8>) {
        let doc = &self.docs[doc];
        let mut at = doc.start;
        for site in &self.sites[doc.sites.clone()] {
            out.extend_from_slice(&self.buf[at..site.start]);
            let id = &self.ids[site.id as usize];
            match &answers[site.id as usize] {
                Answer::Found(user) => out.extend_from_slice(user.as_bytes()),
                Answer::Missing => write_not_found(out, id),
                Answer::Unavailable(_) => write_unavailable(out, id),
            }
            at = site.end;
        }
        out.extend_from_slice(&self.buf[at..doc.end]);
    }

    /// Empties the page for reuse, keeping its allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.docs.clear();
        self.sites.clear();
        self.ids.clear();
        self.index.clear();
        self.activities = 0;
    }
}

/// The number of `id` among a page's distinct ids, adding it if new. The index may own its
/// keys or borrow them from the documents.
pub(crate) fn intern<'k, K>(
    index: &mut HashMap<K, u32, foldhash::fast::RandomState>,
    ids: &mut Vec<Box<str>>,
    id: &'k str,
) -> u32
where
    K: Borrow<str> + Eq + Hash + From<&'k str>,
{
    if let Some(&i) = index.get(id) {
        return i;
    }
    let i = u32::try_from(ids.len()).expect("fewer than 4 billion ids in a page");
    ids.push(id.into());
    index.insert(id.into(), i);
    i
}

/// Checks that `doc` is one JSON value and nothing else, without building it.
fn validate(doc: &[u8]) -> Result<()> {
    serde_json::from_slice::<IgnoredAny>(doc)
        .map(drop)
        .map_err(|e| {
            if e.to_string().starts_with("recursion limit exceeded") {
                Error::invalid(format!("nesting too deep: more than {MAX_DEPTH} levels"))
            } else {
                Error::invalid(format!("not valid JSON: {e}"))
            }
        })
}

/// Copies a valid JSON document into the page's buffer without white space, noting the
/// references it holds.
struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    page: &'a mut RawPage,
    /// Open objects and arrays around the current position.
    level: usize,
    /// The document nests deeper than [`MAX_DEPTH`].
    too_deep: bool,
    /// Copy as we go (the document has white space to drop), or not at all (it is compact and
    /// is copied whole at the end, so positions are `base` + its own offsets).
    copy: bool,
    base: usize,
    /// White space was skipped: a compact copy needs the copying pass.
    saw_ws: bool,
}

/// A string token: where it is (or will be) in the page's buffer, and in the source.
struct Token {
    out: Range<usize>,
    src: Range<usize>,
    escaped: bool,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
        self.saw_ws |= self.pos > start;
    }

    fn byte(&self) -> u8 {
        self.src[self.pos]
    }

    /// Copies one byte of structure (`{`, `:`, `,` …) and the white space after it, keeping
    /// count of the nesting.
    fn punct(&mut self) {
        let byte = self.src[self.pos];
        match byte {
            b'{' | b'[' => {
                self.level += 1;
                self.too_deep |= self.level > MAX_DEPTH;
            }
            b'}' | b']' => self.level -= 1,
            _ => {}
        }
        if self.copy {
            self.page.buf.push(byte);
        }
        self.pos += 1;
        self.ws();
    }

    /// Copies a string token; returns where it landed in the buffer and whether it has escapes.
    fn string(&mut self) -> Token {
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        // The document is valid JSON: the string ends at the first quote not escaped.
        while let Some(at) = memchr::memchr2(b'"', b'\\', &self.src[i..]) {
            i += at;
            if self.src[i] == b'"' {
                break;
            }
            escaped = true;
            i += 2;
        }
        let src = start..i + 1;
        let out = if self.copy {
            let out = self.page.buf.len();
            self.page.buf.extend_from_slice(&self.src[src.clone()]);
            out
        } else {
            self.base + start
        };
        self.pos = i + 1;
        self.ws();
        Token {
            out: out..out + src.len(),
            src,
            escaped,
        }
    }

    /// A string value that may be a reference.
    fn candidate(&mut self, sites: &mut Vec<Site>) {
        let Token { out, src, escaped } = self.string();
        let token = &self.src[src];
        let is_ref = if escaped {
            serde_json::from_slice::<String>(token).is_ok_and(|text| user_ref(&text).is_some())
        } else {
            // Without escapes the bytes between the quotes are the text; an id is ASCII, so
            // the bytes alone decide.
            token[1..].starts_with(USER_PREFIX.as_bytes())
                && is_valid_id(&token[1 + USER_PREFIX.len()..token.len() - 1])
        };
        if is_ref {
            sites.push(Site {
                start: out.start,
                end: out.end,
                escaped,
                id: u32::MAX,
            });
        }
    }

    /// Copies any value without looking for references.
    fn skip(&mut self) {
        match self.byte() {
            b'"' => {
                self.string();
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.byte() {
                        b'"' => {
                            self.string();
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.punct();
                    if depth == 0 {
                        break;
                    }
                }
            }
            _ => self.scalar(),
        }
    }

    /// Copies a number, `true`, `false` or `null`.
    fn scalar(&mut self) {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
        if self.copy {
            self.page.buf.extend_from_slice(&self.src[start..self.pos]);
        }
        self.ws();
    }

    /// Copies any value, taking every string value in it as a candidate (deep mode).
    fn deep(&mut self, sites: &mut Vec<Site>) {
        if self.level >= MAX_DEPTH {
            // Too deep to recurse into; `skip` copies it without recursion and flags it.
            self.skip();
            return;
        }
        match self.byte() {
            b'"' => self.candidate(sites),
            b'[' => self.array(|s, sites| s.deep(sites), sites),
            b'{' => {
                self.punct();
                while self.byte() != b'}' {
                    self.string();
                    self.punct(); // ':'
                    self.deep(sites);
                    if self.byte() == b',' {
                        self.punct();
                    }
                }
                self.punct();
            }
            _ => self.scalar(),
        }
    }

    /// Copies an array, handing each element to `element`.
    fn array(&mut self, mut element: impl FnMut(&mut Self, &mut Vec<Site>), sites: &mut Vec<Site>) {
        self.punct();
        while self.byte() != b']' {
            element(self, sites);
            if self.byte() == b',' {
                self.punct();
            }
        }
        self.punct();
    }

    /// An array element in a place where objects play `role`; anything else is copied.
    fn element(&mut self, role: Role, sites: &mut Vec<Site>) {
        if self.byte() == b'{' {
            self.object(role, sites);
        } else {
            self.skip();
        }
    }

    /// Copies an object playing `role`, and adds the references it holds to `sites`.
    ///
    /// Its own string members are noted as they come; if the object turns out to be a group or
    /// a feed response (its `activities` or `results` array may come last), only the references
    /// inside that array are kept.
    fn object(&mut self, role: Role, sites: &mut Vec<Site>) {
        let first = sites.len();
        let activities_before = self.page.activities;
        // Where each special array's references landed, and how many activities it held.
        let mut results: Option<Vec<(Range<usize>, u64)>> = None;
        let mut activities: Option<Vec<(Range<usize>, u64)>> = None;
        self.punct();
        while self.byte() != b'}' {
            let key = self.string();
            let special = if role == Role::Activity {
                None
            } else {
                special_key(&self.src[key.src], key.escaped)
            };
            self.punct(); // ':'
            match (special, self.byte()) {
                (Some(Special::Results), b'[') if role == Role::Document => {
                    let (start, counted) = (sites.len(), self.page.activities);
                    self.array(|s, sites| s.element(Role::Result, sites), sites);
                    let counted = self.page.activities - counted;
                    results
                        .get_or_insert_with(Vec::new)
                        .push((start..sites.len(), counted));
                }
                (Some(Special::Activities), b'[') => {
                    let (start, counted) = (sites.len(), self.page.activities);
                    self.array(|s, sites| s.element(Role::Activity, sites), sites);
                    let counted = self.page.activities - counted;
                    activities
                        .get_or_insert_with(Vec::new)
                        .push((start..sites.len(), counted));
                }
                (_, b'"') => self.candidate(sites),
                (_, b'{' | b'[') if self.page.depth == Depth::Deep => self.deep(sites),
                _ => self.skip(),
            }
            if self.byte() == b',' {
                self.punct();
            }
        }
        self.punct();
        let Some(kept) = results.or(activities) else {
            // An activity: all its references count.
            self.page.activities += 1;
            return;
        };
        let mut write = first;
        let mut counted = 0;
        for (range, activities) in kept {
            counted += activities;
            for read in range {
                sites[write] = sites[read];
                write += 1;
            }
        }
        sites.truncate(write);
        self.page.activities = activities_before + counted;
    }
}

enum Special {
    Results,
    Activities,
}

fn special_key(token: &[u8], escaped: bool) -> Option<Special> {
    let decoded;
    let key: &[u8] = if escaped {
        decoded = serde_json::from_slice::<String>(token).ok()?;
        decoded.as_bytes()
    } else {
        &token[1..token.len() - 1]
    };
    match key {
        b"results" => Some(Special::Results),
        b"activities" => Some(Special::Activities),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(doc: &str, depth: Depth) -> (String, Vec<String>) {
        let mut page = RawPage::new(depth);
        page.push_any(doc.as_bytes()).unwrap();
        let answers: Vec<Answer> = page.ids().iter().map(|_| Answer::Missing).collect();
        let mut out = Vec::new();
        page.write_doc(0, &answers, &mut out);
        let ids = page.ids().iter().map(|s| s.to_string()).collect();
        (String::from_utf8(out).unwrap(), ids)
    }

    fn nf(id: &str) -> String {
        format!(
            r#"{{"error":"ReferenceNotFound","reference":"SU:{id}","reference_type":"user","id":"{id}"}}"#
        )
    }

    #[test]
    fn activity_top_level_only() {
        let (out, ids) = scan(
            r#" { "actor" : "SU:a", "n": [ "SU:b", 1.50e3 ], "o":{"x":"SU:c"}, "t":"SU:bad id", "u":"SU:a" } "#,
            Depth::TopLevel,
        );
        assert_eq!(ids, ["a"]);
        assert_eq!(
            out,
            format!(
                r#"{{"actor":{},"n":["SU:b",1.50e3],"o":{{"x":"SU:c"}},"t":"SU:bad id","u":{}}}"#,
                nf("a"),
                nf("a")
            )
        );
    }

    #[test]
    fn deep_finds_every_string_value_but_not_keys() {
        let (out, ids) = scan(r#"{"n":["SU:b",{"SU:k":"SU:c"}],"a":"SU:a"}"#, Depth::Deep);
        assert_eq!(ids, ["b", "c", "a"]);
        assert_eq!(
            out,
            format!(
                r#"{{"n":[{},{{"SU:k":{}}}],"a":{}}}"#,
                nf("b"),
                nf("c"),
                nf("a")
            )
        );
    }

    #[test]
    fn groups_and_responses_keep_their_own_fields() {
        let (out, ids) = scan(
            r#"{"actor":"SU:g","activities":[{"actor":"SU:a","activities":["SU:x"]},"SU:y",3]}"#,
            Depth::TopLevel,
        );
        assert_eq!(ids, ["a"]);
        assert_eq!(
            out,
            format!(
                r#"{{"actor":"SU:g","activities":[{{"actor":{},"activities":["SU:x"]}},"SU:y",3]}}"#,
                nf("a")
            )
        );
        let (out, ids) = scan(
            r#"{"next":"SU:n","results":[{"actor":"SU:a"},{"group":"SU:g","activities":[{"o":"SU:b"}]}],"activities":[{"x":"SU:z"}]}"#,
            Depth::TopLevel,
        );
        assert_eq!(ids, ["a", "b"]);
        assert!(
            out.starts_with(r#"{"next":"SU:n","results":[{"actor":{"error""#),
            "{out}"
        );
        assert!(out.ends_with(r#""activities":[{"x":"SU:z"}]}"#), "{out}");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let (out, ids) = scan(
            r#"{"a":"SU:\u0061l","b":"x\"SU:y","c":"\u00e9"}"#,
            Depth::TopLevel,
        );
        assert_eq!(ids, ["al"]);
        assert_eq!(
            out,
            format!(r#"{{"a":{},"b":"x\"SU:y","c":"\u00e9"}}"#, nf("al"))
        );
    }

    #[test]
    fn bad_documents_are_refused_and_leave_the_page_alone() {
        let mut page = RawPage::new(Depth::TopLevel);
        for (doc, expected) in [
            ("{\"a\":", "not valid JSON"),
            ("[1]", "not an object"),
            ("\"SU:a\"", "not an object"),
            ("{} x", "not valid JSON"),
            ("", "not valid JSON"),
        ] {
            let err = page.push(doc.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expected), "{doc}: {err}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(
            page.push(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("nesting too deep")
        );
        assert!(page.is_empty());
    }
}
