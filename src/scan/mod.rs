//! The one JSON grammar: a document is checked against it, scanned for the strings that may
//! be references and compacted, in one pass and without a DOM. The raw-bytes path
//! ([`crate::page`]) scans its documents with it, and a stored user's data is checked with it
//! ([`crate::user::UserJson::from_stored`]).
//!
//! A document is taken exactly when serde_json would parse it into a `serde_json::Value`, so
//! the raw path and the `Value` path take the same documents: RFC 8259, with strings in UTF-8,
//! `\\u` escapes of UTF-16 surrogates in pairs, numbers within the range of an `f64`, and at
//! most [`MAX_DEPTH`] levels. Everything is copied byte for byte (numbers and string escapes as
//! they were), minus insignificant white space. Which strings may be references follows
//! [`crate::shape`]; of members with the same name the last one counts, as in a parsed
//! `Value`. `tests/grammar.rs` and the fuzz target in `fuzz/` compare the two.
//!
//! Why hand-written: no crate does this one pass. Measured by the `scan` group of
//! `benches/enrich.rs` (100k generated activities of about 150 bytes, in the job's pages of
//! 1,024 lines), against serde_json's check alone (`IgnoredAny`) as the baseline: this
//! scanner, checking, noting references, numbering the page's ids and compacting, 1.6–1.7×; the
//! same walk done with sonic-rs, a SIMD parser (its checked lazy iterator over each
//! activity's members, each value tested for a reference; no compaction, no numbering),
//! 2.2×. sonic-rs builds a whole DOM in less (1.3–1.4×; serde_json's, 5.1–5.4×), but a DOM is
//! where the work would start: its references still to be found and the document written
//! back out, which is what makes the `Value` paths slower than the raw one (BENCHMARKS.md).

mod reaction;
mod site;
mod swar;
mod token;

use std::ops::Range;

pub(crate) use self::site::{Fault, Site, SiteKind};
use self::swar::string_stop;
use self::token::{escape_len, number_in_range};
use crate::error::{Error, Result};
use crate::reference::{reference_key, reference_key_bytes};
use crate::shape::{Depth, MAX_DEPTH, Role, container};

/// Checks that `json` is one JSON object in the grammar the raw path takes, nested inside
/// `outer` levels of some enclosing document (so the whole stays within [`MAX_DEPTH`]).
pub(crate) fn check_object(json: &[u8], outer: usize) -> Result<()> {
    if json.first() != Some(&b'{') {
        return Err(Error::invalid("not an object"));
    }
    let mut out = Vec::new();
    let mut scanner = Scanner::new(json, &mut out, Depth::TopLevel, false, 0);
    scanner.level = outer;
    scanner
        .document(|s, sites| s.any(false, sites), &mut Vec::new())
        .map_err(Error::from)
}

pub(crate) type Scan<T = ()> = std::result::Result<T, Fault>;

/// Checks a JSON document against serde_json's grammar (see the module doc; UTF-8 is checked
/// inside strings, the only place bytes beyond ASCII may be) in one pass, notes the references
/// it holds, and copies it into the page's buffer without white space.
pub(crate) struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    /// Where the document is copied.
    out: &'a mut Vec<u8>,
    depth: Depth,
    /// Activities met (a group counts its activities).
    pub(crate) activities: u64,
    /// Open objects and arrays around the current position.
    level: usize,
    /// Copy as we go (the document has white space to drop), or not at all (it is compact and
    /// is copied whole at the end, so positions are `base` + its own offsets).
    copy: bool,
    base: usize,
    /// White space was skipped: a compact copy needs the copying pass.
    pub(crate) saw_ws: bool,
    /// Some sites were left [`SiteKind::Void`].
    pub(crate) voids: bool,
}

/// A string token: where it is (or will be) in the page's buffer, and in the source.
struct Token {
    out: Range<usize>,
    src: Range<usize>,
    escaped: bool,
}

impl<'a> Scanner<'a> {
    /// A scanner of `src` that copies into `out` if `copy` (or, if not, notes positions as
    /// `base` plus offsets in `src`), looking for references as deep as `depth` says.
    pub(crate) fn new(
        src: &'a [u8],
        out: &'a mut Vec<u8>,
        depth: Depth,
        copy: bool,
        base: usize,
    ) -> Self {
        Scanner {
            src,
            pos: 0,
            out,
            depth,
            activities: 0,
            level: 0,
            copy,
            base,
            saw_ws: false,
            voids: false,
        }
    }

