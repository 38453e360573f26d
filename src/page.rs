//! The raw-bytes path: each document of a page is checked against the JSON grammar, scanned for
//! references and compacted in one pass, and written out by splicing the users' stored bytes
//! into the gaps. No document is ever turned into a DOM.
//!
//! Which strings are references follows Stream's shapes:
//! - a feed response (an object with a `results` array): each result is a group or an activity;
//! - a group (an object with an `activities` array): each of its activities;
//! - an activity: each top-level string value, or with [`Depth::Deep`] every string value
//!   within it.
//!
//! The own fields of responses and groups are never touched, and everything else is copied
//! byte for byte (numbers and string escapes as they were), minus insignificant white space.
//! Of members with the same name the last one counts, as in a parsed `Value`.
//!
//! A document is taken exactly when serde_json would parse it into a `serde_json::Value`, so
//! the raw path and the `Value` path take the same documents: RFC 8259, with strings in UTF-8,
//! `\u` escapes of UTF-16 surrogates in pairs, numbers within the range of an `f64`, and at
//! most [`MAX_DEPTH`] levels. `tests/grammar.rs` and the fuzz target in `fuzz/` compare the two.

use std::ops::Range;

use hashbrown::HashTable;

use crate::error::{Error, Result};
use crate::reference::{USER_PREFIX, user_ref, write_not_found, write_unavailable};
use crate::resolver::Answer;
use crate::user::{id_hash, is_valid_id};

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
    ids: Ids,
    activities: u64,
}

/// A page's distinct ids, numbered in order of first appearance.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    ids: Vec<Box<str>>,
    /// The [`id_hash`] of each id.
    hashes: Vec<u64>,
    /// Each id's number, found by its hash.
    index: HashTable<u32>,
}

impl Ids {
    fn with_capacity(ids: usize) -> Ids {
        Ids {
            ids: Vec::with_capacity(ids),
            hashes: Vec::with_capacity(ids),
            index: HashTable::with_capacity(ids),
        }
    }

