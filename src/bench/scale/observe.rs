//! Reading what an enriched document served, straight from its bytes.
//!
//! Parsing every enriched page again would cost a reader several times what enriching it did,
//! so the harness builds its documents so that one search finds every answer: activities carry
//! no `id` of their own, and the users' data (`{"v":N,…}`) holds no `"id":"`. Each embedded
//! user is then `…"id":"u12","data":{"v":5…` (a stored user's keys come in a fixed order) and
//! each missing one `…,"id":"u12"}`, and `"id":"` is found once per reference, in order.

use memchr::memmem;

use super::Seen;

const ID: &[u8] = br#""id":""#;
const DATA: &[u8] = br#"","data":{"v":"#;

/// Appends to `out`, in document order, each answer `doc` holds: the user's id as written and
/// what was served for it. An answer that is neither shape is [`Seen::Garbled`].
pub fn observe<'d>(doc: &'d [u8], out: &mut Vec<(&'d [u8], Seen)>) {
    for at in memmem::find_iter(doc, ID) {
        let rest = &doc[at + ID.len()..];
        let Some(close) = memchr::memchr(b'"', rest) else {
            out.push((b"", Seen::Garbled));
            return;
        };
        let (id, after) = rest.split_at(close);
        let seen = if let Some(number) = after.strip_prefix(DATA) {
            let digits = number.iter().take_while(|b| b.is_ascii_digit()).count();
            match std::str::from_utf8(&number[..digits]).map(str::parse::<u32>) {
                Ok(Ok(v)) if matches!(number.get(digits), Some(b',' | b'}')) => Seen::Version(v),
                _ => Seen::Garbled,
            }
        } else if after.starts_with(br#""}"#) && doc[..at].ends_with(br#"","#) {
            // The tail of `{"error":"ReferenceNotFound",…,"reference_type":"user","id":"x"}`.
            let head = &doc[..at];
            let opened = memmem::rfind(head, br#"{"error":""#).unwrap_or(0);
            if head[opened..].starts_with(br#"{"error":"ReferenceNotFound""#) {
                Seen::NotFound
            } else {
                Seen::Garbled
            }
        } else {
            Seen::Garbled
        };
        out.push((id, seen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(doc: &str) -> Vec<(String, Seen)> {
        let mut out = Vec::new();
        observe(doc.as_bytes(), &mut out);
        (out.into_iter())
            .map(|(id, seen)| (String::from_utf8_lossy(id).into_owned(), seen))
            .collect()
    }

    #[test]
    fn finds_each_answer_in_order() {
        let user = r#"{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"u12","data":{"v":5,"x":"pad"}}"#;
        let missing = r#"{"error":"ReferenceNotFound","reference":"SU:m3","reference_type":"user","id":"m3"}"#;
        let doc = format!(r#"{{"actor":{user},"verb":"post","object":{missing},"target":{user}}}"#);
        assert_eq!(
            seen(&doc),
            [
                ("u12".to_string(), Seen::Version(5)),
                ("m3".to_string(), Seen::NotFound),
                ("u12".to_string(), Seen::Version(5)),
            ]
        );
    }

    #[test]
    fn anything_else_is_garbled() {
        let no_version = r#"{"actor":{"id":"u1","data":{"w":1}}}"#;
        assert_eq!(seen(no_version), [("u1".to_string(), Seen::Garbled)]);
        let not_a_number = r#"{"actor":{"id":"u1","data":{"v":"7"}}}"#;
        assert_eq!(seen(not_a_number), [("u1".to_string(), Seen::Garbled)]);
        let other_error = r#"{"actor":{"error":"ReferenceUnavailable","reference":"SU:u1","reference_type":"user","id":"u1"}}"#;
        assert_eq!(seen(other_error), [("u1".to_string(), Seen::Garbled)]);
        // A reference left in place holds no answer at all.
        assert_eq!(seen(r#"{"actor":"SU:u1"}"#), []);
    }
}
