//! The raw-bytes path: documents are pushed into a page as bytes, each checked, scanned for
//! references and compacted in one pass (`scan`); the page's distinct ids are resolved
//! in one go; each document is then written out by splicing the answers' bytes into the gaps.
//! No document is ever turned into a DOM.

use crate::answer::Answer;
use crate::error::{Error, Result};
use crate::id::{IdList, Ids};
use crate::reference::reference_key;
use crate::scan::{Scanner, Site, SiteKind};
use crate::shape::{Depth, Role};
use crate::stats::EnrichStats;

/// What precedes a reaction's user inserted after its `user_id`.
const USER_MEMBER: &[u8] = b",\"user\":";

#[derive(Debug, Clone)]
struct Doc {
    start: usize,
    end: usize,
    sites: std::ops::Range<usize>,
}

/// A page of documents on the raw-bytes path: push documents, resolve the page's distinct ids
/// in one go ([`Enricher::enrich_page`](crate::Enricher::enrich_page), which shows a page in
/// use), then write.
#[derive(Debug, Default)]
pub struct RawPage {
    depth: Depth,
    buf: Vec<u8>,
    docs: Vec<Doc>,
    sites: Vec<Site>,
    ids: Ids,
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
    ///
    /// # Panics
    ///
    /// As [`Vec::with_capacity`] does, if that room cannot be had.
    pub fn with_capacity(depth: Depth, bytes: usize, docs: usize) -> RawPage {
        // A reference takes at least `"SU:x"` and a key: a few dozen bytes of a page at most.
        let references = (bytes / 48).max(docs.saturating_mul(4));
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
            let fault = Scanner::new(doc, &mut self.buf, self.depth, false, start)
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
            let mut scanner = Scanner::new(doc, &mut self.buf, self.depth, copy, start);
            let scanned = if first == Some(b'[') {
                scanner.document(
                    |s, sites| s.array(|s, sites| s.element(Role::Document, sites), sites),
                    &mut sites,
                )
            } else {
                scanner.document(|s, sites| s.object(Role::Document, sites), &mut sites)
            };
            let (saw_ws, activities, voids) = (scanner.saw_ws, scanner.activities, scanner.voids);
            self.sites = sites;
            self.activities += activities;
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
            if voids {
                let mut write = first_site;
                for read in first_site..self.sites.len() {
                    if self.sites[read].kind != SiteKind::Void {
                        self.sites[write] = self.sites[read];
                        write += 1;
                    }
                }
                self.sites.truncate(write);
            }
            break;
        }
        // Only the references that counted name ids the page must resolve.
        for site in &mut self.sites[first_site..] {
            let decoded;
            let id = match site.kind {
                SiteKind::Reference { escaped: true } => {
                    let token = &self.buf[site.start..site.end];
                    decoded =
                        serde_json::from_slice::<String>(token).expect("checked as a reference");
                    reference_key(&decoded)
                        .expect("checked as a reference")
                        .as_bytes()
                }
                SiteKind::Reference { escaped: false } => {
                    // "SU:<id>" or "SO:<collection>:<id>" without escapes: the key is the
                    // token less its quotes and three-character prefix.
                    let token = &self.buf[site.start..site.end];
                    &token[4..token.len() - 1]
                }
                SiteKind::User {
                    key_start,
                    key_end,
                    escaped,
                } => {
                    // A reaction's `user_id`: the user's key is the id itself.
                    let token = &self.buf[key_start..key_end];
                    if escaped {
                        decoded =
                            serde_json::from_slice::<String>(token).expect("checked as an id");
                        decoded.as_bytes()
                    } else {
                        &token[1..token.len() - 1]
                    }
                }
                SiteKind::Void => unreachable!("void sites are dropped after the scan"),
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
    pub(crate) fn ids(&self) -> &Ids {
        &self.ids
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

    /// Counts what each reference of the page was answered (missing, unavailable).
    pub(crate) fn count_answers(&self, answers: &[Answer], stats: &mut EnrichStats) {
        for site in &self.sites {
            answers[site.id as usize].count(stats);
        }
    }

    /// Writes document `doc` with every reference replaced by its answer.
    pub(crate) fn write_doc(&self, doc: usize, answers: &[Answer], out: &mut Vec<u8>) {
        let doc = &self.docs[doc];
        let mut at = doc.start;
        for site in &self.sites[doc.sites.clone()] {
            out.extend_from_slice(&self.buf[at..site.start]);
            if site.inserts() {
                out.extend_from_slice(USER_MEMBER);
            }
            answers[site.id as usize].write(|| self.ids.id(site.id as usize), out);
            at = site.end;
        }
        out.extend_from_slice(&self.buf[at..doc.end]);
    }

    /// Starts fetching the users of document `doc` (if there is one) into the cache, for a
    /// [`RawPage::write_doc`] soon after.
    pub(crate) fn prefetch_doc(&self, doc: usize, answers: &[Answer]) {
        if let Some(doc) = self.docs.get(doc) {
            for site in &self.sites[doc.sites.clone()] {
                answers[site.id as usize].prefetch();
            }
        }
    }

    /// The exact length of what [`RawPage::write_doc`] writes for document `doc`: a caller can
    /// refuse an answer over its limit before building it.
    pub(crate) fn doc_len(&self, doc: usize, answers: &[Answer]) -> usize {
        let doc = &self.docs[doc];
        let mut len = doc.end - doc.start;
        for site in &self.sites[doc.sites.clone()] {
            len -= site.end - site.start;
            if site.inserts() {
                len += USER_MEMBER.len();
            }
            len += answers[site.id as usize].len(|| self.ids.id(site.id as usize));
        }
        len
    }

    /// Sets how deep the documents pushed from now on are looked into.
    pub fn set_depth(&mut self, depth: Depth) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::MAX_DEPTH;
    use serde_json::Value;

    fn scan(doc: &str, depth: Depth) -> (String, Vec<String>) {
        let mut page = RawPage::new(depth);
        page.push_any(doc.as_bytes()).unwrap();
        let answers: Vec<Answer> = page.ids().all().map(|_| Answer::Missing).collect();
        let mut out = Vec::new();
        page.write_doc(0, &answers, &mut out);
        assert_eq!(page.doc_len(0, &answers), out.len(), "doc_len is exact");
        let ids = page.ids().all().map(|s| s.to_string()).collect();
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
    fn reaction_users_are_inserted_or_replaced_where_they_stand() {
        let doc = r#"{"actor":"SU:a","latest_reactions":{"like":[{"id":"r1","user_id":"b","kind":"like","data":{"x":"SU:z"},"latest_children":{"reply":[{"user":{"old":1},"id":"c1","user_id":"c","children_counts":{}}]},"children_counts":{"reply":1}},{"user_id":"bad id"},{"user_id":7},{"user_id":""},3,"x"],"comment":{"user_id":"d"}},"own_reactions":{"like":[{"user_id":"\u0061","user":null}]},"reaction_counts":{"like":2},"latest_reactions_extra":{"like":{"next":""}},"object":{"latest_reactions":{"like":[{"user_id":"e"}]}}}"#;
        let (out, ids) = scan(doc, Depth::TopLevel);
        assert_eq!(ids, ["a", "b", "c"]);
        let expected = format!(
            r#"{{"actor":{a},"latest_reactions":{{"like":[{{"id":"r1","user_id":"b","user":{b},"kind":"like","data":{{"x":"SU:z"}},"latest_children":{{"reply":[{{"user":{c},"id":"c1","user_id":"c","children_counts":{{}}}}]}},"children_counts":{{"reply":1}}}},{{"user_id":"bad id"}},{{"user_id":7}},{{"user_id":""}},3,"x"],"comment":{{"user_id":"d"}}}},"own_reactions":{{"like":[{{"user_id":"\u0061","user":{a}}}]}},"reaction_counts":{{"like":2}},"latest_reactions_extra":{{"like":{{"next":""}}}},"object":{{"latest_reactions":{{"like":[{{"user_id":"e"}}]}}}}}}"#,
            a = nf("a"),
            b = nf("b"),
            c = nf("c"),
        );
        assert_eq!(out, expected);
        // With white space to drop, the same.
        let spaced = doc
            .replace(",\"", " ,\n \"")
            .replace("\":", "\" : ")
            .replace("{\"", "{ \"");
        assert_eq!(scan(&spaced, Depth::TopLevel).0, expected);
        // A group's own reactions are its own; its activities' are searched.
        let group = r#"{"latest_reactions":{"like":[{"user_id":"g"}]},"activities":[{"own_reactions":{"like":[{"user":1,"user_id":"x","user":2,"user_id":"y"}]}}]}"#;
        let (out, ids) = scan(group, Depth::TopLevel);
        assert_eq!(ids, ["y"]);
        assert_eq!(
            out,
            format!(
                r#"{{"latest_reactions":{{"like":[{{"user_id":"g"}}]}},"activities":[{{"own_reactions":{{"like":[{{"user":1,"user_id":"x","user":{},"user_id":"y"}}]}}}}]}}"#,
                nf("y")
            )
        );
        // Deep: strings inside reactions count too, but not inside a `user` that is replaced.
        let (out, ids) = scan(
            r#"{"latest_reactions":{"like":[{"user":{"u":"SU:q"},"data":"SU:p","user_id":"SU:r"},{"user":"SU:s","user_id":"t"}]}}"#,
            Depth::Deep,
        );
        assert_eq!(ids, ["q", "p", "r", "t"]);
        assert_eq!(
            out,
            format!(
                r#"{{"latest_reactions":{{"like":[{{"user":{{"u":{}}},"data":{},"user_id":{}}},{{"user":{},"user_id":"t"}}]}}}}"#,
                nf("q"),
                nf("p"),
                nf("r"),
                nf("t")
            )
        );
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
        let fixture = [
            include_str!("../fixtures/activities.ndjson"),
            include_str!("../fixtures/mixed.ndjson"),
        ]
        .concat();
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
                if verdict {
                    // What is taken is written as JSON, at the length announced.
                    for depth in [Depth::TopLevel, Depth::Deep] {
                        let mut page = RawPage::new(depth);
                        page.push_any(&doc).unwrap();
                        let answers: Vec<Answer> =
                            page.ids().all().map(|_| Answer::Missing).collect();
                        let mut out = Vec::new();
                        page.write_doc(0, &answers, &mut out);
                        assert_eq!(page.doc_len(0, &answers), out.len());
                        assert!(serde_accepts(&out), "{}", String::from_utf8_lossy(&out));
                    }
                }
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