    /// The number of `id`, adding it if new.
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        let hash = id_hash(id);
        let (ids, hashes) = (&self.ids, &self.hashes);
        match self
            .index
            .entry(hash, |&i| *ids[i as usize] == *id, |&i| hashes[i as usize])
        {
            hashbrown::hash_table::Entry::Occupied(known) => *known.get(),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let i = u32::try_from(self.ids.len()).expect("fewer than 4 billion ids in a page");
                slot.insert(i);
                self.ids.push(id.into());
                self.hashes.push(hash);
                i
            }
        }
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.hashes.clear();
        self.index.clear();
    }

    /// The ids, in order of their numbers.
    pub(crate) fn into_ids(self) -> Vec<Box<str>> {
        self.ids
    }
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
        // A reference takes at least `"SU:x"` and a key: a few dozen bytes of a page at most.
        let references = (bytes / 48).max(docs * 4);
        RawPage {
            depth,
            buf: Vec::with_capacity(bytes),
            docs: Vec::with_capacity(docs),
            sites: Vec::with_capacity(references),
            ids: Ids::with_capacity(references.min(1 << 16)),
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
        // JSON's white space only: a form feed before the `{` is not.
        let first = doc
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .copied();
        let start = self.buf.len();
        let first_site = self.sites.len();
        let activities_before = self.activities;
        let unwind = |page: &mut RawPage| {
            page.buf.truncate(start);
            page.sites.truncate(first_site);
            page.activities = activities_before;
        };
        if !matches!((first, allow_array), (Some(b'{'), _) | (Some(b'['), true)) {
            // Valid JSON of the wrong kind, or not JSON at all: say which.
            let mut sites = Vec::new();
            let fault = Scanner::new(doc, self, false, start)
                .document(|s, _| s.any(false, &mut Vec::new()), &mut sites);
            unwind(self);
            let what = if allow_array {
                "an object or an array"
            } else {
                "an object"
            };
            return Err(match fault {
                Ok(()) => Error::invalid(format!(
                    "not {what}: a document must be an activity, a group or a feed response"
                )),
                Err(fault) => fault.into(),
            });
        }
        // Most documents are compact: scan without copying, then copy the whole document at
        // once. One with white space to drop is scanned again, copying as it goes.
        for copy in [false, true] {
            // The scanner borrows the page; the sites vector travels beside it.
            let mut sites = std::mem::take(&mut self.sites);
            let mut scanner = Scanner::new(doc, self, copy, start);
            let scanned = if first == Some(b'[') {
                scanner.document(
                    |s, sites| s.array(|s, sites| s.element(Role::Document, sites), sites),
                    &mut sites,
                )
            } else {
                scanner.document(|s, sites| s.object(Role::Document, sites), &mut sites)
            };
            let saw_ws = scanner.saw_ws;
            self.sites = sites;
            if let Err(fault) = scanned {
                unwind(self);
                return Err(fault.into());
            }
            if !copy && saw_ws {
                unwind(self);
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
            site.id = self.ids.intern(id);
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
        &self.ids.ids
    }

    /// The [`id_hash`] of each of [`RawPage::ids`].
    pub(crate) fn id_hashes(&self) -> &[u64] {
        &self.ids.hashes
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
        let mut counts = vec![0; self.ids.ids.len()];
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
            let id = &self.ids.ids[site.id as usize];
            match &answers[site.id as usize] {
                Answer::Found(user) => out.extend_from_slice(user.as_bytes()),
                Answer::Missing => write_not_found(out, id),
                Answer::Unavailable(_) => write_unavailable(out, id),
            }
            at = site.end;
        }
        out.extend_from_slice(&self.buf[at..doc.end]);
    }

    /// The exact length of what [`RawPage::write_doc`] writes for document `doc`: a caller can
    /// refuse an answer over its limit before building it.
    pub(crate) fn doc_len(&self, doc: usize, answers: &[Answer]) -> usize {
        let doc = &self.docs[doc];
        let mut len = doc.end - doc.start;
        for site in &self.sites[doc.sites.clone()] {
            len -= site.end - site.start;
            let id = &self.ids.ids[site.id as usize];
            len += match &answers[site.id as usize] {
                Answer::Found(user) => user.as_bytes().len(),
                Answer::Missing => crate::reference::error_len(true, id),
                Answer::Unavailable(_) => crate::reference::error_len(false, id),
            };
        }
        len
    }

    /// Sets how deep the documents pushed from now on are looked into.
    pub(crate) fn set_depth(&mut self, depth: Depth) {
        self.depth = depth;
    }

    /// Empties the page for reuse, keeping its allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.docs.clear();
        self.sites.clear();
        self.ids.clear();
        self.activities = 0;
    }
}

/// Checks that `json` is one JSON object in the grammar the raw path takes, nested inside
/// `outer` levels of some enclosing document (so the whole stays within [`MAX_DEPTH`]).
pub(crate) fn check_object(json: &[u8], outer: usize) -> Result<()> {
    if json.first() != Some(&b'{') {
        return Err(Error::invalid("not an object"));
    }
    let mut page = RawPage::default();
    let mut scanner = Scanner::new(json, &mut page, false, 0);
    scanner.level = outer;
    scanner
        .document(|s, sites| s.any(false, sites), &mut Vec::new())
        .map_err(Error::from)
}

/// Why a document was refused.
#[derive(Debug)]
enum Fault {
    /// Not JSON: what was wrong, at which byte.
    Syntax { what: &'static str, at: usize },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Error {
        match fault {
            Fault::Syntax { what, at } => {
                Error::invalid(format!("not valid JSON: {what} at byte {}", at + 1))
            }
            Fault::TooDeep => {
                Error::invalid(format!("nesting too deep: more than {MAX_DEPTH} levels"))
            }
        }
    }
}

type Scan<T = ()> = std::result::Result<T, Fault>;

