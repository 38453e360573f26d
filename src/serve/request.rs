//! Reading requests: bodies within their limits of size and time, JSON that names its problem,
//! and the query parameters Stream's clients send.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use super::Shared;
use super::budget::Charge;
use super::error::ApiError;
use crate::batch::is_blank;

/// A handler's query string read as `T` (a map, or the pairs in order), or why it could not
/// be read.
pub(crate) type Query<T> =
    Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

/// A handler's query string as a map: a repeated name keeps one value.
pub(crate) type Params = Query<HashMap<String, String>>;

/// The query string as pairs in order, repeats kept: the batch routes take `ids` repeated, as
/// Python sends it.
pub(crate) type Pairs = Query<Vec<(String, String)>>;

/// A handler's path parameters read as `T`, or why they could not be read.
pub(crate) type PathParams<T> =
    Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>;

/// The query string's parameters; a malformed one is a 400 naming the problem.
pub(crate) fn params<T>(query: Query<T>) -> Result<T, ApiError> {
    query
        .map(|q| q.0)
        .map_err(|e| ApiError::input(format!("bad query string: {e}")))
}

/// The path's parameters; a malformed one is a 400 saying it is a bad `what`.
pub(crate) fn path_params<T>(path: PathParams<T>, what: &str) -> Result<T, ApiError> {
    path.map(|p| p.0)
        .map_err(|e| ApiError::input(format!("bad {what}: {e}")))
}

/// A body refused before it was read whole: why, and the rest of it when the client is
/// sending it anyway. The rest is to be read and dropped before the answer goes out: a server
/// that closes a connection with a body still arriving resets it, and a client still writing
/// then sees a broken pipe rather than the answer (Go's client, a third of the time with a
/// 1.5 MB body).
pub(crate) struct Unread {
    pub(crate) error: ApiError,
    /// `None` when nothing more is coming or worth waiting for: a client that waits for
    /// `100 Continue` (sent only once the body is first read), or one that timed out.
    pub(crate) rest: Option<Body>,
}

impl From<ApiError> for Unread {
    fn from(error: ApiError) -> Unread {
        Unread { error, rest: None }
    }
}

/// The length a request's `Content-Length` declares, if it is a number.
pub(crate) fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads a body of at most [`Limits::max_body_bytes`](super::Limits::max_body_bytes) within
/// the body timeout, charged to the memory budget. A `declared` length ([`declared_len`]) over
/// the limit is refused before anything is read, and a body that turns out longer stops being
/// read at the limit. `continues`: the client sent `Expect: 100-continue`.
pub(crate) async fn read_body(
    state: &Shared,
    declared: Option<u64>,
    continues: bool,
    mut body: Body,
) -> Result<(Bytes, Charge), Unread> {
    let limit = state.limits.max_body_bytes;
    // Refused before the first read: a client that waits for `100 Continue` sends nothing.
    let unread = |error, body| Unread {
        error,
        rest: (!continues).then_some(body),
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(unread(ApiError::too_large(limit), body));
    }
    // Charged for what it says it is, or for the most it may be.
    let charge = match state
        .budget
        .charge(declared.map_or(limit, |len| len as usize))
        .await
    {
        Ok(charge) => charge,
        Err(busy) => return Err(unread(busy, body)),
    };
    let read = Limited::new(&mut body, limit).collect();
    match tokio::time::timeout(state.limits.body_timeout, read).await {
        Ok(Ok(collected)) => Ok((collected.to_bytes(), charge)),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(Unread {
            error: ApiError::too_large(limit),
            rest: Some(body),
        }),
        Ok(Err(_)) => Err(ApiError::input("the request body could not be read").into()),
        Err(_) => Err(ApiError::body_timeout(state.limits.body_timeout).into()),
    }
}

/// Bytes one parsed JSON value may take: its node, and as much again, since an array's or an
/// object's room grows by doubling.
const PARSED_VALUE_BYTES: usize = 2 * std::mem::size_of::<Value>();

/// What `body` costs once parsed into a [`Value`] tree, at most: its bytes, and a node for each
/// value (counted by the `[`, `{`, `,` and `:` outside strings, which is never fewer). A body
/// of `0,0,0,…` grows some 70 times when parsed, so the body's own charge does not cover it.
pub(crate) fn parsed_cost(body: &[u8]) -> usize {
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' => values += 1,
                _ => {}
            }
        }
    }
    body.len()
        .saturating_add(values.saturating_mul(PARSED_VALUE_BYTES))
}

/// [`json_object`], with what the parsed object costs beyond the body (whose bytes were
/// charged as they were read) charged to the memory budget first; the charge is held until the
/// returned [`Charge`] is dropped, which the handler does when it has no more use of the
/// object.
pub(crate) async fn parse_object(
    state: &Shared,
    body: &[u8],
) -> Result<(serde_json::Map<String, Value>, Charge), ApiError> {
    // Body and values together are held to the whole budget, so that a request larger than it
    // still passes alone, as one body does, instead of waiting for itself.
    let values =
        (parsed_cost(body) - body.len()).min(state.budget.total().saturating_sub(body.len()));
    let charge = state.budget.charge(values).await?;
    Ok((json_object(body)?, charge))
}