    /// A whole document: white space, one value read by `value`, white space, the end.
    pub(crate) fn document(
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

    /// Skips white space. Inlined where the scan steps over a token, whose next byte is
    /// almost never white space in the documents a job reads.
    #[inline(always)]
    fn ws(&mut self) {
        // Every JSON white space byte is at most b' '.
        if self.src.get(self.pos).is_some_and(|&b| b > b' ') {
            return;
        }
        self.skip_ws();
    }

    fn skip_ws(&mut self) {
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
    #[inline(always)]
    fn punct(&mut self) {
        if self.copy {
            self.out.push(self.src[self.pos]);
        }
        self.pos += 1;
        self.ws();
    }

    /// Copies `byte`, which must be under the cursor.
    #[inline(always)]
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
    #[inline(always)]
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
    ///
    /// Plain ASCII text without escapes (nearly every key and value of a feed's activities) is
    /// taken here, inlined into the loops over members; anything else by the general path.
    /// (callgrind, 200k activities: the calls' entry and exit alone were 17 of the 117
    /// instructions a string cost.)
    #[inline(always)]
    fn string(&mut self) -> Scan<Token> {
        let start = self.pos;
        if self.src.get(start) == Some(&b'"') {
            let end = string_stop(self.src, start + 1, true);
            if self.src.get(end) == Some(&b'"') {
                return Ok(self.token(start, end, false));
            }
        }
        self.any_string()
    }

    /// The token from the quote at `start` to the one at `end`, copied.
    #[inline(always)]
    fn token(&mut self, start: usize, end: usize, escaped: bool) -> Token {
        let src = start..end + 1;
        let out = if self.copy {
            let out = self.out.len();
            self.out.extend_from_slice(&self.src[src.clone()]);
            out
        } else {
            self.base + start
        };
        self.pos = end + 1;
        self.ws();
        Token {
            out: out..out + src.len(),
            src,
            escaped,
        }
    }

    /// [`Scanner::string`] for any string: escapes, text beyond ASCII, or an error.
    #[inline(never)]
    fn any_string(&mut self) -> Scan<Token> {
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
        Ok(self.token(start, i, escaped))
    }

    /// A string value that may be a reference.
    #[inline(always)]
    fn candidate(&mut self, sites: &mut Vec<Site>) -> Scan {
        let token = self.string()?;
        self.note_candidate(token, sites);
        Ok(())
    }

    /// Notes a string token already read as a reference, if it reads as one.
    #[inline(always)]
    fn note_candidate(&mut self, token: Token, sites: &mut Vec<Site>) {
        let Token { out, src, escaped } = token;
        let token = &self.src[src];
        let is_ref = if escaped {
            serde_json::from_slice::<String>(token).is_ok_and(|text| reference_key(&text).is_some())
        } else {
            // Without escapes the bytes between the quotes are the text.
            reference_key_bytes(&token[1..token.len() - 1]).is_some()
        };
        if is_ref {
            sites.push(Site {
                start: out.start,
                end: out.end,
                kind: SiteKind::Reference { escaped },
                id: u32::MAX,
            });
        }
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
            self.out.extend_from_slice(&src[start..end]);
        }
        self.pos = end;
        self.ws();
        Ok(())
    }

    /// Copies any value; every string value in it is a candidate if `deep`.
    pub(crate) fn any(&mut self, deep: bool, sites: &mut Vec<Site>) -> Scan {
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
    pub(crate) fn array(
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
    pub(crate) fn element(&mut self, role: Role, sites: &mut Vec<Site>) -> Scan {
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
    pub(crate) fn object(&mut self, role: Role, sites: &mut Vec<Site>) -> Scan {
        let first = sites.len();
        let activities_before = self.activities;
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
            let items = if role == Role::Activity {
                None
            } else {
                container_key(role, &self.src[key.src.clone()], key.escaped)
            };
            self.expect(b':', "expected `:`")?;
            let slot = match items {
                Some(Role::Result) => Some(&mut results),
                Some(_) => Some(&mut activities),
                None => None,
            };
            match (slot, items, self.peek()?) {
                (Some(slot), Some(items), next) => {
                    replaced.extend(slot.take().map(|(range, _)| range));
                    if next == b'[' {
                        let (start, counted) = (sites.len(), self.activities);
                        self.array(|s, sites| s.element(items, sites), sites)?;
                        *slot = Some((start..sites.len(), self.activities - counted));
                    } else {
                        self.member(next, sites)?;
                    }
                }
                (_, _, b'{')
                    if key_in(
                        &self.src[key.src],
                        key.escaped,
                        &[b"latest_reactions", b"own_reactions"],
                    ) =>
                {
                    self.reactions(sites)?
                }
                (_, _, next) => self.member(next, sites)?,
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
            self.activities = activities_before + 1;
            return Ok(());
        };
        sites.copy_within(kept.clone(), first);
        sites.truncate(first + kept.len());
        self.activities = activities_before + counted;
        Ok(())
    }

    /// A member of an activity (or one of a container's own): a string may be a reference.
    // Inlined into the loop over an object's members, the scan's hottest path, as before
    // objects learned reactions and grew too big for the compiler to inline it on its own.
    #[inline(always)]
    fn member(&mut self, next: u8, sites: &mut Vec<Site>) -> Scan {
        match next {
            b'"' => self.candidate(sites),
            b'{' | b'[' if self.depth == Depth::Deep => self.any(true, sites),
            _ => self.any(false, sites),
        }
    }
}

/// Whether the key written as `token` (with its quotes) is one of `names`.
fn key_in(token: &[u8], escaped: bool, names: &[&[u8]]) -> bool {
    if escaped {
        serde_json::from_slice::<String>(token).is_ok_and(|key| names.contains(&key.as_bytes()))
    } else {
        let key = &token[1..token.len() - 1];
        names.contains(&key)
    }
}

/// The role of the elements of an object's member named by `token` (a key as written, with
/// its quotes), if an array there makes the object a container.
fn container_key(role: Role, token: &[u8], escaped: bool) -> Option<Role> {
    if escaped {
        let key = serde_json::from_slice::<String>(token).ok()?;
        container(role, key.as_bytes())
    } else {
        container(role, &token[1..token.len() - 1])
    }
}