/// Checks a JSON document against serde_json's grammar (see the module doc; UTF-8 is checked
/// inside strings, the only place bytes beyond ASCII may be) in one pass, notes the references
/// it holds, and copies it into the page's buffer without white space.
struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    page: &'a mut RawPage,
    /// Open objects and arrays around the current position.
    level: usize,
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

/// Where the string body starting at `from` stops being plain text: the first `"`, `\\` or
/// control character at or after `from` (or byte beyond ASCII, if `ascii`), or `src.len()`.
/// Looks at eight bytes at a time: most strings are short and a call into a general byte
/// search costs more than it saves.
///
/// The word-at-a-time test is SWAR ("SIMD within a register"): Alan Mycroft's zero-byte test,
/// `(v - 0x01…01) & !v & 0x80…80`, as collected in Sean Eron Anderson's *Bit Twiddling Hacks*
/// ("Determine if a word has a zero byte", and its variants "has a byte equal to n", by XOR
/// with `n` in every byte, and "has a byte less than n", here n = 0x20). serde_json's
/// `SliceRead::skip_to_escape` combines the same three tests to find the end of a string's
/// plain text; the high-bit test for bytes beyond ASCII is ours.
fn string_stop(src: &[u8], from: usize, ascii: bool) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = from;
    while let Some(word) = src.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte is flagged if it is below 0x20, or zero once XORed with `"` or `\\`. Borrows
        // run from low bytes to high ones (the word is read little-endian), so they can flag a
        // byte after a true one, never before it: the lowest flag is exact.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let flags = (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
            | zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
            | if ascii { word & HIGH } else { 0 };
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while src
        .get(i)
        .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20 && (b < 0x80 || !ascii))
    {
        i += 1;
    }
    i
}

/// The length of the escape at `src[at]` (a `\`), or why it is refused.
///
/// serde_json decodes every string it puts in a `Value`, so it refuses a `\u` escape of a
/// UTF-16 surrogate unless a leading one (D800–DBFF) is followed at once by an escaped trailing
/// one (DC00–DFFF): such text has no UTF-8 form. The grammar alone would take them.
fn escape_len(src: &[u8], at: usize) -> std::result::Result<usize, &'static str> {
    const UNPAIRED: &str = "unpaired UTF-16 surrogate in a \\u escape";
    match src.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
        Some(b'u') => match hex4(src, at + 2) {
            None => Err("invalid escape"),
            Some(0xD800..=0xDBFF) => match (src.get(at + 6..at + 8), hex4(src, at + 8)) {
                (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => Ok(12),
                _ => Err(UNPAIRED),
            },
            Some(0xDC00..=0xDFFF) => Err(UNPAIRED),
            Some(_) => Ok(6),
        },
        _ => Err("invalid escape"),
    }
}

/// The four hex digits at `src[at..]` as a number.
fn hex4(src: &[u8], at: usize) -> Option<u16> {
    src.get(at..at + 4)?.iter().try_fold(0u16, |n, &digit| {
        Some(n << 4 | char::from(digit).to_digit(16)? as u16)
    })
}

/// Whether a number that passed the grammar is one serde_json takes, checked only where it
/// could be out of range.
///
/// serde_json reads a number with a fraction, an exponent or more digits than 64 bits hold as
/// an `f64`, and refuses one that overflows (one that underflows becomes 0). It keeps the
/// leading digits that fit in a `u64` (at least 19) and scales them by a power of ten: the
/// integer digits beyond those, plus the exponent, less the fraction digits kept. With at most
/// 200 integer digits and an exponent under 100 that power is at most 10^280, and
/// 2^64 × 10^280 is far below `f64::MAX`: only a number with more integer digits or a positive
/// exponent of three digits or more can overflow. Those few are handed to serde_json itself:
/// near `f64::MAX` its approximate scaling decides, and which way depends on its version and
/// features (`float_roundtrip`), so no copy of its rule could stay exact.
fn number_in_range(number: &[u8], int_digits: usize, exponent: Option<(bool, usize)>) -> bool {
    let may_overflow =
        int_digits > 200 || exponent.is_some_and(|(positive, digits)| positive && digits > 2);
    !may_overflow || serde_json::from_slice::<serde_json::Number>(number).is_ok()
}