/// Parses a body that must be a JSON object. `[]` counts as `{}`: PHP writes an empty map so,
/// and Stream's PHP client sends it as the whole body of an update without data.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if is_blank(body) {
        return Err(ApiError::input(
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Array(list)) if list.is_empty() => Ok(serde_json::Map::new()),
        Ok(other) => Err(ApiError::input(format!(
            "the request body must be a JSON object, got {}",
            crate::user::json_type(&other)
        ))),
        // serde_json refuses a 128th level, as every other way in does, but says it its own way.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            Err(ApiError::input(format!(
                "the request body is nested too deep: more than {} levels",
                crate::shape::MAX_DEPTH
            )))
        }
        // serde_json names an unpaired surrogate by what it expected next ("unexpected end of
        // hex escape", or a lone trailing one "lone leading surrogate"): said as the raw path
        // says it, so a client that sent `"a\ud800b"` (Python's json.dumps of a lone
        // surrogate) learns what to fix.
        Err(e) if surrogate_fault(&e) => Err(ApiError::input(format!(
            "the request body is not valid JSON: an unpaired UTF-16 surrogate in a \\u escape \
             (a lone surrogate is not a character) at line {} column {}",
            e.line(),
            e.column()
        ))),
        Err(e) => Err(ApiError::input(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Whether serde_json refused a `\u` escape of a surrogate without its pair.
fn surrogate_fault(e: &serde_json::Error) -> bool {
    let said = e.to_string();
    said.starts_with("lone leading surrogate") || said.starts_with("unexpected end of hex escape")
}

/// A boolean query parameter: `true`, `1`, `false`, `0` in any case (Python's requests sends
/// `True`/`False`); absent means `false`.
pub(crate) fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" || v.is_empty() => Ok(false),
        Some(_) => Err(ApiError::input(format!(
            "{name} must be true or false, got {:?}",
            query[name]
        ))),
    }
}

/// Every value of `name` in the query, each split at commas, empty parts dropped, repeats
/// answered once, in order. The batch routes take their `ids` and `foreign_ids` so; an empty
/// list asks for nothing and is answered so: JS's `getUsers([])` sends `ids=`, and Python's
/// `delete_many(c, [])` no `ids` at all (`requests` drops an empty list).
pub(crate) fn list(query: &[(String, String)], name: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    query
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(String::from)
        .collect()
}

/// Refuses a batch call naming more than `max` of `what` (users, entries).
pub(crate) fn check_batch(count: usize, max: usize, what: &str) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::over_limit(
            "max_batch_ids",
            what,
            count as u64,
            max as u64,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_unpaired_surrogate_is_named() {
        let detail = |body: &str| json_object(body.as_bytes()).unwrap_err().detail;
        for body in [
            r#"{"s":"a\ud800b"}"#,
            r#"{"s":"a\udc00b"}"#,
            r#"{"s":"a\ud800\u0041"}"#,
            r#"{"s":"a\ud800"}"#,
        ] {
            assert!(
                detail(body).contains("unpaired UTF-16 surrogate"),
                "{body}: {}",
                detail(body)
            );
        }
        // Other bad escapes keep serde_json's words.
        for body in [r#"{"s":"\u12"}"#, r#"{"s":"\x"}"#, r#"{"s":"\u12G4"}"#] {
            assert!(
                !detail(body).contains("surrogate"),
                "{body}: {}",
                detail(body)
            );
        }
    }

    #[test]
    fn lists_join_repeats_and_commas() {
        let q: Vec<(String, String)> = [("ids", "a,b"), ("x", "c"), ("ids", "b"), ("ids", " d ,,")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(list(&q, "ids"), ["a", "b", "d"]);

        assert!(list(&q, "foreign_ids").is_empty());
        // Asking for no id (`ids=`, or no `ids` at all) is asking for nothing.
        let empty = [("ids".to_string(), String::new())];
        assert!(list(&empty, "ids").is_empty());
        assert!(list(&[], "ids").is_empty());
    }

    #[test]
    fn flags_parse_case_insensitively() {
        for yes in ["true", "True", "TRUE", "1"] {
            assert!(flag(&query(&[("f", yes)]), "f").unwrap(), "{yes}");
        }
        for no in ["false", "False", "0"] {
            assert!(!flag(&query(&[("f", no)]), "f").unwrap(), "{no}");
        }
        assert!(!flag(&query(&[]), "f").unwrap());
        let err = flag(&query(&[("f", "yes")]), "f").unwrap_err();
        assert!(err.detail.contains("yes"), "{}", err.detail);
    }

    #[test]
    fn the_parsed_cost_counts_every_value_but_none_in_strings() {
        let node = PARSED_VALUE_BYTES;
        assert_eq!(parsed_cost(b"0"), 1 + node);
        assert_eq!(parsed_cost(b"[0,0,0]"), 7 + 4 * node);
        assert_eq!(parsed_cost(br#"{"a":1,"b":[]}"#), 14 + 6 * node);
        // Commas and brackets in strings, escaped quotes included, are not values.
        let text = br#"{"a":"x,y:[{\",]"}"#;
        assert_eq!(parsed_cost(text), text.len() + 3 * node);
        // Never less than what serde_json builds: a megabyte of zeros is some 36 MB.
        let zeros = format!("[{}]", vec!["0"; 500_000].join(","));
        assert!(parsed_cost(zeros.as_bytes()) > 500_000 * std::mem::size_of::<Value>());
    }

    #[test]
    fn bad_json_names_the_problem() {
        let err = json_object(b"{\"id\":").unwrap_err();
        assert!(err.detail.contains("not valid JSON"), "{}", err.detail);
        let err = json_object(b"[1]").unwrap_err();
        assert!(err.detail.contains("an array"), "{}", err.detail);
        // Nesting: the limit named, as the enrich endpoint and `enrich run` name it.
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(json_object(nested(127).as_bytes()).is_ok());
        let err = json_object(nested(128).as_bytes()).unwrap_err();
        assert!(
            err.detail.contains("nested too deep: more than 127 levels"),
            "{}",
            err.detail
        );
    }
}
