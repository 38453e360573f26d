//! The differential oracle for the raw-bytes path, shared by `tests/grammar.rs` and the fuzz
//! target `fuzz/fuzz_targets/raw_vs_serde.rs`: any bytes go to [`RawPage`] and to serde_json,
//! and both must take the same documents and mean the same by them.
//!
//! - Verdict: [`RawPage::push`] takes a document exactly when serde_json parses it into a
//!   `Value` that is an object; [`RawPage::push_any`] when it is an object or an array.
//! - Output, without references: the input byte for byte, less the white space outside
//!   strings (numbers and escapes as written).
//! - Output, with references: parsed, the same `Value` as the `Value` path
//!   ([`Enricher::enrich_values`]) makes of the parsed input, over the same store.
#![allow(dead_code, unreachable_pub)]

use enrich::{Depth, Enricher, NewUser, RawPage, StoreOptions, store};
use serde_json::Value;

/// Users the oracle's store holds, so that found users are spliced as well as missing ones.
pub const USERS: [&str; 3] = ["u0", "u1", "u2"];

/// An enricher over a memory store holding [`USERS`], and a runtime to drive it.
pub struct Oracle {
    rt: tokio::runtime::Runtime,
    enricher: Enricher,
}

impl Default for Oracle {
    fn default() -> Self {
        Oracle::new()
    }
}

impl Oracle {
    /// A fresh store and enricher.
    pub fn new() -> Oracle {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let enricher = rt.block_on(async {
            let store = store::open("memory:", &StoreOptions::new()).await.unwrap();
            for (i, id) in USERS.iter().enumerate() {
                let data = serde_json::json!({"n": i, "s": "é\"\n\u{1F600}", "x": [1.5e3, null]});
                store
                    .add(&NewUser::new(id, Some(data)).unwrap(), false)
                    .await
                    .unwrap();
            }
            Enricher::new(store)
        });
        Oracle { rt, enricher }
    }

    /// Checks `doc` both ways, as a document and as a document or array, at `depth`; panics
    /// naming the disagreement. Returns whether serde_json took it (as any value).
    pub fn check(&self, doc: &[u8], depth: Depth) -> bool {
        let parsed = serde_json::from_slice::<Value>(doc);
        for any in [false, true] {
            let mut page = RawPage::new(depth);
            let pushed = if any {
                page.push_any(doc)
            } else {
                page.push(doc)
            };
            let expected = match &parsed {
                Ok(Value::Object(_)) => true,
                Ok(Value::Array(_)) => any,
                _ => false,
            };
            assert_eq!(
                pushed.is_ok(),
                expected,
                "verdicts differ (push_any: {any}): raw {pushed:?}, serde_json {:?}, on {}",
                parsed.as_ref().map(|_| ()),
                show(doc)
            );
            match pushed {
                Ok(()) => {
                    assert_eq!(page.len(), 1);
                    self.compare_output(&page, doc, parsed.as_ref().unwrap(), depth);
                }
                Err(err) => {
                    // Refused cleanly: one line, and the page left empty.
                    assert!(!err.to_string().contains('\n'), "{err}");
                    assert!(page.is_empty() && page.buffered() == 0);
                }
            }
        }
        parsed.is_ok()
    }

    fn compare_output(&self, page: &RawPage, doc: &[u8], parsed: &Value, depth: Depth) {
        let (out, references, by_values) = self.rt.block_on(async {
            let enriched = self.enricher.enrich_page(page).await.unwrap();
            let mut out = Vec::new();
            enriched.write(0, &mut out);
            assert_eq!(enriched.doc_len(0), out.len(), "doc_len is exact");
            // The Value path takes a top-level array as a page of documents.
            let mut docs = match parsed {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            self.enricher.enrich_values(&mut docs, depth).await.unwrap();
            let by_values = match parsed {
                Value::Array(_) => Value::Array(docs),
                _ => docs.pop().unwrap(),
            };
            (out, enriched.stats().references, by_values)
        });
        if references == 0 {
            assert_eq!(
                show(&out),
                show(&compact(doc)),
                "without references the output is the input less white space"
            );
        }
        // Each reference nests a user (two levels) where a string was: past serde_json's
        // nesting limit the output cannot be read back to compare.
        if nesting(doc) + 2 >= 127 {
            return;
        }
        let raw: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", show(&out)));
        assert_eq!(
            raw,
            by_values,
            "raw and Value paths differ ({depth:?}) on {}",
            show(doc)
        );
    }
}

/// The document less the white space outside strings: what the raw path writes where it
/// replaces nothing. Knows nothing of JSON but where strings are.
pub fn compact(doc: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in doc {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
    out
}

/// The deepest nesting of brackets outside strings.
pub fn nesting(doc: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    let (mut in_string, mut escaped) = (false, false);
    for &b in doc {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A document as text for a message, however long or broken.
pub fn show(doc: &[u8]) -> String {
    let text = String::from_utf8_lossy(doc);
    if text.chars().count() > 2000 {
        format!(
            "{:?}… ({} bytes)",
            text.chars().take(2000).collect::<String>(),
            doc.len()
        )
    } else {
        format!("{text:?}")
    }
}