impl<'a> Scanner<'a> {
    fn new(src: &'a [u8], page: &'a mut RawPage, copy: bool, base: usize) -> Self {
        Scanner {
            src,
            pos: 0,
            page,
            level: 0,
            copy,
            base,
            saw_ws: false,
        }
    }

    /// A whole document: white space, one value read by `value`, white space, the end.
    fn document(
        &mut self,
        value: impl FnOnce(&mut Self, &mut Vec<Site>) -> Scan,
        sites: &mut Vec<Site>,
    ) -> Scan {
        self.ws();
        value(self, sites)?;
        if self.pos < self.src.len() {
            return self.fail("trailing characters");
        }
        Ok(())
    }

    fn fail<T>(&self, what: &'static str) -> Scan<T> {
        Err(Fault::Syntax { what, at: self.pos })
    }

    fn peek(&self) -> Scan<u8> {
        match self.src.get(self.pos) {
            Some(&byte) => Ok(byte),
            None => self.fail("unexpected end"),
        }
    }

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

    /// Copies the structural byte under the cursor and the white space after it.
    fn punct(&mut self) {
        if self.copy {
            self.page.buf.push(self.src[self.pos]);
        }
        self.pos += 1;
        self.ws();
    }

    /// Copies `byte`, which must be under the cursor.
    fn expect(&mut self, byte: u8, what: &'static str) -> Scan {
        if self.peek()? != byte {
            return self.fail(what);
        }
        self.punct();
        Ok(())
    }

    /// Opens an object or an array, keeping count of the nesting.
    fn open(&mut self) -> Scan {
        self.level += 1;
        if self.level > MAX_DEPTH {
            return Err(Fault::TooDeep);
        }
        self.punct();
        Ok(())
    }

    /// After a member or an element: a comma (`true`: another follows) or `close`.
    fn more(&mut self, close: u8, what: &'static str) -> Scan<bool> {
        match self.peek()? {
            b',' => {
                self.punct();
                Ok(true)
            }
            byte if byte == close => {
                self.level -= 1;
                self.punct();
                Ok(false)
            }
            _ => self.fail(what),
        }
    }

    /// Copies a string token; returns where it landed in the buffer and whether it has escapes.
    fn string(&mut self) -> Scan<Token> {
        if self.peek()? != b'"' {
            return self.fail("expected a string");
        }
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        // Only strings may hold bytes beyond ASCII (anywhere else they break the grammar), so
        // UTF-8 is checked here, and only for the strings that have such bytes.
        let mut ascii = true;
        loop {
            i = string_stop(self.src, i, ascii);
            match self.src.get(i) {
                Some(b'"') => break,
                Some(0x80..) => ascii = false,
                Some(b'\\') => {
                    escaped = true;
                    match escape_len(self.src, i) {
                        Ok(len) => i += len,
                        Err(what) => {
                            self.pos = i;
                            return self.fail(what);
                        }
                    }
                }
                Some(_) => {
                    self.pos = i;
                    return self.fail("control character in a string");
                }
                None => {
                    self.pos = i;
                    return self.fail("unterminated string");
                }
            }
        }
        if !ascii && let Err(e) = std::str::from_utf8(&self.src[start + 1..i]) {
            self.pos = start + 1 + e.valid_up_to();
            return self.fail("not UTF-8");
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
        Ok(Token {
            out: out..out + src.len(),
            src,
            escaped,
        })
    }

    /// A string value that may be a reference.
    fn candidate(&mut self, sites: &mut Vec<Site>) -> Scan {
        let Token { out, src, escaped } = self.string()?;
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
        Ok(())
    }

    /// Copies a number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Scan {
        let start = self.pos;
        let src = self.src;
        let digits = |mut i: usize| {
            while src.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let end = match src[start] {
            b't' if src[start..].starts_with(b"true") => start + 4,
            b'f' if src[start..].starts_with(b"false") => start + 5,
            b'n' if src[start..].starts_with(b"null") => start + 4,
            b'-' | b'0'..=b'9' => {
                let int_start = start + usize::from(src[start] == b'-');
                let mut i = match src.get(int_start) {
                    Some(b'0') => int_start + 1,
                    Some(b'1'..=b'9') => digits(int_start + 1),
                    _ => return self.fail("invalid number"),
                };
                let int_digits = i - int_start;
                if src.get(i) == Some(&b'.') {
                    let after = digits(i + 1);
                    if after == i + 1 {
                        self.pos = after;
                        return self.fail("invalid number");
                    }
                    i = after;
                }
                let mut exponent = None;
                if matches!(src.get(i), Some(b'e' | b'E')) {
                    let positive = src.get(i + 1) != Some(&b'-');
                    i += 1 + usize::from(matches!(src.get(i + 1), Some(b'+' | b'-')));
                    let after = digits(i);
                    if after == i {
                        self.pos = after;
                        return self.fail("invalid number");
                    }
                    exponent = Some((positive, after - i));
                    i = after;
                }
                if !number_in_range(&src[start..i], int_digits, exponent) {
                    return self.fail("number out of range");
                }
                i
            }
            _ => return self.fail("expected a value"),
        };
        if self.copy {
            self.page.buf.extend_from_slice(&src[start..end]);
        }
        self.pos = end;
        self.ws();
        Ok(())
    }

    /// Copies any value; every string value in it is a candidate if `deep`.
    fn any(&mut self, deep: bool, sites: &mut Vec<Site>) -> Scan {
        match self.peek()? {
            b'"' if deep => self.candidate(sites),
            b'"' => self.string().map(drop),
            b'[' => self.array(|s, sites| s.any(deep, sites), sites),
            b'{' => {
                self.open()?;
                if self.peek()? == b'}' {
                    return self.more(b'}', "").map(drop);
                }
                loop {
                    self.string()?;
                    self.expect(b':', "expected `:`")?;
                    self.any(deep, sites)?;
                    if !self.more(b'}', "expected `,` or `}`")? {
                        return Ok(());
                    }
                }
            }
            _ => self.scalar(),
        }
    }

    /// Copies an array, handing each element to `element`.
    fn array(
        &mut self,
        mut element: impl FnMut(&mut Self, &mut Vec<Site>) -> Scan,
        sites: &mut Vec<Site>,
    ) -> Scan {
        self.open()?;
        if self.peek()? == b']' {
            return self.more(b']', "").map(drop);
        }
        loop {
            element(self, sites)?;
            if !self.more(b']', "expected `,` or `]`")? {
                return Ok(());
            }
        }
    }

    /// An array element in a place where objects play `role`; anything else is copied.
    fn element(&mut self, role: Role, sites: &mut Vec<Site>) -> Scan {
        if self.peek()? == b'{' {
            self.object(role, sites)
        } else {
            self.any(false, sites)
        }
    }

    /// Copies an object playing `role`, and adds the references it holds to `sites`.
    ///
    /// Its own string members are noted as they come; if the object turns out to be a group or
    /// a feed response (its `activities` or `results` array may come last), only the references
    /// inside that array are kept.
    ///
    /// Of members with the same name the last one counts, as in a parsed `Value`: an earlier
    /// `results` or `activities` (array or not) is written out but never looked at by a reader,
    /// so its references do not count, and a last one that is not an array makes no container.
    fn object(&mut self, role: Role, sites: &mut Vec<Site>) -> Scan {
        let first = sites.len();
        let activities_before = self.page.activities;
        // Where the last special array of each name put its references, and how many
        // activities it held; and where the arrays that a later member replaced put theirs.
        let mut results: Option<(Range<usize>, u64)> = None;
        let mut activities: Option<(Range<usize>, u64)> = None;
        let mut replaced: Vec<Range<usize>> = Vec::new();
        self.open()?;
        let mut more = self.peek()? != b'}';
        if !more {
            self.more(b'}', "")?;
        }
        while more {
            let key = self.string()?;
            let special = match role {
                Role::Activity => None,
                Role::Document => special_key(&self.src[key.src], key.escaped),
                // Only a document can be a feed response.
                Role::Result => special_key(&self.src[key.src], key.escaped)
                    .filter(|s| matches!(s, Special::Activities)),
            };
            self.expect(b':', "expected `:`")?;
            let slot = match special {
                Some(Special::Results) => Some(&mut results),
                Some(Special::Activities) => Some(&mut activities),
                None => None,
            };
            match (slot, self.peek()?) {
                (Some(slot), next) => {
                    replaced.extend(slot.take().map(|(range, _)| range));
                    if next == b'[' {
                        let items = match special {
                            Some(Special::Results) => Role::Result,
                            _ => Role::Activity,
                        };
                        let (start, counted) = (sites.len(), self.page.activities);
                        self.array(|s, sites| s.element(items, sites), sites)?;
                        *slot = Some((start..sites.len(), self.page.activities - counted));
                    } else {
                        self.member(next, sites)?;
                    }
                }
                (None, next) => self.member(next, sites)?,
            }
            more = self.more(b'}', "expected `,` or `}`")?;
        }
        let Some((kept, counted)) = results.or(activities) else {
            // An activity: all its references count, but those of replaced members.
            if !replaced.is_empty() {
                let mut write = first;
                for read in first..sites.len() {
                    if !replaced.iter().any(|range| range.contains(&read)) {
                        sites[write] = sites[read];
                        write += 1;
                    }
                }
                sites.truncate(write);
            }
            self.page.activities = activities_before + 1;
            return Ok(());
        };
        sites.copy_within(kept.clone(), first);
        sites.truncate(first + kept.len());
        self.page.activities = activities_before + counted;
        Ok(())
    }

    /// A member of an activity (or one of a container's own): a string may be a reference.
    fn member(&mut self, next: u8, sites: &mut Vec<Site>) -> Scan {
        match next {
            b'"' => self.candidate(sites),
            b'{' | b'[' if self.page.depth == Depth::Deep => self.any(true, sites),
            _ => self.any(false, sites),
        }
    }
}

#[derive(Clone, Copy)]
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
    use serde_json::Value;

    fn scan(doc: &str, depth: Depth) -> (String, Vec<String>) {
        let mut page = RawPage::new(depth);
        page.push_any(doc.as_bytes()).unwrap();
        let answers: Vec<Answer> = page.ids().iter().map(|_| Answer::Missing).collect();
        let mut out = Vec::new();
        page.write_doc(0, &answers, &mut out);
        assert_eq!(page.doc_len(0, &answers), out.len(), "doc_len is exact");
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

    /// Of members with the same name, the last one counts, as it does in a parsed `Value`.
    #[test]
    fn the_last_of_members_with_the_same_name_counts() {
        for (doc, expected) in [
            // A last `results` that is not an array: an activity.
            (
                r#"{"results":[{"actor":"SU:a"}],"results":5,"actor":"SU:b"}"#,
                ["b"].as_slice(),
            ),
            (
                r#"{"activities":[{"x":"SU:a"}],"activities":"SU:c","actor":"SU:b"}"#,
                &["c", "b"],
            ),
            // A last one that is an array: a container, of that array alone.
            (
                r#"{"results":5,"results":[{"actor":"SU:a"}],"actor":"SU:b"}"#,
                &["a"],
            ),
            (
                r#"{"activities":[{"x":"SU:a"}],"activities":[{"x":"SU:b"}]}"#,
                &["b"],
            ),
            (
                r#"{"results":[{"x":"SU:a"}],"activities":[{"x":"SU:b"}],"results":[]}"#,
                &[],
            ),
            // Only a document is a feed response: in a result, `results` is a plain member.
            (
                r#"{"results":[{"activities":[{"x":"SU:a"}],"results":"SU:b","activities":{}}]}"#,
                &["b"],
            ),
        ] {
            let (out, ids) = scan(doc, Depth::TopLevel);
            assert_eq!(ids, expected, "{doc}");
            let mut page = RawPage::new(Depth::TopLevel);
            page.push(doc.as_bytes()).unwrap();
            assert_eq!(page.references(), expected.len() as u64, "{doc}");
            assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
        }
        let mut page = RawPage::new(Depth::TopLevel);
        page.push(br#"{"activities":[{},{}],"activities":5}"#)
            .unwrap();
        assert_eq!(page.activities(), 1);
        page.push(br#"{"activities":[{},{}],"activities":[{}]}"#)
            .unwrap();
        assert_eq!(page.activities(), 2);
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

    /// serde_json's verdict on a document: whether it parses into a `Value`. (Parsing into
    /// `IgnoredAny` is not the same: it checks neither UTF-8, nor escaped surrogates, nor the
    /// range of numbers.)
    fn serde_accepts(doc: &[u8]) -> bool {
        serde_json::from_slice::<Value>(doc).is_ok()
    }

    fn accepts(doc: &[u8]) -> bool {
        RawPage::new(Depth::Deep).push_any(doc).is_ok()
    }

    #[test]
    fn string_stop_finds_the_first_quote_backslash_or_control_character() {
        let slow = |src: &[u8], from: usize, ascii: bool| {
            (from..src.len())
                .find(|&i| matches!(src[i], b'"' | b'\\' | 0..0x20) || (ascii && src[i] >= 0x80))
                .unwrap_or(src.len())
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5c, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for len in 0..40 {
            for _ in 0..200 {
                let src: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        // Mostly plain text, so stops land anywhere in a word.
                        if state.is_multiple_of(8) {
                            bytes[(state >> 8) as usize % bytes.len()]
                        } else {
                            b'x'
                        }
                    })
                    .collect();
                for from in 0..=len {
                    for ascii in [false, true] {
                        assert_eq!(
                            string_stop(&src, from, ascii),
                            slow(&src, from, ascii),
                            "{src:?} from {from}, {ascii}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_grammar_is_json_s() {
        let docs: &[&str] = &[
            r#"{}"#,
            r#"[]"#,
            r#" { } "#,
            r#"{"a":1}"#,
            r#"{"a":[1,2,{"b":null}]}"#,
            r#"{"a":-0}"#,
            r#"{"a":-0.5e+10}"#,
            r#"{"a":1E5}"#,
            r#"{"a":0.1}"#,
            r#"{"a":true,"b":false}"#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            "{\"é\":\"ü€😀\"}",
            // Refused:
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":0x10}"#,
            r#"{"a":NaN}"#,
            r#"{"a":Infinity}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":nul}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"[,1]"#,
            r#"{,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{a:1}"#,
            r#"{'a':1}"#,
            r#"{"a":'b'}"#,
            r#"{1:2}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{"a":"b}"#,
            r#"{"a":"b\"}"#,
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"nl\nhere\"}",
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1}}"#,
            r#"{"a":1}{}"#,
            r#"{"a":[1}"#,
            r#"{"a":{]}"#,
            r#"{"a""#,
            r#"{"#,
            r#"["#,
            r#"{"a":"#,
            "{\"a\":1}\u{0}",
            "\u{feff}{}",
            "{\"a\":\u{c}1}",
            "\u{c}{}",
            // serde_json decodes every string into UTF-8: surrogates must pair.
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\udc00\ud800"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"a":"\ud800\n"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":"\ud800\"}"#,
            r#"{"a":"\ud800\u"}"#,
            r#"{"a":"\ud800\udc0"}"#,
            r#"{"a":"x\uDBFF\uDFFFy"}"#,
            r#"{"a":"\uD7FF\uE000"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":["SU:\ud800"]}"#,
            // Numbers must fit an f64 (underflow is taken, as 0).
            r#"{"a":1E400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":1e309}"#,
            r#"{"a":1e308}"#,
            r#"{"a":1.7976931348623157e308}"#,
            r#"{"a":1.7976931348623159e308}"#,
            r#"{"a":17976931348623157e292}"#,
            r#"{"a":0.1e309}"#,
            r#"{"a":10e307}"#,
            r#"{"a":100e307}"#,
            r#"{"a":1e+0400}"#,
            r#"{"a":1e-400}"#,
            r#"{"a":-1e-99999999999999}"#,
            r#"{"a":0e99999999999999}"#,
            r#"{"a":1e99999999999999}"#,
            r#"{"a":0.0e400}"#,
            r#"{"a":1e99}"#,
            r#"{"a":123456789012345678901234567890e99}"#,
        ];
        for doc in docs {
            let verdict = accepts(doc.as_bytes());
            assert_eq!(verdict, serde_accepts(doc.as_bytes()), "{doc}");
            assert_eq!(verdict, serde_json::from_str::<Value>(doc).is_ok(), "{doc}");
        }
        // Long integers become f64s: in range up to 309 digits, out of range beyond.
        for digits in [19, 20, 21, 200, 201, 208, 209, 300, 308, 309, 310, 400] {
            for (lead, exp) in [
                ("1", ""),
                ("9", ""),
                ("1", "e99"),
                ("9", "e-99"),
                ("9", ".5"),
            ] {
                let doc = format!(r#"{{"a":{lead}{}{exp}}}"#, "0".repeat(digits - 1));
                assert_eq!(
                    accepts(doc.as_bytes()),
                    serde_accepts(doc.as_bytes()),
                    "{doc}"
                );
            }
        }
        for exp in 280..330 {
            for mantissa in ["1", "9.9", "17976931348623157", "0.00001", "0", "-1.8"] {
                let doc = format!(r#"{{"a":{mantissa}e{exp}}}"#);
                assert_eq!(
                    accepts(doc.as_bytes()),
                    serde_accepts(doc.as_bytes()),
                    "{doc}"
                );
            }
        }
        assert!(!accepts(b"{\"a\":\"\xff\"}") && !serde_accepts(b"{\"a\":\"\xff\"}"));
        assert!(!accepts(b"{\"a\":\"\xc3\"}"));
        assert!(!accepts(b"{\"a\xc3\xa9\":1,\"\xe9\":2}"));
        assert!(!accepts(b"{\"a\":1}\xc3\xa9"));
        let err = RawPage::new(Depth::TopLevel)
            .push(b"{\"a\":\"\xc3\xa9\xc3\"}")
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8 at byte 9"), "{err}");
        // The nesting limit is serde_json's.
        for levels in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1] {
            let doc = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            let verdict = accepts(doc.as_bytes());
            assert_eq!(
                verdict,
                serde_json::from_str::<Value>(&doc).is_ok(),
                "{levels}"
            );
            assert_eq!(verdict, levels <= MAX_DEPTH, "{levels}");
        }
    }

    /// Every fixture line, and thousands of corruptions of them (bytes changed, dropped or
    /// doubled at random places), get the same verdict from the scanner as from serde_json.
    #[test]
    fn the_scanner_agrees_with_serde_json_on_corrupted_documents() {
        let fixture = include_str!("../fixtures/activities.ndjson");
        let alphabet = b"{}[]:,\"\\ \t0123456789-+.eEtrufalsn\x01\xff\xc3u";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for line in fixture.lines() {
            assert!(accepts(line.as_bytes()), "{line}");
            for _ in 0..300 {
                let mut doc = line.as_bytes().to_vec();
                for _ in 0..1 + random(3) {
                    let at = random(doc.len());
                    match random(3) {
                        0 => doc[at] = alphabet[random(alphabet.len())],
                        1 => {
                            doc.remove(at);
                        }
                        _ => doc.insert(at, doc[at]),
                    }
                    if doc.is_empty() {
                        break;
                    }
                }
                let verdict = accepts(&doc);
                assert_eq!(
                    verdict,
                    serde_accepts(&doc),
                    "{}",
                    String::from_utf8_lossy(&doc)
                );
                if verdict { accepted += 1 } else { refused += 1 }
            }
        }
        assert!(accepted > 100 && refused > 1000, "{accepted} / {refused}");
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
